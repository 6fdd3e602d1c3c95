"""Migration as a QMP client sees it (capabilities, parameters, status, events) and the
start-up of COLO: the initial full sync, then one :class:`Replication` run per side.

Mode, failover state and COLO_EXIT follow QEMU 7.2's migration/colo.c and
colo-failover.c; everything beyond QEMU
(metrics, fault injection, guest digests) is reached only through x-prefixed commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from ..address import Address
from ..jobs import JobRegistry
from ..machine import Machine
from ..protocol.errors import QMPError
from ..protocol.fds import PassedFds
from ..schema import EventSink
from ..tls import TlsFiles
from . import tables, wire
from .channel import Channel, TlsChannel, fd_channel, frame_ram, listen, parse_uri, recv_ram
from .faults import Faults
from .guest import Guest, dirty_runs
from .reference import CAPABILITIES, DEFAULT_PARAMETERS, check_parameters
from .replication import ColoJob, Metrics, Replication

log = logging.getLogger(__name__)

COLO_JOB_ID = "colo"
_RUNNING_STATUSES = frozenset(("setup", "active", "cancelling", "pre-switchover", "device",
                               "postcopy-active", "postcopy-paused", "postcopy-recover",
                               "wait-unplug"))
IN_PROGRESS = "There's a migration process in progress"


INHERITED_FDS: set[int] = set()
"""Descriptors the process was started with (beyond stdio) and nobody has claimed: the only
numbers ``fd:N`` may name, each once, so that a client cannot make a migration write to (and
close) a descriptor of the daemon's own, such as a disk image or a listener."""


def remember_inherited_fds(claimed: set[int] | None = None) -> None:
    """Note the descriptors open at start-up (first thing in main), or remove ``claimed``
    ones (a monitor's listening socket) from them."""
    if claimed is not None:
        INHERITED_FDS.difference_update(claimed)
        return
    try:
        found = {int(n) for n in os.listdir("/proc/self/fd")}
    except OSError:
        return
    INHERITED_FDS.update(fd for fd in found if fd > 2)
    INHERITED_FDS.difference_update(fd for fd in list(INHERITED_FDS) if not _is_open(fd))


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _monitor_fd(name: str, fds: PassedFds | None) -> int:
    """monitor_fd_param(): a number is a descriptor this process inherited, a name one the
    client passed with getfd (taken from it)."""
    if name.isdigit():
        fd = int(name)
        if fd not in INHERITED_FDS or not _is_open(fd):
            raise QMPError(f"fd: {os.strerror(errno.EBADF)}")
        INHERITED_FDS.discard(fd)
        return fd
    fd_or_none = fds.take(name) if fds is not None else None
    if fd_or_none is None:
        raise QMPError(f"File descriptor named '{name}' has not been found")
    return fd_or_none


class Migration:
    """Outgoing and incoming migration of this daemon's guest, and its COLO runs."""

    def __init__(self, events: EventSink, machine: Machine, jobs: JobRegistry, guest: Guest,
                 *, incoming: str | None = None, compat: str = "7.2",
                 tls: TlsFiles | None = None) -> None:
        self.events = events
        self.machine = machine
        self.jobs = jobs
        self.guest = guest
        self.compat = compat
        self.tls = tls
        """With TLS files, the replication link is TLS in both directions (--colo-tls)."""
        self.caps = dict.fromkeys(CAPABILITIES, False)
        self.params: dict[str, Any] = dict(DEFAULT_PARAMETERS)
        self.out_status = "none"
        self.in_status = "none"
        self.error_desc: str | None = None
        self.incoming = incoming
        """``--incoming``: None, ``defer`` or a URI."""
        self.incoming_started = False
        self.in_address: Address | None = None
        self.rep: Replication | None = None
        self.last_mode = "none"
        self.dirty_sync_count = 0
        self.faults = Faults()
        self.metrics = Metrics()
        self.verify = True
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: socket.socket | None = None
        self._chan: Channel | None = None
        self._started = False
        self._connecting: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        """Set by migrate_cancel or yank: a held or delayed drill on a plain migration ends."""
        self.checkpointing = False
        """A primary's checkpoint is sending RAM that lives in the guest's memory: the guest
        does not write, even if a cont made it run meanwhile (the section's CRC and the
        digest are of what is sent)."""
        self.on_colo_error: list[Callable[[], None]] = []
        """Called when a replication run ends with COLO_EXIT error (the heartbeat's hook)."""

    # -- Host (for Replication) ------------------------------------------------------------

    @property
    def running(self) -> bool:
        """The guest runs."""
        return self.machine.running

    def set_runstate(self, status: str) -> None:
        """Change the run state with STOP/RESUME."""
        self.machine.set_status(status)

    def checkpoint_delay(self) -> float:
        """x-checkpoint-delay in seconds."""
        return int(self.params["x-checkpoint-delay"]) / 1000.0

    def next_pass(self) -> int:
        """A dirty-bitmap sync: MIGRATION_PASS with the new count when ``events`` is on."""
        self.dirty_sync_count += 1
        if self.caps["events"]:
            self.events.emit("MIGRATION_PASS", {"pass": self.dirty_sync_count})
        return self.dirty_sync_count

    def complete_migration(self, role: str) -> None:
        """Failover: the migration that carried COLO completes; ``last-mode`` is the role."""
        if role == "primary":
            self._set_out("completed")
        else:
            self._set_in("completed")
        self.last_mode = role
        self.machine.yankables.pop("migration", None)

    def link_failed(self) -> None:
        """Tell the heartbeat (if any) that replication ended with an error."""
        for hook in self.on_colo_error:
            hook()

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the guest workload, and listen when ``--incoming URI`` was given."""
        if self._started:
            return
        self._started = True
        self._spawn(self._drive_workload())
        if self.incoming not in (None, "defer"):
            self.machine.set_status("inmigrate")
            assert self.incoming is not None
            self._spawn(self._listen_at_start(self._start_incoming(self.incoming)))
        elif self.incoming == "defer":
            self.machine.set_status("inmigrate")

    async def _listen_at_start(self, bind: Any) -> None:
        try:
            await bind
        except QMPError as e:
            log.error("--incoming %s: %s", self.incoming, e.desc)
            self._set_in("failed", event=False)
            self.error_desc = e.desc

    def close(self) -> None:
        """The daemon stops: close links quietly (no COLO events), stop the tasks."""
        if self.rep is not None:
            self.rep.close()
        if self._chan is not None:
            self._chan.close()
        if self._listener is not None:
            self._listener.close()
        self.faults.clear()
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive_workload(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.01 if self.guest.workload.rate else 0.1)
            now = loop.time()
            if self.machine.running and not self.checkpointing:
                self.guest.advance(now - last)
            last = now

    # -- state as QMP shows it -------------------------------------------------------------

    @property
    def mode(self) -> str:
        """COLOMode: from the migration status, as QEMU's get_colo_mode()."""
        if self.out_status == "colo":
            return "primary"
        if self.in_status == "colo":
            return "secondary"
        return "none"

    def fault_side(self) -> str:
        """The side whose checkpoint phases x-daemon-colo-inject arms: the COLO mode, else
        the side this daemon is about to take (waiting for an incoming migration or not)."""
        if self.mode != "none":
            return self.mode
        if self.out_status in _RUNNING_STATUSES:
            return "primary"
        if self.incoming is not None and self.in_status in ("none", "setup", "active"):
            return "secondary"
        return "primary"

    def _set_out(self, status: str, event: bool = True) -> None:
        """The outgoing status, checked against QEMU's table, with its MIGRATION event."""
        tables.check(tables.OUTGOING, "outgoing migration", self.out_status, status)
        self.out_status = status
        if event and self.caps["events"]:
            self.events.emit("MIGRATION", {"status": status})

    def _set_in(self, status: str, event: bool = True) -> None:
        """The incoming status, checked against QEMU's table, with its MIGRATION event."""
        tables.check(tables.INCOMING, "incoming migration", self.in_status, status)
        self.in_status = status
        if event and self.caps["events"]:
            self.events.emit("MIGRATION", {"status": status})

    def query_colo_status(self) -> dict[str, str]:
        """query-colo-status."""
        state = self.rep.failover if self.rep is not None else "none"
        if state == "none":
            reason = "none"
        elif state == "completed":
            reason = "request"
        else:
            reason = "processing" if self.out_status == "colo" else "error"
        return {"last-mode": self.last_mode, "mode": self.mode, "reason": reason}

    def query_migrate(self) -> dict[str, Any]:
        """query-migrate: the outgoing side if there is one, else the incoming side."""
        if self.out_status != "none":
            info: dict[str, Any] = {"status": self.out_status}
            if self.out_status == "completed":
                info.update(self._completed_stats())
            if self.out_status == "failed" and self.error_desc:
                info["error-desc"] = self.error_desc
            return info
        if self.in_status == "setup" and self.in_address is not None:
            return {"socket-address": [self.in_address.qapi()]}  # listening: no status (7.2)
        if self.in_status != "none":
            info = {"status": self.in_status}
            if self.in_status in ("setup", "active", "colo") and self.in_address is not None:
                info["socket-address"] = [self.in_address.qapi()]
            if self.in_status == "failed" and self.error_desc:
                info["error-desc"] = self.error_desc
            return info
        return {}

    def _completed_stats(self) -> dict[str, Any]:
        chan = self._chan
        sent = chan.sent if chan is not None else 0
        ps = self.guest.page_size
        # QEMU 7.2's key order (its QDict hash order), as recorded
        ram = {"total": self.guest.pages * ps, "postcopy-requests": 0,
               "dirty-sync-count": self.dirty_sync_count, "multifd-bytes": 0,
               "pages-per-second": 0, "downtime-bytes": 0, "page-size": ps, "remaining": 0,
               "postcopy-bytes": 0, "mbps": 0, "transferred": sent,
               "dirty-sync-missed-zero-copy": 0, "precopy-bytes": sent, "duplicate": 0,
               "dirty-pages-rate": 0, "skipped": 0, "normal-bytes": sent,
               "normal": sent // ps}
        return {"setup-time": 0, "downtime": 0, "total-time": 0, "ram": ram}

    # -- commands --------------------------------------------------------------------------

    def lost_heartbeat(self) -> None:
        """x-colo-lost-heartbeat."""
        rep = self.rep
        if self.mode == "none" or rep is None:
            raise QMPError("VM is not in COLO mode" if self.compat == "latest"
                           else "The feature 'colo' is not enabled")
        if rep.failover != "none":
            raise QMPError("COLO failover is already activated")
        rep.request_failover()

    def set_capabilities(self, caps: list[dict[str, Any]]) -> None:
        """migrate-set-capabilities: all or nothing; refused while a migration runs."""
        if self.out_status in _RUNNING_STATUSES:
            raise QMPError(IN_PROGRESS)
        new = dict(self.caps)
        for c in caps:
            new[c["capability"]] = c["state"]
        if self.compat == "latest" and new["x-colo"] and new["postcopy-ram"]:
            raise QMPError("COLO is not compatible with postcopy")
        self.caps = new

    def query_capabilities(self) -> list[dict[str, Any]]:
        """query-migrate-capabilities."""
        return [{"state": v, "capability": k} for k, v in self.caps.items()]

    def set_parameters(self, args: dict[str, Any]) -> None:
        """migrate-set-parameters: QEMU's checks on the merged values, all or nothing; a new
        x-checkpoint-delay starts a checkpoint at once."""
        merged = dict(self.params)
        for key, value in args.items():
            if key in ("tls-creds", "tls-hostname", "tls-authz") and value is None:
                value = ""
            merged[key] = value
        complaint = check_parameters(merged)
        if complaint is not None:
            raise QMPError(complaint)
        # 7.2 checks these two but never stores them (observed: they stay 1)
        for key in ("multifd-zlib-level", "multifd-zstd-level"):
            merged[key] = self.params[key]
        self.params = merged
        if "x-checkpoint-delay" in args and self.rep is not None and self.mode == "primary":
            self.rep.kick()

    def kick(self) -> None:
        """x-daemon-colo-checkpoint: what a colo-compare mismatch does."""
        if self.mode != "primary" or self.rep is None:
            raise QMPError("The feature 'colo' is not enabled")
        self.rep.kick()

    def migrate(self, uri: str, blk: bool, inc: bool = False,
                fds: PassedFds | None = None) -> None:
        """migrate: start the outgoing side (the connection happens after the reply);
        ``fd:NAME`` writes to a descriptor the client passed with getfd (``fds``)."""
        if self.out_status in _RUNNING_STATUSES or self.out_status == "colo" \
                or self.in_status in _RUNNING_STATUSES or self.in_status == "colo":
            raise QMPError(IN_PROGRESS)
        if self.machine.status == "inmigrate":
            raise QMPError("Guest is waiting for an incoming migration")
        if (blk or inc) and self.caps["x-colo"]:
            raise QMPError("No disk migration is required in COLO mode")
        if self.machine.status == "postmigrate":
            raise QMPError("Can't migrate the vm that was paused due to previous migration")
        target: Address | int | None = \
            _monitor_fd(uri[3:], fds) if uri.startswith("fd:") else parse_uri(uri)
        if target is None:
            self._set_out("failed", event=False)  # 7.2 leaves this behind, without an event
            raise QMPError("Parameter 'uri' expects a valid migration protocol")
        old = self.jobs.find(COLO_JOB_ID)
        if isinstance(old, ColoJob) and old.status == "concluded":
            self.jobs.dismiss_now(old)
        self.error_desc = None
        self._chan = None
        self._stopping = asyncio.Event()
        self.dirty_sync_count = 0
        self.machine.yankables["migration"] = self._yank
        self._set_out("setup")
        self._connecting = asyncio.get_running_loop().create_task(
            self._outgoing(target, self.caps["x-colo"]))
        self._tasks.add(self._connecting)
        self._connecting.add_done_callback(self._tasks.discard)
        self._connecting.add_done_callback(lambda task: self._never_started(task, target))

    def _never_started(self, task: asyncio.Task[None], target: Address | int) -> None:
        """A migration cancelled before its task ran (migrate_cancel pipelined right after
        migrate): close the descriptor it was given and end as cancelled."""
        if not task.cancelled() or self._chan is not None:
            return
        if isinstance(target, int):
            with contextlib.suppress(OSError):
                os.close(target)
        self.machine.yankables.pop("migration", None)
        if self.out_status in ("setup", "cancelling"):
            self._set_out("cancelled" if self.out_status == "cancelling" else "failed")

    def migrate_incoming(self, uri: str, fds: PassedFds | None = None) -> Any:
        """migrate-incoming: only with ``--incoming defer``, and only once.  ``fd:N`` reads
        an inherited descriptor (``fd:NAME``, one the client passed)."""
        if self.incoming != "defer":
            raise QMPError("'-incoming' was not specified on the command line")
        if self.incoming_started:
            raise QMPError("The incoming migration has already been started")
        if uri.startswith("fd:"):
            fd = _monitor_fd(uri[3:], fds)
            self.incoming_started = True
            self.machine.yankables["migration"] = self._yank
            self._set_in("setup")
            self._spawn(self._incoming_fd(fd))
            return None
        if parse_uri(uri) is None:
            raise QMPError("Parameter 'uri' expects a valid migration protocol")
        return self._start_incoming(uri)

    def migrate_cancel(self) -> None:
        """migrate_cancel: stop a starting migration; during COLO it breaks replication
        (both sides then report COLO_EXIT error, as 7.2 does)."""
        if self.rep is not None and self.mode != "none":
            self.rep.shutdown()
            if self.mode == "primary":
                self.rep.kick()
            return
        if self.out_status in ("setup", "active"):
            self._set_out("cancelling")
            self._interrupt()

    async def _ram_fault(self) -> None:
        """A drill on a plain migration (a save): x-daemon-colo-inject at ``ram`` holds,
        delays or cuts it before its RAM is sent, so that a save can be watched and
        cancelled at a known point; migrate_cancel ends a hold or a delay."""
        fault = self.faults.take("ram")
        if fault is None:
            return
        log.warning("fault injection: %s at ram (migration)", fault.action)
        if fault.action == "cut":
            raise ConnectionResetError("connection shut down")
        if fault.action in ("hold", "delay"):
            waits = [asyncio.ensure_future(fault.released.wait()),
                     asyncio.ensure_future(self._stopping.wait())]
            try:
                await asyncio.wait(waits, timeout=fault.delay if fault.action == "delay"
                                   else None, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
                self.faults.done_delaying(fault)
            if self._stopping.is_set():
                raise ConnectionResetError("migration cancelled")

    def _interrupt(self) -> None:
        """Stop the outgoing link: a connection still being made is abandoned."""
        self._stopping.set()
        if self._chan is not None:
            self._chan.shutdown()
        elif self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()

    def _yank(self) -> None:
        if self.rep is not None and self.mode != "none":
            self.rep.shutdown()
        else:
            self._interrupt()

    def query_guest_state(self) -> Any:
        """x-query-guest-state: digests of the live state and of recent checkpoints."""
        async def run() -> dict[str, Any]:
            g = self.guest
            if g.settling is not None and not g.settling.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(g.settling)
            digest = await g.digest_now(self.machine.running)
            return {"digest": digest, "checkpoint": g.checkpoint,
                    "checkpoint-digest": g.committed_digest,
                    "history": [{"checkpoint": k, "digest": v}
                                for k, v in sorted(g.history.items())],
                    "dirty-pages": len(g.dirty), "ram-size": len(g.ram.data),
                    "page-size": g.page_size, "vclock": g.vclock,
                    "runstate": self.machine.status}
        return run()

    # -- outgoing --------------------------------------------------------------------------

    async def _outgoing(self, addr: Address | int, colo: bool) -> None:
        guest = self.guest
        try:
            if isinstance(addr, int):
                chan = fd_channel(addr)
            else:
                chan = await Channel.connect(addr) if self.tls is None else \
                    await TlsChannel.connect_tls(addr, self.tls.client_context())
        except asyncio.CancelledError:  # migrate_cancel or yank while connecting
            self.machine.yankables.pop("migration", None)
            self._set_out("cancelled" if self.out_status == "cancelling" else "failed")
            return
        except OSError as e:
            assert not isinstance(addr, int)
            where = addr.path if addr.kind == "unix" else f"{addr.host}:{addr.port}"
            # errno's text ("Connection refused"); a resolver error has a negative errno
            reason = os.strerror(e.errno) if e.errno and e.errno > 0 else e.strerror or str(e)
            self.error_desc = f"Failed to connect to '{where}': {reason}"
            log.error("migration: %s", self.error_desc)
            self.machine.yankables.pop("migration", None)
            self._set_out("failed")
            return
        self._chan = chan
        was_running = self.machine.running
        rep: Replication | None = None
        try:
            if self.out_status == "cancelling":
                raise ConnectionAbortedError("cancelled")
            self.next_pass()
            self._set_out("active")
            guest.take_dirty()
            # everything that grows with guest RAM runs in worker threads
            ps, view = guest.page_size, guest.ram.view
            data, zero = await asyncio.to_thread(guest.nonzero_runs)
            await chan.send([wire.header(guest.page_size, guest.pages, colo, guest.side)])
            if not colo:
                await self._ram_fault()
            for runs, flag in ((zero, wire.REC_ZERO), (data, wire.REC_PAGE)):
                framed = await asyncio.to_thread(frame_ram, view, ps, runs, flag, False)
                await chan.send(framed.blocks)
            # the final phase: stopped, and `cont` refused ("Migration is not finalized yet")
            self.set_runstate("finish-migrate")
            self.next_pass()
            hashing = asyncio.ensure_future(asyncio.to_thread(guest.hashes.refresh()))
            dirty = guest.take_dirty()
            framed = await asyncio.to_thread(
                lambda: frame_ram(view, ps, dirty_runs(dirty), wire.REC_PAGE, True))
            blob = guest.device_state(0)
            await chan.send([*framed.blocks, wire.vmstate_size(len(blob)), blob])
            guest.checkpoint = 0
            await self._settle_digest(hashing, blob, colo)
            if not colo:
                self._set_out("completed")
                self.machine.yankables.pop("migration", None)
                self.set_runstate("postmigrate")
                chan.close()
                return
            self._set_out("colo")
            rep = Replication(self, chan, "primary")
            self.rep = rep
            wire.expect(wire.parse_message(await chan.recv_exact(4)), wire.CHECKPOINT_READY)
        except Exception as e:
            chan.close()
            if rep is not None and (rep.failover != "none" or rep.closing):
                return  # failover (or exit) while waiting for checkpoint-ready
            if isinstance(e, OSError | wire.ProtocolError | EOFError):
                log.error("migration failed: %s", e)
            else:
                log.exception("migration failed")
            self.error_desc = str(e) if not isinstance(e, OSError) else \
                "Unable to write to socket: " + (e.strerror or str(e))
            self.machine.yankables.pop("migration", None)
            if rep is not None:
                rep.colo_exit("error")
                self.link_failed()
                return
            self._set_out("cancelled" if self.out_status == "cancelling" else "failed")
            if was_running and not self.machine.running:
                self.set_runstate("running")
            return
        self._start_job(rep)
        self.set_runstate("running")

    async def _settle_digest(self, hashing: Awaitable[None], blob: bytes, colo: bool) -> None:
        """Checkpoint 0's digest once ``hashing`` is done.  A save or a restore with nothing
        writing guest RAM does not wait for it: it follows the completion, and
        x-query-guest-state waits for it (guest.settling)."""
        guest = self.guest

        async def settle() -> None:
            await hashing
            guest.record_digest(0, guest.hashes.root(blob))
            guest.committed_digest = guest.history[0]

        if not colo and guest.workload.rate == 0:
            guest.settling = asyncio.ensure_future(settle())
        else:
            await settle()

    def _start_job(self, rep: Replication) -> None:
        old = self.jobs.find(COLO_JOB_ID)
        if isinstance(old, ColoJob) and old.status == "concluded":
            self.jobs.dismiss_now(old)
            old = None
        body = rep.primary_loop if rep.role == "primary" else rep.secondary_loop
        job = ColoJob(COLO_JOB_ID if old is None else f"{COLO_JOB_ID}-{id(rep):x}", body,
                      lambda: self._job_cancel(rep))
        rep.job = job
        self.jobs.create(job)
        self.jobs.start(job)

    def _job_cancel(self, rep: Replication) -> None:
        if rep is self.rep and self.mode != "none" and rep.failover == "none":
            rep.request_failover()

    # -- incoming --------------------------------------------------------------------------

    def _start_incoming(self, uri: str) -> Any:
        """Bind now (errors are the command's), then accept in the background."""
        addr = parse_uri(uri)
        if addr is None:
            raise QMPError("Parameter 'uri' expects a valid migration protocol")

        self.incoming_started = True

        async def bind() -> None:
            try:
                sock = await listen(addr)
            except OSError as e:
                self.incoming_started = False  # QEMU lets the command be retried
                raise QMPError(f"Failed to bind socket: {e.strerror or e}") from None
            # everything query-migrate shows is in place before the reply (as QEMU 7.2):
            # the bound address, with the port the OS picked for port 0
            bound = addr
            if addr.kind == "tcp":
                host, port = sock.getsockname()[:2]
                bound = Address("tcp", host=host, port=port)
            self._listener = sock
            self.in_address = bound
            self.machine.yankables["migration"] = self._yank
            self._set_in("setup")
            self._spawn(self._incoming(bound, sock))
        return bind()

    async def _incoming(self, addr: Address, sock: socket.socket) -> None:
        log.info("waiting for an incoming migration on %s",
                 addr.path if addr.kind == "unix" else f"{addr.host}:{addr.port}")
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await loop.sock_accept(sock)
        finally:
            sock.close()
            self._listener = None
            if addr.kind == "unix":
                with contextlib.suppress(OSError):
                    os.unlink(addr.path)
        try:
            chan = Channel(conn) if self.tls is None else \
                await TlsChannel.accept_tls(conn, self.tls.server_context())
        except OSError as e:
            log.error("incoming migration: TLS handshake failed: %s", e)
            conn.close()
            self.error_desc = f"TLS handshake failed: {e}"
            self.machine.yankables.pop("migration", None)
            self._set_in("failed")
            return
        await self._load(chan)

    async def _incoming_fd(self, fd: int) -> None:
        """migrate-incoming fd:: the stream is already there."""
        try:
            chan = fd_channel(fd)
        except OSError as e:
            self.error_desc = f"fd: {e.strerror or e}"
            self.machine.yankables.pop("migration", None)
            self._set_in("failed")
            return
        await self._load(chan)

    async def _load(self, chan: Channel) -> None:
        """Load the guest from an incoming stream (then, with x-colo, replicate)."""
        guest = self.guest
        self._chan = chan
        rep: Replication | None = None
        try:
            self._set_in("active")
            page_size, pages, colo, side = wire.parse_header(
                await chan.recv_exact(wire.HEADER_SIZE))
            if page_size != guest.page_size or pages != guest.pages:
                raise wire.ProtocolError(
                    f"guest RAM differs: incoming {pages * page_size} bytes in "
                    f"{page_size}-byte pages, here {len(guest.ram.data)}")
            # every page once, and again if dirtied meanwhile
            zeroed: list[tuple[int, int]] = []
            runs = await recv_ram(chan, guest.ram, guest.page_size, pages, 2 * pages,
                                  "the stream carries more pages than guest RAM",
                                  zeroed=zeroed)
            guest.hashes.mark_zero(zeroed)  # before the data: a page may be in both
            guest.hashes.mark_runs(runs)
            wire.expect(wire.parse_message(await chan.recv_exact(4)), wire.VMSTATE_SIZE)
            size = wire.parse_u64(await chan.recv_exact(8))
            if size > wire.MAX_DEVICE_STATE:
                raise wire.ProtocolError(f"device state of {size} bytes is over the limit")
            blob = await chan.recv_exact(size)
            try:
                state = guest.parse_device_state(blob)
            except ValueError as e:
                raise wire.ProtocolError(f"COLO: load device state failed: {e}") from None
            guest.side = side ^ 0x80
            guest.checkpoint = guest.load_device_state(state)
            guest.dirty = set()
            await self._settle_digest(asyncio.to_thread(guest.hashes.refresh()), blob, colo)
            if not colo:
                self.set_runstate("running" if self.machine.autostart else "paused")
                self._set_in("completed")
                self.machine.yankables.pop("migration", None)
                chan.close()
                return
            self._set_in("colo")
            rep = Replication(self, chan, "secondary")
            await rep.prepare_secondary()
            self.rep = rep
            self.set_runstate("running")
            await chan.send([wire.message(wire.CHECKPOINT_READY)])
        except Exception as e:
            chan.close()
            if isinstance(e, OSError | wire.ProtocolError | EOFError):
                log.error("load of migration failed: %s", e)
            else:
                log.exception("load of migration failed")
            if rep is not None:
                if rep.failover == "none" and not rep.closing:
                    rep.colo_exit("error")
                    self.link_failed()
                return
            self.error_desc = str(e)
            self.machine.yankables.pop("migration", None)
            self._set_in("failed")
            return
        self._start_job(rep)
