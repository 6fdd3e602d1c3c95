"""Backup while the guest writes: the same writes (HMP qemu-io through an ide-hd device) during
the same backups on QEMU 7.2 and on qmpjobd-system-x86_64.

What QEMU 7.2.22 shows and qmpjobd must too: the target is the disk as it was when the job
was created (copy-before-write copies a cluster before a write replaces it); progress counts
the clusters those writes copied; with sync=none only the clusters written are copied, until
the job is cancelled; a write by node name while the job runs is refused (the copy-before-write
filter above the node does not share writes).  The job is held at speed 1 after its first
chunk, so the writes land on clusters it has not copied yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import qemupair
from qemupair import Side
from qmptest import NO_QEMU_REASON, QEMU

needs_qemu = pytest.mark.skipif(QEMU is None, reason=NO_QEMU_REASON)

MiB = 1 << 20
CLUSTER = 64 << 10
SOURCE = bytes((i // CLUSTER) & 0xFF for i in range(4 * MiB))
"""Each 64 KiB cluster holds its number: a misplaced copy shows."""

WRITES = ["write -P 0xee 1M 4096", "write -P 0xdd 2097252 4096", "write -P 0xcc 3145727 2",
          "write -z 0 64k", "write -P 0xbb 3M 128k"]
"""Inside one cluster, at an offset within one, across two, in the copied first chunk, and
over two whole clusters (one shared with the write before)."""


def _argv(tmp: Path, name: str) -> list[str]:
    """A pc machine (-S) with the source on an ide-hd (``disk0`` over node ``f``, file
    tmp/NAME-s.raw) and an empty target node ``tf`` (tmp/NAME-t.raw)."""
    def node(**opts: Any) -> list[str]:
        return ["-blockdev", orjson.dumps(opts).decode()]

    return ["-M", "pc", "-S", "-accel", "tcg", "-nodefaults", "-display", "none",
            *node(driver="file", filename=str(tmp / f"{name}-s.raw"), **{"node-name": "s"}),
            *node(driver="raw", file="s", **{"node-name": "f"}),
            "-device", '{"driver":"ide-hd","bus":"ide.0","unit":0,"drive":"f","id":"disk0"}',
            *node(driver="file", filename=str(tmp / f"{name}-t.raw"), **{"node-name": "t"}),
            *node(driver="raw", file="t", **{"node-name": "tf"})]


@contextmanager
def pair(tmp: Path) -> Iterator[tuple[Side, Side]]:
    for name in ("qemu", "ours"):
        (tmp / f"{name}-s.raw").write_bytes(SOURCE)
        (tmp / f"{name}-t.raw").write_bytes(bytes(len(SOURCE)))
    with qemupair.pair(tmp, lambda name: _argv(tmp, name)) as sides:
        yield sides


def _image(side: Side, which: str) -> bytes:
    """The side's source (``s``) or target (``t``) image."""
    return (side.tmp / f"{side.name}-{which}.raw").read_bytes()


def _until_progress(side: Side, value: int) -> None:
    """The job's first chunk is copied (then speed 1 holds it): poll, with a limit."""
    for _ in range(2000):
        if int(side.c.cmd("query-jobs")["return"][0]["current-progress"]) >= value:
            return
    raise AssertionError(f"progress stayed below {value}")


def _until_gone(side: Side, got: list[Any], job: str) -> list[Any]:
    """Messages up to the job's last event (dismissed): however many of its events came
    before the last reply, both sides then have read all of them."""
    return side.until_event("JOB_STATUS_CHANGE", got,
                            lambda m: m["data"] == {"status": "null", "id": job})


@needs_qemu
def test_a_full_backup_is_the_disk_when_it_started(tmp_path: Path) -> None:
    with pair(tmp_path) as (qemu, ours):
        replies: dict[str, list[Any]] = {}
        for side in (qemu, ours):
            got = side.run("blockdev-backup", {"job-id": "j", "device": "f", "target": "tf",
                                               "sync": "full", "speed": 1})
            _until_progress(side, MiB)
            for line in WRITES:
                got += side.hmp(f'qemu-io -d disk0 "{line}"')
            got += side.hmp('qemu-io f "write 0 1"')  # refused: the filter holds the node
            got += side.run("query-jobs")
            got += side.run("block-job-set-speed", {"device": "j", "speed": 0})
            got += _until_gone(side, got, "j")
            replies[side.name] = got
        assert replies["ours"] == replies["qemu"]
        jobs = [m["return"] for m in replies["qemu"] if isinstance(m.get("return"), list)]
        # the first chunk, then clusters 16, 32, 47 and 48, and 49 (0 and 48 were copied)
        assert jobs[0][0]["current-progress"] == MiB + 5 * CLUSTER, jobs
    for side in (qemu, ours):
        assert _image(side, "t") == SOURCE
    assert _image(ours, "s") == _image(qemu, "s") != SOURCE


@needs_qemu
def test_sync_none_copies_only_what_is_written(tmp_path: Path) -> None:
    with pair(tmp_path) as (qemu, ours):
        replies: dict[str, list[Any]] = {}
        for side in (qemu, ours):
            got = side.run("blockdev-backup", {"job-id": "j", "device": "f", "target": "tf",
                                               "sync": "none"})
            for line in WRITES:
                got += side.hmp(f'qemu-io -d disk0 "{line}"')
            got += side.run("query-jobs")
            got += side.run("block-job-cancel", {"device": "j"})  # it ends before the reply
            replies[side.name] = got
        assert replies["ours"] == replies["qemu"]
    written = {16, 32, 47, 48, 0, 49}  # the clusters WRITES touch
    expected = b"".join(SOURCE[i * CLUSTER:(i + 1) * CLUSTER] if i in written
                        else bytes(CLUSTER) for i in range(4 * MiB // CLUSTER))
    assert _image(qemu, "t") == _image(ours, "t") == expected


BITMAP_ERRORS: list[dict[str, Any]] = [
    {"sync": "incremental"}, {"sync": "bitmap"}, {"sync": "bitmap", "bitmap": "b"},
    {"sync": "incremental", "bitmap": "b", "bitmap-mode": "never"},
    {"sync": "incremental", "bitmap": "b", "bitmap-mode": "always"},
    {"sync": "full", "bitmap": "b"}, {"sync": "full", "bitmap": "b", "bitmap-mode": "never"},
    {"sync": "top", "bitmap": "b", "bitmap-mode": "never"},
    {"sync": "none", "bitmap": "b", "bitmap-mode": "on-success"},
    {"sync": "full", "bitmap-mode": "always"}, {"sync": "bitmap", "bitmap": "nope",
                                                "bitmap-mode": "always"},
]
"""Each refused with QEMU 7.2's text, before any job exists."""


@needs_qemu
@pytest.mark.parametrize(("mode", "cancel"), [("on-success", False), ("never", False),
                                              ("always", False), ("on-success", True),
                                              ("always", True)])
def test_a_bitmap_backup_copies_what_was_dirty_and_leaves_the_bitmap_as_qemu(
        tmp_path: Path, mode: str, cancel: bool) -> None:
    """sync=bitmap: only the clusters dirty at the start are copied (a write to one of them
    first copies it, writes elsewhere copy nothing), the bitmap is busy and frozen meanwhile,
    and afterwards holds what the mode says (on success: only the writes made during the
    job; never, or a cancelled on-success job: all of them; a cancelled always job: the
    writes during the job and what it had not copied)."""
    with pair(tmp_path) as (qemu, ours):
        replies: dict[str, list[Any]] = {}
        for side in (qemu, ours):
            got = side.run("block-dirty-bitmap-add", {"node": "f", "name": "b"})
            for line in ("write -P 0x77 512K 4096", "write -P 0x77 3M 70000"):
                got += side.hmp(f'qemu-io -d disk0 "{line}"')  # clusters 8, 48 and 49
            for extra in (BITMAP_ERRORS if mode == "on-success" else []):
                got += side.run("blockdev-backup", {"job-id": "x", "device": "f",
                                                    "target": "tf", **extra})
            got += side.run("blockdev-backup", {"job-id": "j", "device": "f", "target": "tf",
                                               "sync": "bitmap", "bitmap": "b",
                                               "bitmap-mode": mode, "speed": 1})
            _until_progress(side, CLUSTER)  # cluster 8 is copied, then speed 1 holds the job
            for line in ("write -P 0x55 3211264 4096", "write -P 0x44 100 10"):
                got += side.hmp(f'qemu-io -d disk0 "{line}"')  # cluster 49, then 0
            # (query-named-block-nodes now would differ: QEMU lists its copy-before-write
            # filter node and the job's anonymous bitmaps, which qmpjobd does not model)
            got += side.run("query-jobs")
            got += side.run("block-dirty-bitmap-clear", {"node": "f", "name": "b"})
            if cancel:  # QEMU ends this idle job before the reply; qmpjobd right after it
                ended = side.run("block-job-cancel", {"device": "j"})
                ended += side.until_event("BLOCK_JOB_CANCELLED", ended)
                got += [{"return": {}}] + [m for m in ended if m != {"return": {}}]
            else:
                got += side.run("block-job-set-speed", {"device": "j", "speed": 0})
                got += _until_gone(side, got, "j")
            got += side.run("query-named-block-nodes")
            got += side.run("x-debug-block-dirty-bitmap-sha256", {"node": "f", "name": "b"})
            replies[side.name] = got
        assert replies["ours"] == replies["qemu"]
    at_start = bytearray(SOURCE)
    at_start[512 << 10:(512 << 10) + 4096] = b"\x77" * 4096
    at_start[3 * MiB:3 * MiB + 70000] = b"\x77" * 70000
    expected = b"".join(at_start[i * CLUSTER:(i + 1) * CLUSTER] if i in (8, 48, 49)
                        else bytes(CLUSTER) for i in range(4 * MiB // CLUSTER))
    if cancel:  # cluster 8 by the job, 49 by the write; 48 never
        expected = expected[:48 * CLUSTER] + bytes(CLUSTER) + expected[49 * CLUSTER:]
    assert _image(qemu, "t") == _image(ours, "t") == expected


@needs_qemu
def test_a_mirror_converges_and_pivots_as_qemu(tmp_path: Path) -> None:
    """Writes after READY are copied too (progress and len grow by their clusters); after
    job-complete the device's node is the target, which equals the source; the old source
    can go, the target cannot (a device uses it)."""
    with pair(tmp_path) as (qemu, ours):
        replies: dict[str, list[Any]] = {}
        for side in (qemu, ours):
            got = side.run("blockdev-del", {"node-name": "f"})  # in use by disk0
            got += side.run("blockdev-mirror", {"job-id": "m", "device": "f", "target": "tf",
                                               "sync": "full"})
            got += side.until_event("BLOCK_JOB_READY", got)
            for line in WRITES:
                got += side.hmp(f'qemu-io -d disk0 "{line}"')
            got += side.run("job-complete", {"id": "m"})
            got += _until_gone(side, got, "m")
            got += side.run("query-block")
            got += side.run("blockdev-del", {"node-name": "f"})
            got += side.run("blockdev-del", {"node-name": "tf"})
            got += side.hmp('qemu-io -d disk0 "write -P 0x99 0 512"')  # now the target's
            replies[side.name] = got
        assert replies["ours"] == replies["qemu"]
        done = next(m for m in replies["qemu"] if m.get("event") == "BLOCK_JOB_COMPLETED")
        assert done["data"]["len"] == done["data"]["offset"] == 4 * MiB + 6 * CLUSTER
    for side in (qemu, ours):
        target, source = _image(side, "t"), _image(side, "s")
        assert target[512:] == source[512:] and target[:512] == b"\x99" * 512
    assert _image(ours, "t") == _image(qemu, "t")


def _workload(side: Side, **args: Any) -> None:
    assert side.run("x-daemon-disk-workload", {"device": "disk0", **args})[-1] == \
        {"return": {}}


def _writes(side: Side) -> int:
    return int(side.c.cmd("x-query-disk-workload")["return"][0]["writes"])


def _more_writes(side: Side, than: int) -> None:
    """Poll the workload's counter (another thread's progress) until it passes ``than``."""
    for _ in range(20000):
        if _writes(side) > than:
            return
    raise AssertionError("the disk workload did not write")


def test_the_disk_workload_under_a_backup_and_a_mirror(tmp_path: Path) -> None:
    """x-daemon-disk-workload writes through the device's path: a backup started while it
    is paused holds the disk as it was then, though the writer goes on during the job; a
    mirror under the writer converges, and after the pivot the writer writes to the copy."""
    (tmp_path / "ours-s.raw").write_bytes(SOURCE)
    (tmp_path / "ours-t.raw").write_bytes(bytes(len(SOURCE)))
    side = Side("ours", tmp_path, _argv(tmp_path, "ours"))
    try:
        _workload(side, rate=4 * MiB, **{"block-size": 4096})
        _more_writes(side, 50)
        _workload(side, rate=0)  # paused: the disk is what the backup must hold
        snapshot = _image(side, "s")
        got = side.run("blockdev-backup", {"job-id": "b", "device": "f", "target": "tf",
                                           "sync": "full", "speed": 4 * MiB})
        before = _writes(side)
        _workload(side, rate=8 * MiB, pattern="sweep")
        side.until_event("BLOCK_JOB_COMPLETED", got)
        _workload(side, rate=0)
        assert _writes(side) > before  # the writer wrote while the job ran
        assert _image(side, "t") == snapshot != _image(side, "s")

        _workload(side, rate=4 * MiB, pattern="hot-set")
        got = side.run("blockdev-mirror", {"job-id": "m", "device": "f", "target": "tf",
                                           "sync": "full"})
        side.until_event("BLOCK_JOB_READY", got)
        _more_writes(side, _writes(side) + 100)  # writes after READY
        _workload(side, rate=0)
        got = side.run("job-complete", {"id": "m"})
        side.until_event("BLOCK_JOB_COMPLETED", got)
        assert _image(side, "t") == _image(side, "s")
        at_pivot = _image(side, "s")
        _workload(side, rate=4 * MiB)
        _more_writes(side, _writes(side) + 20)
        _workload(side, rate=0)
        assert _image(side, "s") == at_pivot != _image(side, "t")  # it writes to the copy
        info = side.c.cmd("x-query-disk-workload")["return"]
        assert info[0]["running"] is False and info[0]["bytes"] == info[0]["writes"] * 4096
    finally:
        side.stop()


@needs_qemu
def test_a_write_blocking_mirror_writes_through_as_qemu(tmp_path: Path) -> None:
    """copy-mode write-blocking: each guest write also goes to the target before it
    completes, and counts in the job's progress (len grows by the bytes written, all of
    them done); the copy equals the source at the end.  The job's first pass is held at
    speed 1 so that writes land before READY too (how far QEMU's first pass gets before its
    rate limit bites is not compared)."""
    with pair(tmp_path) as (qemu, ours):
        replies: dict[str, list[Any]] = {}
        for side in (qemu, ours):
            got = side.run("blockdev-mirror", {"job-id": "m", "device": "f", "target": "tf",
                                               "sync": "full", "copy-mode": "write-blocking",
                                               "speed": 1})
            _until_progress(side, MiB)
            for line in WRITES:
                got += side.hmp(f'qemu-io -d disk0 "{line}"')
            got += side.run("block-job-set-speed", {"device": "m", "speed": 0})
            got += side.until_event("BLOCK_JOB_READY", got)
            for line in WRITES:  # after READY: written through, nothing left dirty
                got += side.hmp(f'qemu-io -d disk0 "{line.replace("0xee", "0x11")}"')
                got += side.run("query-jobs")
            got += side.run("job-complete", {"id": "m"})
            got += _until_gone(side, got, "m")
            replies[side.name] = got
        assert replies["ours"] == replies["qemu"]
        for side in (qemu, ours):
            assert _image(side, "t") == _image(side, "s") == _image(qemu, "s")


def test_a_fleecing_export_holds_still_while_the_guest_writes(tmp_path: Path) -> None:
    """libvirt's pull-mode backup without libvirt: a qcow2 scratch image over the disk, a
    sync=none backup into it and an NBD export of it.  While the guest writes fast, every
    read of the export gives the disk as it was when the backup began: a cluster the guest
    overwrites between a read's look at the scratch image and its read of the disk is read
    from the scratch image (its copy-before-write landed there first)."""
    from nbdclient import connect_go
    (tmp_path / "ours-s.raw").write_bytes(SOURCE)
    (tmp_path / "ours-t.raw").write_bytes(b"")
    side = Side("ours", tmp_path, _argv(tmp_path, "ours"))
    try:
        assert side.run("blockdev-del", {"node-name": "tf"}) == [{"return": {}}]
        got = side.run("blockdev-create", {"job-id": "c", "options": {
            "driver": "qcow2", "file": "t", "size": len(SOURCE),
            "backing-file": str(tmp_path / "ours-s.raw"), "backing-fmt": "raw"}})
        side.until_event("JOB_STATUS_CHANGE", got,
                         lambda m: m["data"] == {"status": "concluded", "id": "c"})
        sock = str(tmp_path / "nbd.sock")
        for name, args in (
                ("job-dismiss", {"id": "c"}),
                ("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": "t",
                                  "backing": "f"}),
                ("blockdev-backup", {"job-id": "b", "device": "f", "target": "q",
                                     "sync": "none"}),
                ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock}}}),
                ("block-export-add", {"type": "nbd", "id": "e", "node-name": "q",
                                      "name": "scratch"})):
            assert side.run(name, args)[-1] == {"return": {}}, name
        _workload(side, rate=256 * MiB, pattern="random", **{"block-size": 4096})
        c = connect_go(sock, "scratch", structured=False)
        passes = 0
        while _writes(side) < 20000:  # whole passes while the writer writes
            assert passes < 1000, "the writer stalled"
            passes += 1
            for offset in range(0, len(SOURCE), 256 << 10):
                got = c.request("read", offset, 256 << 10)[0]
                assert got["error"] == 0
                assert got["data"] == SOURCE[offset:offset + (256 << 10)], offset
        _workload(side, rate=0)
        c.close()
    finally:
        side.stop()
