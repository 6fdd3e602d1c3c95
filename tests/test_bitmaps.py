"""Dirty bitmaps: the block-dirty-bitmap-* commands, their transaction actions and what guest
writes (HMP qemu-io) mark, run the same on QEMU 7.2 and on qmpjobd-system-x86_64 and compared
reply by reply, query-named-block-nodes (the dirty-bitmaps entries, newest first, in QEMU's key
order) and x-debug-block-dirty-bitmap-sha256 included.

Recorded on QEMU 7.2.22: count is dirty granules times the granularity; a write through the
raw node marks the file node's bitmaps too, not the other way round; a disabled bitmap does
not record; a failing transaction undoes every action before it.  Where QEMU 7.2 crashes
(a merge of an empty list, a transaction enabling a missing bitmap) qmpjobd answers instead.
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


def _add(node: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"execute": "block-dirty-bitmap-add", "arguments": {"node": node, "name": name,
                                                               **extra}}


def _do(verb: str, node: str, name: str) -> dict[str, Any]:
    return {"execute": f"block-dirty-bitmap-{verb}", "arguments": {"node": node, "name": name}}


def _io(node: str, command: str) -> dict[str, Any]:
    return {"execute": "human-monitor-command",
            "arguments": {"command-line": f'qemu-io {node} "{command}"'}}


def _merge(target: str, bitmaps: list[Any], node: str = "f") -> dict[str, Any]:
    return {"execute": "block-dirty-bitmap-merge",
            "arguments": {"node": node, "target": target, "bitmaps": bitmaps}}


def _txn(*actions: tuple[str, dict[str, Any]], **properties: str) -> dict[str, Any]:
    args: dict[str, Any] = {"actions": [{"type": t, "data": d} for t, d in actions]}
    if properties:
        args["properties"] = properties
    return {"execute": "transaction", "arguments": args}


def _sha(node: str, name: str) -> dict[str, Any]:
    return {"execute": "x-debug-block-dirty-bitmap-sha256",
            "arguments": {"node": node, "name": name}}


NODES = {"execute": "query-named-block-nodes"}

REQUESTS: list[dict[str, Any]] = [
    _add("f", "b0"), _add("f", "b1", granularity=4096), _sha("f", "b0"), _sha("f", "b1"),
    *[_add("f", "bad", granularity=g) for g in (3000, 0, 256, 4294967295, 4294967296, -1,
                                                "4096")],
    _add("f", "big", granularity=1 << 31),
    _add("f", "p", persistent=True), _add("s", "p", persistent=True),
    _add("f", "b0"), _add("nosuch", "b0"), _add("", "b0"), _add("f", ""),
    _add("f", "n" * 1023), _add("f", "n" * 1024), _do("remove", "f", "n" * 1023),
    _add("s", "b0", granularity=512, disabled=True),  # same name on another node
    NODES,
    _io("f", "write -P 0xab 65535 2"),  # two granules of 64k, one of... see the counts
    _io("f", "read 0 1M"),  # reads mark nothing
    NODES, _sha("f", "b0"), _sha("f", "b1"), _sha("f", "big"),
    _do("enable", "s", "b0"), _do("enable", "s", "b0"),
    _io("s", "write -P 0xcd 1000 2000"),  # marks s's bitmaps, not f's
    _io("f", "write -z 1M 4096"),
    NODES,
    _merge("b1", ["b0", {"node": "s", "name": "b0"}]),
    _merge("b1", ["b0", "nosuch"]), _merge("b1", [{"node": "nosuch", "name": "b0"}]),
    _merge("nosuch", ["b0"]), _merge("b1", [5]), _merge("b1", [{"node": "s"}]),
    _merge("b1", ["b1"]),
    NODES, _sha("f", "b1"),
    _do("disable", "f", "b1"), _io("f", "write 2M 64k"), _do("clear", "f", "b0"),
    _do("disable", "f", "b1"), _do("clear", "f", "b1"), _merge("b1", ["big"]),
    NODES,
    _do("remove", "f", "nosuch"), _do("remove", "nosuch", "b0"), _do("clear", "f", "nosuch"),
    _do("enable", "nosuch", "b0"), _do("disable", "f", "nosuch"), _sha("f", "nosuch"),
    # a failing transaction undoes the add, the clear, the remove and the merge before it
    _txn(("block-dirty-bitmap-add", {"node": "f", "name": "b9"}),
         ("block-dirty-bitmap-clear", {"node": "f", "name": "b1"}),
         ("block-dirty-bitmap-remove", {"node": "f", "name": "big"}),
         ("block-dirty-bitmap-merge", {"node": "f", "target": "b0", "bitmaps": ["b1"]}),
         ("block-dirty-bitmap-disable", {"node": "f", "name": "nosuch"})),
    NODES, _sha("f", "b1"), _sha("f", "b0"),
    _txn(("block-dirty-bitmap-add", {"node": "f", "name": "b9", "granularity": 3000})),
    _txn(("block-dirty-bitmap-add", {"node": "f", "name": "b9"}),
         ("block-dirty-bitmap-merge", {"node": "f", "target": "b9", "bitmaps": ["b1"]}),
         ("block-dirty-bitmap-enable", {"node": "f", "name": "b1"}),
         ("block-dirty-bitmap-remove", {"node": "f", "name": "big"})),
    _txn(("block-dirty-bitmap-add", {"node": "f", "name": "b8"}), **{"completion-mode":
                                                                       "grouped"}),
    _txn(),
    NODES, _sha("f", "b9"),
    {"execute": "query-block"},
]


def _argv(name: str) -> list[str]:
    """A 4 MiB raw disk (tmp/NAME.raw, made by the test): file node ``s`` under raw ``f``."""
    return ["-M", "none", "-nodefaults", "-display", "none",
            "-blockdev", '{"driver":"file","filename":"<image>","node-name":"s"}',
            "-blockdev", '{"driver":"raw","file":"s","node-name":"f"}']


@contextmanager
def pair(tmp: Path) -> Iterator[tuple[Side, Side]]:
    """QEMU 7.2 and qmpjobd with the disk of :func:`_argv`."""
    for name in ("qemu", "ours"):
        (tmp / f"{name}.raw").write_bytes(bytes(4 * MiB))
    with qemupair.pair(tmp, lambda name: [a.replace("<image>", str(tmp / f"{name}.raw"))
                                          for a in _argv(name)]) as sides:
        yield sides


def _run(side: Side, request: dict[str, Any]) -> list[Any]:
    """The reply of a raw request, the image's name normalised."""
    msgs = side.run(request["execute"], request.get("arguments"))
    return orjson.loads(orjson.dumps(msgs).replace(f"<tmp>/{side.name}.raw".encode(),
                                                   b"<image>"))


@needs_qemu
def test_bitmaps_as_qemu(tmp_path: Path) -> None:
    with pair(tmp_path) as (qemu, ours):
        for request in REQUESTS:
            assert _run(ours, request) == _run(qemu, request), request
        final = _run(ours, NODES)
    bitmaps = {n["node-name"]: {b["name"]: b for b in n.get("dirty-bitmaps", [])}
               for n in final[0]["return"]}
    assert set(bitmaps["f"]) == {"b9", "b1", "b0"} and set(bitmaps["s"]) == {"b0"}
    # 512-byte granules: 1000..3000 through s (2560), then through f a 4 KiB zero write
    # at 1M and 64 KiB at 2M
    assert bitmaps["s"]["b0"]["count"] == 2560 + 4096 + 65536


def test_what_qemu_72_crashes_on_is_answered(tmp_path: Path) -> None:
    """QEMU 7.2 segfaults on a merge of no bitmaps and on a transaction that enables a
    missing one: qmpjobd merges nothing, and reports the missing bitmap."""
    (tmp_path / "ours.raw").write_bytes(bytes(4 * MiB))
    side = Side("ours", tmp_path, [a.replace("<image>", str(tmp_path / "ours.raw"))
                                   for a in _argv("ours")])
    try:
        assert _run(side, _add("f", "b0")) == [{"return": {}}]
        assert _run(side, _merge("b0", [])) == [{"return": {}}]
        assert _run(side, _txn(("block-dirty-bitmap-merge", {
            "node": "f", "target": "b0", "bitmaps": []}))) == [{"return": {}}]
        assert _run(side, _txn(("block-dirty-bitmap-clear", {"node": "f", "name": "b0"}),
                               ("block-dirty-bitmap-enable", {"node": "f", "name": "x"}))) == [
            {"error": {"class": "GenericError", "desc": "Dirty bitmap 'x' not found"}}]
        assert _run(side, _sha("f", "b0"))[0]["return"]["sha256"] == \
            "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"  # 8 zero bytes
    finally:
        side.stop()


def test_marking_and_ranges_agree_with_a_set_of_granules() -> None:
    """set_range, count and dirty_ranges against a plain set of granule numbers, for
    ranges that start and end inside bytes, on byte edges and past the end of the disk."""
    import random

    from qmpjobd.block.bitmaps import DirtyBitmap
    rng = random.Random(7)
    for granularity in (512, 4096, 65536):
        length = 3 * MiB + 1234
        bitmap = DirtyBitmap("b", granularity, length)
        granules = -(-length // granularity)
        expected: set[int] = set()
        for _ in range(200):
            offset = rng.randrange(0, length + granularity)
            size = rng.choice((1, granularity, 7 * granularity + 3, rng.randrange(1, MiB)))
            bitmap.mark(offset, size)
            expected |= set(range(offset // granularity,
                                  min((offset + size - 1) // granularity + 1, granules)))
            assert bitmap.count == len(expected) * granularity
        got = {g for off, n in bitmap.dirty_ranges()
               for g in range(off // granularity, (off + n) // granularity)}
        assert got == expected


@needs_qemu
def test_a_backup_marks_the_targets_bitmaps_as_qemu(tmp_path: Path) -> None:
    """The job's writes reach the target node and its file: both bitmaps count them (the
    copy_file_range path included), the source's do not."""
    with pair(tmp_path) as (qemu, ours):
        for side in (qemu, ours):
            target = tmp_path / f"{'q' if side is qemu else 'o'}-target.raw"
            target.write_bytes(bytes(4 * MiB))
            for request in (
                    {"execute": "blockdev-add", "arguments": {
                        "driver": "file", "filename": str(target), "node-name": "t"}},
                    {"execute": "blockdev-add", "arguments": {
                        "driver": "raw", "file": "t", "node-name": "tf"}},
                    _add("tf", "bt"), _add("t", "bt", granularity=4096), _add("f", "bs")):
                assert _run(side, request) == [{"return": {}}], request
            assert _run(side, _io("f", "write -P 0x11 0 1M")) == [{"return": ""}]
            side.c.cmd("blockdev-backup", {"job-id": "j", "device": "f", "target": "tf",
                                           "sync": "full"})
            while side.c.recv().get("event") != "BLOCK_JOB_COMPLETED":
                pass
        got = [_run(side, NODES)[-1]["return"] for side in (qemu, ours)]
        normalise = [orjson.loads(orjson.dumps(g).replace(b"q-target", b"o-target"))
                     for g in got]
        assert normalise[1] == normalise[0]
    counts = {(n["node-name"], b["name"]): b["count"] for n in got[1]
              for b in n.get("dirty-bitmaps", [])}
    assert counts == {("tf", "bt"): 4 * MiB, ("t", "bt"): 4 * MiB, ("f", "bs"): MiB}
