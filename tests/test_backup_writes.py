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

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from qmptest import NO_QEMU_REASON, QEMU, Client, strip_volatile, wait_for_socket
from test_qemu_cmdline import LAUNCH

needs_qemu = pytest.mark.skipif(QEMU is None, reason=NO_QEMU_REASON)

MiB = 1 << 20
CLUSTER = 64 << 10
SOURCE = bytes((i // CLUSTER) & 0xFF for i in range(4 * MiB))
"""Each 64 KiB cluster holds its number: a misplaced copy shows."""

WRITES = ["write -P 0xee 1M 4096", "write -P 0xdd 2097252 4096", "write -P 0xcc 3145727 2",
          "write -z 0 64k", "write -P 0xbb 3M 128k"]
"""Inside one cluster, at an offset within one, across two, in the copied first chunk, and
over two whole clusters (one shared with the write before)."""


class Side:
    """A pc machine (-S) with the source on an ide-hd (``disk0`` over node ``f``) and an
    empty target node ``tf``."""

    def __init__(self, name: str, cmd: list[str], tmp: Path) -> None:
        self.source, self.target = tmp / f"{name}-s.raw", tmp / f"{name}-t.raw"
        self.source.write_bytes(SOURCE)
        self.target.write_bytes(bytes(len(SOURCE)))
        sock = str(tmp / f"{name}.sock")

        def node(**opts: Any) -> list[str]:
            return ["-blockdev", orjson.dumps(opts).decode()]

        self.proc = subprocess.Popen(
            [*cmd, "-M", "pc", "-S", "-accel", "tcg", "-nodefaults", "-display", "none",
             "-qmp", f"unix:{sock},server=on,wait=off",
             *node(driver="file", filename=str(self.source), **{"node-name": "s"}),
             *node(driver="raw", file="s", **{"node-name": "f"}),
             "-device", '{"driver":"ide-hd","bus":"ide.0","unit":0,"drive":"f","id":"disk0"}',
             *node(driver="file", filename=str(self.target), **{"node-name": "t"}),
             *node(driver="raw", file="t", **{"node-name": "tf"})],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_socket(sock, self.proc, single_client=name == "qemu")
        self.c = Client(sock, timeout=20)
        self.c.negotiate()

    def run(self, name: str, args: dict[str, Any] | None = None) -> list[Any]:
        """Every message up to the reply, timestamps dropped."""
        request: dict[str, Any] = {"execute": name}
        if args is not None:
            request["arguments"] = args
        return strip_volatile(self.c.exchange(orjson.dumps(request)))

    def hmp(self, line: str) -> list[Any]:
        return self.run("human-monitor-command", {"command-line": line})

    def progress(self) -> int:
        return int(self.c.cmd("query-jobs")["return"][0]["current-progress"])

    def until_event(self, name: str, got: list[Any] | None = None) -> list[Any]:
        """Messages up to and including event ``name`` (timestamps dropped); none if it is in
        ``got`` already (it came before the reply of the last command)."""
        if got is not None and any(m.get("event") == name for m in got):
            return []
        seen = []
        while True:
            msg = self.c.recv()
            seen.append(msg)
            if msg.get("event") == name:
                return strip_volatile(seen)

    def until_progress(self, value: int) -> None:
        """The job's first chunk is copied (then speed 1 holds it): poll, with a limit."""
        for _ in range(2000):
            if self.progress() >= value:
                return
        raise AssertionError(f"progress stayed below {value}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@contextmanager
def pair(tmp: Path) -> Iterator[tuple[Side, Side]]:
    assert QEMU is not None
    sides: list[Side] = []
    try:
        sides.append(Side("qemu", [QEMU], tmp))
        sides.append(Side("ours", LAUNCH, tmp))
        yield sides[0], sides[1]
    finally:
        for side in sides:
            side.stop()


def _normalise_filter(msgs: list[Any]) -> list[Any]:
    """The filter's node name is ``#block`` + a counter + two random digits in QEMU."""
    import re
    return orjson.loads(re.sub(rb"#block\d+", b"#block<n>", orjson.dumps(msgs)))


@needs_qemu
def test_a_full_backup_is_the_disk_when_it_started(tmp_path: Path) -> None:
    with pair(tmp_path) as (qemu, ours):
        replies: dict[str, list[Any]] = {}
        for side in (qemu, ours):
            got = side.run("blockdev-backup", {"job-id": "j", "device": "f", "target": "tf",
                                               "sync": "full", "speed": 1})
            side.until_progress(MiB)
            for line in WRITES:
                got += side.hmp(f'qemu-io -d disk0 "{line}"')
            got += side.hmp('qemu-io f "write 0 1"')  # refused: the filter holds the node
            got += side.run("query-jobs")
            got += side.run("block-job-set-speed", {"device": "j", "speed": 0})
            got += side.until_event("BLOCK_JOB_COMPLETED", got)
            replies[side.proc.args[0]] = _normalise_filter(got)
        assert replies[LAUNCH[0]] == replies[QEMU]
        jobs = [m["return"] for m in replies[QEMU] if isinstance(m.get("return"), list)]
        # the first chunk, then clusters 16, 32, 47 and 48, and 49 (0 and 48 were copied)
        assert jobs[0][0]["current-progress"] == MiB + 5 * CLUSTER, jobs
    for side in (qemu, ours):
        assert side.target.read_bytes() == SOURCE
    assert ours.source.read_bytes() == qemu.source.read_bytes() != SOURCE


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
            replies[side.proc.args[0]] = got
        assert replies[LAUNCH[0]] == replies[QEMU]
    written = {16, 32, 47, 48, 0, 49}  # the clusters WRITES touch
    expected = b"".join(SOURCE[i * CLUSTER:(i + 1) * CLUSTER] if i in written
                        else bytes(CLUSTER) for i in range(4 * MiB // CLUSTER))
    assert qemu.target.read_bytes() == ours.target.read_bytes() == expected


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
            side.until_progress(CLUSTER)  # cluster 8 is copied, then speed 1 holds the job
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
                got += side.until_event("BLOCK_JOB_COMPLETED", got)
            got += side.run("query-named-block-nodes")
            got += side.run("x-debug-block-dirty-bitmap-sha256", {"node": "f", "name": "b"})
            replies[side.proc.args[0]] = orjson.loads(orjson.dumps(got).replace(
                str(side.source).encode(), b"<source>").replace(str(side.target).encode(),
                                                                b"<target>"))
        assert replies[LAUNCH[0]] == replies[QEMU]
    at_start = bytearray(SOURCE)
    at_start[512 << 10:(512 << 10) + 4096] = b"\x77" * 4096
    at_start[3 * MiB:3 * MiB + 70000] = b"\x77" * 70000
    expected = b"".join(at_start[i * CLUSTER:(i + 1) * CLUSTER] if i in (8, 48, 49)
                        else bytes(CLUSTER) for i in range(4 * MiB // CLUSTER))
    if cancel:  # cluster 8 by the job, 49 by the write; 48 never
        expected = expected[:48 * CLUSTER] + bytes(CLUSTER) + expected[49 * CLUSTER:]
    assert qemu.target.read_bytes() == ours.target.read_bytes() == expected
