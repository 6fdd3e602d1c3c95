"""The replication connection: one non-blocking stream socket, read and written through the
event loop, with the return path on the same socket (as QEMU's migration channel)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import stat
from collections.abc import Sequence
from typing import Any

from .. import address
from ..address import Address, AddressError
from ..errors import QmpjobdError

_READ_AHEAD = 64 * 1024
HANDSHAKE = 10.0
"""Seconds a TLS handshake on the replication link may take."""
_JOIN_BELOW = 256 * 1024


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

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        for part in parts:
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
        while got < len(view):
            if self.closed:
                raise ConnectionResetError("connection closed")
            n = await self.loop.sock_recv_into(self.sock, view[got:])
            if n == 0:
                raise ShortRead(got)
            got += n
            self.received += n

    async def _recv(self, n: int) -> bytes:
        if self.closed:
            raise ConnectionResetError("connection closed")
        chunk = await self.loop.sock_recv(self.sock, n)
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


async def listen(addr: Address) -> socket.socket:
    """A listening socket for an incoming migration (port 0 picks a free port)."""
    if addr.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(addr.path).st_mode):
                os.unlink(addr.path)
        sock.bind(addr.path)
    else:
        infos = await asyncio.get_running_loop().getaddrinfo(
            addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, target = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(target)
    sock.listen(1)
    sock.setblocking(False)
    return sock


class TlsChannel(Channel):
    """The same link over TLS (asyncio streams; ``--colo-tls``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.sent = 0
        self.received = 0
        self.closed = False
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

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
