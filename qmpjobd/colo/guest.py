"""The guest model each daemon replicates: RAM with dirty tracking, a seeded workload, a
device-state blob and a digest of both.

RAM is a ``bytearray`` of 4 KiB pages.  The workload stamps pages only while the machine runs;
every write marks the page dirty (the analogue of KVM dirty logging) and its digest chunk stale.
The digest is SHA-256 over the SHA-256 of each 256 KiB chunk followed by the device blob, so
that after a checkpoint only the chunks that changed are hashed again.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import mmap
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import orjson

from .wire import runs

PAGE_SIZE = 4096
MAX_STEP = 20000
"""Most pages the workload writes in one tick (about 20 ms of Python): 2 M pages/s at 10 ms."""
CHUNK_PAGES = 64
PATTERNS = ("random", "sweep", "hot-set")
_STAMP = struct.Struct(">QQ")
_MASK64 = (1 << 64) - 1
_memcmp = ctypes.CDLL(None).memcmp  # a foreign call: the GIL is released while it runs
_memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_memcmp.restype = ctypes.c_int


@dataclass
class Workload:
    """What the synthetic guest does while it runs."""

    rate: int = 0
    """Pages written per second (0: an idle guest)."""
    pattern: str = "random"
    """``random`` pages, a sequential ``sweep``, or a ``hot-set`` of the first pages."""
    seed: int = 1
    hot_pages: int = 0
    """Size of the hot set in pages (0: one sixteenth of RAM)."""


def splitmix64(state: int) -> tuple[int, int]:
    """One step of SplitMix64: (new state, output).  Its whole state is one integer, so it
    travels in the device blob and both sides continue the same sequence."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


class Buffer:
    """Fixed anonymous memory (pages cost RSS only once written) whose runs of pages can be
    copied with the GIL released."""

    def __init__(self, size: int) -> None:
        # private: a page never written reads as the shared zero page and costs nothing,
        # even when a save or a checkpoint reads all of RAM
        self.data = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE)
        self.view = memoryview(self.data)
        self._c = (ctypes.c_char * size).from_buffer(self.data) if size else None
        self.address = ctypes.addressof(self._c) if self._c is not None else 0

    def copy_runs_from(self, src: Buffer, runs: Iterable[tuple[int, int]],
                       page_size: int = PAGE_SIZE) -> None:
        """Copy whole pages from ``src`` at the same offsets (memmove releases the GIL)."""
        for first, count in runs:
            off = first * page_size
            ctypes.memmove(self.address + off, src.address + off, count * page_size)

    def zero_run(self, first: int, count: int, page_size: int = PAGE_SIZE) -> None:
        """Zero-fill a run of pages: their memory is released (MADV_DONTNEED on this private
        anonymous mapping: they read back as zeros and cost nothing until written), else
        they are written with zeros."""
        start, length = first * page_size, count * page_size
        if start % mmap.PAGESIZE == 0 and length % mmap.PAGESIZE == 0:
            try:
                self.data.madvise(mmap.MADV_DONTNEED, start, length)
                return
            except (OSError, AttributeError, ValueError):
                pass
        ctypes.memset(self.address + start, 0, length)


class ChunkHashes:
    """A two-level SHA-256 tree over a buffer: a hash per page, a hash per chunk of page hashes,
    recomputed only for the pages marked stale (so an idle checkpoint costs almost nothing)."""

    def __init__(self, buf: Buffer, page_size: int = PAGE_SIZE) -> None:
        self.buf = buf
        self.page_size = page_size
        self.shift = CHUNK_PAGES.bit_length() - 1
        pages = len(buf.data) // page_size
        zero_page = hashlib.sha256(bytes(page_size)).digest()
        self.pages = [zero_page] * pages
        chunks = (pages + CHUNK_PAGES - 1) // CHUNK_PAGES
        self.chunks = [self._chunk_hash(c) for c in range(min(chunks, 1))] * chunks
        if chunks and pages % CHUNK_PAGES:
            self.chunks[-1] = self._chunk_hash(chunks - 1)
        self.stale: set[int] = set()
        """Pages whose hash is out of date (only changed on the event loop thread)."""
        self.stale_runs: list[tuple[int, int]] = []
        """Runs of pages whose hash is out of date (bulk marks: O(1) per run on the loop)."""
        self.zero_runs: list[tuple[int, int]] = []
        """Runs of pages now all zeros: their hash is known without reading them."""
        self.zero_page = zero_page
        self._lock = threading.Lock()

    @property
    def has_stale(self) -> bool:
        """Some hash is out of date."""
        return bool(self.stale or self.stale_runs or self.zero_runs)

    def _chunk_hash(self, c: int) -> bytes:
        return hashlib.sha256(b"".join(self.pages[c * CHUNK_PAGES:(c + 1) * CHUNK_PAGES])).digest()

    def mark_runs(self, runs: Iterable[tuple[int, int]]) -> None:
        """Pages of these runs changed (expanded into pages only by the hashing thread)."""
        self.stale_runs.extend(runs)

    def mark_zero(self, runs: Iterable[tuple[int, int]]) -> None:
        """Pages of these runs are all zeros now (an incoming zero record)."""
        self.zero_runs.extend(runs)

    def refresh(self) -> Callable[[], None]:
        """Take the stale pages now (O(1) on the event loop) and return the work that hashes
        them, to run in a worker thread.  The buffer should not change meanwhile (the guest
        is stopped); if it does, the digest is of a moving state, but nothing breaks."""
        pages, runs, zero = self.stale, self.stale_runs, self.zero_runs
        self.stale, self.stale_runs, self.zero_runs = set(), [], []
        return lambda: self._rehash_pages(pages, runs, zero)

    def _rehash_pages(self, pages: set[int], runs: list[tuple[int, int]],
                      zero: list[tuple[int, int]] | None = None) -> None:
        # no per-page containers: a few hundred thousand of them would set off full
        # garbage collections, which hold the GIL and so stall the event loop
        for first, count in runs:
            pages.update(range(first, first + count))
        ps, view, sha = self.page_size, self.buf.view, hashlib.sha256
        with self._lock:
            hashes = self.pages
            chunks: set[int] = set()
            for first, count in zero or ():  # known: no need to read them
                hashes[first:first + count] = [self.zero_page] * count
                chunks.update(range(first >> self.shift, ((first + count - 1) >> self.shift)
                                    + 1))
            for p in pages:
                hashes[p] = sha(view[p * ps:(p + 1) * ps]).digest()
            chunks.update(p >> self.shift for p in pages)
            for c in chunks:
                self.chunks[c] = self._chunk_hash(c)

    def refresh_copy(self, limit: int = 1 << 30) -> Callable[[], None]:
        """Like :meth:`refresh` but copies (at most ``limit`` of) the stale pages first, for a
        buffer that keeps changing while the hashing runs; the rest stay stale."""
        ps, view = self.page_size, self.buf.view
        budget = limit
        while self.stale_runs and budget > 0:  # bounded: at most ``limit`` pages per call
            first, count = self.stale_runs.pop()
            n = min(count, budget)
            self.stale.update(range(first, first + n))
            if n < count:
                self.stale_runs.append((first + n, count - n))
            budget -= n
        take: set[int] = set()
        for p in self.stale:
            if len(take) >= limit:
                break
            take.add(p)
        self.stale -= take
        copies = [(p, bytes(view[p * ps:(p + 1) * ps])) for p in take]
        zero, self.zero_runs = self.zero_runs, []

        def work() -> None:
            if zero:
                self._rehash_pages(set(), [], zero)
            self._rehash(copies)
        return work

    def _rehash(self, items: Sequence[tuple[int, bytes | memoryview]]) -> None:
        sha = hashlib.sha256
        with self._lock:  # a query and a checkpoint may hash at the same time
            pages = self.pages
            for p, data in items:
                pages[p] = sha(data).digest()
            for c in {p >> self.shift for p, _ in items}:
                self.chunks[c] = self._chunk_hash(c)

    def root(self, device: bytes) -> str:
        """The digest of the buffer (as of the last refresh) and ``device``."""
        return hashlib.sha256(b"".join(self.chunks) + device).hexdigest()


class Guest:
    """Guest RAM, its dirty log, the workload's state and the device state."""

    def __init__(self, ram_size: int = 64 << 20, workload: Workload | None = None,
                 device_size: int = 4096, side: int = 0, page_size: int = PAGE_SIZE) -> None:
        if ram_size <= 0 or ram_size % page_size:
            raise ValueError(f"guest RAM size must be a positive multiple of {page_size}")
        self.page_size = page_size
        self.pages = ram_size // page_size
        self.ram = Buffer(ram_size)
        self.hashes = ChunkHashes(self.ram, page_size)
        self.workload = workload or Workload()
        self.device_size = device_size
        self.side = side & 0xFF
        self.dirty: set[int] = set()
        """Pages written since the last checkpoint (or since dirty logging started)."""
        self.prng = self.workload.seed & _MASK64
        self.cursor = 0
        self.vclock = 0
        self.checkpoint = 0
        """The last committed checkpoint number (0: none yet)."""
        self.committed_digest = ""
        """Digest of the state at the last committed checkpoint ("" until one exists)."""
        self.settling: asyncio.Future[None] | None = None
        """The committed digest being computed (queries wait for it, so that the checkpoint
        number and its digest are reported together)."""
        self.history: dict[int, str] = {}
        """Digests of recent checkpoints by number (the primary's taken at its STOP)."""
        self._budget = 0.0

    def record_digest(self, checkpoint: int, digest: str) -> None:
        """Remember a checkpoint's digest (the last 16 are kept)."""
        self.history[checkpoint] = digest
        while len(self.history) > 16:
            del self.history[min(self.history)]

    # -- workload --------------------------------------------------------------------------

    def hot_set(self) -> int:
        """Pages in the hot set."""
        return max(1, min(self.pages, self.workload.hot_pages or self.pages // 16))

    def step(self, n: int) -> None:
        """Write ``n`` pages the way the workload's pattern says."""
        ram, ps, pages = self.ram.data, self.page_size, self.pages
        pattern = self.workload.pattern
        side = self.side << 56
        # each side picks its own pages, so a secondary's writes diverge from the primary's
        salt = (self.side * 0x9E3779B97F4A7C15) & _MASK64
        dirty, stale = self.dirty, self.hashes.stale
        prng, cursor, vclock = self.prng, self.cursor, self.vclock
        span = self.hot_set() if pattern == "hot-set" else pages
        pack = _STAMP.pack_into
        for _ in range(n):
            if pattern == "sweep":
                p = cursor
                cursor = cursor + 1 if cursor + 1 < pages else 0
            else:
                prng, x = splitmix64(prng)
                p = (x ^ salt) % span
            vclock += 1
            pack(ram, p * ps, vclock, side | p)
            dirty.add(p)
            stale.add(p)
        self.prng, self.cursor, self.vclock = prng, cursor, vclock

    def advance(self, seconds: float) -> None:
        """Run the workload for ``seconds`` of guest time, at most MAX_STEP pages at once: a
        rate the host cannot keep up with is cut, never allowed to stall the event loop."""
        self._budget = min(self._budget + self.workload.rate * min(seconds, 0.1), MAX_STEP)
        n = int(self._budget)
        if n:
            self._budget -= n
            self.step(n)

    # -- device state ----------------------------------------------------------------------

    def device_state(self, checkpoint: int) -> bytes:
        """The device blob as of now, labelled with checkpoint number ``checkpoint``."""
        state = {"cpu": {"pc": self.vclock * 4 & _MASK64}, "prng": self.prng,
                 "cursor": self.cursor, "vclock": self.vclock, "checkpoint": checkpoint}
        blob = orjson.dumps(state)
        pad = self.device_size - len(blob) - 1
        return blob + b"\n" + b"\0" * pad if pad > 0 else blob + b"\n"

    def parse_device_state(self, blob: bytes) -> dict[str, int]:
        """Check a received device blob before anything is applied; ValueError says why."""
        try:
            state = orjson.loads(blob.split(b"\n", 1)[0])
        except orjson.JSONDecodeError as e:
            raise ValueError(f"device state is not valid: {e}") from None
        if not isinstance(state, dict):
            raise ValueError("device state is not an object")
        out = {}
        for key in ("prng", "cursor", "vclock", "checkpoint"):
            v = state.get(key)
            if type(v) is not int or not 0 <= v <= _MASK64:
                raise ValueError(f"device state: '{key}' must be an integer in 0..2^64-1")
            out[key] = v
        if out["cursor"] >= self.pages:
            raise ValueError("device state: 'cursor' is beyond guest RAM")
        return out

    def load_device_state(self, state: dict[str, int]) -> int:
        """Take over a checked device state; returns its checkpoint number."""
        self.prng, self.cursor, self.vclock = state["prng"], state["cursor"], state["vclock"]
        return state["checkpoint"]

    # -- digests ---------------------------------------------------------------------------

    async def digest_now(self, running: bool) -> str:
        """Digest of the live RAM and the current device state, hashed off the event loop."""
        blob = self.device_state(self.checkpoint)
        while self.hashes.has_stale:
            # a running guest: copy a bounded batch at a time, so other clients never wait
            # long; it is a digest of a moving state anyway
            work = self.hashes.refresh_copy(1024) if running else self.hashes.refresh()
            await asyncio.to_thread(work)
        return self.hashes.root(blob)

    def take_dirty(self) -> set[int]:
        """The dirty log so far (the caller owns it; a new, empty one starts now)."""
        dirty, self.dirty = self.dirty, set()
        return dirty

    def nonzero_runs(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(runs of pages holding data, runs of all-zero pages), for the initial full sync.
        For a worker thread: it reads all of RAM (with the GIL released while comparing)."""
        data: list[tuple[int, int]] = []
        zero: list[tuple[int, int]] = []
        ps, step, base = self.page_size, CHUNK_PAGES, self.ram.address
        zchunk = ctypes.create_string_buffer(step * ps)
        zaddr = ctypes.addressof(zchunk)
        for c in range(0, self.pages, step):
            n = min(step, self.pages - c)
            out = data if _memcmp(base + c * ps, zaddr, n * ps) else zero
            if out and out[-1][0] + out[-1][1] == c:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((c, n))
        return data, zero


def dirty_runs(pages: set[int]) -> list[tuple[int, int]]:
    """A dirty log as sorted runs (for a worker thread: it grows with the log)."""
    return runs(sorted(pages))
