"""The mirror job: copy a source node to a target, report READY, then finish on request.

With nothing writing to the source in qmpjobd, the target stays in sync once the first pass
is done; ``job-complete`` finishes with a pivot (the target takes the source's place for the
nodes listed in ``replaces``), a soft ``block-job-cancel`` in READY finishes without one.
"""

from __future__ import annotations

from typing import Any

from ..jobs import JobCancelled
from .backup import CHUNK, BackupJob

BUF_SIZE = 16 << 20
"""QEMU's default mirror buf-size: what one iteration issues before the rate limit."""


class MirrorJob(BackupJob):
    """blockdev-mirror / drive-mirror with sync full."""

    job_type = "mirror"
    can_complete = True

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.completion_requested = False
        self.pivoted = False

    async def copy_all(self) -> None:
        """As mirror_iteration(): issue up to BUF_SIZE (CHUNK by CHUNK) and charge it to the
        rate limit, then sleep what the limit says; the copy overlaps the slice, as QEMU's
        requests are in flight while it sleeps, and an early sample can run ahead of
        ``speed``."""
        length = self.source.length
        self.set_progress(0, length)
        offset = 0
        while offset < length:
            end = min(offset + BUF_SIZE, length)
            self.dispatched(end - offset)
            while offset < end:
                n = min(CHUNK, end - offset)
                await self._copy_with_policy(offset, n)
                offset += n
                self.set_progress(offset)
                if self.is_cancelled:
                    raise JobCancelled
            await self.rate_limit(0)

    async def run(self) -> None:
        await self.copy_all()
        await self.io(self.target.flush, hold=self.files)  # mirror_flush() before READY
        self.set_ready()
        while not (self.completion_requested or self.cancelled):
            await self.sleep(0.1)  # in sync; a pause point for pause and cancel

    def cancel_mode(self, force: bool) -> bool:
        """Before READY every cancel is forced; in READY a soft cancel completes unpivoted."""
        return force or self.status not in ("ready", "standby")

    def complete(self) -> None:
        self.completion_requested = True

    def commit(self) -> None:
        self.pivoted = self.completion_requested and not self.cancelled
