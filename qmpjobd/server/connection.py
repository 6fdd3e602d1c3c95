"""One client connection: bytes in, ordered replies out, events fanned in, bounded buffers.

Concurrency: everything here runs in the event loop thread.  ``data_received`` feeds the JSON
reader and pumps requests; a handler that returns an awaitable runs as a task while the
connection's later in-band requests wait (out-of-band ones do not).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from ..protocol import encode
from ..protocol.jsonstream import NEED_DATA, PENDING, JSONStream, ParseError
from ..protocol.session import Session

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger(__name__)

OOB_QUEUE_MAX = 8
"""In-band requests held while one runs, with OOB on (QEMU's QMP_REQ_QUEUE_LEN_MAX)."""
READ_PAUSE = 256 * 1024
"""Unprocessed input above which reading pauses while requests are blocked."""


class Connection(asyncio.Protocol):
    """The asyncio side of one QMP client."""

    def __init__(self, server: Server, conn_id: int) -> None:
        self.server = server
        self.id = conn_id
        self.session = Session(server.capabilities, name=f"conn{conn_id}")
        self.stream = JSONStream(max_message=server.limits.max_message)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.busy = False
        self.inband: deque[Any] = deque()
        self.write_paused = False
        self.read_paused = False
        self._out: list[bytes] | None = None
        self._pump_soon = False
        """A pump is scheduled: the reader paused after a slice of work, or output was full."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.debug = log.isEnabledFor(logging.DEBUG)
        """Log traffic (``<--`` in, ``-->`` out); checked once so the hot path stays cheap."""
        self.tracer = server.tracer

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        refusal = self.server.access.refuse(transport)
        if refusal:
            log.warning("conn%d: refused: %s", self.id, refusal)
            if self.tracer is not None:
                self.tracer.record(self.id, "connect", {"refused": refusal})
            self.closed = True
            transport.abort()
            return
        limits = self.server.limits
        transport.set_write_buffer_limits(high=limits.write_high)
        self.server.attach(self)
        transport.write(self.server.greeting)
        log.debug("conn%d: connected", self.id)
        if self.tracer is not None:
            self.tracer.record(self.id, "connect", transport.get_extra_info("peername"))
            self.tracer.record_raw(self.id, "out", self.server.greeting)

    def data_received(self, data: bytes) -> None:
        if self.debug:
            log.debug("conn%d <-- %r", self.id, data)
        self.stream.feed(data)
        self._pump()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tracer is not None and self.transport is not None and not self.closed:
            self.tracer.record(self.id, "disconnect", str(exc) if exc else "eof")
        self.closed = True
        self.inband.clear()
        self.stream.reset()
        self.server.detach(self)
        log.debug("conn%d: disconnected (%s)", self.id, exc or "eof")

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._pump()

    # -- output --------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue a reply (kept in order with the replies of the current pump)."""
        if self.closed or self.transport is None:
            return
        if self.tracer is not None:
            self.tracer.record_raw(self.id, "out", data)
        if self._out is not None:
            self._out.append(data)
        else:
            if self.debug:
                log.debug("conn%d --> %r", self.id, data)
            self.transport.write(data)

    def send_event(self, data: bytes) -> None:
        """Queue an event; a client whose unread output passes the limit is cut off."""
        if self.closed or not self.session.negotiated or self.transport is None:
            return
        if self.transport.get_write_buffer_size() + len(data) > self.server.limits.max_output:
            log.warning("conn%d: client is not reading; %d bytes of output queued, "
                        "disconnecting it", self.id, self.transport.get_write_buffer_size())
            self.abort()
            return
        self.send(data)

    def abort(self) -> None:
        """Drop the connection at once, discarding unsent output."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def close(self) -> None:
        """Close after the queued output has been written."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- input ---------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Process buffered requests until blocked, flushing their replies in one write."""
        if self._out is not None or self.closed:
            return  # re-entered from a handler; the outer pump continues
        out: list[bytes] = []
        self._out = out
        stream = self.stream
        dispatcher = self.server.dispatcher
        session = self.session
        high = self.server.limits.write_high
        counted = queued = 0
        full = more = False
        try:
            while not self.closed and not self.write_paused:
                for chunk in out[counted:]:
                    queued += len(chunk)
                counted = len(out)
                if queued > high:  # stop here; the rest waits until this much is written
                    full = True
                    break
                if self.busy:
                    if not session.oob or len(self.inband) >= OOB_QUEUE_MAX:
                        break
                    item = stream.next()
                    if item is NEED_DATA:
                        break
                    if item is PENDING:
                        more = True
                        break
                    if _is_oob(item):
                        self._execute(item, dispatcher, session, out, oob=True)
                    else:
                        self.inband.append(item)
                    continue
                if self.inband:
                    item = self.inband.popleft()
                else:
                    item = stream.next()
                    if item is NEED_DATA:
                        break
                    if item is PENDING:  # a slice of a long message: let others run first
                        more = True
                        break
                self._execute(item, dispatcher, session, out, oob=session.oob and _is_oob(item))
        finally:
            self._out = None
            if out and self.transport is not None and not self.closed:
                data = b"".join(out) if len(out) > 1 else out[0]
                if self.debug:
                    log.debug("conn%d --> %r", self.id, data)
                self.transport.write(data)
        full = full or more
        if full and not self.write_paused and not self.closed and not self._pump_soon:
            self._pump_soon = True
            asyncio.get_running_loop().call_soon(self._pump_later)
        if full or self.busy or self.write_paused or self.read_paused:
            self._flow_control(full)

    def _pump_later(self) -> None:
        self._pump_soon = False
        self._pump()

    def _execute(self, item: Any, dispatcher: Any, session: Session, out: list[bytes],
                 oob: bool) -> None:
        tracer = self.tracer
        if type(item) is ParseError:
            reply = encode.error(item.desc)
            if tracer is not None:
                tracer.record(self.id, "in", {"parse-error": item.desc})
                tracer.record_raw(self.id, "out", reply)
            out.append(reply)
            return
        if tracer is not None:
            tracer.record(self.id, "in", item)
        result = dispatcher.dispatch(item, session)
        if type(result) is bytes:
            if tracer is not None:
                tracer.record_raw(self.id, "out", result)
            out.append(result)
            return
        if not oob:
            self.busy = True
        task = asyncio.get_running_loop().create_task(self._complete(result, oob))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _complete(self, pending: Any, oob: bool) -> None:
        reply = await pending
        if not oob:
            self.busy = False
        if not self.closed:
            self.send(reply)
            self._pump()

    def _flow_control(self, full: bool = False) -> None:
        if self.transport is None or self.closed:
            return
        blocked = self.busy or self.write_paused or full
        if blocked and not self.read_paused and self.stream.buffered() > READ_PAUSE:
            self.read_paused = True
            self.transport.pause_reading()
        elif self.read_paused and not blocked:
            self.read_paused = False
            self.transport.resume_reading()


def _is_oob(item: Any) -> bool:
    return type(item) is dict and "exec-oob" in item and "execute" not in item
