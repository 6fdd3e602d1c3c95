"""The replication connection: one non-blocking stream socket, read and written through the
event loop, with the return path on the same socket (as QEMU's migration channel)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
import ssl
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import address
from ..address import Address, AddressError
from ..errors import QmpjobdError
from . import wire
from .guest import Buffer

_READ_AHEAD = 64 * 1024
_UNIX_BUFFER = 4 << 20
"""Send and receive buffer asked for on a Unix replication socket (the kernel caps it at
net.core.wmem_max/rmem_max): fewer wake-ups per checkpoint.  TCP keeps its autotuning."""
HANDSHAKE = 10.0
"""Seconds a TLS handshake on the replication link may take."""
_JOIN_BELOW = 256 * 1024
_YIELD_EVERY = 1 << 20
"""Bytes written between two turns of the event loop, even when the socket never fills."""
_CRC_BATCH = 4 << 20
_ZERO_IN_THREAD = 1 << 20
INLINE_BELOW = 64 * 1024
"""Sections smaller than this are framed and checksummed on the loop (a thread hop costs
more than the work)."""
_crc_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="colo-crc")
"""One worker: the pieces of a section are checksummed in the order they were queued."""


def parse_uri(uri: str) -> Address | None:
    """The address of a ``tcp:`` or ``unix:`` URI; None for anything else (the caller
    answers with QEMU's text for it)."""
    try:
        return address.parse_uri(uri)
    except AddressError:
        return None


class ShortRead(QmpjobdError, ConnectionError):
    """The peer closed the stream in the middle of a read; ``got`` bytes had arrived."""

    def __init__(self, got: int) -> None:
        super().__init__("Input/output error")
        self.got = got


class Channel:
    """A connected socket with exact-size reads (read ahead for small messages) and writes
    that join small pieces; closing or :meth:`shutdown` wakes a pending read or write."""

    def __init__(self, sock: Any) -> None:
        """``sock``: a connected socket (or, for TLS, the transport's view of one)."""
        if isinstance(sock, socket.socket):
            sock.setblocking(False)
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        elif isinstance(sock, socket.socket) and sock.family == socket.AF_UNIX:
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, _UNIX_BUFFER)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self.sent = 0
        self.received = 0
        self.closed = False

    @classmethod
    async def connect(cls, addr: Address) -> Channel:
        """Connect to ``addr`` (raises OSError with QEMU-like wording left to the caller)."""
        loop = asyncio.get_running_loop()
        if addr.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = addr.path
        else:
            infos = await loop.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
            family, _, _, _, target = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, target)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def send(self, parts: Sequence[bytes | memoryview]) -> None:
        """Write every part, in order; small parts are joined into one write."""
        pending: list[bytes | memoryview] = []
        size = 0
        unyielded = 0
        for part in parts:
            unyielded += len(part)
            if unyielded >= _YIELD_EVERY:  # a fast reader must not let this hog the loop
                unyielded = 0
                await asyncio.sleep(0)
            if len(part) >= _JOIN_BELOW:
                if pending:
                    await self._write(b"".join(pending))
                    pending, size = [], 0
                await self._write(part)
            else:
                pending.append(part)
                size += len(part)
                if size >= _JOIN_BELOW:
                    await self._write(b"".join(pending))
                    pending, size = [], 0
        if pending:
            await self._write(b"".join(pending) if len(pending) > 1 else pending[0])

    async def _write(self, data: bytes | memoryview) -> None:
        if self.closed:
            raise ConnectionResetError("connection closed")
        await self.loop.sock_sendall(self.sock, data)
        self.sent += len(data)

    async def recv_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes; EOF first raises ConnectionError."""
        while len(self._buf) < n:
            chunk = await self._recv(max(_READ_AHEAD, n - len(self._buf)))
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def recv_into(self, view: memoryview) -> None:
        """Fill ``view`` completely (large reads go straight into it)."""
        got = min(len(self._buf), len(view))
        if got:
            view[:got] = self._buf[:got]
            del self._buf[:got]
        unyielded = 0
        while got < len(view):
            if self.closed:
                raise ConnectionResetError("connection closed")
            n = await self._recv_into(view[got:])
            if n == 0:
                raise ShortRead(got)
            got += n
            self.received += n
            unyielded += n
            if unyielded >= _YIELD_EVERY:  # data always ready: let the other clients in
                unyielded = 0
                await asyncio.sleep(0)

    async def _recv_into(self, view: memoryview) -> int:
        """Read what has arrived into ``view`` (at least a byte; 0 at EOF)."""
        return await self.loop.sock_recv_into(self.sock, view)

    async def _read(self, n: int) -> bytes:
        """Up to ``n`` bytes that have arrived (b"" at EOF)."""
        return await self.loop.sock_recv(self.sock, n)

    async def _recv(self, n: int) -> bytes:
        if self.closed:
            raise ConnectionResetError("connection closed")
        chunk = await self._read(n)
        if not chunk:
            raise ConnectionError("Input/output error")
        self.received += len(chunk)
        return chunk

    def shutdown(self) -> None:
        """Shut both directions (yank, failover): blocked reads and writes fail at once."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Shut down and close the socket."""
        if not self.closed:
            self.closed = True
            self.shutdown()
            self.sock.close()


class FdChannel(Channel):
    """A migration stream on a descriptor a client passed or the process inherited
    (``fd:``): a file or a pipe, read and written in worker threads so that the loop never
    waits on it.  A socket is used as a socket (:func:`fd_channel`)."""

    def __init__(self, fd: int) -> None:
        super().__init__(None)
        self.fd = fd
        os.set_blocking(fd, True)

    async def _write(self, data: bytes | memoryview) -> None:
        if self.closed:
            raise ConnectionResetError("connection closed")
        await asyncio.to_thread(_write_all, self.fd, data)
        self.sent += len(data)

    async def _read(self, n: int) -> bytes:
        return await asyncio.to_thread(os.read, self.fd, n)

    async def _recv_into(self, view: memoryview) -> int:
        return await asyncio.to_thread(os.readv, self.fd, [view[:_FD_CHUNK]])

    def shutdown(self) -> None:
        """A file cannot be interrupted: a cancel takes effect at the next chunk."""
        self.closed = True

    def close(self) -> None:
        if self.fd >= 0:
            self.closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


_FD_CHUNK = 4 << 20


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view[:_FD_CHUNK])
        view = view[n:]


def fd_channel(fd: int) -> Channel:
    """A channel on ``fd``: a socket as a socket, anything else (a file, a pipe) through
    worker threads."""
    if stat.S_ISSOCK(os.fstat(fd).st_mode):
        return Channel(socket.socket(fileno=fd))
    return FdChannel(fd)


async def listen(addr: Address) -> socket.socket:
    """A listening socket for an incoming migration (port 0 picks a free port)."""
    target: Any
    if addr.kind == "unix":
        family, target = socket.AF_UNIX, addr.path
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(addr.path).st_mode):
                os.unlink(addr.path)
    else:
        infos = await asyncio.get_running_loop().getaddrinfo(
            addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, target = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if addr.kind != "unix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(target)
        sock.listen(1)
        sock.setblocking(False)
    except BaseException:
        sock.close()  # a failed bind must not leak the descriptor
        raise
    return sock


class TlsChannel(Channel):
    """The same link over TLS (asyncio streams; ``--colo-tls``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(writer.get_extra_info("socket"))
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect_tls(cls, addr: Address, ctx: ssl.SSLContext) -> TlsChannel:
        """Connect and complete the TLS handshake (the peer must chain to our CA)."""
        if addr.kind == "unix":
            reader, writer = await asyncio.open_unix_connection(
                addr.path, ssl=ctx, server_hostname="", ssl_handshake_timeout=HANDSHAKE)
        else:
            reader, writer = await asyncio.open_connection(
                addr.host, addr.port, ssl=ctx, server_hostname="",
                ssl_handshake_timeout=HANDSHAKE)
        return cls(reader, writer)

    @classmethod
    async def accept_tls(cls, sock: socket.socket, ctx: ssl.SSLContext) -> TlsChannel:
        """Server side of the handshake on an accepted socket."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        proto = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(lambda: proto, sock, ssl=ctx,
                                                          ssl_handshake_timeout=HANDSHAKE)
        return cls(reader, asyncio.StreamWriter(transport, proto, reader, loop))

    async def send(self, parts: Sequence[bytes | memoryview]) -> None:
        if self.closed or self.writer.transport.is_closing():
            # a closing TLS transport drops writes silently; say so, as a socket would
            raise ConnectionResetError("connection shut down")
        for part in parts:
            self.writer.write(part)
            self.sent += len(part)
        await self.writer.drain()

    async def recv_exact(self, n: int) -> bytes:
        if self.closed or self.writer.transport.is_closing():
            raise ShortRead(0)
        try:
            data = await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as e:
            raise ShortRead(len(e.partial)) from None
        self.received += n
        return data

    async def recv_into(self, view: memoryview) -> None:
        view[:] = await self.recv_exact(len(view))

    def shutdown(self) -> None:
        self.writer.transport.abort()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.transport.abort()


# -- RAM sections: the one writer and the one reader ----------------------------------------

class SectionCrc:
    """The CRC-32C of a stream section, computed off the event loop as its pieces arrive
    (SSE4.2 or ARMv8 CRC instructions: some 14 GB/s here, against 2 GB/s for zlib's CRC-32,
    which made the checksum, not the copy, the larger part of a checkpoint's downtime)."""

    def __init__(self) -> None:
        self.crc = 0
        self.size = 0
        self._batch: list[bytes | memoryview] = []
        self._queued = 0
        self._last: asyncio.Future[None] | None = None

    def add(self, piece: bytes | memoryview) -> None:
        """Account for the next piece (it must not change until :meth:`result`)."""
        self._batch.append(piece)
        self.size += len(piece)
        self._queued += len(piece)
        if self._queued >= _CRC_BATCH:
            self._flush()

    def _flush(self) -> None:
        batch, self._batch, self._queued = self._batch, [], 0
        if batch:
            self._last = asyncio.get_running_loop().run_in_executor(_crc_pool, self._update,
                                                                    batch)

    def _update(self, batch: list[bytes | memoryview]) -> None:
        import crc32c  # only COLO needs it; its import costs 3 MB of RSS and 25 ms
        crc = self.crc
        for piece in batch:
            crc = crc32c.crc32c(piece, crc)  # releases the GIL
        self.crc = crc

    async def result(self) -> int:
        """The CRC of every piece added."""
        if self._last is not None:
            self._flush()
            await self._last  # one worker: every earlier batch is done too
        elif self._queued < INLINE_BELOW:  # a small section: a thread hop costs more
            batch, self._batch, self._queued = self._batch, [], 0
            self._update(batch)
        else:
            self._flush()
            assert self._last is not None
            await self._last
        return self.crc


@dataclass
class Framed:
    """A RAM section ready to send: blocks (small records joined, large runs as views)."""

    blocks: list[bytes | memoryview]
    midway: int
    """Blocks that hold the first half of the records (a fault may act after them)."""
    size: int


def frame_ram(view: memoryview, page_size: int, runs: Sequence[tuple[int, int]], flag: int,
              eos: bool) -> Framed:
    """Records for ``runs`` (page data follows REC_PAGE), then EOS if asked.  Meant for a
    worker thread: its cost grows with the section."""
    blocks: list[bytes | memoryview] = []
    pending: list[bytes | memoryview] = []
    size = pending_size = 0
    mid = max(1, len(runs) // 2)
    midway = 0

    def flush() -> None:
        nonlocal pending, pending_size
        if pending:
            blocks.append(b"".join(pending))
            pending, pending_size = [], 0

    for i, (first, count) in enumerate(runs):
        head = wire.record(first, count, flag)
        pending.append(head)
        pending_size += len(head)
        size += len(head)
        if flag == wire.REC_PAGE:
            data = view[first * page_size:(first + count) * page_size]
            size += len(data)
            if len(data) >= _JOIN_BELOW:
                flush()
                blocks.append(data)
            else:
                pending.append(data)
                pending_size += len(data)
        if pending_size >= _JOIN_BELOW:
            flush()
        if i + 1 == mid:
            flush()
            midway = len(blocks)
    if eos:
        pending.append(wire.eos())
        size += wire.EOS_SIZE
    flush()
    return Framed(blocks, midway, size)


async def send_ram(chan: Channel, framed: Framed,
                   midway: Callable[[], Awaitable[None]] | None = None) -> int:
    """Send a framed RAM section; ``midway`` is awaited after the first half of its records
    (or before EOS when there are none).  Returns the CRC-32C of what was sent, computed in a
    worker thread while the section goes out (at once for a small section)."""
    crc = SectionCrc()
    for block in framed.blocks:
        crc.add(block)
    if framed.size < INLINE_BELOW:  # a task would cost a turn of the loop
        value = await crc.result()
        await _send_framed(chan, framed, midway)
        return value
    result = asyncio.ensure_future(crc.result())
    try:
        await _send_framed(chan, framed, midway)
    finally:
        if not result.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(result)
    return await result


async def _send_framed(chan: Channel, framed: Framed,
                       midway: Callable[[], Awaitable[None]] | None) -> None:
    await chan.send(framed.blocks[:framed.midway])
    if midway is not None:
        await midway()
    await chan.send(framed.blocks[framed.midway:])


async def recv_ram(chan: Channel, buf: Buffer, page_size: int, pages: int, limit: int,
                   too_many: str, first_record: Callable[[], Awaitable[None]] | None = None,
                   crc: SectionCrc | None = None,
                   zeroed: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Read RAM records up to EOS into ``buf`` at their page offsets; the runs received.
    More than ``limit`` pages in all is a ProtocolError (``too_many``).  ``first_record``
    is awaited after the first record (or at EOS when there is none).  With ``zeroed``,
    runs of zero pages go there instead of into the result."""
    runs: list[tuple[int, int]] = []
    total = 0
    while True:
        head = await chan.recv_exact(8)
        if crc is not None:
            crc.add(head)
        first, flags = wire.parse_record_head(head)
        if flags == wire.REC_EOS:
            break
        raw = await chan.recv_exact(4)
        if crc is not None:
            crc.add(raw)
        count = wire.parse_u64(b"\0\0\0\0" + raw)
        wire.check_run(first, count, flags, pages)
        total += count
        if total > limit:
            raise wire.ProtocolError(too_many)
        if (len(runs) + len(zeroed or ())) % 256 == 255:
            await asyncio.sleep(0)  # a flood of small records must not starve the loop
        if flags == wire.REC_PAGE:
            data = buf.view[first * page_size:(first + count) * page_size]
            if crc is None:
                await chan.recv_into(data)
            else:  # checksummed as it lands, so little is left to do after the last byte
                for at in range(0, len(data), _CRC_BATCH):
                    piece = data[at:at + _CRC_BATCH]
                    await chan.recv_into(piece)
                    crc.add(piece)
        elif count * page_size >= _ZERO_IN_THREAD:
            await asyncio.to_thread(buf.zero_run, first, count, page_size)
        else:
            buf.zero_run(first, count, page_size)
        if zeroed is not None and flags != wire.REC_PAGE:
            zeroed.append((first, count))
        else:
            runs.append((first, count))
        if len(runs) + len(zeroed or ()) == 1 and first_record is not None:
            await first_record()
    if not runs and not zeroed and first_record is not None:
        await first_record()
    return runs
