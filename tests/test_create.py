"""blockdev-create (driver file), the same requests on QEMU 7.2 and on qmpjobd, compared
message by message (events and replies, their order included) and by the files made.

Recorded on QEMU 7.2.22: a create job goes created, running, then (after the reply) waiting,
pending, concluded and stays there until job-dismiss; a path that cannot be created fails it
before the reply; an existing file is emptied and resized; raw and null-co cannot be created.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from qemupair import Side, pair
from qmptest import NO_QEMU_REASON, QEMU

needs_qemu = pytest.mark.skipif(QEMU is None, reason=NO_QEMU_REASON)

MiB = 1 << 20


def _file(job: str, filename: str, size: Any, **extra: Any) -> dict[str, Any]:
    return {"job-id": job, "options": {"driver": "file", "filename": filename, "size": size,
                                       **extra}}


JOBS: list[tuple[dict[str, Any], str | None]] = [
    (_file("c1", "<tmp>/<side>-a.raw", MiB), "a"),
    (_file("c2", "<tmp>/<side>-off.raw", MiB, preallocation="off"), "off"),
    (_file("c3", "<tmp>/<side>-falloc.raw", MiB, preallocation="falloc"), "falloc"),
    (_file("c4", "<tmp>/<side>-full.raw", MiB, preallocation="full"), "full"),
    (_file("c5", "<tmp>/<side>-odd.raw", 1000, preallocation="full"), "odd"),
    (_file("c6", "<tmp>/<side>-empty.raw", 0), "empty"),
    (_file("c7", "<tmp>/<side>-existing.raw", 65536), "existing"),
    (_file("c8", "<tmp>/<side>-hint.raw", MiB, nocow=True, **{"extent-size-hint": MiB}),
     "hint"),
    # failing jobs: at once (before the reply), or once running
    (_file("e1", "<tmp>/nonexistent-dir/x.raw", MiB), None),
    (_file("e2", "<tmp>", MiB), None),
    (_file("e3", "<tmp>/<side>-meta.raw", MiB, preallocation="metadata"), "meta"),
    (_file("e4", "<tmp>/<side>-neg.raw", -1), "neg"),
    (_file("e5", "<tmp>/<side>-huge.raw", (1 << 63) - 1), "huge"),
    (_file("e6", "<tmp>/<side>-big-hint.raw", MiB, **{"extent-size-hint": 1 << 33}), None),
]
"""Each create, and the file it makes (<tmp>/<side>-NAME.raw) or None."""

REFUSED: list[dict[str, Any]] = [
    _file("c1", "<tmp>/<side>-dup.raw", MiB), _file("", "<tmp>/<side>-x.raw", MiB),
    _file("1bad", "<tmp>/<side>-x.raw", MiB),
    {"job-id": "r1", "options": {"driver": "raw"}},
    {"job-id": "r2", "options": {"driver": "null-co"}},
    {"job-id": "r3", "options": {"driver": "raw", "file": "x"}},
    {"job-id": "r4", "options": {"driver": "nosuch"}},
    _file("r5", "<tmp>/<side>-x.raw", MiB, preallocation="bogus"),
    _file("r6", "<tmp>/<side>-x.raw", "1M"), _file("r7", "<tmp>/<side>-x.raw", MiB, bogus=1),
    {"job-id": "r8", "options": {"driver": "file", "size": MiB}},
    {"job-id": "r9", "options": {"driver": "file", "filename": "x"}},
    {"options": {"driver": "file", "filename": "x", "size": 1}}, {"job-id": "r10"},
    {"job-id": "r11", "options": {}},
    {**_file("r12", "<tmp>/<side>-x.raw", MiB), "auto-dismiss": True},
]
"""Refused by the command: no job, no event."""


def _argv(name: str) -> list[str]:
    return ["-M", "none", "-nodefaults", "-display", "none"]


def _create(side: Side, args: dict[str, Any]) -> list[Any]:
    """The create and everything up to its job's end (``concluded``)."""
    got = side.run("blockdev-create", args)
    if "error" in got[-1]:
        return got
    job = args["job-id"]
    return got + side.until_event("JOB_STATUS_CHANGE", got, lambda m: m["data"] == {
        "status": "concluded", "id": job})


@needs_qemu
def test_blockdev_create_as_qemu(tmp_path: Path) -> None:
    for name in ("qemu", "ours"):
        (tmp_path / f"{name}-existing.raw").write_bytes(b"old data " * 100000)
    with pair(tmp_path, _argv) as (qemu, ours):
        for args, _ in JOBS:
            assert _create(ours, args) == _create(qemu, args), args
        for verb in ("query-jobs", "query-block-jobs"):
            assert ours.run(verb) == qemu.run(verb)
        for args in REFUSED:
            assert ours.run("blockdev-create", args) == qemu.run("blockdev-create", args), args
        for verb, args in (("job-cancel", {"id": "c1"}), ("job-finalize", {"id": "c1"}),
                           ("block-job-cancel", {"device": "c1"}),
                           ("job-dismiss", {"id": "c1"}), ("job-dismiss", {"id": "c1"})):
            assert ours.run(verb, args) == qemu.run(verb, args), verb
        for args, _ in JOBS[1:]:
            assert ours.run("job-dismiss", {"id": args["job-id"]}) == \
                qemu.run("job-dismiss", {"id": args["job-id"]})
        assert ours.run("query-jobs") == qemu.run("query-jobs") == [{"return": []}]
    for _, made in JOBS:
        if made is None:
            continue
        q, o = tmp_path / f"qemu-{made}.raw", tmp_path / f"ours-{made}.raw"
        assert o.read_bytes() == q.read_bytes(), made
        sq, so = os.stat(q), os.stat(o)
        assert (so.st_size, so.st_blocks) == (sq.st_size, sq.st_blocks), made
    assert (tmp_path / "ours-existing.raw").read_bytes() == bytes(65536)
