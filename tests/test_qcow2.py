"""The qcow2 driver: blockdev-create and blockdev-add of a qcow2 image over a raw disk (what
libvirt's pull-mode backup makes for its scratch image), compared with QEMU 7.2 (replies,
events, query-named-block-nodes, the new image's bytes), and images it writes checked by
qemu-img (check, compare, convert)."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import qemupair
from qmptest import NO_QEMU_REASON, QEMU

needs_qemu = pytest.mark.skipif(QEMU is None, reason=NO_QEMU_REASON)
MiB = 1 << 20
SIZE = 16 * MiB


def _argv(tmp: Path) -> Any:
    return lambda name: [
        "-M", "none", "-nodefaults", "-display", "none",
        "-blockdev", f'{{"driver":"file","filename":"{tmp}/{name}-disk.raw","node-name":"f0"}}',
        "-blockdev", '{"driver":"raw","file":"f0","node-name":"r0"}']


STEPS: list[tuple[str, dict[str, Any] | None]] = [
    ("blockdev-add", {"driver": "file", "filename": "<tmp>/<side>-scratch.qcow2",
                      "node-name": "s", "discard": "unmap", "auto-read-only": True}),
    ("blockdev-create", {"job-id": "bad", "options": {"driver": "qcow2", "file": "s",
                                                      "size": SIZE, "cluster-size": 1000}}),
    ("blockdev-create", {"job-id": "bad", "options": {"driver": "qcow2", "file": "s",
                                                      "size": SIZE + 1}}),
    ("blockdev-create", {"job-id": "bad", "options": {"driver": "qcow2", "file": "s",
                                                      "size": SIZE, "backing-fmt": "raw"}}),
    ("blockdev-create", {"job-id": "bad", "options": {"driver": "qcow2", "file": "nosuch",
                                                      "size": SIZE}}),
    ("blockdev-create", {"job-id": "c", "options": {
        "driver": "qcow2", "file": "s", "size": SIZE,
        "backing-file": "<tmp>/<side>-disk.raw", "backing-fmt": "raw"}}),
]
AFTER: list[tuple[str, dict[str, Any] | None]] = [
    ("query-jobs", None), ("job-dismiss", {"id": "c"}),
    ("blockdev-add", {"node-name": "bad", "driver": "qcow2", "file": "f0"}),
    ("blockdev-add", {"node-name": "q", "read-only": False, "driver": "qcow2", "file": "s",
                      "backing": "r0"}),
    ("query-named-block-nodes", {"flat": True}), ("query-named-block-nodes", None),
    ("human-monitor-command", {"command-line": 'qemu-io q "write -P 0x33 100k 200k"'}),
    ("human-monitor-command", {"command-line": 'qemu-io q "read -P 0x11 0 64k"'}),
    ("human-monitor-command", {"command-line": 'qemu-io q "read -P 0x33 100k 200k"'}),
    ("human-monitor-command", {"command-line": 'qemu-io q "read -P 0 300k 64k"'}),
    ("blockdev-del", {"node-name": "r0"}),
    ("blockdev-del", {"node-name": "q"}), ("blockdev-del", {"node-name": "s"}),
]


@needs_qemu
def test_create_and_open_over_a_raw_disk_match_qemu(tmp_path: Path) -> None:
    for name in ("qemu", "ours"):
        (tmp_path / f"{name}-disk.raw").write_bytes(b"\x11" * 65536 + bytes(SIZE - 65536))
        (tmp_path / f"{name}-scratch.qcow2").write_bytes(b"")
    with qemupair.pair(tmp_path, _argv(tmp_path)) as (qemu, ours):
        for name, args in STEPS:  # a bad create fails as a job, before its reply
            got = [side.run(name, args) for side in (qemu, ours)]
            if args is not None and args.get("job-id") == "bad":
                got = [g + side.run("query-jobs") + side.run("job-dismiss", {"id": "bad"})
                       for g, side in zip(got, (qemu, ours), strict=True)]
            assert got[1] == got[0], (name, args)
        done = [side.until_event("JOB_STATUS_CHANGE", None,
                                 lambda m: m["data"] == {"status": "concluded", "id": "c"})
                for side in (qemu, ours)]
        assert done[1] == done[0]
        # the new image, byte for byte (QEMU's, flushed at creation, names its own disk)
        images = [(tmp_path / f"{n}-scratch.qcow2").read_bytes().replace(
            f"{n}-disk".encode(), b"side-disk") for n in ("qemu", "ours")]
        assert images[1] == images[0]
        for name, args in AFTER:
            assert ours.run(name, args) == qemu.run(name, args), (name, args)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed "
                    "(apt-get install qemu-utils)")
def test_random_writes_read_back_and_pass_qemu_img(tmp_path: Path) -> None:
    """Random writes through the node (crossing clusters, over a patterned backing disk):
    every read gives what a plain byte array says, and qemu-img reads the image the same
    and finds no error in it."""
    from qmpjobd.block.nodes import FileNode, RawNode
    from qmpjobd.block.qcow2 import Qcow2Node, create_image
    rng = random.Random(7)
    disk = tmp_path / "disk.raw"
    base = bytes(rng.randrange(256) for _ in range(4096)) * (SIZE // 4096)
    disk.write_bytes(base)
    image = tmp_path / "over.qcow2"
    image.write_bytes(create_image(SIZE, 65536, str(disk), "raw"))
    backing = RawNode("r", FileNode("f", str(disk), read_only=True), read_only=True)
    node = Qcow2Node("q", FileNode("s", str(image)), backing)
    want = bytearray(base)
    for _ in range(60):
        offset = rng.randrange(SIZE - 1)
        length = rng.randrange(1, min(300_000, SIZE - offset))
        data = bytes([rng.randrange(256)]) * length
        node.pwrite(offset, data)
        want[offset:offset + length] = data
        probe = rng.randrange(SIZE - 70_000)
        assert node.pread(probe, 70_000) == want[probe:probe + 70_000]
    assert node.pread(0, SIZE) == want
    node.file.close()
    check = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True)
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout
    out = tmp_path / "out.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(out)], check=True)
    assert out.read_bytes() == want


def test_hostile_images_are_refused_and_odd_entries_read_right(tmp_path: Path) -> None:
    """Headers with impossible fields are refused before anything is read by them; a
    'zero, allocated' cluster (QEMU's L2 zero flag with an offset) reads as zeros and takes
    a write; a compressed cluster is an I/O error; a layout that does not fit is refused."""
    import struct

    from qmpjobd.block.nodes import FileNode
    from qmpjobd.block.qcow2 import HEADER, Qcow2Error, Qcow2Node, create_image
    good = create_image(SIZE, 65536, None, None)

    def header_with(**fields: int) -> bytes:
        names = ["magic", "version", "backing_offset", "backing_size", "bits", "size",
                 "crypt", "l1_size", "l1_offset", "rt_offset", "rt_clusters", "snapshots",
                 "snapshots_offset"]
        values = dict(zip(names, HEADER.unpack_from(good), strict=True))
        values.update(fields)
        return HEADER.pack(*values.values()) + good[HEADER.size:]

    for fields, text in (({"bits": 40}, "Unsupported cluster size: 2^40"),
                         ({"bits": 0}, "Unsupported cluster size: 2^0"),
                         ({"l1_size": 0x08000000}, "Active L1 table too large"),
                         ({"l1_size": 0}, "L1 table is too small"),
                         ({"rt_clusters": 1 << 20}, "Reference count table too large"),
                         ({"backing_size": 5000, "backing_offset": 600},
                          "Backing file name too long")):
        image = tmp_path / "bad.qcow2"
        image.write_bytes(header_with(**fields))
        with pytest.raises(Qcow2Error, match=re.escape(text)):
            Qcow2Node("q", FileNode("f", str(image)), None)
    with pytest.raises(Qcow2Error):  # the header and the name need more than a cluster
        create_image(1 << 30, 512, "x" * 200, "raw")
    with pytest.raises(Qcow2Error):  # one refcount block cannot count the L1 table
        create_image(1 << 40, 512, None, None)
    small = tmp_path / "small.qcow2"  # small clusters that do fit: a sound image
    (tmp_path / ("x" * 200)).write_bytes(b"")
    small.write_bytes(create_image(1 << 30, 1024, "x" * 200, "raw"))
    if shutil.which("qemu-img") is not None:
        check = subprocess.run(["qemu-img", "check", "-U", str(small)], capture_output=True,
                               text=True, cwd=tmp_path)
        assert "No errors were found" in check.stdout, check.stdout + check.stderr
    with pytest.raises(Qcow2Error, match="Backing file name too long"):
        create_image(SIZE, 65536, "x" * 1024, "raw")
    # a zero-flagged allocated cluster, and a compressed one, written by hand
    image = tmp_path / "z.qcow2"
    image.write_bytes(good)
    node = Qcow2Node("q", FileNode("f", str(image)), None)
    node.pwrite(0, b"\x55" * 65536)
    node.pwrite(65536, b"\x66" * 65536)
    l2 = node.l1[0] & 0x00FFFFFFFFFFFE00
    entry0, entry1 = node._table(l2)[0], node._table(l2)[1]
    node.file.close()
    with open(image, "r+b") as f:
        f.seek(l2)
        f.write(struct.pack(">QQ", entry0 | 1, entry1 | (1 << 62)))
    node = Qcow2Node("q", FileNode("f", str(image)), None)
    assert node.pread(0, 65536) == bytes(65536)
    node.pwrite(100, b"\x77" * 10)
    assert node.pread(0, 200) == bytes(100) + b"\x77" * 10 + bytes(90)
    with pytest.raises(OSError, match="compressed"):
        node.pread(65536, 10)
    node.file.close()
