"""One COLO replication run on one side: the checkpoint loop (a job of type ``colo``), the
failover state machine and COLO_EXIT, as QEMU 7.2's migration/colo.c does them.

The primary stops, streams dirty RAM and the device blob, and resumes when the secondary has
loaded it.  The secondary stages everything it receives and applies it only once the whole
checkpoint has arrived (staged -> cache -> live), reverting the pages it dirtied itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..jobs import Job, JobError
from ..schema import EventSink
from . import tables, wire
from .channel import (
    INLINE_BELOW,
    Channel,
    Framed,
    SectionCrc,
    ShortRead,
    frame_ram,
    recv_ram,
    send_ram,
)
from .faults import Faults
from .guest import Buffer, ChunkHashes, Guest, dirty_runs

log = logging.getLogger(__name__)

_LINK_ERRORS = (OSError, ConnectionError, wire.ProtocolError, EOFError)
_BIG_BLOB = 1 << 20
"""A device blob from this size on is checked in a worker thread."""


class Host(Protocol):
    """What a replication run needs from the daemon around it (the migration state)."""

    events: EventSink
    guest: Guest
    faults: Faults
    metrics: Metrics
    verify: bool
    checkpointing: bool
    """Set while a primary's checkpoint sends RAM: the guest's workload does not write."""

    @property
    def running(self) -> bool:
        """The guest runs."""

    def set_runstate(self, status: str) -> None:
        """Change the run state (STOP/RESUME as QEMU)."""

    def checkpoint_delay(self) -> float:
        """x-checkpoint-delay, in seconds."""

    def next_pass(self) -> int:
        """Count a dirty-bitmap sync and emit MIGRATION_PASS (if enabled)."""

    def complete_migration(self, role: str) -> None:
        """Failover: migration status colo -> completed, with its event; last-mode := role."""

    def link_failed(self) -> None:
        """A replication run ended with COLO_EXIT error (auto-failover may act on it)."""



def _median(values: list[float]) -> float:
    """The median of sorted ``values`` (statistics.median, without importing statistics and
    its fractions and decimal at every start)."""
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

class Metrics:
    """Checkpoint and failover figures of this daemon (x-query-colo-metrics)."""

    def __init__(self) -> None:
        self.checkpoints = 0
        self.downtimes: deque[float] = deque(maxlen=4096)
        self.periods: deque[float] = deque(maxlen=4096)
        self._last_stop = 0.0
        self.ram_bytes = 0
        self.device_bytes = 0
        self.dirty_pages = 0
        self.reverted_pages = 0
        self.failover_ms: float | None = None
        self.failover_requested = 0.0

    def record(self, stop: float, resume: float, ram_bytes: int, device_bytes: int,
               dirty: int, reverted: int = 0) -> None:
        """One finished checkpoint; ``stop``/``resume`` are the STOP/RESUME event times."""
        self.checkpoints += 1
        self.downtimes.append((resume - stop) * 1000.0)
        if self._last_stop:
            self.periods.append((stop - self._last_stop) * 1000.0)
        self._last_stop = stop
        self.ram_bytes, self.device_bytes = ram_bytes, device_bytes
        self.dirty_pages, self.reverted_pages = dirty, reverted

    def as_dict(self) -> dict[str, Any]:
        """The QMP view; downtimes in milliseconds."""
        d = sorted(self.downtimes)
        out: dict[str, Any] = {"checkpoints": self.checkpoints}
        if d:
            out.update({"downtime-last-ms": round(self.downtimes[-1], 3),
                        "downtime-median-ms": round(_median(d), 3),
                        "downtime-p90-ms": round(d[min(len(d) - 1, int(len(d) * 0.9))], 3),
                        "downtime-max-ms": round(d[-1], 3)})
        if self.periods:
            out["period-median-ms"] = round(_median(sorted(self.periods)), 3)
        out.update({"ram-bytes-last": self.ram_bytes, "device-bytes-last": self.device_bytes,
                    "dirty-pages-last": self.dirty_pages,
                    "reverted-pages-last": self.reverted_pages})
        if self.failover_ms is not None:
            out["failover-ms"] = round(self.failover_ms, 3)
        return out


class ColoJob(Job):
    """The checkpoint loop of one side, as a job: pausing it stops checkpoints, cancelling it
    leaves COLO by request, and its conclusion is the end of the replication run."""

    job_type = "colo"
    qemu_visible = False

    def __init__(self, job_id: str, body: Callable[[ColoJob], Awaitable[None]],
                 on_cancel: Callable[[], None]) -> None:
        super().__init__(job_id, auto_dismiss=False)
        self._body = body
        self._on_cancel = on_cancel

    async def run(self) -> None:
        """Run the loop until the replication run ends."""
        await self._body(self)

    def cancel_mode(self, force: bool) -> bool:
        """A cancel is a request to leave COLO (x-colo-lost-heartbeat on this side), never a
        forced stop, so the job ends without error once failover has completed."""
        asyncio.get_running_loop().call_soon(self._on_cancel)
        return False


class Replication:
    """The state of one replication run on one side (``primary`` or ``secondary``)."""

    def __init__(self, host: Host, chan: Channel, role: str) -> None:
        self.host = host
        self.chan = chan
        self.role = role
        self.failover = "none"
        """FailoverStatus of this run."""
        self.loading = False
        """The secondary is applying a checkpoint (QEMU's vmstate_loading)."""
        self.exited = False
        """COLO_EXIT has been sent for this run."""
        self.closing = False
        self.kicked = False
        self.job: ColoJob | None = None
        self.broken = asyncio.Event()
        self.cache: Buffer | None = None
        self.cache_hashes: ChunkHashes | None = None
        self.staging: Buffer | None = None
        self.staged_pages = 0
        """Pages in the checkpoint applied last."""

    # -- COLO_EXIT and failover ------------------------------------------------------------

    def colo_exit(self, reason: str) -> None:
        """COLO_EXIT, once per run, with QEMU's data."""
        if not self.exited:
            self.exited = True
            self.host.events.emit("COLO_EXIT", {"mode": self.role, "reason": reason})

    def set_failover(self, status: str) -> None:
        """The failover state, checked against QEMU's table (colo/tables.py)."""
        tables.check(tables.FAILOVER, "COLO failover", self.failover, status)
        self.failover = status

    def request_failover(self) -> None:
        """``none -> require``; the failover itself runs after the current reply (a BH)."""
        if self.closing:
            return
        self.set_failover("require")
        self.host.metrics.failover_requested = time.time()
        self.host.faults.release_delays()
        asyncio.get_running_loop().call_soon(self._failover_bh)

    def _failover_bh(self) -> None:
        if self.failover != "require":
            return
        self.set_failover("active")
        if self.host.running:
            self.host.set_runstate("colo")
        if self.role == "secondary" and self.loading:
            self.set_failover("relaunch")
            return
        self.host.complete_migration(self.role)
        self.shutdown()
        self.set_failover("completed")
        self.colo_exit("request")
        self.host.set_runstate("running")
        m = self.host.metrics
        m.failover_ms = (time.time() - m.failover_requested) * 1000.0
        if self.job is not None:
            self.job.wake()

    def shutdown(self) -> None:
        """Shut the link down (failover, yank, migrate_cancel): pending I/O fails at once."""
        self.chan.shutdown()
        self.broken.set()

    def kick(self) -> None:
        """Start a checkpoint now (x-checkpoint-delay changed, or an injected mismatch)."""
        self.kicked = True
        if self.job is not None:
            self.job.wake()

    def close(self) -> None:
        """The daemon is going away: end the loop without COLO events (the socket is closed
        when the loop has let go of it)."""
        self.closing = True
        self.exited = True
        self.shutdown()
        if self.job is not None:
            self.job.wake()
        else:
            self.chan.close()

    # -- shared helpers --------------------------------------------------------------------

    async def _fault(self, phase: str) -> None:
        fault = self.host.faults.take(phase)
        if fault is None:
            return
        log.warning("fault injection: %s at %s (%s)", fault.action, phase, self.role)
        if fault.action == "cut":
            self.shutdown()
        elif fault.action == "hold":
            waits = [asyncio.ensure_future(fault.released.wait()),
                     asyncio.ensure_future(self.broken.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if self.broken.is_set():
                raise ConnectionResetError("connection shut down")
        elif fault.action == "delay":
            # ends early when cleared (action none), on failover and on shutdown
            waits = [asyncio.ensure_future(fault.released.wait()),
                     asyncio.ensure_future(self.broken.wait())]
            try:
                await asyncio.wait(waits, timeout=fault.delay,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
                self.host.faults.done_delaying(fault)
        elif fault.action == "corrupt":
            await self.chan.send([wire.message(0x2A)])
        elif fault.action == "misorder":
            await self.chan.send([wire.message(wire.VMSTATE_LOADED)])

    async def _recv_message(self, want: int) -> None:
        wire.expect(wire.parse_message(await self.chan.recv_exact(4)), want)

    def _ended_by_failover(self) -> bool:
        return self.closing or self.failover != "none"

    async def _finish_failover(self, job: ColoJob) -> None:
        """Wait for a requested failover to complete, so the job concludes after it."""
        while not self.closing and self.failover not in ("completed", "none"):
            await job.sleep(1.0)

    def _error_exit(self, e: BaseException) -> None:
        cause = _describe(e)
        log.error("COLO %s: %s", self.role, cause)
        self.colo_exit("error")
        self.host.link_failed()
        raise JobError(cause) from e

    # -- the primary -----------------------------------------------------------------------

    async def primary_loop(self, job: ColoJob) -> None:
        """Take a checkpoint every x-checkpoint-delay (start to start), or when kicked."""
        try:
            await self._primary_loop(job)
        finally:
            self.chan.close()

    async def _primary_loop(self, job: ColoJob) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.host.checkpoint_delay()
        while True:
            while True:
                if self._ended_by_failover():
                    return await self._finish_failover(job)
                if self.kicked:
                    self.kicked = False
                    break
                remaining = next_at - loop.time()
                if remaining <= 0:
                    break
                await job.sleep(remaining)
            start = loop.time()
            next_at = start + self.host.checkpoint_delay()
            try:
                await self._primary_checkpoint()
            except _LINK_ERRORS as e:
                if self._ended_by_failover():
                    return await self._finish_failover(job)
                self._error_exit(e)
            except Exception as e:  # a bug must still end replication the QEMU way
                log.exception("COLO primary: internal error")
                self._error_exit(e)
            job.set_progress(self.host.metrics.checkpoints, self.host.metrics.checkpoints)

    async def _primary_checkpoint(self) -> None:
        host, guest, chan = self.host, self.host.guest, self.chan
        await self._fault("request")
        await chan.send([wire.message(wire.CHECKPOINT_REQUEST)])
        await self._recv_message(wire.CHECKPOINT_REPLY)
        await self._fault("reply")
        if self.failover != "none":
            raise ConnectionAbortedError("failover request")
        t_stop = time.time()
        host.set_runstate("colo")
        host.checkpointing = True  # a cont meanwhile must not change the RAM being sent
        host.next_pass()
        seq = guest.checkpoint + 1
        dirty = guest.take_dirty()
        blob = guest.device_state(seq)
        ps, view = guest.page_size, guest.ram.view

        def frame() -> tuple[Framed, int]:  # a worker thread: it grows with the dirty log
            page_runs = dirty_runs(dirty)
            return frame_ram(view, ps, page_runs, wire.REC_PAGE, True), len(dirty)

        if len(dirty) * ps < INLINE_BELOW:  # a few pages: a thread hop costs more
            framing: asyncio.Future[tuple[Framed, int]] = asyncio.get_running_loop() \
                .create_future()
            framing.set_result(frame())
        else:
            framing = asyncio.ensure_future(asyncio.to_thread(frame))
        hashing: asyncio.Future[None] | None = None
        if host.verify and guest.hashes.has_stale:
            hashing = asyncio.ensure_future(asyncio.to_thread(guest.hashes.refresh()))
        try:
            await self._fault("vmstate-send")
            await chan.send([wire.message(wire.VMSTATE_SEND)])
            framed, npages = await framing
            crc = await send_ram(chan, framed, lambda: self._fault("ram"))
            await self._fault("vmstate-size")
            await chan.send([wire.vmstate_size(len(blob))])
            half = len(blob) // 2
            await chan.send([blob[:half]])
            await self._fault("blob")
            await chan.send([blob[half:], wire.checkpoint_check(framed.size, crc, blob)])
            if hashing is not None:
                await hashing
            if host.verify:
                guest.record_digest(seq, guest.hashes.root(blob))
            await self._recv_message(wire.VMSTATE_RECEIVED)
            await self._fault("received")
            await self._recv_message(wire.VMSTATE_LOADED)
            await self._fault("loaded")
        finally:
            for pending in (framing, hashing):
                if pending is not None and not pending.done():
                    with contextlib.suppress(Exception):
                        await pending
            host.checkpointing = False
        guest.checkpoint = seq
        if host.verify:
            guest.committed_digest = guest.history.get(seq, "")
        host.set_runstate("running")
        t_resume = time.time()
        host.metrics.record(t_stop, t_resume, npages * ps, len(blob), npages)

    # -- the secondary ---------------------------------------------------------------------

    async def prepare_secondary(self) -> None:
        """Allocate the COLO cache (a copy of RAM as loaded) and the staging area."""
        guest = self.host.guest
        live = guest.hashes
        stale, stale_runs = set(live.stale), list(live.stale_runs)

        def build() -> tuple[Buffer, ChunkHashes, Buffer]:  # grows with guest RAM: a thread
            cache = Buffer(len(guest.ram.data))
            cache.copy_runs_from(guest.ram, [(0, guest.pages)], guest.page_size)
            hashes = ChunkHashes(cache, guest.page_size)
            hashes.pages = list(live.pages)
            hashes.chunks = list(live.chunks)
            return cache, hashes, Buffer(len(guest.ram.data))

        self.cache, hashes, self.staging = await asyncio.to_thread(build)
        hashes.stale, hashes.stale_runs = stale, stale_runs
        self.cache_hashes = hashes

    async def secondary_loop(self, job: ColoJob) -> None:
        """Serve checkpoints until the link ends or failover completes."""
        try:
            await self._secondary_loop(job)
        finally:
            self.chan.close()
            self.cache = self.staging = None
            self.cache_hashes = None

    async def _secondary_loop(self, job: ColoJob) -> None:
        while True:
            if self._ended_by_failover():
                return await self._finish_failover(job)
            try:
                await self._secondary_checkpoint()
            except _LINK_ERRORS as e:
                self.loading = False
                if self._ended_by_failover():
                    return await self._finish_failover(job)
                self._error_exit(e)
            except Exception as e:  # a bug must still end replication the QEMU way
                self.loading = False
                log.exception("COLO secondary: internal error")
                self._error_exit(e)
            job.set_progress(self.host.metrics.checkpoints, self.host.metrics.checkpoints)

    async def _secondary_checkpoint(self) -> None:
        host, guest, chan = self.host, self.host.guest, self.chan
        await self._recv_message(wire.CHECKPOINT_REQUEST)
        t_stop = time.time()
        host.set_runstate("colo")
        await self._fault("request")
        await self._fault("reply")
        await chan.send([wire.message(wire.CHECKPOINT_REPLY)])
        await self._recv_message(wire.VMSTATE_SEND)
        await self._fault("vmstate-send")
        assert self.staging is not None
        crc = SectionCrc()
        staged = await recv_ram(chan, self.staging, guest.page_size, guest.pages, guest.pages,
                                "a checkpoint carries more pages than guest RAM has",
                                lambda: self._fault("ram"), crc)
        await self._recv_message(wire.VMSTATE_SIZE)
        size = wire.parse_u64(await chan.recv_exact(8))
        if size > wire.MAX_DEVICE_STATE:
            raise wire.ProtocolError(f"device state of {size} bytes is over the limit")
        await self._fault("vmstate-size")
        blob = await self._receive_blob(size)
        # nothing of a damaged or misordered checkpoint may be applied: check it whole first
        check = await chan.recv_exact(wire.CHECK_SIZE)
        ram_crc = await crc.result()
        if len(blob) >= _BIG_BLOB:
            await asyncio.to_thread(wire.verify_checkpoint, check, crc.size, ram_crc, blob)
        else:
            wire.verify_checkpoint(check, crc.size, ram_crc, blob)
        try:
            state = guest.parse_device_state(blob)
        except ValueError as e:
            raise wire.ProtocolError(f"COLO: load device state failed: {e}") from None
        await chan.send([wire.message(wire.VMSTATE_RECEIVED)])
        await self._fault("received")
        if self.failover != "none":  # failed over while this checkpoint was arriving
            raise ConnectionAbortedError("failover request")
        self.loading = True
        try:
            await self._fault("apply")
            reverted = await self._apply(staged, state)
        finally:
            self.loading = False
        host.set_runstate("running")
        t_resume = time.time()
        npages = self.staged_pages
        host.metrics.record(t_stop, t_resume, npages * guest.page_size, len(blob), npages,
                            reverted)
        settle = asyncio.ensure_future(self._commit_cache(staged, blob))
        guest.settling = settle
        try:
            if self.failover == "relaunch":
                self.set_failover("none")
                self.request_failover()
            else:
                await self._fault("loaded")
                await chan.send([wire.message(wire.VMSTATE_LOADED)])
        finally:
            await settle

    async def _commit_cache(self, staged: list[tuple[int, int]], blob: bytes) -> None:
        """staged -> cache, so the cache is the committed state again, then its digest.
        Nothing reads the cache before this is over: the next checkpoint waits for it."""
        cache, staging, hashes = self.cache, self.staging, self.cache_hashes
        guest = self.host.guest
        if cache is None or staging is None or hashes is None:
            return
        await asyncio.to_thread(cache.copy_runs_from, staging, staged, guest.page_size)
        hashes.mark_runs(staged)
        if self.host.verify:
            await asyncio.to_thread(hashes.refresh())
            guest.record_digest(guest.checkpoint, hashes.root(blob))
            guest.committed_digest = guest.history[guest.checkpoint]

    async def _receive_blob(self, size: int) -> bytes:
        half = size // 2
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        try:
            await self.chan.recv_into(view[:half])
            got = half
            await self._fault("blob")
            await self.chan.recv_into(view[half:])
        except _LINK_ERRORS as e:
            got += e.got if isinstance(e, ShortRead) else 0
            raise wire.ProtocolError(
                f"Got {got} VMState data, less than expected {size}") from e
        return bytes(buf)

    async def _apply(self, staged: list[tuple[int, int]], state: dict[str, int]) -> int:
        """Commit a complete checkpoint: staged -> cache -> live, reverting self-dirtied
        pages; then the device state.  Returns how many pages were reverted."""
        guest, cache, staging = self.host.guest, self.cache, self.staging
        assert cache is not None and staging is not None and self.cache_hashes is not None
        dirty = guest.take_dirty()
        ps = guest.page_size

        def to_live() -> tuple[list[tuple[int, int]], int, int]:  # a worker thread
            staged_pages: set[int] = set()
            for first, count in staged:
                staged_pages.update(range(first, first + count))
            own = dirty - staged_pages
            revert = dirty_runs(own)
            guest.ram.copy_runs_from(staging, staged, ps)
            guest.ram.copy_runs_from(cache, revert, ps)  # not staged: the cache has them
            return revert, len(own), len(staged_pages)

        # only live RAM is needed before the guest resumes; staged -> cache follows the
        # vmstate-loaded message (see _commit_cache), outside the primary's downtime
        if (sum(count for _, count in staged) + len(dirty)) * ps < INLINE_BELOW:
            revert, reverted, self.staged_pages = to_live()  # a thread hop costs more
        else:
            revert, reverted, self.staged_pages = await asyncio.to_thread(to_live)
        guest.hashes.mark_runs(staged)
        guest.hashes.mark_runs(revert)
        guest.checkpoint = guest.load_device_state(state)
        return reverted


def _describe(e: BaseException) -> str:
    """The cause, worded as QEMU's log line for it."""
    if isinstance(e, wire.ProtocolError):
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        return f"Can't receive COLO message: {e.strerror}"
    return f"Can't receive COLO message: {e or 'Input/output error'}"
