"""The block layer and backup jobs against a real daemon and real files.

Data integrity is checked by sha256 of source and target after every backup, also with a
speed limit, a pause in the middle, and errors retried under the ignore and stop policies.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from qmptest import Client, Daemon, start_qmpjobd, until_status

MIB = 1 << 20


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(8 * MIB))
    dst = tmp_path / "dst.img"
    with open(dst, "wb") as f:
        f.truncate(8 * MIB)
    return src, dst


@pytest.fixture
def qmp(daemon: Daemon) -> Any:
    with Client(daemon.path) as c:
        c.negotiate()
        yield c


def events_until(c: Client, status: str, job_id: str = "bk") -> list[Any]:
    return until_status(c, status, job_id)


def names(msgs: list[Any]) -> list[str]:
    return [m["data"]["status"] if m.get("event") == "JOB_STATUS_CHANGE"
            else m.get("event", "reply") for m in msgs]


def add_files(c: Client, src: Path, dst: Path) -> None:
    assert c.cmd("blockdev-add", {"driver": "file", "node-name": "src",
                                  "filename": str(src)}) == {"return": {}}
    assert c.cmd("blockdev-add", {"driver": "file", "node-name": "dst",
                                  "filename": str(dst)}) == {"return": {}}


def test_nodes_add_query_delete(qmp: Client, files: tuple[Path, Path]) -> None:
    src, _ = files
    c = qmp
    c.cmd("blockdev-add", {"driver": "file", "node-name": "f", "filename": str(src)})
    c.cmd("blockdev-add", {"driver": "raw", "node-name": "r", "file": "f"})
    c.cmd("blockdev-add", {"driver": "null-co", "node-name": "n", "size": 4 * MIB})
    c.cmd("blockdev-add", {"driver": "blkdebug", "node-name": "d", "image": "n",
                           "inject-error": [{"event": "read_aio", "errno": 5}]})
    nodes = {n["node-name"]: n for n in c.cmd("query-named-block-nodes")["return"]}
    assert list(nodes["f"]) == ["iops_rd", "detect_zeroes", "image", "iops_wr", "ro",
                                "node-name", "backing_file_depth", "drv", "iops", "bps_wr",
                                "write_threshold", "encrypted", "bps", "bps_rd", "cache", "file"]
    assert nodes["f"]["image"] == {"virtual-size": 8 * MIB, "filename": str(src),
                                   "format": "file", "actual-size": 8 * MIB,
                                   "dirty-flag": False}
    assert nodes["r"]["drv"] == "raw" and nodes["r"]["file"] == str(src)
    assert nodes["n"]["image"] == {"virtual-size": 4 * MIB,
                                   "filename": 'json:{"driver": "null-co", "size": 4194304}',
                                   "format": "null-co", "actual-size": 0}
    assert nodes["d"]["drv"] == "blkdebug"
    assert [n["node-name"] for n in c.cmd("query-named-block-nodes")["return"]] == [
        "d", "n", "r", "f"]  # newest first
    assert c.cmd("blockdev-add", {"driver": "null-co", "node-name": "n"})["error"]["desc"] == \
        "Duplicate nodes with node-name='n'"
    assert c.cmd("blockdev-del", {"node-name": "f"})["error"]["desc"] == \
        "Block device f is in use"
    assert c.cmd("blockdev-del", {"node-name": "r"}) == {"return": {}}
    assert c.cmd("blockdev-del", {"node-name": "f"}) == {"return": {}}
    assert c.cmd("blockdev-del", {"node-name": "f"})["error"]["desc"] == \
        "Failed to find node with node-name='f'"
    assert c.cmd("blockdev-add", {"driver": "vmdk", "node-name": "q"})["error"]["desc"] == \
        "Parameter 'driver' does not accept value 'vmdk'"
    err = c.cmd("blockdev-add", {"driver": "file", "node-name": "x",
                                 "filename": "/nonexistent/x.img"})["error"]["desc"]
    assert err == "Could not open '/nonexistent/x.img': No such file or directory"
    assert c.cmd("blockdev-add", {"driver": "raw", "node-name": "y", "file": 1})["error"][
        "desc"] == "Invalid parameter type for 'file', expected: BlockdevRef"
    assert c.cmd("blockdev-add", {"driver": "null-co"})["error"]["desc"] == \
        "'node-name' must be specified for the root node"
    c.cmd("blockdev-add", {"driver": "raw", "node-name": "inl",
                           "file": {"driver": "null-co", "node-name": "inner"}})
    assert c.cmd("blockdev-del", {"node-name": "inner"})["error"]["desc"] == \
        "Node inner is not owned by the monitor"
    assert c.cmd("blockdev-del", {"node-name": "inl"}) == {"return": {}}
    assert "inner" not in {n["node-name"] for n in c.cmd("query-named-block-nodes")["return"]}


def test_backup_default_sequence_and_integrity(qmp: Client, files: tuple[Path, Path]) -> None:
    src, dst = files
    c = qmp
    add_files(c, src, dst)
    c.send(b'{"execute":"blockdev-backup","arguments":{"job-id":"bk","device":"src",'
           b'"target":"dst","sync":"full"},"id":"b1"}\n')
    msgs = events_until(c, "null")
    assert names(msgs) == ["created", "running", "paused", "running", "reply", "waiting",
                           "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"]
    assert msgs[4] == {"return": {}, "id": "b1"}
    assert msgs[7]["data"] == {"device": "bk", "len": 8 * MIB, "offset": 8 * MIB, "speed": 0,
                               "type": "backup"}
    assert sha(src) == sha(dst)
    assert c.cmd("query-jobs") == {"return": []}


def test_backup_speed_pause_cancel_and_integrity(qmp: Client, files: tuple[Path, Path]) -> None:
    src, dst = files
    c = qmp
    add_files(c, src, dst)
    assert c.cmd("blockdev-backup", {"job-id": "bk", "device": "src", "target": "dst",
                                     "sync": "full", "speed": 4 * MIB,
                                     "auto-dismiss": False}) == {"return": {}}
    info = c.cmd("query-block-jobs")["return"][0]
    assert (info["device"], info["type"], info["speed"], info["len"]) == ("bk", "backup",
                                                                          4 * MIB, 8 * MIB)
    assert info["offset"] < 8 * MIB
    assert c.cmd("blockdev-del", {"node-name": "src"})["error"]["desc"] == \
        "Block device src is in use"
    assert c.cmd("blockdev-del", {"node-name": "dst"})["error"]["desc"] == \
        "Node 'dst' is busy: block device is in use by block job: backup"
    c.cmd("block-job-pause", {"device": "bk"})
    events_until(c, "paused")
    assert c.cmd("block-job-cancel", {"device": "bk"})["error"]["desc"] == \
        "The block job for device 'bk' is currently paused"
    c.cmd("block-job-set-speed", {"device": "bk", "speed": 0})
    c.cmd("block-job-resume", {"device": "bk"})
    msgs = events_until(c, "concluded")
    assert "BLOCK_JOB_COMPLETED" in names(msgs)
    assert "error" not in c.cmd("query-jobs")["return"][0]
    assert sha(src) == sha(dst)
    c.cmd("job-dismiss", {"id": "bk"})
    assert c.cmd("blockdev-del", {"node-name": "src"}) == {"return": {}}


def test_backup_cancel_hard(qmp: Client, files: tuple[Path, Path]) -> None:
    src, dst = files
    c = qmp
    add_files(c, src, dst)
    c.cmd("blockdev-backup", {"job-id": "bk", "device": "src", "target": "dst", "sync": "full",
                              "speed": MIB, "auto-dismiss": False})
    c.cmd("block-job-cancel", {"device": "bk"})  # backup: any cancel is hard
    msgs = events_until(c, "concluded")
    assert names(msgs)[-3:] == ["aborting", "BLOCK_JOB_CANCELLED", "concluded"]
    assert c.cmd("query-jobs")["return"][0]["error"] == "Operation canceled"


def _debug_source(c: Client, src: Path, rule: dict[str, Any]) -> None:
    """src = raw over blkdebug over the file: blkdebug's events fire below a format driver."""
    c.cmd("blockdev-add", {"driver": "file", "node-name": "f", "filename": str(src)})
    assert c.cmd("blockdev-add", {"driver": "blkdebug", "node-name": "dbg", "image": "f",
                                  "inject-error": [rule]}) == {"return": {}}
    assert c.cmd("blockdev-add", {"driver": "raw", "node-name": "src", "file": "dbg"}) == {
        "return": {}}


def test_blkdebug_fires_only_below_a_format_driver(qmp: Client,
                                                   files: tuple[Path, Path]) -> None:
    src, dst = files
    c = qmp
    _debug_source(c, src, {"event": "read_aio", "errno": 5})
    c.cmd("blockdev-add", {"driver": "file", "node-name": "dst", "filename": str(dst)})
    c.cmd("blockdev-backup", {"job-id": "bk", "device": "dbg", "target": "dst",
                              "sync": "full"})
    msgs = events_until(c, "null")
    assert "BLOCK_JOB_ERROR" not in names(msgs) and "BLOCK_JOB_COMPLETED" in names(msgs)
    assert sha(src) == sha(dst)


def test_read_error_report(qmp: Client, files: tuple[Path, Path]) -> None:
    src, dst = files
    c = qmp
    _debug_source(c, src, {"event": "read_aio", "errno": 5, "sector": 4096})
    c.cmd("blockdev-add", {"driver": "file", "node-name": "dst", "filename": str(dst)})
    c.cmd("blockdev-backup", {"job-id": "bk", "device": "src", "target": "dst", "sync": "full",
                              "auto-finalize": False, "auto-dismiss": False})
    msgs = events_until(c, "concluded")
    assert names(msgs)[-4:] == ["BLOCK_JOB_ERROR", "aborting", "BLOCK_JOB_COMPLETED",
                                "concluded"]
    assert msgs[-4]["data"] == {"device": "bk", "operation": "read", "action": "report"}
    assert msgs[-2]["data"]["error"] == "Input/output error"
    assert c.cmd("query-jobs")["return"][0]["error"] == "Input/output error"


def test_read_error_stop_then_resume(qmp: Client, files: tuple[Path, Path]) -> None:
    src, dst = files
    c = qmp
    _debug_source(c, src, {"event": "read_aio", "errno": 5, "sector": 4096, "once": True})
    c.cmd("blockdev-add", {"driver": "file", "node-name": "dst", "filename": str(dst)})
    c.cmd("blockdev-backup", {"job-id": "bk", "device": "src", "target": "dst", "sync": "full",
                              "on-source-error": "stop", "auto-dismiss": False})
    msgs = events_until(c, "paused")
    stop = [m for m in msgs if m.get("event") == "BLOCK_JOB_ERROR"]
    assert stop[-1]["data"] == {"device": "bk", "operation": "read", "action": "stop"}
    info = c.cmd("query-block-jobs")["return"][0]
    assert (info["io-status"], info["paused"], info["status"]) == ("failed", True, "paused")
    c.cmd("block-job-resume", {"device": "bk"})
    events_until(c, "concluded")
    assert "error" not in c.cmd("query-jobs")["return"][0]
    assert sha(src) == sha(dst)  # the failed chunk was retried after resume


def test_read_error_ignore_retries(qmp: Client, files: tuple[Path, Path]) -> None:
    src, dst = files
    c = qmp
    _debug_source(c, src, {"event": "read_aio", "errno": 5, "once": True})
    c.cmd("blockdev-add", {"driver": "file", "node-name": "dst", "filename": str(dst)})
    c.cmd("blockdev-backup", {"job-id": "bk", "device": "src", "target": "dst", "sync": "full",
                              "on-source-error": "ignore"})
    msgs = events_until(c, "null")
    err = [m["data"] for m in msgs if m.get("event") == "BLOCK_JOB_ERROR"]
    assert err == [{"device": "bk", "operation": "read", "action": "ignore"}]
    assert "BLOCK_JOB_COMPLETED" in names(msgs)
    assert sha(src) == sha(dst)


def test_enospc_policy(qmp: Client, files: tuple[Path, Path]) -> None:
    src, dst = files
    c = qmp
    c.cmd("blockdev-add", {"driver": "file", "node-name": "src", "filename": str(src)})
    c.cmd("blockdev-add", {"driver": "file", "node-name": "f", "filename": str(dst)})
    c.cmd("blockdev-add", {"driver": "blkdebug", "node-name": "dbg", "image": "f",
                           "inject-error": [{"event": "write_aio", "errno": 28, "once": True}]})
    c.cmd("blockdev-add", {"driver": "raw", "node-name": "dst", "file": "dbg"})
    c.cmd("blockdev-backup", {"job-id": "bk", "device": "src", "target": "dst", "sync": "full",
                              "on-target-error": "enospc", "auto-dismiss": False})
    msgs = events_until(c, "paused")
    assert [m["data"] for m in msgs if m.get("event") == "BLOCK_JOB_ERROR"] == [
        {"device": "bk", "operation": "write", "action": "stop"}]
    assert c.cmd("query-block-jobs")["return"][0]["io-status"] == "nospace"
    c.cmd("job-resume", {"id": "bk"})
    events_until(c, "concluded")
    assert c.cmd("query-block-jobs")["return"][0]["io-status"] == "ok"
    assert sha(src) == sha(dst)


def test_drive_backup_creates_target(qmp: Client, files: tuple[Path, Path],
                                     tmp_path: Path) -> None:
    src, _ = files
    c = qmp
    c.cmd("blockdev-add", {"driver": "file", "node-name": "src", "filename": str(src)})
    out = tmp_path / "new.img"
    assert c.cmd("drive-backup", {"job-id": "bk", "device": "src", "target": str(out),
                                  "sync": "full"}) == {"return": {}}
    events_until(c, "null")
    assert sha(src) == sha(out)


def test_backup_lookup_and_id_errors(qmp: Client, files: tuple[Path, Path]) -> None:
    src, dst = files
    c = qmp
    add_files(c, src, dst)
    base = {"device": "src", "target": "dst", "sync": "full"}
    assert c.cmd("blockdev-backup", {**base, "device": "nope", "job-id": "a"})["error"][
        "desc"] == "Cannot find device='nope' nor node-name='nope'"
    assert c.cmd("blockdev-backup", {**base, "job-id": "1bad"})["error"]["desc"] == \
        "Invalid job ID '1bad'"
    assert c.cmd("blockdev-backup", base)["error"]["desc"] == "Invalid job ID ''"
    r = c.cmd("blockdev-backup", {**base, "job-id": "neg", "speed": -1})
    assert r["error"]["desc"] == "Parameter 'speed' expects a non-negative value"
    assert c.cmd("blockdev-backup", {**base, "job-id": "same", "target": "src"})["error"][
        "desc"] == "Source and target cannot be the same"
    assert c.cmd("block-job-cancel", {"device": "nojob"})["error"] == {
        "class": "DeviceNotActive", "desc": "Block job 'nojob' not found"}


def test_quit_during_backup(tmp_path: Path, files: tuple[Path, Path]) -> None:
    src, dst = files
    d = start_qmpjobd(str(tmp_path), name="q.sock")
    with Client(d.path) as c:
        c.negotiate()
        add_files(c, src, dst)
        c.cmd("blockdev-backup", {"job-id": "bk", "device": "src", "target": "dst",
                                  "sync": "full", "speed": MIB})
        c.send(b'{"execute":"quit","id":"q"}\n')
        msgs = []
        while not msgs or "return" not in msgs[-1]:
            msgs.append(c.recv())
        # as QEMU 7.2 (tests/data/qemu72-block-transcripts.md, scenario 9)
        assert names(msgs) == ["SHUTDOWN", "paused", "running", "aborting",
                               "BLOCK_JOB_CANCELLED", "concluded", "null", "reply"]
    assert d.proc.wait(10) == 0


def test_mirror_ready_complete_and_cancels(qmp: Client, files: tuple[Path, Path],
                                           tmp_path: Path) -> None:
    src, dst = files
    c = qmp
    add_files(c, src, dst)
    c.send(b'{"execute":"blockdev-mirror","arguments":{"job-id":"m","device":"src",'
           b'"target":"dst","sync":"full"},"id":1}\n')
    msgs = events_until(c, "ready", "m")
    # no drain flicker at the start of a mirror (as QEMU 7.2 showed)
    assert names(msgs) == ["created", "running", "reply", "ready"]
    ev = c.recv()
    assert ev["event"] == "BLOCK_JOB_READY"
    assert ev["data"] == {"device": "m", "len": 8 * MIB, "offset": 8 * MIB, "speed": 0,
                          "type": "mirror"}
    info = c.cmd("query-block-jobs")["return"][0]
    assert (info["ready"], info["status"]) == (True, "ready")
    assert sha(src) == sha(dst)
    c.cmd("job-complete", {"id": "m"})
    assert names(events_until(c, "null", "m")) == ["waiting", "pending", "BLOCK_JOB_COMPLETED",
                                                   "concluded", "null"]
    # soft cancel in READY completes without error; forced cancel aborts
    for name, force, tail in (("soft", False, ["waiting", "pending", "BLOCK_JOB_COMPLETED",
                                               "concluded"]),
                              ("hard", True, ["aborting", "BLOCK_JOB_CANCELLED", "concluded"])):
        out = tmp_path / f"{name}.img"
        c.cmd("drive-mirror", {"job-id": name, "device": "src", "target": str(out),
                               "sync": "full", "auto-dismiss": False})
        events_until(c, "ready", name)
        c.cmd("block-job-cancel", {"device": name, "force": force} if force else
              {"device": name})
        assert names(events_until(c, "concluded", name))[-len(tail):] == tail
        job = next(j for j in c.cmd("query-jobs")["return"] if j["id"] == name)
        assert ("error" in job) == force
        assert sha(src) == sha(out)


def test_mirror_not_ready_refuses_complete(qmp: Client, files: tuple[Path, Path]) -> None:
    src, dst = files
    c = qmp
    add_files(c, src, dst)
    c.cmd("blockdev-mirror", {"job-id": "m", "device": "src", "target": "dst", "sync": "full",
                              "speed": MIB})
    assert c.cmd("job-complete", {"id": "m"})["error"]["desc"] == \
        "Job 'm' in state 'running' cannot accept command verb 'complete'"
    c.cmd("block-job-cancel", {"device": "m"})  # before READY every cancel is forced
    assert names(events_until(c, "null", "m"))[-4:] == ["aborting", "BLOCK_JOB_CANCELLED",
                                                        "concluded", "null"]


def _two_pairs(c: Client, src: Path, dst: Path, tmp_path: Path) -> None:
    add_files(c, src, dst)
    src2, dst2 = tmp_path / "src2.img", tmp_path / "dst2.img"
    src2.write_bytes(os.urandom(4 * MIB))
    with open(dst2, "wb") as f:
        f.truncate(4 * MIB)
    c.cmd("blockdev-add", {"driver": "file", "node-name": "src2", "filename": str(src2)})
    c.cmd("blockdev-add", {"driver": "file", "node-name": "dst2", "filename": str(dst2)})


def test_grouped_transaction(qmp: Client, files: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = files
    c = qmp
    _two_pairs(c, src, dst, tmp_path)
    c.send(b'{"execute":"transaction","arguments":{"actions":['
           b'{"type":"blockdev-backup","data":{"device":"src","target":"dst","sync":"full",'
           b'"job-id":"b1"}},{"type":"blockdev-backup","data":{"device":"src2",'
           b'"target":"dst2","sync":"full","job-id":"b2"}}],'
           b'"properties":{"completion-mode":"grouped"}},"id":"c5"}\n')
    msgs = []
    while not msgs or msgs[-1].get("id") != "c5":
        msgs.append(c.recv())
    # as QEMU 7.2 (tests/data/qemu72-block-transcripts.md, scenario 8a)
    assert [(m["data"]["status"], m["data"]["id"]) for m in msgs[:-1]] == [
        ("created", "b1"), ("created", "b2"), ("running", "b1"), ("paused", "b1"),
        ("running", "b2"), ("paused", "b2"), ("running", "b1"), ("running", "b2")]
    rest = events_until(c, "null", "b1")
    pend = [(m["data"]["id"]) for m in rest if m.get("data", {}).get("status") == "pending"]
    assert pend == ["b2", "b1"]  # newest member first
    done = [m["data"]["device"] for m in rest if m.get("event") == "BLOCK_JOB_COMPLETED"]
    assert done == ["b2", "b1"]
    assert sha(src) == sha(dst) and sha(tmp_path / "src2.img") == sha(tmp_path / "dst2.img")


def test_transaction_prepare_failure(qmp: Client, files: tuple[Path, Path],
                                     tmp_path: Path) -> None:
    src, dst = files
    c = qmp
    _two_pairs(c, src, dst, tmp_path)
    action = {"type": "blockdev-backup", "data": {"device": "src", "target": "dst",
                                                  "sync": "full", "job-id": "b1"}}
    dup = {"type": "blockdev-backup", "data": {"device": "src2", "target": "dst2",
                                               "sync": "full", "job-id": "b1"}}
    c.send(b'{"execute":"transaction","arguments":' + __import__("orjson").dumps(
        {"actions": [action, dup], "properties": {"completion-mode": "grouped"}}) +
        b',"id":"c5"}\n')
    msgs = []
    while not msgs or msgs[-1].get("id") != "c5":
        msgs.append(c.recv())
    # scenario 8b: created, aborting, concluded, null, no CANCELLED event, then the error
    assert [m["data"]["status"] for m in msgs[:-1]] == ["created", "aborting", "concluded",
                                                         "null"]
    assert msgs[-1] == {"id": "c5", "error": {"class": "GenericError",
                                              "desc": "Job ID 'b1' already in use"}}
    assert c.cmd("query-jobs") == {"return": []}
    r = c.cmd("transaction", {"actions": [{"type": "abort", "data": {}}],
                              "properties": {"completion-mode": "grouped"}})
    assert r["error"]["desc"] == ("Action 'abort' does not support Transaction property "
                                  "completion-mode = grouped")
    assert c.cmd("transaction", {"actions": [{"type": "abort", "data": {}}]})["error"][
        "desc"] == "Transaction aborted using Abort action"


def _normalize_nodes(value: Any, root: str) -> Any:
    import re
    text = __import__("json").dumps(value).replace(root, "<tmp>")
    return __import__("json").loads(re.sub(r"#block\d+", "#block", text))


def test_query_named_block_nodes_matches_qemu(qemu: Daemon, daemon: Daemon,
                                              tmp_path: Path) -> None:
    """The same nodes added to QEMU 7.2 and to qmpjobd give the same query output."""
    outputs = []
    for server, sub in ((qemu, "q"), (daemon, "d")):
        root = tmp_path / sub
        root.mkdir()
        (root / "src.img").write_bytes(os.urandom(4 * MIB))
        with Client(server.path) as c:
            c.negotiate()
            adds = [
                {"driver": "file", "node-name": "src", "filename": str(root / "src.img")},
                {"driver": "raw", "node-name": "srcraw", "file": "src"},
                {"driver": "raw", "node-name": "r2",
                 "file": {"driver": "file", "filename": str(root / "src.img")}},
                {"driver": "null-co", "node-name": "nuldef"},
                {"driver": "null-co", "node-name": "nul", "size": 4 * MIB},
                {"driver": "null-co", "node-name": "nulz", "size": 4 * MIB, "read-zeroes": True},
                {"driver": "blkdebug", "node-name": "dbg", "image": "src",
                 "inject-error": [{"event": "read_aio", "errno": 5, "once": False}]},
                {"driver": "blkdebug", "node-name": "dbg2", "image": "src",
                 "inject-error": [{"event": "write_aio", "errno": 5}]},
            ]
            for a in adds:
                assert c.cmd("blockdev-add", a) == {"return": {}}, a
            outputs.append([_normalize_nodes(c.cmd("query-named-block-nodes", args),
                                             str(root))
                            for args in (None, {"flat": True})])
    for ours, theirs in zip(outputs[1], outputs[0], strict=True):
        for a, b in zip(ours["return"], theirs["return"], strict=True):
            assert a == b, "\nqmpjobd: " + __import__("json").dumps(a) + "\nQEMU:    " + \
                __import__("json").dumps(b)
        assert len(ours["return"]) == len(theirs["return"])


# -- regressions from review ------------------------------------------------------------------

def test_deleted_inline_child_stays_alive_for_its_job(qmp: Client, files: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    src, dst = files
    c = qmp
    c.cmd("blockdev-add", {"driver": "file", "node-name": "src", "filename": str(src)})
    c.cmd("blockdev-add", {"driver": "raw", "node-name": "tr",
                           "file": {"driver": "file", "node-name": "tchild",
                                    "filename": str(dst)}})
    c.cmd("blockdev-backup", {"device": "src", "target": "tchild", "sync": "full",
                              "job-id": "bk", "speed": 2 * MIB})
    assert c.cmd("blockdev-del", {"node-name": "tr"}) == {"return": {}}
    victim = tmp_path / "victim.img"
    victim.write_bytes(b"V" * MIB)
    c.cmd("blockdev-add", {"driver": "file", "node-name": "victim", "filename": str(victim)})
    c.cmd("block-job-set-speed", {"device": "bk", "speed": 0})
    events_until(c, "null")
    assert sha(src) == sha(dst)
    assert victim.read_bytes() == b"V" * MIB
    names_left = {n["node-name"] for n in c.cmd("query-named-block-nodes")["return"]}
    assert names_left == {"src", "victim"}  # the orphan went once the job let go


def test_grouped_transaction_late_failure(qmp: Client, files: tuple[Path, Path],
                                          tmp_path: Path) -> None:
    src, dst = files
    c = qmp
    _two_pairs(c, src, dst, tmp_path)
    r = c.cmd("transaction", {"actions": [
        {"type": "blockdev-backup", "data": {"device": "src", "target": "dst", "sync": "full",
                                             "job-id": "b1"}},
        {"type": "blockdev-backup", "data": {"device": "src2", "target": "dst2",
                                             "sync": "full", "job-id": "b2"}},
        {"type": "blockdev-backup", "data": {"device": "nope", "target": "dst2",
                                             "sync": "full", "job-id": "b3"}}],
        "properties": {"completion-mode": "grouped"}})
    assert r["error"]["desc"] == "Cannot find device='nope' nor node-name='nope'"
    assert c.cmd("query-jobs") == {"return": []}


def test_node_names_read_only_and_raw_bounds(qmp: Client, files: tuple[Path, Path]) -> None:
    src, dst = files
    c = qmp
    def err(args: dict[str, Any]) -> str:
        return str(c.cmd("blockdev-add", args)["error"]["desc"])
    assert err({"driver": "null-co", "node-name": "bad name"}) == "Invalid node-name: 'bad name'"
    assert err({"driver": "null-co", "node-name": "#block001"}) == \
        "Invalid node-name: '#block001'"
    assert err({"driver": "null-co", "node-name": "n" * 32}) == "Node name too long"
    assert err({"driver": "raw", "node-name": "x",
                "file": {"driver": "null-co", "node-name": "x"}}) == \
        "Duplicate nodes with node-name='x'"
    c.cmd("blockdev-add", {"driver": "file", "node-name": "src", "filename": str(src)})
    assert err({"driver": "raw", "node-name": "neg", "offset": -512, "file": "src"}) == \
        "Parameter 'offset' expects a non-negative number below 2^64"
    assert err({"driver": "raw", "node-name": "huge", "size": 1 << 40, "file": "src"}) == (
        f"The sum of offset (0) and size ({1 << 40}) has to be smaller or equal to the actual "
        f"size of the containing file ({8 * MIB})")
    c.cmd("blockdev-add", {"driver": "raw", "node-name": "ro", "read-only": True,
                           "file": {"driver": "file", "filename": str(dst)}})
    before = sha(dst)
    assert c.cmd("blockdev-backup", {"device": "src", "target": "ro", "sync": "full",
                                     "job-id": "b"})["error"]["desc"] == \
        "Could not create node: Block node is read-only"
    assert sha(dst) == before


def test_fifo_is_refused_without_blocking(qmp: Client, files: tuple[Path, Path],
                                          tmp_path: Path, daemon: Daemon) -> None:
    src, _ = files
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    c = qmp
    c.cmd("blockdev-add", {"driver": "file", "node-name": "src", "filename": str(src)})
    r = c.cmd("blockdev-add", {"driver": "file", "node-name": "f", "filename": str(fifo)})
    assert "not a regular file" in r["error"]["desc"]
    r = c.cmd("drive-backup", {"device": "src", "target": str(fifo), "sync": "full",
                               "job-id": "j", "mode": "existing"})
    assert "not a regular file" in r["error"]["desc"]
    with Client(daemon.path) as other:  # the daemon is still serving everyone
        other.negotiate()
        assert other.cmd("query-status")["return"]["status"] == "running"


def test_out_of_range_errno_is_an_io_error(qmp: Client, files: tuple[Path, Path]) -> None:
    _, dst = files
    c = qmp
    c.cmd("blockdev-add", {"driver": "raw", "node-name": "bad", "file": {
        "driver": "blkdebug", "image": {"driver": "null-co", "size": MIB},
        "inject-error": [{"event": "read_aio", "errno": 1 << 40}]}})
    c.cmd("blockdev-add", {"driver": "file", "node-name": "dst", "filename": str(dst)})
    c.cmd("blockdev-backup", {"device": "bad", "target": "dst", "sync": "full",
                              "job-id": "bk"})
    msgs = events_until(c, "null")
    done = [m["data"] for m in msgs if m.get("event") == "BLOCK_JOB_COMPLETED"]
    assert done[0]["error"] == "Input/output error"


# ---------------------------------------------------------------------------------------------
# I/O that never returns (a frozen file system): null-co's latency-ns keeps a worker thread
# blocked in a real sleep inside the write, as a stuck pwrite would

STUCK_NS = 120 * 10**9
"""Longer than any test runs: the call stays stuck for the whole test."""

STUBBORN_PLUGIN = '''
import asyncio
from qmpjobd.jobs import Job, add_job_command

class Stubborn(Job):
    """Ignores cancellation: never reaches a pause point."""
    job_type = "x-stubborn"

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.05)

def register(server):
    add_job_command(server.registry, server.jobs, "x-stubborn", Stubborn.job_type, {},
                    lambda a: Stubborn(a["job-id"]))
'''


def start_stuck_backups(c: Client, src: Path, count: int) -> None:
    """``count`` backups of ``src`` to null-co targets whose every request is stuck."""
    assert c.cmd("blockdev-add", {"driver": "file", "node-name": "src",
                                  "filename": str(src)}) == {"return": {}}
    for i in range(count):
        assert c.cmd("blockdev-add", {"driver": "null-co", "node-name": f"stuck{i}",
                                      "size": 8 * MIB, "latency-ns": STUCK_NS}) == {"return": {}}
        assert c.cmd("blockdev-backup", {"job-id": f"bk{i}", "device": "src",
                                         "target": f"stuck{i}", "sync": "full"}) == {"return": {}}


def test_sigterm_with_jobs_stuck_in_io_exits_promptly(tmp_path: Path,
                                                      files: tuple[Path, Path]) -> None:
    """Three backups stuck in a write: SIGTERM cancels them all (QEMU's events, newest
    first) without waiting for the stuck calls, and the process exits (it used to wait
    30 s per job, then linger on the stuck threads after its socket was gone)."""
    src, _ = files
    d = start_qmpjobd(str(tmp_path), name="stuck.sock")
    with Client(d.path) as c:
        c.negotiate()
        start_stuck_backups(c, src, 3)
        jobs = c.cmd("query-block-jobs")["return"]
        assert [(j["device"], j["status"], j["offset"]) for j in jobs] == [
            ("bk2", "running", 0), ("bk1", "running", 0), ("bk0", "running", 0)]
        d.proc.send_signal(signal.SIGTERM)
        msgs = []
        with contextlib.suppress(EOFError, ConnectionResetError):
            while True:
                msgs.append(c.recv())
    assert d.proc.wait(15) == 0  # the default grace is 5 s, and nothing needs it here
    # as QEMU 7.2: all paused (in the order of their targets' creation), then newest first
    # each resumed and cancelled
    flicker = [("bk0", "paused"), ("bk1", "paused"), ("bk2", "paused")]
    ends = [(j, s) for n in (2, 1, 0) for j, s in ((f"bk{n}", "running"),
                                                   (f"bk{n}", "aborting"),
                                                   (f"bk{n}", "BLOCK_JOB_CANCELLED"),
                                                   (f"bk{n}", "concluded"), (f"bk{n}", "null"))]
    seen = [(m["data"].get("id", m["data"].get("device")),
             m["data"]["status"] if m["event"] == "JOB_STATUS_CHANGE" else m["event"])
            for m in msgs[1:]]
    assert msgs[0]["event"] == "SHUTDOWN" and seen == flicker + ends
    assert not os.path.exists(d.path)


def test_shutdown_grace_bounds_all_jobs_together_and_no_job_starts_after_shutdown(
        tmp_path: Path, files: tuple[Path, Path]) -> None:
    """Two jobs that ignore cancellation share one --shutdown-grace (not one each); from
    SHUTDOWN on, a new job is refused with a GenericError (QEMU reads no more commands)."""
    src, _ = files
    plugin = tmp_path / "stubborn.py"
    plugin.write_text(STUBBORN_PLUGIN)
    d = start_qmpjobd(str(tmp_path), "--plugin", str(plugin), "--shutdown-grace", "2",
                      name="grace.sock")
    with Client(d.path) as c, Client(d.path) as late:
        c.negotiate()
        late.negotiate()
        assert c.cmd("blockdev-add", {"driver": "file", "node-name": "src",
                                      "filename": str(src)}) == {"return": {}}
        assert c.cmd("blockdev-add", {"driver": "null-co", "node-name": "n",
                                      "size": 8 * MIB}) == {"return": {}}
        for name in ("s1", "s2"):
            assert c.cmd("x-stubborn", {"job-id": name}) == {"return": {}}
        start = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        while late.recv().get("event") != "SHUTDOWN":
            pass
        refused = {"class": "GenericError",
                   "desc": "qmpjobd is shutting down: no new jobs are accepted"}
        assert late.cmd("blockdev-backup", {"job-id": "new", "device": "src", "target": "n",
                                            "sync": "full"}) == {"error": refused}
        assert late.cmd("x-stubborn", {"job-id": "s3"}) == {"error": refused}
        assert late.cmd("transaction", {"actions": [{"type": "blockdev-backup", "data": {
            "job-id": "t", "device": "src", "target": "n", "sync": "full"}}]}) == {
            "error": refused}
        assert late.cmd("query-status")["return"]["status"] == "running"  # still served
    assert d.proc.wait(15) == 0
    took = time.monotonic() - start
    assert took < 2 * 2, f"two stubborn jobs held the exit for {took:.1f} s (grace 2 s)"
    log = d.stderr()
    assert "s2 still running at the end of the 2.0 s shutdown grace" in log
    assert "s1 still running" in log


def _open_fds(pid: int, path: Path) -> int:
    fd_dir = f"/proc/{pid}/fd"
    return sum(1 for fd in os.listdir(fd_dir)
               if os.path.realpath(os.path.join(fd_dir, fd)) == str(path))


def test_cancel_concludes_a_job_stuck_in_io_and_closes_its_file_only_later(
        tmp_path: Path, files: tuple[Path, Path], daemon: Daemon) -> None:
    """job-cancel of a backup whose read is stuck: the job concludes at once (QEMU's
    events); the target it opened stays open until the stuck call returns, then closes."""
    _, dst = files
    dst.write_bytes(b"\xaa" * (8 * MIB))
    c = Client(daemon.path)
    c.negotiate()
    assert c.cmd("blockdev-add", {"driver": "null-co", "node-name": "slow", "size": 8 * MIB,
                                  "read-zeroes": True, "latency-ns": 3 * 10**9}) == {
        "return": {}}
    assert c.cmd("drive-backup", {"job-id": "bk", "device": "slow", "target": str(dst),
                                  "sync": "full", "mode": "existing"}) == {"return": {}}
    assert c.cmd("job-cancel", {"id": "bk"}) == {"return": {}}
    msgs = events_until(c, "null")
    assert names(msgs) == ["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"]
    assert msgs[1]["data"] == {"device": "bk", "len": 8 * MIB, "offset": 0, "speed": 0,
                               "type": "backup"}
    assert _open_fds(daemon.pid, dst) == 1  # the stuck read still holds the target
    deadline = time.monotonic() + 15
    while _open_fds(daemon.pid, dst) and time.monotonic() < deadline:
        time.sleep(0.05)  # no event tells when a kernel call returns: poll the fd table
    assert _open_fds(daemon.pid, dst) == 0
    assert dst.read_bytes() == b"\xaa" * (8 * MIB)  # the abandoned call wrote nothing
    assert c.cmd("query-jobs") == {"return": []}
    c.close()
