"""The transport: Unix (and optional TCP) listeners, the client set, event fan-out.

The server serves one :class:`~qmpjobd.vm.Vm`: it subscribes to the VM's events (each is
encoded once, with one timestamp, and written to every client that has finished capabilities
negotiation) and hands each client's requests to the VM's dispatcher.  It accepts connections
itself so that running out of file descriptors is logged once a second and recovered from.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
import stat
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..address import is_loopback
from ..errors import QmpjobdError
from ..libc import libc
from ..protocol import encode
from ..protocol.jsonstream import MAX_TOKEN_SIZE
from . import fdtransport
from .connection import Connection
from .trace import Tracer

if TYPE_CHECKING:
    from ..vm import Vm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Per-client resource limits (all in bytes)."""

    max_output: int = 16 << 20
    """Unread output at which a client is disconnected when another event arrives."""
    write_high: int = 1 << 20
    """Unread output at which the client's own requests stop being processed."""
    max_message: int = MAX_TOKEN_SIZE
    """Largest request a client may send (QEMU's JSON token size limit, 64 MiB)."""
    max_total_output: int = 128 << 20
    """Unread output of all clients together above which the largest readers-that-don't are
    cut off, largest first."""
    max_clients: int = 0
    """Connections served at once; one more is closed at once (0: no limit, as QEMU)."""
    negotiation_timeout: float = 0.0
    """Seconds a client may stay connected without qmp_capabilities (0: no limit, as QEMU)."""
    fd_passing: bool = False
    """Unix-socket clients may pass descriptors (getfd): their connections are read with
    recvmsg() by fdtransport.py, which costs more CPU per request than the loop's own
    transport (the QEMU front end turns it on: libvirt's save and restore need it)."""


@dataclass(frozen=True)
class Access:
    """Who may connect: the Unix socket's mode and group, peer credentials, TLS for TCP."""

    socket_mode: int = 0o600
    socket_group: int | None = None
    allow_uids: frozenset[int] = frozenset()
    allow_gids: frozenset[int] = frozenset()
    """With either set, a Unix-socket peer must have one of these uids or gids (SO_PEERCRED;
    root always may).  Empty: the socket's mode and group decide alone."""
    tls: ssl.SSLContext | None = None
    """TCP listeners speak TLS with this context; without it they accept loopback only."""

    def refuse(self, transport: asyncio.BaseTransport) -> str:
        """Why this new connection must be dropped ("" to accept it)."""
        if not (self.allow_uids or self.allow_gids):
            return ""
        sock = transport.get_extra_info("socket")
        if sock is None or sock.family != socket.AF_UNIX:
            return ""
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid == 0 or uid in self.allow_uids or gid in self.allow_gids:
            return ""
        return f"peer pid {pid} uid {uid} gid {gid} is not allowed"


class StartupError(QmpjobdError):
    """The daemon cannot start (socket in use, bad address); the message says why."""


class Server:
    """Owns the listeners and the connections of one VM."""

    def __init__(self, vm: Vm, *, limits: Limits | None = None, access: Access | None = None,
                 tracer: Tracer | None = None) -> None:
        self.vm = vm
        self.limits = limits or Limits()
        self.access = access or Access()
        self.tracer = tracer
        self.capabilities = vm.capabilities
        self.dispatcher = vm.dispatcher
        self.greeting = vm.greeting
        self.connections: set[Connection] = set()
        self._next_id = 0
        self._listeners: list[_Listener] = []
        self._owned_paths: list[tuple[str, int]] = []
        self._all_gone = asyncio.Event()
        self._trim: Any = None
        vm.subscribe(self.emit)

    def emit(self, name: str, data: Any = None, capability: str | None = None) -> None:
        """Send an event to every negotiated client (that enabled ``capability``), with one
        timestamp; then enforce the bound on all clients' unread output together."""
        line = encode.event(name, data)
        total = 0
        for conn in list(self.connections):
            if capability is None or capability in conn.session.enabled:
                conn.send_event(line)
            total += conn.unread()
        if total > self.limits.max_total_output:
            self._shed(total)

    def _shed(self, total: int) -> None:
        """Cut off the clients holding the most unread output until the total is back under
        the bound (a slow reader must not take the daemon's memory)."""
        for conn in sorted(self.connections, key=Connection.unread, reverse=True):
            if total <= self.limits.max_total_output:
                break
            size = conn.unread()
            log.warning("conn%d: %d bytes unread by all clients (limit %d); disconnecting "
                        "the largest reader, with %d bytes", conn.id, total,
                        self.limits.max_total_output, size)
            conn.abort()
            total -= size

    # -- connections ---------------------------------------------------------------------------

    def refuse(self, transport: asyncio.BaseTransport) -> str:
        """Why a new connection must be dropped ("" to serve it)."""
        if self.limits.max_clients and len(self.connections) >= self.limits.max_clients:
            return f"--max-clients {self.limits.max_clients} reached"
        return self.access.refuse(transport)

    def attach(self, conn: Connection) -> None:
        """Called by a connection once it is up."""
        self.connections.add(conn)

    def detach(self, conn: Connection, unread: int = 0) -> None:
        """Called by a connection once it is gone, with the output it left unread."""
        self.connections.discard(conn)
        if not self.connections:
            self._all_gone.set()
        if unread >= TRIM_AFTER and self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(0.5, self._trim_heap)

    def _trim_heap(self) -> None:
        """Give the memory of departed clients' output back to the OS.  Their buffers are
        many small event lines (uvloop keeps them as a list), which free() leaves in the
        heap; malloc_trim returns those pages.  It runs in a thread: it walks the heap."""
        log.debug("returning freed client buffers to the OS (malloc_trim)")
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, _malloc_trim)
        fut.add_done_callback(lambda _: setattr(self, "_trim", None))

    def _serve(self, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        self._listeners.append(_Listener(self, sock, tls))

    # -- listeners -----------------------------------------------------------------------------

    async def listen_unix(self, path: str) -> None:
        """Listen on a Unix socket created with the configured mode (0600 by default) and
        group.  The path appears only once the socket accepts (it is bound and set up under
        a temporary name, then renamed); an existing file is replaced only if it is a stale
        socket."""
        _clear_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = os.path.join(os.path.dirname(path) or ".",
                           f".{os.path.basename(path)}.{os.getpid()}.tmp")
        old = os.umask(0o177)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            sock.bind(tmp)
            if self.access.socket_group is not None:
                os.chown(tmp, -1, self.access.socket_group)
            os.chmod(tmp, self.access.socket_mode)
            sock.listen(1024)
            os.rename(tmp, path)
        except OSError as e:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StartupError(f"cannot bind {path}: {e.strerror}") from e
        finally:
            os.umask(old)
        self._owned_paths.append((path, os.stat(path).st_ino))
        self._serve(sock)
        log.info("listening on unix:%s", path)

    async def adopt(self, sock: socket.socket) -> None:
        """Serve a listening socket handed over by systemd (socket activation)."""
        if sock.family != socket.AF_UNIX:
            host = sock.getsockname()[0]
            if self.access.tls is None and not is_loopback(host):
                raise StartupError(f"refusing the activated socket on non-loopback {host} "
                                   "without TLS (--tcp-tls with --tls-cert and --tls-key)")
        self._serve(sock, self.access.tls if sock.family != socket.AF_UNIX else None)
        log.info("serving activated socket %s", sock.getsockname())

    async def listen_tcp(self, host: str, port: int) -> None:
        """Listen on TCP: with TLS configured on any address, else on loopback only (QMP
        itself has no authentication)."""
        if self.access.tls is None and not is_loopback(host):
            raise StartupError(f"refusing to listen on non-loopback address {host} without "
                               "TLS (QMP has no authentication; use --tcp-tls with "
                               "--tls-cert and --tls-key)")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
        except OSError as e:
            raise StartupError(f"cannot listen on {host}:{port}: {e.strerror}") from e
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(1024)
            except OSError as e:
                sock.close()
                raise StartupError(f"cannot listen on {host}:{port}: {e.strerror}") from e
            self._serve(sock, self.access.tls)
            log.info("listening on tcp:%s:%d", *sock.getsockname()[:2])

    def tcp_addresses(self) -> list[tuple[str, int]]:
        """Bound TCP addresses (useful when port 0 was asked for)."""
        return [lst.sock.getsockname()[:2] for lst in self._listeners
                if lst.sock.family in (socket.AF_INET, socket.AF_INET6)]

    # -- shutdown ------------------------------------------------------------------------------

    async def close(self, grace: float = 5.0) -> None:
        """Stop listening, flush and close every client, remove our socket files."""
        for lst in self._listeners:
            lst.close()
        self._listeners.clear()
        for conn in list(self.connections):
            conn.close()
        if self.connections:
            self._all_gone.clear()
            try:
                await asyncio.wait_for(self._all_gone.wait(), grace)
            except TimeoutError:
                for conn in list(self.connections):
                    conn.abort()
        for path, ino in self._owned_paths:
            try:
                if os.stat(path).st_ino == ino:
                    os.unlink(path)
                else:
                    log.warning("socket %s was replaced by someone else; leaving it", path)
            except FileNotFoundError:
                log.warning("socket %s was removed by someone else", path)
        self._owned_paths.clear()
        if self.tracer is not None:
            self.tracer.close()


class _Listener:
    """Accepts connections on one listening socket and hands them to the loop.

    Accepting here (not in loop.create_server) keeps running out of file descriptors under
    control with every loop: it is logged at most once a second, accepting pauses briefly
    while connected clients go on being served, and resumes by itself."""

    RETRY = 0.1
    """Seconds between accept attempts while out of file descriptors."""

    def __init__(self, server: Server, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
        self.server = server
        self.sock = sock
        self.tls = tls
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self._last_log = 0.0
        self._suppressed = 0
        self._retry: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(64):  # then let other work run; the reader fires again
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._out_of_resources(e)
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            self.loop.create_task(self._start(conn))

    async def _start(self, conn: socket.socket) -> None:
        server = self.server
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server._next_id += 1
        conn_id = server._next_id
        try:
            if conn.family == socket.AF_UNIX and self.tls is None and \
                    server.limits.fd_passing:
                # a Unix client may pass descriptors (getfd): read with recvmsg()
                fdtransport.start(self.loop, conn, lambda: Connection(server, conn_id))
                return
            await self.loop.connect_accepted_socket(
                lambda: Connection(server, conn_id), conn, ssl=self.tls)
        except (OSError, ssl.SSLError) as e:
            log.info("conn%d: could not be set up: %s", conn_id, e)
            conn.close()

    def _out_of_resources(self, e: OSError) -> None:
        now = time.monotonic()
        if now - self._last_log >= 1.0:
            more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
            log.error("cannot accept a connection: %s; connected clients are still served, "
                      "retrying%s", e.strerror, more)
            self._last_log = now
            self._suppressed = 0
        else:
            self._suppressed += 1
        self.loop.remove_reader(self.sock.fileno())
        self._retry = self.loop.call_later(self.RETRY, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)
            self._accept()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
        else:
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


TRIM_AFTER = 1 << 20
"""Unread output a departing client must leave behind for the heap to be trimmed."""


def _malloc_trim() -> None:
    try:
        trim = libc().malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _clear_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            log.info("removing stale socket %s", path)
            os.unlink(path)
            return
        raise StartupError(f"cannot check {path}: {e.strerror}") from e
    finally:
        probe.close()
    raise StartupError(f"{path} is in use by another server")
