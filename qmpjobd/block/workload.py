"""x-daemon-disk-workload: an emulated guest writing to its disks, for load and soak (a
qmpjobd extension; QEMU clients never meet it).

Each workload writes ``block-size`` blocks to the node a device's drive is now (it follows a
mirror's pivot) at ``rate`` bytes a second, through BlockNode.pwrite, the path a device's
writes take: backups copy before them, mirrors and bitmaps see them.  Where in the range
``[offset, offset + length)`` it writes: ``sweep`` goes through it in order, ``random``
anywhere in it, ``hot-set`` in its first eighth.  Every block holds the number of the write
(its low byte), so each write changes the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from ..protocol.errors import QMPError
from ..protocol.session import Session
from ..schema import Registry
from .nodes import BlockNode

log = logging.getLogger(__name__)

TICK = 0.01
"""Seconds between batches: a rate is met on average, a batch of writes per tick."""

MAX_BLOCK = 1 << 20


class DiskWorkload:
    """One device's writer."""

    def __init__(self, device: str, node_of: Callable[[], BlockNode], args: dict[str, Any]
                 ) -> None:
        self.device = device
        self.node_of = node_of
        self.rate: int = args.get("rate", 0)
        self.block: int = args.get("block-size", 4096)
        self.pattern: str = args.get("pattern", "random")
        self.offset: int = args.get("offset", 0)
        self.length: int | None = args.get("length")
        self.writes = 0
        self.bytes = 0
        self.error: str | None = None
        self._random = random.Random(0)
        self._next = 0
        self._task: asyncio.Task[None] | None = None
        self._in_flight: asyncio.Future[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                             name=f"disk workload {self.device}")

    async def stop(self) -> None:
        """Stop writing; returns once the batch in flight (in its thread) is done, so that
        nothing lands after the caller has heard back."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._in_flight is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._in_flight)
            self._in_flight = None

    def _where(self, size: int) -> int:
        """The next write's offset, by the pattern, within the range and the disk."""
        end = size if self.length is None else min(size, self.offset + self.length)
        span = max(0, end - self.offset - self.block)
        if self.pattern == "sweep":
            at = self._next % (span + 1)
            self._next = at + self.block
        elif self.pattern == "hot-set":
            at = self._random.randrange(0, span // 8 + 1)
        else:
            at = self._random.randrange(0, span + 1)
        return self.offset + at

    def _batch(self, count: int) -> None:
        """In a worker thread: ``count`` writes to the device's node as it is now."""
        node = self.node_of()
        files = node.files()
        for f in files:  # a close of the node waits for these writes
            f.hold()
        try:
            size = node.length
            for _ in range(count):
                if self.offset + self.block > size:
                    raise QMPError("the workload's range is past the end of the disk")
                data = bytes([self.writes & 0xFF]) * self.block
                node.pwrite(self._where(size), data)
                self.writes += 1
                self.bytes += self.block
        finally:
            for f in files:
                f.release()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start, done = loop.time(), 0
        while True:
            await asyncio.sleep(TICK)
            due = int((loop.time() - start) * self.rate / self.block) - done
            if due <= 0:
                continue
            self._in_flight = loop.run_in_executor(None, self._batch, due)
            try:
                await asyncio.shield(self._in_flight)
            except (OSError, QMPError) as e:  # a failing disk ends the workload, not the daemon
                self.error = str(e)
                log.warning("disk workload on %s stopped: %s", self.device, e)
                return
            done += due

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device": self.device, "rate": self.rate,
                               "block-size": self.block, "pattern": self.pattern,
                               "writes": self.writes, "bytes": self.bytes}
        if self.error is not None:
            out["error"] = self.error
        return out


class DiskWorkloads:
    """The workloads by device, with their QMP commands."""

    def __init__(self, drive_of: Callable[[str], BlockNode]) -> None:
        self.drive_of = drive_of
        """The node a device's drive is now (QEMU's texts when there is none)."""
        self.running: dict[str, DiskWorkload] = {}
        self.stopped: dict[str, DiskWorkload] = {}

    async def set(self, args: dict[str, Any], session: Session) -> None:
        """x-daemon-disk-workload: start, change or (rate 0) stop a device's writer; the
        reply comes once the old writer's last write is done."""
        device = args["device"]
        self.drive_of(device)  # the device exists and has a drive
        block = args.get("block-size", 4096)
        if not 0 < block <= MAX_BLOCK:
            raise QMPError(f"Parameter 'block-size' must be between 1 and {MAX_BLOCK}")
        old = self.running.pop(device, None)
        if old is not None:
            await old.stop()
        self.stopped.pop(device, None)
        if args.get("rate", 0) > 0:
            work = DiskWorkload(device, lambda: self.drive_of(device), args)
            if old is not None:  # counting goes on across changes
                work.writes, work.bytes = old.writes, old.bytes
            self.running[device] = work
            work.start()
        elif old is not None:
            self.stopped[device] = old

    def query(self, args: dict[str, Any], session: Session) -> Any:
        """x-query-disk-workload: each device's writer, running or stopped."""
        every = {**self.stopped, **self.running}
        return [w.info() | {"running": d in self.running} for d, w in every.items()]

    def close(self) -> None:
        """Stop every writer (a batch in flight finishes in its thread)."""
        for work in self.running.values():
            if work._task is not None:
                work._task.cancel()
        self.running.clear()

    def register(self, registry: Registry) -> None:
        registry.register("x-daemon-disk-workload", self.set)
        registry.register("x-query-disk-workload", self.query)

