"""The backup job: copy a source node to a target node, with QEMU's error policies.

Bulk I/O runs in worker threads (``os.copy_file_range`` between plain files, read/write
otherwise), one chunk at a time, so the event loop stays free and pause, cancel and
``speed`` act between chunks.

The target is the source as it was when the job was created, however the guest writes
meanwhile: a write to a cluster not yet copied first copies it (copy-before-write, QEMU's
cbw filter), in the writer's thread.  :class:`CopyMap` says which clusters are still to
copy, so that each is copied once, by the job or by a write, and a write waits while its
cluster is being copied.
"""

from __future__ import annotations

import asyncio
import errno as errnos
import os
import threading
from collections.abc import Callable
from typing import Any

from ..errors import QmpjobdError
from ..jobs import Job, JobError
from .bitmaps import DirtyBitmap
from .nodes import BlockNode

CHUNK = 1 << 20
"""Bytes per copy step; progress advances in these steps, as QEMU's backup does."""

CLUSTER = 64 << 10
"""The granularity of block-copy and of copy-before-write (QEMU's backup cluster size)."""


class CopyMap:
    """The clusters of a backup: to copy, being copied, or copied (by the job's loop or a
    guest write's copy-before-write, each in its own thread)."""

    TODO, BUSY, DONE = 0, 1, 2

    def __init__(self, length: int) -> None:
        self.length = length
        self.state = bytearray(-(-length // CLUSTER))
        self.copied = 0
        """Bytes copied so far, by either path."""
        self._cond = threading.Condition()

    def claim(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Take the clusters of a byte range still to copy, as (offset, length) runs; waits
        while one of the range's clusters is being copied by someone else."""
        if length <= 0 or offset >= self.length:
            return []
        first, last = offset // CLUSTER, min(offset + length - 1, self.length - 1) // CLUSTER
        with self._cond:
            while self.BUSY in self.state[first:last + 1]:
                self._cond.wait()
            runs: list[tuple[int, int]] = []
            for i in range(first, last + 1):
                if self.state[i] != self.TODO:
                    continue
                self.state[i] = self.BUSY
                start, end = i * CLUSTER, min((i + 1) * CLUSTER, self.length)
                if runs and runs[-1][0] + runs[-1][1] == start:
                    runs[-1] = (runs[-1][0], end - runs[-1][0])
                else:
                    runs.append((start, end - start))
            return runs

    def finish(self, runs: list[tuple[int, int]], copied: bool) -> None:
        """The claimed runs are copied (or, after a failure, to copy again)."""
        with self._cond:
            for start, n in runs:
                first, last = start // CLUSTER, (start + n - 1) // CLUSTER
                self.state[first:last + 1] = bytes([self.DONE if copied else self.TODO]) * \
                    (last - first + 1)
                if copied:
                    self.copied += n
            self._cond.notify_all()

    def skip_all_but(self, ranges: list[tuple[int, int]]) -> None:
        """Only the clusters touching ``ranges`` are to copy (a bitmap sync); the others
        count as copied."""
        with self._cond:
            keep = bytearray(len(self.state))
            for start, n in ranges:
                first, last = start // CLUSTER, min(start + n - 1, self.length - 1) // CLUSTER
                keep[first:last + 1] = b"\x01" * (last - first + 1)
            for i, wanted in enumerate(keep):
                if not wanted and self.state[i] == self.TODO:
                    self.state[i] = self.DONE

    def todo_ranges(self) -> list[tuple[int, int]]:
        """The byte ranges still to copy."""
        with self._cond:
            return [(i * CLUSTER, min((i + 1) * CLUSTER, self.length) - i * CLUSTER)
                    for i, st in enumerate(self.state) if st == self.TODO]

    def todo_bytes(self, offset: int = 0, length: int | None = None) -> int:
        """Bytes still to copy (in the clusters of a byte range, or in all)."""
        end = self.length if length is None else min(offset + length, self.length)
        first, last = offset // CLUSTER, -(-end // CLUSTER)
        with self._cond:
            return sum(min((i + 1) * CLUSTER, self.length) - i * CLUSTER
                       for i in range(first, last) if self.state[i] == self.TODO)


class BlockIOError(QmpjobdError):
    """An I/O error in one direction of the copy."""

    def __init__(self, operation: str, err: int) -> None:
        super().__init__(os.strerror(err))
        self.operation = operation
        self.errno = err


def error_action(policy: str, err: int) -> str:
    """BlockdevOnError policy + errno -> BlockErrorAction (QEMU's block_job_error_action())."""
    if policy in ("enospc", "auto"):
        return "stop" if err == errnos.ENOSPC else "report"
    return policy


class BackupJob(Job):
    """blockdev-backup / drive-backup with sync full."""

    job_type = "backup"

    def __init__(self, job_id: str, source: BlockNode, target: BlockNode, *,
                 on_source_error: str = "report", on_target_error: str = "report",
                 **kw: Any) -> None:
        super().__init__(job_id, **kw)
        self.source = source
        self.target = target
        self.on_source_error = on_source_error
        self.on_target_error = on_target_error
        self.on_clean: Callable[[], None] | None = None
        """Called once the job lets go of its nodes (the graph closes orphaned ones)."""
        self.owns_target = False
        """drive-backup opened the target itself and closes it when the job ends."""
        self.files = [*source.files(), *target.files()]
        """The files the worker threads use: closing them waits until a call returns."""
        self.total_progress = source.length
        """Known before the start command replies, as in QEMU (whose job coroutine sets it
        before its first yield)."""
        src, dst = source.plain_file(), target.plain_file()
        self._fast = src is not None and dst is not None and hasattr(os, "copy_file_range")
        self.sync = "full"
        """MirrorSyncMode: full and top copy everything, none only what writes replace."""
        self.copy_map = CopyMap(source.length)
        self.cbw = self.job_type == "backup"
        """Copy-before-write guards the source while the job exists (not for a mirror)."""
        self.sync_bitmap: DirtyBitmap | None = None
        """The bitmap of sync=bitmap (or of a full backup that syncs one), and its mode."""
        self.bitmap_mode = "on-success"
        self.filter_name = ""
        """The node name of its copy-before-write filter (``#blockNNN``), given by the graph."""
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self) -> None:
        """Mark the nodes as used (blockdev-del refuses them) until the job is cleaned up;
        from now on, writes to the source copy what they replace first."""
        self.source.users.add(self.id)
        self.target.users.add(self.id)
        self.target.job_targets.add(self.job_type)
        bitmap = self.sync_bitmap
        if bitmap is not None:
            if self.sync == "bitmap":  # only what is dirty now; the total is that much
                self.copy_map.skip_all_but(bitmap.dirty_ranges())
                self.total_progress = self.copy_map.todo_bytes()
            bitmap.freeze()
        if self.cbw:
            self._loop = asyncio.get_running_loop()
            self.source.before_write.append(self._before_write)
            if self.filter_name:
                self.source.filters.append(self.filter_name)

    def _before_write(self, offset: int, length: int) -> None:
        """Copy-before-write, in the writer's thread: the clusters the write touches that
        are still to copy go to the target first; if that fails, so does the write."""
        runs = self.copy_map.claim(offset, length)
        if not runs:
            return
        try:
            for start, n in runs:
                self._copy_range(start, n)
        except BlockIOError as e:
            self.copy_map.finish(runs, False)
            raise OSError(e.errno, os.strerror(e.errno)) from None
        self.copy_map.finish(runs, True)
        if self._loop is not None:  # the progress counts them before the writer hears back
            self._loop.call_soon_threadsafe(self._cbw_progress)

    def _cbw_progress(self) -> None:
        if self.status not in ("concluded", "null"):
            self.set_progress(self.copy_map.copied)

    def commit(self) -> None:
        self._release_bitmap(True)

    def abort(self) -> None:
        self._release_bitmap(False)

    def _release_bitmap(self, ok: bool) -> None:
        """backup_cleanup_sync_bitmap(): on success (or always, unless never) the bitmap
        keeps only what was written during the job; otherwise it keeps everything; a failed
        'always' job also keeps what it did not copy."""
        bitmap, self.sync_bitmap = self.sync_bitmap, None
        if bitmap is None:
            return
        mode = self.bitmap_mode
        bitmap.thaw(adopt=(ok or mode == "always") and mode != "never")
        if not ok and mode == "always":
            for start, n in self.copy_map.todo_ranges():
                bitmap.set_range(start, n)

    def clean(self) -> None:
        if self._before_write in self.source.before_write:
            self.source.before_write.remove(self._before_write)
        if self.filter_name in self.source.filters:
            self.source.filters.remove(self.filter_name)
        self._drop_filter()
        self.source.users.discard(self.id)
        self.target.users.discard(self.id)
        self.target.job_targets.discard(self.job_type)
        if self.owns_target:
            self.target.close()
        if self.on_clean is not None:
            self.on_clean()

    def drain_rank(self) -> int:
        """A drain of all nodes reaches the job first through its target (the nodes it
        reads from are reached through its filter, which is newer)."""
        return self.target.serial

    def _drop_filter(self) -> None:
        """What QEMU 7.2 shows when a backup's copy-before-write filter leaves the graph:
        the filters of older backups of the same source sit above it and are drained with
        it, so those jobs (still running) flicker paused/running, newest first."""
        reg = self.registry
        if self.job_type != "backup" or reg is None or self not in reg.jobs:
            return
        older = reg.jobs[reg.jobs.index(self) + 1:]
        reg.release(reg.quiesce(lambda j: j in older and j.job_type == "backup"
                                and isinstance(j, BackupJob) and j.source is self.source))

    async def run(self) -> None:
        if self.sync == "none":  # copy-before-write only, until cancelled
            self.idle_until_cancel = True
            while True:
                await self.sleep(3600)
        await self.copy_all()
        # QEMU's backup does not flush the target; durability without delaying completion
        self.io_background(self.target.flush, hold=self.files)

    async def copy_all(self) -> None:
        """One pass over the source, CHUNK by CHUNK, with progress, policies and speed.

        As block-copy: wait while the slice's quota is used up, charge the chunk, copy it
        (so the last chunk goes out without a wait)."""
        length = self.source.length
        if self.cbw:  # total: what was to copy at the start (all, or a bitmap's clusters)
            self.set_progress(self.copy_map.copied, self.total_progress)
        else:
            self.set_progress(0, length)
        offset = 0
        while offset < length:
            n = min(CHUNK, length - offset)
            todo = self.copy_map.todo_bytes(offset, n) if self.cbw else n
            if todo:  # a bitmap sync skips clean chunks, and charges only what it copies
                await self.throttle()
                self.dispatched(todo)
                await self._copy_with_policy(offset, n)
            offset += n
            self.set_progress(self.copy_map.copied if self.cbw else offset)
        await self.pause_point()

    async def _copy_with_policy(self, offset: int, n: int) -> None:
        await self._with_policy(self._copy, offset, n)

    async def _with_policy(self, fn: Any, *args: Any) -> None:
        """Run a copy in a worker thread, applying on-source-error / on-target-error."""
        while True:
            try:
                await self.io(fn, *args, hold=self.files)
                return
            except BlockIOError as e:
                policy = self.on_source_error if e.operation == "read" else self.on_target_error
                action = error_action(policy, e.errno)
                reg = self._reg()
                reg.events.emit("BLOCK_JOB_ERROR", {"device": self.id,
                                                    "operation": e.operation,
                                                    "action": action})
                if action == "report":
                    raise JobError(os.strerror(e.errno)) from None
                if action == "stop":
                    self.io_status = "nospace" if e.errno == errnos.ENOSPC else "failed"
                    if not self.user_paused:
                        self.user_paused = True
                        self.pause_count += 1
                await self.pause_point()  # ignore: retry at once; stop: after resume

    def _mark_target(self, offset: int, n: int) -> None:
        """copy_file_range wrote past the nodes above the file: mark their bitmaps (and the
        file's), as the write through them would have."""
        node: BlockNode | None = self.target
        while node is not None:
            node.mark_dirty(offset, n)
            node = node.children[0] if node.children and node.plain_file() is not None \
                else None

    def _copy(self, offset: int, n: int) -> None:
        """The job's own copy of a chunk: the clusters no write has copied yet."""
        if not self.cbw:
            self._copy_range(offset, n)
            return
        runs = self.copy_map.claim(offset, n)
        try:
            for start, length in runs:
                self._copy_range(start, length)
        except BaseException:
            self.copy_map.finish(runs, False)
            raise
        self.copy_map.finish(runs, True)

    def _copy_range(self, offset: int, n: int) -> None:
        if self._fast:
            src, dst = self.source.plain_file(), self.target.plain_file()
            assert src is not None and dst is not None
            done = 0
            try:
                while done < n:
                    got = os.copy_file_range(src.fd, dst.fd, n - done, offset + done,
                                             offset + done)
                    if got == 0:  # source shorter than it claimed: zeros, as a read would
                        dst.pwrite(offset + done, bytes(n - done))
                        break
                    done += got
                self._mark_target(offset, n)
                return
            except OSError as e:
                if e.errno not in (errnos.EXDEV, errnos.ENOSYS, errnos.EOPNOTSUPP,
                                   errnos.EINVAL):
                    raise BlockIOError("write", e.errno or errnos.EIO) from None
                self._fast = False
        try:
            data = self.source.pread(offset, n)
        except OSError as e:
            raise BlockIOError("read", e.errno or errnos.EIO) from None
        if self.is_cancelled:  # the read was stuck and the job has been cancelled meanwhile
            return
        try:
            self.target.pwrite(offset, data)
        except OSError as e:
            raise BlockIOError("write", e.errno or errnos.EIO) from None
