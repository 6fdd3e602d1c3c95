"""Regression tests for defects a review found in the COLO code: odd command orders, broken
peers, bad settings, and QEMU 7.2 details (each test names what used to go wrong)."""

from __future__ import annotations

import os
import signal
import socket

import pytest
from colotest import EvClient, Pair, heartbeats, start_pair, wait_checkpoints
from qmptest import start_qmpjobd
from test_colo_wire import (
    FakePrimary,
    blob_and_check,
    exact,
    read_blob,
    read_ram,
    start_fake_pair,
)

from qmpjobd.colo import wire


@pytest.fixture
def pair(tmp_path: object) -> Pair:
    return start_pair(str(tmp_path))


def test_cont_during_a_checkpoint_does_not_break_replication(tmp_path: object) -> None:
    pr = start_pair(str(tmp_path), rate=20000)
    pr.p.ok("x-daemon-colo-inject", {"phase": "vmstate-send", "action": "hold", "wait": True})
    pr.p.ok("cont")  # used to crash the hashing thread (set changed size during iteration)
    pr.p.ok("x-daemon-colo-inject", {"phase": "vmstate-send", "action": "none"})
    wait_checkpoints(pr.s, 3)
    assert pr.p.ok("query-colo-status")["mode"] == "primary"
    assert not [e for e in pr.p.events if e["event"] == "COLO_EXIT"]


@pytest.fixture
def waiting_primary(tmp_path: object) -> tuple[EvClient, socket.socket]:
    """A primary whose (scripted) secondary has taken the initial sync but not said ready."""
    path = f"{tmp_path}/fake.sock"
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(path)
    lsock.listen(1)
    pri = start_qmpjobd(str(tmp_path), "--guest-ram", "1M")
    p = EvClient(pri.path)
    p.ok("migrate-set-capabilities", {"capabilities": [
        {"capability": "x-colo", "state": True}, {"capability": "events", "state": True}]})
    p.ok("migrate", {"uri": f"unix:{path}"})
    conn, _ = lsock.accept()
    conn.settimeout(10)
    exact(conn, wire.HEADER_SIZE)
    read_ram(conn)
    read_blob(conn)
    p.wait_event("MIGRATION", {"status": "colo"})
    return p, conn


def test_cont_before_checkpoint_ready_is_refused(
        waiting_primary: tuple[EvClient, socket.socket]) -> None:
    p, _ = waiting_primary
    assert p.ok("query-status")["status"] == "finish-migrate"
    assert p.err("cont") == ("GenericError", "Migration is not finalized yet")


def test_lost_heartbeat_before_checkpoint_ready(
        waiting_primary: tuple[EvClient, socket.socket]) -> None:
    p, _ = waiting_primary
    n = len(p.events)
    p.ok("x-colo-lost-heartbeat")
    p.wait_event("RESUME", since=n)
    assert p.names(n) == [("MIGRATION", {"status": "completed"}),
                          ("COLO_EXIT", {"mode": "primary", "reason": "request"}),
                          ("RESUME", None)]
    assert p.ok("query-migrate")["status"] == "completed"  # used to end up 'failed'


def test_rejected_heartbeat_settings_are_not_applied(pair: Pair) -> None:
    heartbeats(pair, 400)
    assert pair.p.err("x-daemon-heartbeat", {"timeout-ms": 10}) == (
        "GenericError", "Parameter 'timeout-ms' must be greater than 'interval-ms'")
    assert pair.p.err("x-daemon-heartbeat", {"interval-ms": 0, "timeout-ms": 100})[0] == \
        "GenericError"
    assert pair.p.err("x-daemon-heartbeat", {"peer": "127.0.0.1:70000"}) == (
        "GenericError", "Parameter 'peer': invalid address '127.0.0.1:70000': the port must "
        "be a number from 1 to 65535")
    wait_checkpoints(pair.s, 5)  # 500 ms: a 10 ms timeout would have failed over by now
    assert pair.p.ok("query-colo-status")["mode"] == "primary"
    assert pair.p.ok("x-query-colo-metrics")["heartbeat"]["decision"] == "none"


def test_an_impossible_workload_rate_does_not_stall_the_daemon(pair: Pair) -> None:
    pair.p.ok("x-daemon-workload", {"rate": 4000000000})
    wait_checkpoints(pair.s, 3)
    for _ in range(5):
        assert pair.p.ok("query-status")["running"] in (True, False)


def test_quit_during_colo_does_not_fail_over(pair: Pair) -> None:
    n = len(pair.p.events)
    pair.p.cmd("quit")
    with pytest.raises((EOFError, OSError)):
        while True:
            pair.p.recv_reply()
    names = [x[0] for x in pair.p.names(n)]
    assert names == ["SHUTDOWN"], names  # no STOP/MIGRATION completed/RESUME after it
    assert pair.pri.proc.wait(15) == 0
    pair.s.wait_event("COLO_EXIT", {"mode": "secondary", "reason": "error"})


def test_sigterm_of_a_secondary_exits_promptly(pair: Pair) -> None:
    pair.sec.proc.send_signal(signal.SIGTERM)
    assert pair.sec.proc.wait(10) == 0


# -- a broken or hostile peer --------------------------------------------------------------

@pytest.fixture
def fake(tmp_path: object) -> tuple[FakePrimary, EvClient]:
    fp, s = start_fake_pair(str(tmp_path), 0)
    assert not os.path.exists(f"{tmp_path}/mig.sock")  # the listener's file goes at accept
    return fp, s


def test_a_flood_of_records_is_refused(fake: tuple[FakePrimary, EvClient]) -> None:
    fp, s = fake
    fp.conn.sendall(wire.message(wire.CHECKPOINT_REQUEST))
    assert exact(fp.conn, 4) == b"\0\0\0\2"
    flood = wire.record(0, 1, wire.REC_ZERO) * 2000  # 2,000 pages of a 256-page guest
    with pytest.raises(OSError):
        fp.conn.sendall(wire.message(wire.VMSTATE_SEND) + flood)
        fp.conn.sendall(flood * 100)
    s.wait_event("COLO_EXIT", {"mode": "secondary", "reason": "error"})
    assert s.jobs()[0]["error"] == "a checkpoint carries more pages than guest RAM has"
    assert s.ok("query-status")["status"] == "colo"


@pytest.mark.parametrize("blob", [b"{not json", b'{"prng":1,"cursor":99999,"vclock":1,'
                                  b'"checkpoint":1}', b'{"prng":-1}', b"[1]"])
def test_a_bad_device_blob_applies_nothing(fake: tuple[FakePrimary, EvClient],
                                           blob: bytes) -> None:
    fp, s = fake
    before = s.ok("x-query-guest-state")
    fp.conn.sendall(wire.message(wire.CHECKPOINT_REQUEST))
    assert exact(fp.conn, 4) == b"\0\0\0\2"
    ram, _ = fp.checkpoint_parts(1)
    fp.conn.sendall(wire.message(wire.VMSTATE_SEND) + ram + blob_and_check(ram, blob))
    s.wait_event("COLO_EXIT", {"mode": "secondary", "reason": "error"})
    after = s.ok("x-query-guest-state")
    assert (after["checkpoint"], after["digest"]) == (before["checkpoint"], before["digest"])
    assert s.jobs()[0]["error"].startswith("COLO: load device state failed")


def test_a_bad_blob_in_the_initial_sync_fails_the_migration(tmp_path: object) -> None:
    path = f"{tmp_path}/mig.sock"
    sec = start_qmpjobd(str(tmp_path), "--incoming", f"unix:{path}", "--guest-ram", "1M")
    s = EvClient(sec.path)
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    c.sendall(wire.header(4096, 256, True) + wire.eos() + wire.vmstate_size(5) + b"{bad}")
    for _ in range(200):
        info = s.ok("query-migrate")
        if info.get("status") == "failed":
            break
    assert info == {"status": "failed",
                    "error-desc": info["error-desc"]} and "device state" in info["error-desc"]
    assert s.ok("query-yank") == []


# -- QEMU 7.2 details ----------------------------------------------------------------------

def test_incoming_details_as_qemu(tmp_path: object) -> None:
    d = start_qmpjobd(str(tmp_path), "--incoming", "defer")
    c = EvClient(d.path)
    c.ok("migrate-set-capabilities", {"capabilities": [{"capability": "events",
                                                        "state": True}]})
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    assert c.err("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"}) == (
        "GenericError", "Failed to bind socket: Address already in use")
    busy.close()
    assert c.ok("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"}) == {}
    assert c.names() == [("MIGRATION", {"status": "setup"})]  # before the reply, as QEMU
    assert c.ok("query-migrate") == {"socket-address": [
        {"port": str(port), "ipv4": True, "host": "127.0.0.1", "type": "inet"}]}
    c.ok("stop")  # while waiting: no resume when the migration completes
    assert c.ok("query-status")["status"] == "inmigrate"
    assert c.ok("human-monitor-command", {"command-line": "info status"}) == \
        "VM status: paused (inmigrate)\r\n"
    assert c.err("migrate-continue", {"state": "pre-switchover"}) == (
        "GenericError", "Migration not in expected state: none")


def test_primary_side_details_as_qemu(daemon: object) -> None:
    c = EvClient(daemon.path)  # type: ignore[attr-defined]
    c.ok("migrate-set-capabilities", {"capabilities": [{"capability": "x-colo",
                                                        "state": True}]})
    assert c.err("migrate", {"uri": "tcp:127.0.0.1:9", "inc": True}) == (
        "GenericError", "No disk migration is required in COLO mode")
    c.send(b'{"execute":"query-colo-status"}\n')
    assert c.recv_line() == b'{"return":{"last-mode":"none","mode":"none","reason":"none"}}'
    c.ok("stop")
    assert c.ok("human-monitor-command", {"command-line": "info status"}) == \
        "VM status: paused\r\n"
    assert c.ok("human-monitor-command", {"command-line": "drive_add -n 'x"}) == (
        'drive_add: string expected\r\nTry "help drive_add" for more information\r\n')


def test_delay_fault_then_failover_ends_cleanly(pair: Pair) -> None:
    pair.s.ok("x-daemon-colo-inject", {"phase": "received", "action": "delay",
                                       "delay-ms": 300})
    pair.s.wait_event("STOP", since=len(pair.s.events))
    n = len(pair.s.events)
    pair.s.ok("x-colo-lost-heartbeat")
    pair.s.wait_event("RESUME", since=n)
    job = pair.s.jobs()[0]
    assert job["status"] == "concluded" and "error" not in job, job  # was an AssertionError
    assert pair.s.ok("query-colo-status") == {"last-mode": "secondary", "mode": "none",
                                              "reason": "request"}
