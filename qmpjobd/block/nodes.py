"""Block nodes: file, raw (over another node), null-co and blkdebug (error injection).

I/O methods are synchronous and meant to run in a worker thread (``asyncio.to_thread``), so
the event loop never waits on a disk.  Errors are OSError with the errno QEMU would see.
"""

from __future__ import annotations

import ctypes
import errno as errnos
import itertools
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..libc import libc
from ..protocol.encode import qemu_dumps
from ..protocol.request import qdict_order
from .bitmaps import DirtyBitmap

FALLOC_KEEP_SIZE, FALLOC_PUNCH_HOLE, FALLOC_ZERO_RANGE = 0x01, 0x02, 0x10


class BlockNode:
    """A node in the block graph: a named byte range that can be read and written."""

    driver = ""

    _serials = itertools.count()

    def __init__(self, node_name: str, read_only: bool = False) -> None:
        self.serial = next(self._serials)
        """Creation order: QEMU walks nodes in this order when it drains them all."""
        self.node_name = node_name
        self.read_only = read_only
        self.cache: dict[str, bool] = {"no-flush": False, "direct": False, "writeback": True}
        """BlockdevCacheInfo from the node's cache options (reported, not enforced)."""
        self.detect_zeroes = "off"
        self.children: list[BlockNode] = []
        self.parents: list[BlockNode] = []
        self.users: set[str] = set()
        """Jobs (by id) that use this node; a used node cannot be deleted."""
        self.job_targets: set[str] = set()
        """Jobs (by type) writing to this node: blockdev-del names them."""
        self.depth = 1
        """Longest chain of nodes from here down (bounded by the graph)."""
        self.monitor_owned = False
        """Added by blockdev-add itself (not an inline child): only these can be deleted."""
        self.unmap = False
        """``discard: unmap``: discard requests reach the layer below (QEMU's BDRV_O_UNMAP,
        checked at every layer); with the default ``ignore`` they stop here."""
        self.bitmaps: dict[str, DirtyBitmap] = {}
        """Dirty bitmaps by name, oldest first (query-named-block-nodes lists newest first)."""
        self.trackers: list[DirtyBitmap] = []
        """Jobs' own dirty bitmaps (a mirror's): marked like the named ones, not listed."""
        self.devices: set[str] = set()
        """The devices whose drive this node is (blockdev-del refuses it: 'in use')."""
        self.exports: set[str] = set()
        """The block exports (by id) serving this node (blockdev-del refuses it too)."""
        self._writes = threading.Condition()
        self._in_flight = 0
        self._frozen = 0
        self.filters: list[str] = []
        """Names of the filter nodes above this one that do not share writes (a backup's
        copy-before-write filter): a write by node name is refused while one is there."""
        self.after_write: list[Callable[[int, int, bytes | None], None]] = []
        """Called with (offset, length, data) in the writer's thread after a write (data
        None: zeroes or a discard) changed this node (a write-blocking mirror)."""
        self.before_write: list[Callable[[int, int], None]] = []
        """Called with (offset, length) in the writer's thread before a write or discard
        changes this node's data (a backup's copy-before-write); raising fails the write."""

    @property
    def length(self) -> int:
        """Size in bytes."""
        raise NotImplementedError

    def pread(self, offset: int, length: int, event: bool = False) -> bytes:
        """Read ``length`` bytes at ``offset`` (in a worker thread).  ``event``: the read comes
        from a format driver, which is what fires blkdebug's ``read_aio`` rules."""
        raise NotImplementedError

    def pwrite(self, offset: int, data: bytes, event: bool = False) -> None:
        """Write ``data`` at ``offset`` (in a worker thread); ``event`` as for pread.  The
        node's bitmaps are marked whether or not the write succeeds, as QEMU's
        bdrv_co_write_req_finish() marks them."""
        self._change(offset, len(data), data, lambda: self._pwrite(offset, data, event))

    def _change(self, offset: int, length: int, data: bytes | None,
                apply: Callable[[], None]) -> None:
        """Every change to the node's data (write, zeroes, discard) goes through here: held
        while the node is frozen, copy-before-write hooks first, then ``apply``, the bitmaps
        marked even if it fails, then the after-write hooks (``data`` None: not a write)."""
        self._enter_write()
        try:
            for hook in list(self.before_write):
                hook(offset, length)
            try:
                apply()
            finally:
                if self.bitmaps or self.trackers:
                    self.mark_dirty(offset, length)
            for after in list(self.after_write):
                after(offset, length, data)
        finally:
            self._leave_write()

    def _enter_write(self) -> None:
        """Wait while a job holds this node's writes (a mirror's last sync), then count the
        write as in flight."""
        with self._writes:
            while self._frozen:
                self._writes.wait()
            self._in_flight += 1

    def _leave_write(self) -> None:
        with self._writes:
            self._in_flight -= 1
            self._writes.notify_all()

    def freeze(self) -> None:
        """Hold new writes (and discards) and wait until those in flight are done: a drained
        section, in a worker thread."""
        with self._writes:
            self._frozen += 1
            while self._in_flight:
                self._writes.wait()

    def thaw(self) -> None:
        """End a :meth:`freeze`: held writes go on."""
        with self._writes:
            self._frozen -= 1
            self._writes.notify_all()

    def _pwrite(self, offset: int, data: bytes, event: bool) -> None:
        """The driver's write."""
        raise NotImplementedError

    def mark_dirty(self, offset: int, length: int) -> None:
        """A write or discard reached ``[offset, offset + length)`` of this node."""
        for bitmap in [*self.bitmaps.values(), *self.trackers]:
            bitmap.mark(offset, length)

    def discard(self, offset: int, length: int) -> None:
        """Discard a range (in a worker thread), if this node unmaps (QEMU checks each
        layer); it changes the data, so the copy-before-write hooks run and bitmaps mark."""
        if self.unmap and length:
            self._change(offset, length, None, lambda: self._discard(offset, length))

    def write_zeroes(self, offset: int, length: int) -> None:
        """Make a range read as zeros (in a worker thread): a write for the copy-before-write
        hooks and the bitmaps, which the file driver does with FALLOC_FL_ZERO_RANGE as
        file-posix does (the range then reads as a hole in block status)."""
        self._change(offset, length, None, lambda: self._write_zeroes(offset, length))

    def _write_zeroes(self, offset: int, length: int) -> None:
        """The driver's zeroing: passed to the layer below, else written as zeros."""
        if self.children:
            self.children[0].write_zeroes(self._child_offset(offset), length)
            return
        while length:
            n = min(length, 4 << 20)
            self._pwrite(offset, bytes(n), False)
            offset, length = offset + n, length - n

    def _discard(self, offset: int, length: int) -> None:
        """The driver's discard: passed to the layer below."""
        if self.children:
            self.children[0].discard(self._child_offset(offset), length)

    def _child_offset(self, offset: int) -> int:
        """Where ``offset`` lies in the first child."""
        return offset

    def actual_size(self) -> int | None:
        """Allocated bytes on the host, or None where QEMU reports none."""
        return self.children[0].actual_size() if self.children else 0

    def status(self, offset: int, length: int) -> list[tuple[int, bool]]:
        """Block status of ``[offset, offset + length)`` (in a worker thread): runs of
        (length, is_data); a run that is not data reads as zeros (a hole)."""
        if self.children:
            return self.children[0].status(self._child_offset(offset), length)
        return [(length, True)] if length else []

    def json_options(self) -> dict[str, Any]:
        """The node's options as QEMU puts them in a ``json:`` filename."""
        return {"driver": self.driver}

    def json_filename(self) -> str:
        """``json:{...}``: QEMU's name for a node that no plain file name describes."""
        return "json:" + qemu_dumps(self.json_options()).decode()

    def image_info(self, flat: bool = True) -> dict[str, Any]:
        """ImageInfo (QEMU's key order)."""
        image: dict[str, Any] = {"virtual-size": self.length, "filename": self.filename(),
                                 "format": self.driver}
        actual = self.actual_size()
        if actual is not None:
            image["actual-size"] = actual
        if self.driver != "null-co":
            image["dirty-flag"] = False
        return image

    def backing_depth(self, flat: bool) -> int:
        """backing_file_depth in query-named-block-nodes."""
        return 0

    def info(self, flat: bool = False) -> dict[str, Any]:
        """BlockDeviceInfo as query-named-block-nodes shows it (QEMU's key order)."""
        return {"iops_rd": 0, "detect_zeroes": self.detect_zeroes,
                "image": self.image_info(flat),
                "iops_wr": 0, "ro": self.read_only, "node-name": self.node_name,
                "backing_file_depth": self.backing_depth(flat),
                "drv": self.driver, "iops": 0, "bps_wr": 0, "write_threshold": 0,
                **self._bitmap_info(),
                "encrypted": False, "bps": 0, "bps_rd": 0,
                "cache": dict(self.cache), "file": self.filename()}

    def _bitmap_info(self) -> dict[str, Any]:
        """``dirty-bitmaps``, newest first; absent when the node has none."""
        if not self.bitmaps:
            return {}
        return {"dirty-bitmaps": [b.info() for b in reversed(self.bitmaps.values())]}

    def flush(self) -> None:
        """Make written data durable (in a worker thread)."""
        for child in self.children:
            child.flush()

    def close(self) -> None:
        """Release OS resources."""

    def plain_file(self) -> FileNode | None:
        """The file under this node if reads and writes pass through unchanged, else None."""
        return None

    def files(self) -> list[FileNode]:
        """Every file node this node's I/O reaches (what a worker thread must hold)."""
        return [f for child in self.children for f in child.files()]

    def filename(self) -> str:
        """The file name shown in query-named-block-nodes."""
        return self.children[0].filename() if self.children else ""


class FileNode(BlockNode):
    """The ``file`` driver: a regular file (or block device) on the host."""

    driver = "file"

    def __init__(self, node_name: str, path: str, read_only: bool = False,
                 create_size: int | None = None) -> None:
        super().__init__(node_name, read_only)
        self.path = path
        self.fd = open_image(path, read_only, create_size)
        self._lock = threading.Lock()
        self._holds = 0
        self._closing = False

    @property
    def length(self) -> int:
        return os.fstat(self.fd).st_size

    def pread(self, offset: int, length: int, event: bool = False) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) < length:  # past the end of a growing/shrinking file: zeros, as QEMU
            data += bytes(length - len(data))
        return data

    def _pwrite(self, offset: int, data: bytes, event: bool) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            offset += n
            view = view[n:]

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def _write_zeroes(self, offset: int, length: int) -> None:
        if libc().fallocate(self.fd, FALLOC_ZERO_RANGE, ctypes.c_long(offset),
                            ctypes.c_long(length)) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errnos.EOPNOTSUPP, errnos.ENOSYS, errnos.EINVAL):
            raise OSError(err, os.strerror(err))
        super()._write_zeroes(offset, length)  # no ZERO_RANGE here: write the zeros

    def _discard(self, offset: int, length: int) -> None:
        """Punch a hole: reads of it give zeros."""
        if libc().fallocate(self.fd, FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE,
                            ctypes.c_long(offset), ctypes.c_long(length)) != 0:
            err = ctypes.get_errno()
            if err not in (errnos.EOPNOTSUPP, errnos.ENOSYS):  # no holes here: nothing done
                raise OSError(err, os.strerror(err))

    def hold(self) -> None:
        """A worker thread is about to use the descriptor: a close waits for it."""
        with self._lock:
            self._holds += 1

    @property
    def closing(self) -> bool:
        """The node was closed (or will be once the calls holding it return)."""
        return self._closing

    def release(self) -> None:
        """The worker's call returned (possibly long after its job gave up on it)."""
        with self._lock:
            self._holds -= 1
            close = self._closing and self._holds == 0
        if close:
            os.close(self.fd)

    def close(self) -> None:
        """Close the descriptor now, or when the last call that uses it returns: an
        abandoned call stuck in the kernel must never write to a reused descriptor."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            close = self._holds == 0
        if close:
            os.close(self.fd)

    def files(self) -> list[FileNode]:
        return [self]

    def actual_size(self) -> int | None:
        return os.fstat(self.fd).st_blocks * 512

    def status(self, offset: int, length: int) -> list[tuple[int, bool]]:
        """Data and holes from SEEK_DATA/SEEK_HOLE, as file-posix finds them."""
        runs: list[tuple[int, bool]] = []
        end = offset + length
        size = self.length
        pos = offset
        while pos < end:
            if pos >= size:  # past the end of the file: reads give zeros
                runs.append((end - pos, False))
                break
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errnos.ENXIO:  # no SEEK_DATA here: all data
                    runs.append((end - pos, True))
                    break
                data = size
            if data > pos:
                stop = min(data, end)
                runs.append((stop - pos, False))
                pos = stop
                continue
            hole = os.lseek(self.fd, pos, os.SEEK_HOLE)
            stop = min(max(hole, pos + 1), end)
            runs.append((stop - pos, True))
            pos = stop
        return runs

    def plain_file(self) -> FileNode | None:
        return self

    def filename(self) -> str:
        return self.path

    def json_options(self) -> dict[str, Any]:
        return {"driver": "file", "filename": self.path}


def open_image(path: str, read_only: bool, create_size: int | None = None) -> int:
    """Open a regular file or block device without ever blocking the event loop.

    O_NONBLOCK keeps a FIFO from hanging the open; anything that is not a regular file or a
    block device is refused.  With ``create_size`` the file is created (or truncated) to
    that size first, as drive-backup's absolute-paths mode does.
    """
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC | os.O_NONBLOCK
    if create_size is not None:
        flags |= os.O_CREAT
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        err = e.errno or errnos.EIO
        raise OSError(err, f"Could not open '{path}': {os.strerror(err)}") from e
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        raise OSError(errnos.EINVAL, f"Could not open '{path}': not a regular file or "
                                     "block device")
    os.set_blocking(fd, True)
    if create_size is not None and stat.S_ISREG(mode):
        os.ftruncate(fd, 0)
        os.ftruncate(fd, create_size)
    return fd


class RawNode(BlockNode):
    """The ``raw`` format driver over another node (optionally a window of it)."""

    driver = "raw"

    def __init__(self, node_name: str, file: BlockNode, offset: int = 0,
                 size: int | None = None, read_only: bool = False) -> None:
        super().__init__(node_name, read_only)
        self.children = [file]
        self.offset = offset
        self.size = size

    @property
    def length(self) -> int:
        if self.size is not None:
            return self.size
        return self.children[0].length - self.offset

    def pread(self, offset: int, length: int, event: bool = False) -> bytes:
        return self.children[0].pread(self.offset + offset, length, event=True)

    def _pwrite(self, offset: int, data: bytes, event: bool) -> None:
        self.children[0].pwrite(self.offset + offset, data, event=True)

    def _child_offset(self, offset: int) -> int:
        return self.offset + offset

    def plain_file(self) -> FileNode | None:
        return self.children[0].plain_file() if self.offset == 0 and self.size is None else None

    def json_options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"driver": "raw", "file": self.children[0].json_options()}
        if self.offset:
            out["offset"] = self.offset
        if self.size is not None:
            out["size"] = self.size
        return out


class NullNode(BlockNode):
    """The ``null-co`` driver: a size, reads give zeros, writes vanish."""

    driver = "null-co"

    def __init__(self, node_name: str, size: int = 1 << 30, read_zeroes: bool = False,
                 given: dict[str, Any] | None = None) -> None:
        super().__init__(node_name)
        self.size = size
        self.read_zeroes = read_zeroes
        self.given = dict(given or {})
        """The options the client gave (they decide the file name, as in QEMU)."""

    @property
    def length(self) -> int:
        return self.size

    def pread(self, offset: int, length: int, event: bool = False) -> bytes:
        self._delay()
        return bytes(length)

    def _pwrite(self, offset: int, data: bytes, event: bool) -> None:
        self._delay()

    def _delay(self) -> None:
        """``latency-ns``: every request takes this long (in the worker thread)."""
        latency = self.given.get("latency-ns", 0)
        if latency > 0:
            time.sleep(latency / 1e9)

    def actual_size(self) -> int | None:
        return 0

    def status(self, offset: int, length: int) -> list[tuple[int, bool]]:
        return [(length, False)] if length else []

    def filename(self) -> str:
        if set(self.given) <= {"latency-ns"}:
            return "null-co://"
        return self.json_filename()

    def json_options(self) -> dict[str, Any]:
        return {**self.given, "driver": "null-co"}


@dataclass
class InjectRule:
    """One blkdebug ``inject-error`` rule."""

    event: str
    errno: int = errnos.EIO
    sector: int | None = None
    once: bool = False
    fired: bool = False


class BlkdebugNode(BlockNode):
    """The ``blkdebug`` driver: passes I/O to ``image`` but fails it where a rule says so.

    A rule for ``read_aio`` (``write_aio``) fails reads (writes) that touch ``sector``
    (512-byte units; any I/O when no sector is given) with ``errno``; ``once`` rules fire
    a single time.  As in QEMU, the events fire only for I/O that a format driver (raw)
    above sends; I/O issued to the blkdebug node directly passes untouched.
    """

    driver = "blkdebug"

    def __init__(self, node_name: str, image: BlockNode, rules: list[InjectRule],
                 given_rules: list[dict[str, Any]] | None = None) -> None:
        super().__init__(node_name)
        self.children = [image]
        self.rules = rules
        self.given_rules = given_rules or []
        self._lock = threading.Lock()

    @property
    def length(self) -> int:
        return self.children[0].length

    def _check(self, event: str, offset: int, length: int) -> None:
        with self._lock:
            for rule in self.rules:
                if rule.event != event or (rule.once and rule.fired):
                    continue
                if rule.sector is not None:
                    start = rule.sector * 512
                    if not (offset < start + 512 and start < offset + length):
                        continue
                rule.fired = True
                err = rule.errno if 0 < rule.errno < 4096 else errnos.EIO
                raise OSError(err, os.strerror(err))

    def pread(self, offset: int, length: int, event: bool = False) -> bytes:
        if event:
            self._check("read_aio", offset, length)
        return self.children[0].pread(offset, length)

    def _pwrite(self, offset: int, data: bytes, event: bool) -> None:
        if event:
            self._check("write_aio", offset, len(data))
        self.children[0].pwrite(offset, data)

    def json_options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.children[0].json_options(), "driver": "blkdebug"}
        for i, rule in enumerate(self.given_rules):
            # QEMU flattens the rule in QDict order and then copies the options once more
            # (qdict_clone_shallow), which flips keys that share a bucket again; the net
            # effect, checked against QEMU 7.2 in tests/test_block.py, is this order
            for key in reversed(qdict_order(list(rule))):
                out[f"inject-error.{i}.{key}"] = rule[key]
        return out

    def filename(self) -> str:
        return self.json_filename()

    def actual_size(self) -> int | None:
        return None

    def image_info(self, flat: bool = True) -> dict[str, Any]:
        image = super().image_info(flat)
        if not flat:
            image = {"backing-image": self.children[0].image_info(flat), **image}
        return image

    def backing_depth(self, flat: bool) -> int:
        return 0 if flat else 1
