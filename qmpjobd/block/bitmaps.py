"""Dirty bitmaps (QEMU 7.2's block/dirty-bitmap.c and the block-dirty-bitmap-* commands).

A bitmap belongs to one node and has one bit per granule of it.  Every write that reaches the
node (a guest write, a job's write, ``write -z``, a discard the node passes down) marks the
granules it touches while the bitmap records; reads never do.  Writes run in worker threads,
so a bitmap's bits are changed under its lock.

``count`` is the number of dirty granules times the granularity (not cut at the disk's end,
as QEMU reports it); ``sha256`` is QEMU's x-debug-block-dirty-bitmap-sha256, the hash of the
bits as whole little-endian 64-bit words.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

DEFAULT_GRANULARITY = 65536
"""bdrv_get_default_bitmap_granularity() of a node without clusters (raw, file)."""

MAX_NAME = 1023
"""BDRV_BITMAP_MAX_NAME_SIZE."""


class DirtyBitmap:
    """One named bitmap of a node."""

    def __init__(self, name: str, granularity: int, length: int,
                 recording: bool = True) -> None:
        self.name = name
        self.granularity = granularity
        self.recording = recording
        self.busy = False
        """In use by a job: remove and clear are refused."""
        self.persistent = False
        self.successor: DirtyBitmap | None = None
        """While a backup syncs with this bitmap: the bitmap is frozen and new writes go to
        the successor (QEMU's bdrv_dirty_bitmap_create_successor)."""
        self._granules = -(-length // granularity) if length else 0
        self._bits = bytearray(-(-self._granules // 64) * 8)
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        """Dirty bytes as QEMU counts them: dirty granules times the granularity."""
        with self._lock:
            return int.from_bytes(self._bits, "little").bit_count() * self.granularity

    def mark(self, offset: int, length: int) -> None:
        """A write touched ``[offset, offset + length)``: mark its granules, if recording."""
        if self.successor is not None:
            self.successor.mark(offset, length)
        elif self.recording and length > 0:
            self.set_range(offset, length)

    def set_range(self, offset: int, length: int) -> None:
        """Mark the granules of a byte range, recording or not (a merge does this)."""
        first = offset // self.granularity
        last = min((offset + length - 1) // self.granularity, self._granules - 1)
        if first > last:
            return
        with self._lock:
            self._set_bits(first, last)

    def reset_range(self, offset: int, length: int) -> None:
        """Clear the granules wholly inside ``[offset, offset + length)`` (a write-blocking
        mirror has just written them to its target)."""
        first = -(-offset // self.granularity)
        last = min((offset + length) // self.granularity, self._granules) - 1
        if first > last:
            return
        with self._lock:
            value = int.from_bytes(self._bits, "little")
            value &= ~(((1 << (last - first + 1)) - 1) << first)
            self._bits[:] = value.to_bytes(len(self._bits), "little")

    def _set_bits(self, first: int, last: int) -> None:
        bits = self._bits
        lo_byte, hi_byte = first // 8, last // 8
        if lo_byte == hi_byte:
            bits[lo_byte] |= ((1 << (last - first + 1)) - 1) << (first % 8)
            return
        bits[lo_byte] |= (0xFF << (first % 8)) & 0xFF
        bits[lo_byte + 1:hi_byte] = b"\xff" * (hi_byte - lo_byte - 1)
        bits[hi_byte] |= (1 << (last % 8 + 1)) - 1

    def dirty_ranges(self, offset: int = 0, length: int | None = None
                     ) -> list[tuple[int, int]]:
        """The dirty byte ranges, as (offset, length), merged where granules touch; with
        ``offset``/``length``, only those of the granules that range touches (whole)."""
        g = self.granularity
        first = offset // g
        last = self._granules if length is None else -(-(offset + length) // g)
        lo, hi = first // 8, -(-last // 8)  # whole bytes around the granules asked for
        with self._lock:
            value = int.from_bytes(self._bits[lo:hi], "little")
        value &= ((1 << (last - lo * 8)) - 1) & ~((1 << (first - lo * 8)) - 1)
        out: list[tuple[int, int]] = []
        i = lo * 8
        while value:
            skip = (value & -value).bit_length() - 1
            value >>= skip
            i += skip
            run = (~value & (value + 1)).bit_length() - 1
            out.append((i * g, run * g))
            value >>= run
            i += run
        return out

    def take(self, limit: int) -> list[tuple[int, int]]:
        """Clear and return dirty byte ranges, the first ``limit`` bytes' worth of them (a
        mirror's next pass: a write after this marks them again)."""
        out: list[tuple[int, int]] = []
        size = 0
        for start, n in self.dirty_ranges():
            n = min(n, limit - size)
            out.append((start, n))
            size += n
            if size >= limit:
                break
        with self._lock:
            for start, n in out:
                first, last = start // self.granularity, (start + n - 1) // self.granularity
                for i in range(first, last + 1):
                    self._bits[i // 8] &= ~(1 << (i % 8)) & 0xFF
        return out

    def snapshot(self) -> bytes:
        """A copy of the bits (for a transaction's undo)."""
        with self._lock:
            return bytes(self._bits)

    def clear(self) -> bytes:
        """Clear every bit; returns the old bits (for a transaction's undo)."""
        with self._lock:
            old = bytes(self._bits)
            self._bits[:] = bytes(len(self._bits))
        return old

    def restore(self, bits: bytes) -> None:
        """Put back bits :meth:`clear` returned."""
        with self._lock:
            self._bits[:] = bits

    def merge_from(self, other: DirtyBitmap) -> None:
        """Mark every range dirty in ``other`` (any granularity) in this bitmap."""
        for offset, length in other.dirty_ranges():
            self.set_range(offset, length)

    def freeze(self) -> None:
        """A backup takes the bitmap: it is busy, and writes go to a successor from now."""
        self.busy = True
        self.successor = DirtyBitmap("", self.granularity, self._granules * self.granularity,
                                     recording=self.recording)

    def thaw(self, adopt: bool) -> None:
        """The backup is done with it: become the successor (``adopt``: QEMU's abdicate,
        what was written during the job), or take its bits in (reclaim: nothing lost)."""
        successor, self.successor, self.busy = self.successor, None, False
        if successor is None:
            return
        if adopt:
            self.restore(successor.snapshot())
        else:
            self.merge_from(successor)

    def sha256(self) -> str:
        """x-debug-block-dirty-bitmap-sha256: the hash of the bits' 64-bit words."""
        with self._lock:
            return hashlib.sha256(self._bits).hexdigest()

    def info(self) -> dict[str, Any]:
        """BlockDirtyInfo, in the key order QEMU 7.2 sends it."""
        return {"name": self.name, "recording": self.recording,
                "persistent": self.persistent, "busy": self.busy,
                "granularity": self.granularity, "count": self.count}
