"""The qcow2 format driver, as much of it as fleecing and scratch images need: version 3
images with 16-bit refcounts and no compression, encryption, snapshots or external data file;
a backing node reads through where a cluster was never written.  Images it writes pass
``qemu-img check``; images QEMU wrote open if they use nothing beyond that.

Layout made by :func:`create` (as QEMU's qcow2_co_create lays it out): the header in cluster
0, the refcount table in 1, the first refcount block in 2, the L1 table from 3.  New clusters
are appended at the end of the file.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from typing import Any

from ..errors import QmpjobdError
from ..protocol.request import qdict_order
from .nodes import BlockNode

MAGIC = b"QFI\xfb"
HEADER = struct.Struct(">4sIQIIQIIQQIIQ")
"""The version 2 header fields (72 bytes)."""
V3 = struct.Struct(">QQQII")
"""Version 3 additions: features, refcount order, header length."""
HEADER_LENGTH = 112
"""The header length QEMU 7.2 writes (with the compression type byte and padding)."""
EXT_BACKING_FORMAT, EXT_FEATURE_TABLE, EXT_END = 0xE2792ACA, 0x6803F857, 0
OFFSET_MASK = 0x00FFFFFFFFFFFE00
COPIED, COMPRESSED, ZERO = 1 << 63, 1 << 62, 1
MAX_L1 = 32 << 20
"""Largest L1 table (QEMU's QCOW_MAX_L1_SIZE)."""
MAX_REFTABLE = 8 << 20
"""Largest refcount table (QEMU's QCOW_MAX_REFTABLE_SIZE)."""
REFCOUNT_ORDER = 4


FEATURES = ((0, 0, "dirty bit"), (0, 1, "corrupt bit"), (0, 2, "external data file"),
            (0, 3, "compression type"), (0, 4, "extended L2 entries"),
            (1, 0, "lazy refcounts"), (2, 0, "bitmaps"), (2, 1, "raw external data"))
"""The feature name table QEMU 7.2 writes: (type, bit, name)."""


INSERTED = ("file", "node-name", "ro", "drv", "backing_file", "backing_file_depth",
            "encrypted", "detect_zeroes", "bps", "bps_rd", "bps_wr", "iops", "iops_rd",
            "iops_wr", "image", "cache", "write_threshold", "dirty-bitmaps",
            "filename", "format", "dirty-flag", "actual-size", "virtual-size", "cluster-size",
            "backing-filename", "full-backing-filename", "backing-filename-format",
            "backing-image", "format-specific")
"""The order QEMU fills BlockDeviceInfo and ImageInfo in (it decides ties in a QDict)."""


def _qdict(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` in the order QEMU's QDict would list its keys."""
    keys = sorted(d, key=lambda k: INSERTED.index(k) if k in INSERTED else len(INSERTED))
    return {k: d[k] for k in qdict_order(keys)}


class Qcow2Error(QmpjobdError):
    """An image this driver cannot open; the text is QEMU's where QEMU has one."""


def _check_header(bits: int, size: int, l1_size: int, l1_offset: int, rt_offset: int,
                  rt_clusters: int, header_length: int, backing_offset: int,
                  backing_size: int) -> None:
    """qcow2_do_open()'s checks of the header fields, before anything is read by them."""
    if not 9 <= bits <= 21:
        raise Qcow2Error(f"Unsupported cluster size: 2^{bits}")
    cluster = 1 << bits
    if header_length < 104 or header_length > cluster:
        raise Qcow2Error("qcow2 header exceeds cluster size")
    if rt_clusters * cluster > MAX_REFTABLE or rt_offset % cluster or not rt_offset:
        raise Qcow2Error("Reference count table too large" if rt_clusters * cluster
                         > MAX_REFTABLE else "Invalid reference count table offset")
    if l1_size * 8 > MAX_L1:
        raise Qcow2Error("Active L1 table too large")
    if l1_size < _l1_entries(size, bits):
        raise Qcow2Error("L1 table is too small")
    if l1_size and (l1_offset % cluster or not l1_offset):
        raise Qcow2Error("Invalid L1 table offset")
    if backing_size > 1023 or (backing_size and backing_offset + backing_size > cluster):
        raise Qcow2Error("Backing file name too long")


def _l1_entries(size: int, cluster_bits: int) -> int:
    per_l2 = 1 << (cluster_bits - 3)
    return -(-size // ((1 << cluster_bits) * per_l2)) if size else 0


def create_image(size: int, cluster_size: int, backing_file: str | None,
                 backing_fmt: str | None) -> bytes:
    """The bytes of a new, empty image: header, refcount table and block, L1 table."""
    bits = cluster_size.bit_length() - 1
    l1_size = _l1_entries(size, bits)
    if l1_size * 8 > MAX_L1:
        raise Qcow2Error("Could not resize image: Image size is too large for this "
                         "cluster size")
    if backing_file is not None and len(backing_file.encode()) > 1023:
        raise Qcow2Error("Backing file name too long")
    l1_clusters = max(1, -(-l1_size * 8 // cluster_size))
    if 3 + l1_clusters > cluster_size // 2:
        raise Qcow2Error(f"qmpjobd's qcow2 layout needs fewer metadata clusters than one "
                         f"refcount block counts: use a larger cluster size than "
                         f"{cluster_size}")
    exts = b""
    if backing_fmt is not None:
        raw = backing_fmt.encode()
        exts += struct.pack(">II", EXT_BACKING_FORMAT, len(raw)) + raw + bytes(-len(raw) % 8)
    table = b"".join(struct.pack(">BB46s", kind, bit, name.encode()) for kind, bit, name in
                     FEATURES)
    exts += struct.pack(">II", EXT_FEATURE_TABLE, len(table)) + table
    exts += struct.pack(">II", EXT_END, 0)
    backing = (backing_file or "").encode()
    backing_offset = HEADER_LENGTH + len(exts) if backing else 0
    header = HEADER.pack(MAGIC, 3, backing_offset, len(backing), bits, size, 0, l1_size,
                         3 * cluster_size, cluster_size, 1, 0, 0)
    header += V3.pack(0, 0, 0, REFCOUNT_ORDER, HEADER_LENGTH) + bytes(8)
    header += exts + backing
    if len(header) > cluster_size:
        raise Qcow2Error(f"The qcow2 header and backing file name do not fit in a cluster "
                         f"of {cluster_size} bytes")
    used = 3 + l1_clusters
    image = bytearray(3 * cluster_size + max(8, l1_size * 8))
    image[:len(header)] = header
    struct.pack_into(">Q", image, cluster_size, 2 * cluster_size)
    for i in range(used):
        struct.pack_into(">H", image, 2 * cluster_size + 2 * i, 1)
    return bytes(image)


class Qcow2Node(BlockNode):
    """A qcow2 image on ``file``, optionally over ``backing``."""

    driver = "qcow2"

    def __init__(self, node_name: str, file: BlockNode, backing: BlockNode | None,
                 read_only: bool = False) -> None:
        super().__init__(node_name, read_only)
        self.children = [file] + ([backing] if backing is not None else [])
        self.backing = backing
        head = file.pread(0, HEADER.size + V3.size)
        if len(head) < HEADER.size or head[:4] != MAGIC:
            raise Qcow2Error("Image is not in qcow2 format")
        (_, version, backing_offset, backing_size, bits, size, crypt, l1_size, l1_offset,
         rt_offset, rt_clusters, snapshots, _) = HEADER.unpack_from(head)
        if version != 3:
            raise Qcow2Error(f"qmpjobd opens qcow2 version 3 images only, not version "
                             f"{version}")
        incompatible, _, _, order, header_length = V3.unpack_from(head, HEADER.size)
        if crypt or snapshots or incompatible or order != REFCOUNT_ORDER:
            raise Qcow2Error("qmpjobd's qcow2 driver does not support this image's features "
                             "(encryption, snapshots, external data, refcount width)")
        _check_header(bits, size, l1_size, l1_offset, rt_offset, rt_clusters, header_length,
                      backing_offset, backing_size)
        self.size: int = size
        self.cluster_bits: int = bits
        self.cluster: int = 1 << bits
        self.l2_entries: int = self.cluster // 8
        self.l1_offset: int = l1_offset
        self.l1: list[int] = list(struct.unpack(f">{l1_size}Q", file.pread(l1_offset, 8 * l1_size)))
        self.rt_offset: int = rt_offset
        self.refcount_table: list[int] = list(struct.unpack(
            f">{rt_clusters * self.cluster // 8}Q",
            file.pread(rt_offset, rt_clusters * self.cluster)))
        self.backing_file = file.pread(backing_offset, backing_size).decode(
            errors="replace") if backing_size else ""
        self.backing_format = self._backing_format(file, header_length)
        self._l2: dict[int, list[int]] = {}
        """L2 tables by host offset, read once: every update goes through this node."""
        self._meta = threading.Lock()
        length = file.length
        plain = file.plain_file()
        if not self.read_only and plain is not None and length % 512:
            os.ftruncate(plain.fd, length + (-length % 512))  # as QEMU leaves it once opened
        self._end: int = -(-length // self.cluster) * self.cluster

    def _backing_format(self, file: BlockNode, pos: int) -> str:
        """The backing format header extension's value, or '' (extensions from ``pos``,
        all inside the first cluster)."""
        while pos + 8 <= self.cluster:
            kind, length = struct.unpack(">II", file.pread(pos, 8))
            if kind == EXT_END or pos + 8 + length > self.cluster:
                return ""
            if kind == EXT_BACKING_FORMAT:
                return file.pread(pos + 8, length).decode(errors="replace")
            pos += 8 + length + (-length % 8)
        return ""

    @property
    def file(self) -> BlockNode:
        return self.children[0]

    @property
    def length(self) -> int:
        return self.size

    # -- metadata ------------------------------------------------------------------------------

    def _table(self, offset: int) -> list[int]:
        table = self._l2.get(offset)
        if table is None:
            table = list(struct.unpack(f">{self.l2_entries}Q",
                                       self.file.pread(offset, self.cluster)))
            self._l2[offset] = table
        return table

    def _entry(self, cluster: int) -> int:
        """The L2 entry of guest cluster ``cluster`` (0: never written); a compressed
        cluster is an I/O error (this driver cannot read them)."""
        l1 = self.l1[cluster // self.l2_entries] & OFFSET_MASK
        if not l1:
            return 0
        entry = self._table(l1)[cluster % self.l2_entries]
        if entry & COMPRESSED:
            raise OSError(errno.ENOTSUP, "qmpjobd's qcow2 driver cannot read compressed "
                          "clusters")
        return entry

    def _allocate(self) -> int:
        """A new host cluster at the end of the file, its refcount set to 1."""
        # room for it and for a new refcount block, or the refcount table is full
        if (self._end // self.cluster + 1) // (self.cluster // 2) >= len(self.refcount_table):
            raise OSError(errno.EFBIG, "qcow2 image full (its refcount table does not grow)")
        offset = self._end
        self._end += self.cluster
        self._set_refcount(offset // self.cluster)
        return offset

    def _set_refcount(self, index: int) -> None:
        per_block = self.cluster // 2
        slot = index // per_block
        block = self.refcount_table[slot] & OFFSET_MASK
        if not block:  # a new refcount block, itself counted
            block = self._end
            self._end += self.cluster
            self.file.pwrite(block, bytes(self.cluster))
            self.refcount_table[slot] = block
            self.file.pwrite(self.rt_offset + 8 * slot, struct.pack(">Q", block))
            self._set_refcount(block // self.cluster)
        self.file.pwrite(block + 2 * (index % per_block), struct.pack(">H", 1))

    def _host_cluster(self, cluster: int) -> int:
        """The host offset of guest cluster ``cluster``, allocated (with its old contents
        copied from the backing node) if it was never written."""
        entry = self._entry(cluster)
        if entry & OFFSET_MASK and not entry & ZERO:
            return entry & OFFSET_MASK
        start = cluster * self.cluster
        if entry & ZERO or self.backing is None:
            old = bytes(self.cluster)
        else:
            old = self._from_backing(start, self.cluster)
        host = entry & OFFSET_MASK or self._allocate()  # a zeroed cluster keeps its place
        self.file.pwrite(host, old)
        l1_index = cluster // self.l2_entries
        l2 = self.l1[l1_index] & OFFSET_MASK
        if not l2:
            l2 = self._allocate()
            self.file.pwrite(l2, bytes(self.cluster))
            self._l2[l2] = [0] * self.l2_entries
            self.l1[l1_index] = l2 | COPIED
            self.file.pwrite(self.l1_offset + 8 * l1_index, struct.pack(">Q", l2 | COPIED))
        self._table(l2)[cluster % self.l2_entries] = host | COPIED
        self.file.pwrite(l2 + 8 * (cluster % self.l2_entries), struct.pack(">Q", host | COPIED))
        return host

    def _from_backing(self, offset: int, length: int) -> bytes:
        assert self.backing is not None
        have = max(0, min(length, self.backing.length - offset))
        data = self.backing.pread(offset, have) if have else b""
        return data + bytes(length - len(data))

    def _runs(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """(guest offset, length, L2 entry) per cluster piece of the range."""
        out = []
        end = offset + length
        while offset < end:
            cluster = offset // self.cluster
            stop = min(end, (cluster + 1) * self.cluster)
            out.append((offset, stop - offset, self._entry(cluster)))
            offset = stop
        return out

    # -- I/O -----------------------------------------------------------------------------------

    def pread(self, offset: int, length: int, event: bool = False) -> bytes:
        with self._meta:
            runs = self._runs(offset, length)
        parts = []
        for start, n, entry in runs:
            host = entry & OFFSET_MASK
            if host and not entry & ZERO:
                parts.append(self.file.pread(host + start % self.cluster, n))
            elif entry & ZERO or self.backing is None:
                parts.append(bytes(n))
            else:
                data = self._from_backing(start, n)
                # A cluster the backing node's writer copied here meanwhile (a backup's
                # copy-before-write, which allocates the cluster before the write that
                # changes the backing node) holds what the backing had: read it from here.
                with self._meta:
                    now = self._entry(start // self.cluster)
                if now & OFFSET_MASK and not now & ZERO:
                    data = self.file.pread((now & OFFSET_MASK) + start % self.cluster, n)
                parts.append(data)
        return b"".join(parts)

    def _pwrite(self, offset: int, data: bytes, event: bool) -> None:
        view = memoryview(data)
        pos = 0
        while pos < len(data):
            cluster = (offset + pos) // self.cluster
            within = (offset + pos) % self.cluster
            n = min(len(data) - pos, self.cluster - within)
            with self._meta:
                host = self._host_cluster(cluster)
            self.file.pwrite(host + within, bytes(view[pos:pos + n]))
            pos += n

    def _discard(self, offset: int, length: int) -> None:
        """Discards are not passed down (a cluster once written stays allocated)."""

    def _write_zeroes(self, offset: int, length: int) -> None:
        while length:
            n = min(length, 4 << 20)
            self._pwrite(offset, bytes(n), False)
            offset, length = offset + n, length - n

    def status(self, offset: int, length: int) -> list[tuple[int, bool]]:
        with self._meta:
            runs = self._runs(offset, length)
        out: list[tuple[int, bool]] = []
        for start, n, entry in runs:
            if entry & OFFSET_MASK and not entry & ZERO:
                out.append((n, True))
            elif entry & ZERO or self.backing is None:
                out.append((n, False))
            else:
                have = max(0, min(n, self.backing.length - start))
                out += self.backing.status(start, have) if have else []
                if have < n:
                    out.append((n - have, False))
        return out

    def flush(self) -> None:
        self.file.flush()
        if self.backing is not None:
            self.backing.flush()

    def _child_offset(self, offset: int) -> int:
        raise NotImplementedError  # guest offsets do not map to one child's

    # -- what queries show ---------------------------------------------------------------------

    def actual_size(self) -> int | None:
        return self.file.actual_size()

    def filename(self) -> str:
        return self.file.filename()

    def backing_depth(self, flat: bool) -> int:
        """QEMU walks the chain only when not flat."""
        if flat or self.backing is None:
            return 0
        return 1 + self.backing.backing_depth(flat)

    def image_info(self, flat: bool = True) -> dict[str, Any]:
        image: dict[str, Any] = {
            "filename": self.filename(), "format": "qcow2", "dirty-flag": False,
            "actual-size": self.actual_size(), "virtual-size": self.size,
            "cluster-size": self.cluster,
            "format-specific": {"type": "qcow2", "data": {
                "compat": "1.1", "compression-type": "zlib", "lazy-refcounts": False,
                "refcount-bits": 16, "corrupt": False, "extended-l2": False}}}
        if self.backing_file:
            image["backing-filename"] = self.backing_file
            image["full-backing-filename"] = self.backing_file
            if self.backing_format:
                image["backing-filename-format"] = self.backing_format
        if self.backing is not None and not flat:
            image["backing-image"] = self.backing.image_info(flat)
        return _qdict(image)

    def info(self, flat: bool = False) -> dict[str, Any]:
        out = super().info(flat)
        if self.backing_file:
            out["backing_file"] = self.backing_file
        return _qdict(out)

    def json_options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"driver": "qcow2", "file": self.file.json_options()}
        if self.backing is not None:
            out["backing"] = self.backing.json_options()
        return out
