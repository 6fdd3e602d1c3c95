"""Turning a parsed JSON value into a QMP request, with QEMU's checks and texts.

This is rows 1-3 of qmp_dispatch() (QEMU's qapi/qmp-dispatch.c): the value must be an object, its
members are checked in QDict bucket order, and ``execute`` (or ``exec-oob``) must be there.
"""

from __future__ import annotations

from typing import Any

from .errors import QMPError

_ALLOWED = frozenset(("execute", "arguments", "id"))


def tdb_hash(key: str) -> int:
    """QEMU's QDict key hash (tdb_hash over the key's UTF-8 bytes, 32-bit arithmetic)."""
    raw = key.encode("utf-8", "surrogatepass").replace(b"\0", b"\xc0\x80")
    v = (0x238F13AF * len(raw)) & 0xFFFFFFFF
    for i, c in enumerate(raw):
        v = (v + (c << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * v + 12345) & 0xFFFFFFFF


def qdict_order(keys: list[str]) -> list[str]:
    """The order QEMU iterates a QDict built by inserting ``keys`` in turn."""
    ranked = sorted((tdb_hash(k) % 512, -i, k) for i, k in enumerate(keys))
    return [k for _, _, k in ranked]


class Request:
    """A well-formed QMP command request."""

    __slots__ = ("arguments", "command", "has_id", "id", "oob")

    def __init__(self, command: str, arguments: dict[str, Any], msg_id: Any, has_id: bool,
                 oob: bool) -> None:
        self.command = command
        self.arguments = arguments
        self.id = msg_id
        self.has_id = has_id
        self.oob = oob

    def __repr__(self) -> str:
        return f"Request({self.command!r}, {self.arguments!r}, id={self.id!r}, oob={self.oob})"


class BadRequest(QMPError):
    """A request rejected before dispatch; knows whether the id can be echoed."""

    def __init__(self, desc: str, msg_id: Any = None, has_id: bool = False) -> None:
        super().__init__(desc)
        self.id = msg_id
        self.has_id = has_id


def parse_request(value: Any, oob_enabled: bool) -> Request:
    """Check a parsed message as qmp_dispatch_check_obj() does; raise BadRequest on failure."""
    if type(value) is not dict:
        raise BadRequest("QMP input must be a JSON object")
    has_id = "id" in value
    msg_id = value.get("id")
    command = value.get("execute")
    args = value.get("arguments", _NO_ARGS)
    if (type(command) is str and _ALLOWED.issuperset(value)
            and (args is _NO_ARGS or type(args) is dict)):
        return Request(command, {} if args is _NO_ARGS else args, msg_id, has_id, False)
    exec_key = None
    for key in qdict_order(list(value)):
        member = value[key]
        if key == "execute" or (key == "exec-oob" and oob_enabled):
            if type(member) is not str:
                raise BadRequest(f"QMP input member '{key}' must be a string", msg_id, has_id)
            if exec_key is not None:
                raise BadRequest(f"QMP input member '{key}' clashes with '{exec_key}'",
                                 msg_id, has_id)
            exec_key = key
        elif key == "arguments":
            if type(member) is not dict:
                raise BadRequest("QMP input member 'arguments' must be an object", msg_id, has_id)
        elif key != "id":
            raise BadRequest(f"QMP input member '{key}' is unexpected", msg_id, has_id)
    if exec_key is None:
        raise BadRequest("QMP input lacks member 'execute'", msg_id, has_id)
    args = value.get("arguments", {})
    return Request(value[exec_key], args, msg_id, has_id, exec_key == "exec-oob")


_NO_ARGS: Any = object()
