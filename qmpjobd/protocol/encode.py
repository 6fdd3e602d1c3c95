"""Replies, errors, events and the greeting as wire bytes (one JSON text + CRLF each).

Key order follows QEMU's where it costs nothing (``return`` before ``id``, ``id`` before
``error``, ``timestamp`` before ``event``); separators and escaping are orjson's, which clients
parse to the same values (qmp-protocol.md §13 says byte-identity there is informative).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

CRLF = b"\r\n"
_dumps = orjson.dumps


def reply(ret: Any, msg_id: Any = None, has_id: bool = False) -> bytes:
    """``{"return": ret[, "id": id]}`` + CRLF."""
    if has_id:
        return _dumps({"return": ret, "id": msg_id}) + CRLF
    return _dumps({"return": ret}) + CRLF


def error(desc: str, error_class: str = "GenericError", msg_id: Any = None,
          has_id: bool = False) -> bytes:
    """``{["id": id, ]"error": {"class": c, "desc": d}}`` + CRLF."""
    err = {"class": error_class, "desc": desc}
    if has_id:
        return _dumps({"id": msg_id, "error": err}) + CRLF
    return _dumps({"error": err}) + CRLF


def timestamp(now_us: int | None = None) -> dict[str, int]:
    """QEMU's event timestamp: wall-clock seconds and the microsecond remainder."""
    if now_us is None:
        now_us = time.time_ns() // 1000
    seconds, micro = divmod(now_us, 1_000_000)
    return {"seconds": seconds, "microseconds": micro}


def event(name: str, data: Any = None, ts: dict[str, int] | None = None) -> bytes:
    """An event line; ``data`` is left out when None, as QEMU does for STOP/RESUME."""
    msg: dict[str, Any] = {"timestamp": ts or timestamp(), "event": name}
    if data is not None:
        msg["data"] = data
    return _dumps(msg) + CRLF


def greeting(version: Any, capabilities: list[str]) -> bytes:
    """The line sent on connect, before anything is read."""
    return _dumps({"QMP": {"version": version, "capabilities": capabilities}}) + CRLF
