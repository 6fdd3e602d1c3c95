"""Replies, errors, events and the greeting as wire bytes (one JSON text + CRLF each).

Key order follows QEMU's where it costs nothing (``return`` before ``id``, ``id`` before
``error``, ``timestamp`` before ``event``); separators and escaping are orjson's, which clients
parse to the same values (QEMU's docs/interop/qmp-spec.txt promises values, not bytes).
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import orjson

CRLF = b"\r\n"
_dumps = orjson.dumps


def reply(ret: Any, msg_id: Any = None, has_id: bool = False) -> bytes:
    """``{"return": ret[, "id": id]}`` + CRLF."""
    if has_id:
        if type(msg_id) in _SIMPLE_IDS:
            return _dumps({"return": ret, "id": msg_id}) + CRLF
        return dumps({"return": ret, "id": msg_id}, msg_id)
    return _dumps({"return": ret}) + CRLF


def error(desc: str, error_class: str = "GenericError", msg_id: Any = None,
          has_id: bool = False) -> bytes:
    """``{["id": id, ]"error": {"class": c, "desc": d}}`` + CRLF."""
    err = {"class": error_class, "desc": desc}
    if has_id:
        return dumps({"id": msg_id, "error": err}, msg_id)
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


_SIMPLE_IDS = frozenset((str, int, bool, type(None)))
_UESC = re.compile(r"\\u([0-9a-f]{4})")


def _qemu_str(s: str) -> str:
    out = json.dumps(s)  # the same escape set as QEMU, but lower-case hex and raw DEL
    if "\\u" in out:
        out = _UESC.sub(lambda m: "\\u" + m.group(1).upper(), out)
    return out.replace("\x7f", "\\u007F")


def qemu_dumps(obj: Any) -> bytes:
    """Serialise exactly as QEMU 7.2's JSON writer does (qobject/qjson.c, to_json()).

    QDict key order, ``", "`` and ``": "``, ASCII-only output with upper-case ``\\uXXXX``,
    doubles with ``%.17g`` (so ``inf`` for an overflowed double, as QEMU writes it).
    Iterative, so the deepest input QEMU accepts (1024 levels) is fine.
    """
    from .request import qdict_order

    parts: list[str] = []
    stack: list[Any] = [obj]
    while stack:
        item = stack.pop()
        t = type(item)
        if t is _Raw:
            parts.append(item.text)
        elif t is str:
            parts.append(_qemu_str(item))
        elif t is bool:
            parts.append("true" if item else "false")
        elif t is int:
            parts.append(str(item))
        elif t is float:
            parts.append(f"{item:.17g}")
        elif item is None:
            parts.append("null")
        elif t is dict:
            if not item:
                parts.append("{}")
                continue
            todo: list[Any] = [_Raw("{")]
            for i, key in enumerate(qdict_order(list(item))):
                todo += [_Raw((", " if i else "") + _qemu_str(key) + ": "), item[key]]
            todo.append(_Raw("}"))
            stack.extend(reversed(todo))
        elif t is list:
            if not item:
                parts.append("[]")
                continue
            todo = [_Raw("[")]
            for i, v in enumerate(item):
                if i:
                    todo.append(_Raw(", "))
                todo.append(v)
            todo.append(_Raw("]"))
            stack.extend(reversed(todo))
        else:
            raise TypeError(f"cannot serialise {t.__name__}")
    return "".join(parts).encode("ascii")


class _Raw:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _needs_qemu(value: Any) -> bool:
    """True if orjson would write ``value`` differently from QEMU's values (non-finite)."""
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is float:
            if not math.isfinite(v):
                return True
        elif t is list:
            stack.extend(v)
        elif t is dict:
            stack.extend(v.values())
    return False


def dumps(msg: Any, msg_id: Any = None) -> bytes:
    """One message line; falls back to the QEMU writer for what orjson cannot express."""
    if type(msg_id) not in _SIMPLE_IDS and _needs_qemu(msg_id):
        return qemu_dumps(msg) + CRLF
    try:
        return _dumps(msg) + CRLF
    except TypeError:  # nesting deeper than orjson writes
        return qemu_dumps(msg) + CRLF
