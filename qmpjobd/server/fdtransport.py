"""A transport for Unix-socket clients that also receives file descriptors (SCM_RIGHTS).

QEMU's ``getfd`` takes the descriptor a client sent as ancillary data with the command;
asyncio's and uvloop's own transports read with recv(), which makes the kernel discard (and
close) such descriptors.  This transport reads with recvmsg() and hands each descriptor to
:attr:`on_fds`; everything else (flow control both ways, close after the buffer is written,
abort) behaves as the stock socket transport does for :class:`Connection`.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import os
import socket
from collections.abc import Callable
from typing import Any

READ_SIZE = 256 * 1024
MAX_FDS = 16
"""Descriptors taken from one read (QEMU's TCP_MAX_FDS); more are closed."""


class FdTransport(asyncio.Transport):
    """A connected AF_UNIX stream socket driven with add_reader/add_writer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: asyncio.Protocol) -> None:
        extra: dict[str, Any] = {"socket": sock}
        with contextlib.suppress(OSError):
            extra["peername"] = sock.getpeername()
        super().__init__(extra)
        sock.setblocking(False)
        self._loop, self._sock, self._protocol = loop, sock, protocol
        self._fd = sock.fileno()
        self._buffer: collections.deque[memoryview] = collections.deque()
        self._buffered = 0
        self._high, self._low = 64 * 1024, 16 * 1024
        self._writing_paused = False
        self._reading = False
        self._closing = False
        self._lost = False
        self.on_fds: Callable[[list[int]], None] = _close_all
        """Receives the descriptors of each read, in order (closing them by default)."""
        protocol.connection_made(self)
        if not self._closing:
            self.resume_reading()

    # -- reading -------------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    def _read_ready(self) -> None:
        try:
            data, anc, _, _ = self._sock.recvmsg(READ_SIZE,
                                                 socket.CMSG_SPACE(MAX_FDS * 4))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._force_close(e)
            return
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[:len(payload) - len(payload) % got.itemsize])
                fds += list(got)
        if fds:
            self.on_fds(fds)
        if data:
            self._protocol.data_received(data)
            return
        self.pause_reading()
        if not self._protocol.eof_received():
            self.close()

    # -- writing -------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._lost or not data:
            return
        view = memoryview(bytes(data) if isinstance(data, bytearray) else data)
        if not self._buffer:
            try:
                sent = self._sock.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:
                self._force_close(e)
                return
            view = view[sent:]
            if not view:
                return
            self._loop.add_writer(self._fd, self._write_ready)
        self._buffer.append(view)
        self._buffered += len(view)
        self._check_high()

    def _write_ready(self) -> None:
        while self._buffer:
            view = self._buffer[0]
            try:
                sent = self._sock.send(view)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._loop.remove_writer(self._fd)
                self._force_close(e)
                return
            self._buffered -= sent
            if sent < len(view):
                self._buffer[0] = view[sent:]
                break
            self._buffer.popleft()
        if self._writing_paused and self._buffered <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()
        if not self._buffer:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._call_lost(None)

    def _check_high(self) -> None:
        if not self._writing_paused and self._buffered > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low
        self._check_high()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    # -- the end -------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.pause_reading()
        if not self._buffer:
            self._loop.call_soon(self._call_lost, None)

    def abort(self) -> None:
        self._force_close(None)

    def _force_close(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._closing = True
        self.pause_reading()
        if self._buffer:
            self._buffer.clear()
            self._buffered = 0
            self._loop.remove_writer(self._fd)
        self._loop.call_soon(self._call_lost, exc)

    def _call_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def start(loop: asyncio.AbstractEventLoop, sock: socket.socket,
          factory: Callable[[], asyncio.Protocol]) -> Any:
    """Serve ``sock`` with a new protocol from ``factory`` over an :class:`FdTransport`."""
    protocol = factory()
    return FdTransport(loop, sock, protocol), protocol
