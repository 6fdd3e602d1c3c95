"""One client connection: the asyncio adapter around a sans-I/O protocol Session.

Everything here runs in the event loop thread.  ``data_received`` feeds the session and pumps
requests; a handler that returns an awaitable runs as a task while the session holds the
connection's later in-band requests (out-of-band ones overtake it).
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import time
from typing import TYPE_CHECKING, Any, cast

from ..protocol.jsonstream import ParseError
from ..protocol.session import Request, Session
from .fdtransport import FdTransport

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger(__name__)

TRANSPORT_HIGH = 64 * 1024
"""Output the transport may hold before it pushes back; the rest waits in the session."""
FLUSH_CHUNK = 64 * 1024
"""Largest piece of queued output handed to the transport at once."""
PUMP_SLICE = 0.002
"""Seconds one client's pipelined requests may run before the loop serves the others."""


def _peer_gone(transport: asyncio.Transport) -> bool:
    """Whether a Unix-socket peer has closed both directions (POLLHUP), not just its writing
    side.  A TCP peer cannot be told apart before a write fails: it counts as a half-close."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), 0)
    return any(ev & select.POLLHUP for _, ev in poller.poll(0))


class Connection(asyncio.Protocol):
    """The asyncio side of one QMP client."""

    def __init__(self, server: Server, conn_id: int) -> None:
        self.server = server
        self.id = conn_id
        self.session = Session(server.capabilities, name=f"conn{conn_id}",
                               max_message=server.limits.max_message,
                               write_high=server.limits.write_high)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._pumping = False
        self._reading = True
        self._unread_at_abort = 0
        self._flush_due = False
        self._closing = False
        self._refused = False
        self._pump_due = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.debug = log.isEnabledFor(logging.DEBUG)
        """Log traffic (``<--`` in, ``-->`` out); checked once so the hot path stays cheap."""
        self.tracer = server.tracer

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        refusal = self.server.refuse(transport)
        if refusal:
            log.warning("conn%d: refused: %s", self.id, refusal)
            if self.tracer is not None:
                self.tracer.record(self.id, "connect", {"refused": refusal})
            self.closed = self._refused = True
            transport.abort()
            return
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH)
        if isinstance(transport, FdTransport):
            transport.on_fds = self.session.fds.receive
        self.server.attach(self)
        transport.write(self.server.greeting)
        log.debug("conn%d: connected", self.id)
        if self.tracer is not None:
            self.tracer.record(self.id, "connect", transport.get_extra_info("peername"))
            self.tracer.record_raw(self.id, "out", self.server.greeting)
        timeout = self.server.limits.negotiation_timeout
        if timeout:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._negotiation_due)

    def data_received(self, data: bytes) -> None:
        if self.debug:
            log.debug("conn%d <-- %r", self.id, data)
        self.session.receive_data(data)
        self._pump()

    def eof_received(self) -> bool | None:
        """End of input.  A half-close (the peer still reads) runs what was received and
        writes its replies and events, then closes; a peer that is gone altogether is a
        disconnect: queued requests are dropped (as QEMU's monitor/qmp.c on CHR_EVENT_CLOSED)."""
        if self.transport is not None and _peer_gone(self.transport):
            self.abort()
            return None
        self.session.receive_eof()
        self._pump()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tracer is not None and self.transport is not None and not self._refused:
            self.tracer.record(self.id, "disconnect", str(exc) if exc else "eof")
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        unread = max(self.unread(), self._unread_at_abort)
        self.session.discard()
        self.server.detach(self, unread)
        log.debug("conn%d: disconnected (%s)", self.id, exc or "eof")

    def pause_writing(self) -> None:
        self.session.write_blocked = True

    def resume_writing(self) -> None:
        self.session.write_blocked = False
        self._pump()

    # -- output --------------------------------------------------------------------------------

    def unread(self) -> int:
        """Output written for this client and not yet read by it."""
        if self.transport is None:
            return 0
        return self.transport.get_write_buffer_size() + self.session.pending()

    def send_event(self, data: bytes) -> None:
        """Queue an event; a client whose unread output passes the limit is cut off."""
        if self.closed or self.transport is None:
            return
        if self.unread() + len(data) > self.server.limits.max_output:
            log.warning("conn%d: client is not reading; %d bytes of output queued, "
                        "disconnecting it", self.id, self.unread())
            self.abort()
            return
        if self.session.send_event(data) and not self._pumping and not self._flush_due:
            # Written once this callback is done: a burst of events becomes one write.
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Hand queued output to the transport, a chunk at a time, until it pushes back.

        What the transport cannot take stays in the session as references to the lines
        every client shares: a client that does not read costs a pointer per event, not a
        copy (its unread bytes still count against --max-output and the total bound)."""
        self._flush_due = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        session = self.session
        while not session.write_blocked:
            data = session.data_to_send(FLUSH_CHUNK)
            if not data:
                if self._closing:
                    transport.close()
                return
            if self.debug:
                log.debug("conn%d --> %r", self.id, data)
            if self.tracer is not None:
                self.tracer.record_raw(self.id, "out", data)
            transport.write(data)

    def abort(self) -> None:
        """Drop the connection at once, discarding unsent output."""
        if self.transport is not None and not self.closed:
            self._unread_at_abort = self.unread()
            self.closed = True
            self.session.discard()
            self.transport.abort()

    def close(self) -> None:
        """Close once the queued output has been written."""
        if self.transport is not None and not self.transport.is_closing():
            self._closing = True
            self._flush()

    def _negotiation_due(self) -> None:
        self._timer = None
        if not self.session.negotiated and not self.closed:
            log.warning("conn%d: no capabilities negotiation within %gs; disconnecting",
                        self.id, self.server.limits.negotiation_timeout)
            self.abort()

    # -- input ---------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Run requests until the session blocks, then write their output in one piece."""
        if self._pumping or self.closed:
            return  # re-entered from a handler; the outer pump continues
        self._pumping = True
        session = self.session
        deadline = time.perf_counter() + PUMP_SLICE
        try:
            while not self.closed:
                req = session.next_request()
                if req is None:
                    break
                self._execute(req)
                if time.perf_counter() > deadline:
                    session.yield_turn()  # other clients get their turn before the rest
                    break
        finally:
            self._pumping = False
        if self.closed or self.transport is None:
            return
        stalled = session.stalled or session.reading or session.yielded
        if session.busy or stalled or session.write_blocked or session.read_paused:
            self._flow()
        self._flush()
        if stalled and not session.write_blocked and not self._pump_due:
            self._pump_due = True
            asyncio.get_running_loop().call_soon(self._pump_later)
        if session.finished:
            self.close()

    def _pump_later(self) -> None:
        self._pump_due = False
        self._pump()

    def _flow(self) -> None:
        want = self.session.want_reading()
        if want != self._reading and self.transport is not None:
            self._reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def _execute(self, req: Request) -> None:
        tracer = self.tracer
        message = req.message
        if type(message) is ParseError:
            if tracer is not None:
                tracer.record(self.id, "in", {"parse-error": message.desc})
            self.session.parse_error(req)
            return
        if tracer is not None:
            tracer.record(self.id, "in", message)
        result = self.server.dispatcher.dispatch(message, self.session)
        if type(result) is bytes:
            self.session.reply(req, result)
            return
        task = asyncio.get_running_loop().create_task(self._complete(req, result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _complete(self, req: Request, pending: Any) -> None:
        reply = await pending
        if not self.closed:
            self.session.reply(req, reply)
            self._pump()
