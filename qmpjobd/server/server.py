"""The listening side: Unix (and optional TCP) sockets, the client set, event broadcast.

The server is the EventSink every other part emits into: an event is encoded once, with one
timestamp, and written to every client that has finished capabilities negotiation.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import ssl
import stat
import struct
from dataclasses import dataclass
from typing import Any

from ..block import commands as block_commands
from ..block.graph import BlockGraph
from ..colo import commands as colo_commands
from ..colo import stubs as colo_stubs
from ..colo.guest import Guest
from ..colo.heartbeat import Heartbeat
from ..colo.migration import Migration
from ..jobs import JobRegistry
from ..jobs import commands as job_commands
from ..machine import Machine
from ..protocol import encode
from ..protocol.jsonstream import MAX_TOKEN_SIZE
from ..protocol.session import CAPABILITIES
from ..schema import Registry, build_schema
from ..schema.introspect import command_list, qmp_schema
from ..schema.model import Enum
from ..tls import TlsFiles
from .connection import Connection
from .dispatch import Dispatcher
from .trace import Tracer

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


class StartupError(Exception):
    """The daemon cannot start (socket in use, bad address); the message says why."""


class Server:
    """Owns the listeners, the connections, and the command registry they dispatch into."""

    def __init__(self, *, version: tuple[int, int, int] = (7, 2, 0), package: str = "",
                 name: str | None = None, limits: Limits | None = None,
                 guest: Guest | None = None, incoming: str | None = None,
                 paused: bool = False, compat: str = "7.2", access: Access | None = None,
                 tracer: Tracer | None = None, colo_tls: TlsFiles | None = None) -> None:
        self.limits = limits or Limits()
        self.access = access or Access()
        self.tracer = tracer
        self.capabilities = CAPABILITIES
        self.schema = build_schema()
        self.registry = Registry(self.schema)
        self.dispatcher = Dispatcher(self.registry)
        self.machine = Machine(self, version, package, name, on_quit=self._on_quit)
        self.machine.register(self.registry)
        self.jobs = JobRegistry(self)
        job_commands.register(self.registry, self.jobs)
        self.block = BlockGraph()
        block_commands.register(self.registry, self.block, self.jobs)
        if paused:
            self.machine.status = "prelaunch"
            self.machine.autostart = False
        self.migration = Migration(self, self.machine, self.jobs, guest or Guest(),
                                   incoming=incoming, compat=compat, tls=colo_tls)
        self.heartbeat = Heartbeat(self.migration)
        colo_commands.register(self.registry, self.migration, self.heartbeat)
        colo_stubs.register(self.registry, self.block, self.migration)
        self._intro: tuple[int, list[Any], list[dict[str, str]]] | None = None
        self.registry.register("query-qmp-schema", lambda args, session: self._introspect()[0])
        self.registry.register("query-commands", lambda args, session: self._introspect()[1])
        self.greeting = encode.greeting(self.machine.version, list(self.capabilities))
        self.connections: set[Connection] = set()
        self._next_id = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._owned_paths: list[tuple[str, int]] = []
        self.stopped = asyncio.Event()
        self._all_gone = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None
        self.exit_reason = ""

    def _introspect(self) -> tuple[list[Any], list[dict[str, str]]]:
        """query-qmp-schema and query-commands, recomputed only when plug-ins add to the schema."""
        key = len(self.schema.entities) + sum(
            len(t.values) for t in self.schema.types.values() if isinstance(t, Enum))
        if self._intro is None or self._intro[0] != key:
            self._intro = (key, qmp_schema(self.schema), command_list(self.schema))
        return self._intro[1], self._intro[2]

    # -- EventSink -----------------------------------------------------------------------------

    def emit(self, name: str, data: Any = None, capability: str | None = None) -> None:
        """Broadcast an event to every negotiated client (that enabled ``capability``),
        with one timestamp."""
        line = encode.event(name, data)
        for conn in list(self.connections):
            if capability is None or capability in conn.session.enabled:
                conn.send_event(line)

    # -- connections ---------------------------------------------------------------------------

    def _new_connection(self) -> Connection:
        self._next_id += 1
        return Connection(self, self._next_id)

    def attach(self, conn: Connection) -> None:
        """Called by a connection once it is up."""
        self.connections.add(conn)

    def detach(self, conn: Connection) -> None:
        """Called by a connection once it is gone."""
        self.connections.discard(conn)
        if not self.connections:
            self._all_gone.set()

    # -- listeners -----------------------------------------------------------------------------

    async def listen_unix(self, path: str) -> None:
        """Listen on a Unix socket created with the configured mode (0600 by default) and
        group; replace an existing file only if it is a stale socket."""
        self.migration.start()
        _clear_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
            if self.access.socket_group is not None:
                os.chown(path, -1, self.access.socket_group)
            os.chmod(path, self.access.socket_mode)
        except OSError as e:
            sock.close()
            raise StartupError(f"cannot bind {path}: {e.strerror}") from e
        finally:
            os.umask(old)
        self._owned_paths.append((path, os.stat(path).st_ino))
        loop = asyncio.get_running_loop()
        srv = await loop.create_unix_server(self._new_connection, sock=sock, backlog=1024)
        self._servers.append(srv)
        log.info("listening on unix:%s", path)

    async def adopt(self, sock: socket.socket) -> None:
        """Serve a listening socket handed over by systemd (socket activation)."""
        self.migration.start()
        loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            srv = await loop.create_unix_server(self._new_connection, sock=sock, backlog=1024)
        else:
            host = sock.getsockname()[0]
            if self.access.tls is None and not _is_loopback(host):
                raise StartupError(f"refusing the activated socket on non-loopback {host} "
                                   "without TLS (--tcp-tls with --tls-cert and --tls-key)")
            srv = await loop.create_server(self._new_connection, sock=sock, backlog=1024,
                                           ssl=self.access.tls)
        self._servers.append(srv)
        log.info("serving activated socket %s", sock.getsockname())

    async def listen_tcp(self, host: str, port: int) -> None:
        """Listen on TCP: with TLS configured on any address, else on loopback only (QMP
        itself has no authentication)."""
        self.migration.start()
        if self.access.tls is None and not _is_loopback(host):
            raise StartupError(f"refusing to listen on non-loopback address {host} without "
                               "TLS (QMP has no authentication; use --tcp-tls with "
                               "--tls-cert and --tls-key)")
        loop = asyncio.get_running_loop()
        try:
            srv = await loop.create_server(self._new_connection, host, port, backlog=1024,
                                           ssl=self.access.tls)
        except OSError as e:
            raise StartupError(f"cannot listen on {host}:{port}: {e.strerror}") from e
        self._servers.append(srv)
        for s in getattr(srv, "sockets", ()):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            log.info("listening on tcp:%s:%d", *s.getsockname()[:2])

    def tcp_addresses(self) -> list[tuple[str, int]]:
        """Bound TCP addresses (useful when port 0 was asked for)."""
        out = []
        for srv in self._servers:
            for s in getattr(srv, "sockets", ()):
                if s.family in (socket.AF_INET, socket.AF_INET6):
                    out.append(s.getsockname()[:2])
        return out

    # -- shutdown ------------------------------------------------------------------------------

    async def _on_quit(self) -> None:
        """After SHUTDOWN: cancel every job (with its events), then reply, then stop."""
        self._end_replication()
        await self.jobs.cancel_all()
        # The reply to quit is written when this returns; stop right after that.
        asyncio.get_running_loop().call_soon(self.request_stop, "quit")

    def request_stop(self, reason: str) -> None:
        """Ask the daemon to stop; ``run`` returns once the clients' output is flushed."""
        if not self.stopped.is_set():
            self.exit_reason = reason
            self.stopped.set()

    def signal_stop(self, signame: str) -> None:
        """SIGTERM/SIGINT: tell every client, as QEMU does, then stop."""
        log.info("received %s, shutting down", signame)
        if self._stopping is not None:
            return
        self.emit("SHUTDOWN", {"guest": False, "reason": "host-signal"})
        self.jobs.shutdown()  # no new job from here on, before any other request is read

        async def stop() -> None:
            self._end_replication()
            await self.jobs.cancel_all()
            self.request_stop(signame)

        self._stopping = asyncio.get_running_loop().create_task(stop())

    def _end_replication(self) -> None:
        """Leaving the process ends COLO as a killed QEMU would: no failover on this side."""
        self.heartbeat.close()
        self.migration.close()

    async def close(self, grace: float = 5.0) -> None:
        """Stop listening, flush and close every client, remove our socket files."""
        for srv in self._servers:
            srv.close()
        for conn in list(self.connections):
            conn.close()
        if self.connections:
            self._all_gone.clear()
            try:
                await asyncio.wait_for(self._all_gone.wait(), grace)
            except TimeoutError:
                for conn in list(self.connections):
                    conn.abort()
        self._servers.clear()
        for path, ino in self._owned_paths:
            try:
                if os.stat(path).st_ino == ino:
                    os.unlink(path)
                else:
                    log.warning("socket %s was replaced by someone else; leaving it", path)
            except FileNotFoundError:
                log.warning("socket %s was removed by someone else", path)
        self._owned_paths.clear()
        self._end_replication()
        self.block.close()
        if self.tracer is not None:
            self.tracer.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
