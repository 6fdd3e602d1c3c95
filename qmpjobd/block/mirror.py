"""The mirror job: copy a source node to a target while the guest writes, report READY
once they are in sync, then finish on request.

A dirty bitmap of the job's own (64 KiB granules) marks every write to the source; the job
copies dirty ranges, BUF_SIZE at a time, until none are left (READY), and keeps copying what
writes dirty afterwards.  ``job-complete`` (or a soft cancel in READY) holds the source's
writes, copies what is still dirty and finishes: with a pivot for job-complete (the devices
on the source move to the target), without one for a soft cancel.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from ..jobs import JobCancelled
from .backup import CHUNK, CLUSTER, BackupJob
from .bitmaps import DirtyBitmap
from .nodes import BlockNode

BUF_SIZE = 16 << 20
"""QEMU's default mirror buf-size: what one iteration issues before the rate limit."""


def _batches(ranges: list[tuple[int, int]], size: int) -> list[list[tuple[int, int]]]:
    """``ranges`` cut into consecutive groups of about ``size`` bytes (none longer)."""
    out: list[list[tuple[int, int]]] = []
    batch: list[tuple[int, int]] = []
    total = 0
    for start, n in ranges:
        for offset in range(start, start + n, size):
            step = min(size, start + n - offset)
            if batch and total + step > size:
                out.append(batch)
                batch, total = [], 0
            batch.append((offset, step))
            total += step
    if batch:
        out.append(batch)
    return out


class MirrorJob(BackupJob):
    """blockdev-mirror / drive-mirror with sync full."""

    job_type = "mirror"
    can_complete = True

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.completion_requested = False
        self.pivoted = False
        self.on_pivot: Callable[[BlockNode, BlockNode], None] | None = None
        """Called at the pivot: whoever attached to the source moves to the target."""
        self.tracker = DirtyBitmap("", CLUSTER, self.source.length)
        self.tracker.set_range(0, self.source.length)  # sync full: everything to copy
        self._frozen = False
        self.write_blocking = False
        """copy-mode write-blocking: each guest write also goes to the target before it
        completes (QEMU's active mirror), so the job converges whatever the guest does."""
        self.copied = 0
        """Bytes the job itself copied."""
        self.written_through = 0
        """Bytes guest writes wrote to the target (write-blocking)."""
        self._sync = threading.Lock()
        """Held by a job copy and by a written-through write: never both on one range."""

    def attach(self) -> None:
        super().attach()
        self.source.trackers.append(self.tracker)
        if self.write_blocking:
            self.tracker.recording = False  # writes are copied as they happen instead
            self.source.after_write.append(self._write_through)
            self._loop = asyncio.get_running_loop()

    def _write_through(self, offset: int, length: int, data: bytes | None) -> None:
        """In the guest's writer thread, after its write reached the source: the same bytes
        to the target (do_sync_target_write); zeroes and discards are left to the job."""
        if data is None or self.status in ("concluded", "null") or self.cancelled:
            self.tracker.set_range(offset, length)
            return
        with self._sync:
            self.tracker.reset_range(offset, length)
            try:
                self.target.pwrite(offset, data)
            except OSError:
                self.tracker.set_range(offset, length)  # the job copies it later
                return
            self.written_through += length
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._report, 0)

    def _report(self, pending: int) -> None:
        """Progress: what the job and written-through writes copied, of that plus what is
        in flight and still dirty."""
        if self.status in ("concluded", "null"):
            return
        done = self.copied + self.written_through
        self.set_progress(done, done + pending + self.tracker.count)

    async def copy_all(self) -> None:
        """As mirror_iteration(): take up to BUF_SIZE of dirty ranges and charge them to the
        rate limit, copy them CHUNK by CHUNK, then sleep what the limit says; returns when
        nothing is dirty.  Progress: copied so far, of that plus what is still dirty."""
        while ranges := self.tracker.take(BUF_SIZE):
            pending = sum(n for _, n in ranges)  # in flight: still part of the total
            self.dispatched(pending)
            for batch in _batches(ranges, CHUNK):  # one worker call per CHUNK of ranges
                await self._with_policy(self._copy_ranges, batch)
                step = sum(n for _, n in batch)
                self.copied += step
                pending -= step
                self._report(pending)
                if self.is_cancelled:
                    raise JobCancelled
            await self.rate_limit(0)

    def _copy_ranges(self, ranges: list[tuple[int, int]]) -> None:
        with self._sync:
            for start, n in ranges:
                self._copy_range(start, n)

    async def run(self) -> None:
        self.set_progress(0, self.tracker.count)
        await self.copy_all()
        await self.io(self.target.flush, hold=self.files)  # mirror_flush() before READY
        self.set_ready()
        while not (self.completion_requested or self.cancelled):
            await self.sleep(0.1)  # a pause point for pause and cancel
            await self.copy_all()  # what the guest wrote meanwhile
        # the end, in a drained section: no write gets in between the last copy and the pivot
        self.copied += await self.io(self._last_sync, hold=self.files)
        self._report(0)

    def _last_sync(self) -> int:
        """In a worker thread: hold the source's writes, copy what is still dirty.  The
        target is flushed first, so that the flush while writes are held is short."""
        self.target.flush()
        self.source.freeze()
        self._frozen = True
        copied = 0
        while ranges := self.tracker.take(1 << 62):
            for start, n in ranges:
                self._copy_range(start, n)
                copied += n
        self.target.flush()
        return copied

    def cancel_mode(self, force: bool) -> bool:
        """Before READY every cancel is forced; in READY a soft cancel completes unpivoted."""
        return force or self.status not in ("ready", "standby")

    def complete(self) -> None:
        self.completion_requested = True

    def commit(self) -> None:
        self.pivoted = self.completion_requested and not self.cancelled
        if self.pivoted and self.on_pivot is not None:
            self.on_pivot(self.source, self.target)

    def clean(self) -> None:
        if self._write_through in self.source.after_write:
            self.source.after_write.remove(self._write_through)
        if self.tracker in self.source.trackers:
            self.source.trackers.remove(self.tracker)
        if self._frozen:
            self._frozen = False
            self.source.thaw()
        super().clean()
