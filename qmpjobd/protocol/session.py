"""One client's QMP session without I/O: bytes in, requests to run, bytes out.

The session owns every rule of QEMU's monitor/qmp.c that does not need a socket:
negotiation, the in-band queue and its limit, out-of-band requests overtaking a blocked
in-band one, output order (a command's events before its reply), when reading should pause,
and what happens at end of input.  The asyncio connection (server/connection.py) only feeds it
bytes, runs what :meth:`Session.next_request` hands out and writes :meth:`Session.data_to_send`.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum
from typing import Any

from . import encode
from .errors import QMPError
from .fds import PassedFds
from .jsonstream import MAX_TOKEN_SIZE, NEED_DATA, PENDING, JSONStream, ParseError


class QMPCapability(StrEnum):
    """QAPI QMPCapability: QEMU 7.2's ``oob``, and qmpjobd's ``x-job-events`` (the generic
    JOB_COMPLETED / JOB_CANCELLED / JOB_ERROR / JOB_READY events)."""

    OOB = "oob"
    X_JOB_EVENTS = "x-job-events"


CAPABILITIES: tuple[str, ...] = tuple(QMPCapability)
"""Capabilities offered in the greeting, in this order."""

OOB_QUEUE_MAX = 8
"""In-band requests held while one runs, with OOB on (QEMU's QMP_REQ_QUEUE_LEN_MAX)."""
READ_PAUSE = 256 * 1024
"""Unprocessed input above which reading pauses while requests are blocked."""
WRITE_HIGH = 1 << 20
"""Output produced but not yet handed to the transport above which no request is started."""


class Request:
    """A message handed out to run: a parsed value (or a ParseError) and whether it is OOB."""

    __slots__ = ("message", "oob")

    def __init__(self, message: Any, oob: bool) -> None:
        self.message = message
        self.oob = oob


class Session:
    """One client's view of the monitor.

    Input: :meth:`receive_data`, :meth:`receive_eof`.  Work: :meth:`next_request` until it
    returns None, then :meth:`reply` for each request once its reply is known (at once or
    later).  Output: :meth:`send_event` at any time, :meth:`data_to_send` to take the bytes.
    Flow: :attr:`write_blocked` is set by the transport side; :meth:`want_reading` and
    :attr:`finished` tell it what to do.
    """

    __slots__ = ("_drained", "_inband", "_out", "_out_size", "busy", "enabled", "eof", "fds",
                 "name", "negotiated", "offered", "oob", "read_paused", "reading", "running",
                 "stalled", "stream", "write_blocked", "write_high", "yielded")

    def __init__(self, offered: tuple[str, ...] = CAPABILITIES, name: str = "", *,
                 max_message: int = MAX_TOKEN_SIZE, write_high: int = WRITE_HIGH) -> None:
        self.offered = offered
        self.name = name
        self.negotiated = False
        self.oob = False
        self.enabled: frozenset[str] = frozenset()
        self.stream = JSONStream(max_message=max_message)
        self.write_high = write_high
        self._inband: deque[Any] = deque()
        self._out: list[bytes] = []
        self._out_size = 0
        self.busy = False
        """An in-band request is running: later in-band requests wait."""
        self.running = 0
        """Requests handed out whose reply has not come back yet."""
        self.write_blocked = False
        """The transport's buffer is above its high-water mark."""
        self.stalled = False
        """next_request() stopped because this session's own output passed ``write_high``."""
        self.reading = False
        """next_request() stopped in the middle of a long message: the reader has done a slice
        of its work and wants to be called again soon, so that other clients are served."""
        self.yielded = False
        """The caller stopped taking requests to let other clients run (yield_turn())."""
        self.read_paused = False
        self.eof = False
        self._drained = False
        self.fds = PassedFds()
        """Descriptors the client passed (getfd); closed with the session."""

    # -- negotiation ---------------------------------------------------------------------------

    def greeting(self, version: Any) -> bytes:
        """The greeting line for this session."""
        return encode.greeting(version, list(self.offered))

    def negotiate(self, enable: list[str]) -> None:
        """qmp_capabilities: QEMU's checks, in its order, then switch to command mode."""
        if self.negotiated:
            raise QMPError("Capabilities negotiation is already complete, command ignored",
                           "CommandNotFound")
        missing = [c for c in enable if c not in self.offered]
        if missing:
            raise QMPError(f"Capability {', '.join(missing)} not available")
        self.enabled = frozenset(enable)
        self.oob = QMPCapability.OOB in self.enabled
        self.negotiated = True

    # -- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client."""
        self.stream.feed(data)
        self._drained = False

    def receive_eof(self) -> None:
        """The client will send nothing more; what it sent still runs (as QEMU does)."""
        self.eof = True

    def next_request(self) -> Request | None:
        """The next message to run now, or None when none may: no complete message, the
        in-band slot busy (an OOB message still overtakes it), or output to write first."""
        self.reading = self.yielded = False
        if self.write_blocked:
            return None
        if self._out_size > self.write_high:
            self.stalled = True
            return None
        while self.busy:
            if not self.oob or len(self._inband) >= OOB_QUEUE_MAX:
                return None
            item = self._read()
            if item is NEED_DATA:
                return None
            if _is_oob(item):
                self.running += 1
                return Request(item, True)
            self._inband.append(item)
        item = self._inband.popleft() if self._inband else self._read()
        if item is NEED_DATA:
            return None
        oob = self.oob and _is_oob(item)
        if not oob:
            self.busy = True
        self.running += 1
        return Request(item, oob)

    def _read(self) -> Any:
        """The next message from the reader (a JSON ``null`` is a message too), or NEED_DATA:
        all input is used up (``_drained``), or the reader has done a slice of a long message
        and wants another call (``reading``)."""
        item = self.stream.next()
        if item is NEED_DATA:
            self._drained = True
        elif item is PENDING:
            self.reading = True
            return NEED_DATA
        return item

    def reply(self, req: Request, data: bytes) -> None:
        """The reply to a request handed out by next_request(), queued after its events."""
        self.running -= 1
        if not req.oob:
            self.busy = False
        self._out.append(data)
        self._out_size += len(data)

    def parse_error(self, req: Request) -> bytes:
        """The error reply for a request whose message did not parse; queues it."""
        assert type(req.message) is ParseError
        data = encode.error(req.message.desc)
        self.reply(req, data)
        return data

    # -- output --------------------------------------------------------------------------------

    def send_event(self, data: bytes) -> bool:
        """Queue an event line; only a negotiated session receives events."""
        if not self.negotiated:
            return False
        self._out.append(data)
        self._out_size += len(data)
        return True

    def pending(self) -> int:
        """Bytes queued and not yet taken by data_to_send()."""
        return self._out_size

    def data_to_send(self, limit: int = 0) -> bytes:
        """The queued output in order, all of it or (with ``limit``) about that many bytes
        and at least one line; empty when there is nothing."""
        out = self._out
        if not out:
            return b""
        if limit and self._out_size > limit:
            size = k = 0
            while k < len(out) and (k == 0 or size + len(out[k]) <= limit):
                size += len(out[k])
                k += 1
            data = b"".join(out[:k])
            del out[:k]
            self._out_size -= size
        else:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._out_size = 0
        self.stalled = False
        return data

    def yield_turn(self) -> None:
        """The caller stops taking requests for now, with some possibly left, so that other
        clients are served; until it asks again, this counts as blocked for reading."""
        self.yielded = True

    # -- flow ----------------------------------------------------------------------------------

    def want_reading(self) -> bool:
        """Whether the transport should read: not while requests are blocked and a lot of
        input already waits (that would only grow the buffer)."""
        blocked = (self.busy or self.write_blocked or self.stalled or self.reading
                   or self.yielded)
        if blocked and not self.read_paused and self.stream.buffered() > READ_PAUSE:
            self.read_paused = True
        elif self.read_paused and not blocked:
            self.read_paused = False
        return not self.read_paused

    @property
    def finished(self) -> bool:
        """The client sent EOF and everything it sent has run: the connection may close
        once the output is written."""
        return self.eof and self._drained and self.running == 0 and not self._inband

    def discard(self) -> None:
        """The connection is gone: drop queued input and output."""
        self._inband.clear()
        self._out.clear()
        self._out_size = 0
        self.stream.reset()
        self.fds.close_all()


def _is_oob(item: Any) -> bool:
    return type(item) is dict and "exec-oob" in item and "execute" not in item
