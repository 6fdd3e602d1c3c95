"""Regression tests for the COLO defects of issue 9 (each test says what used to go wrong)."""

from __future__ import annotations

import asyncio
import errno
import json
import signal
import socket
from typing import Any

import pytest
from colotest import EvClient, Pair, start_pair, wait_checkpoints
from qmptest import NO_QEMU_REASON, QEMU, Daemon, start_qmpjobd
from test_colo_wire import exact, read_blob, read_ram, start_fake_pair

from qmpjobd.colo import wire
from qmpjobd.colo.channel import Address, TlsChannel, listen


def _pipelined(c: EvClient, *cmds: dict[str, Any]) -> list[Any]:
    """Send several commands in one write (no round trip between them); their replies."""
    c.send(b"".join(json.dumps(cmd).encode() + b"\n" for cmd in cmds))
    return [c.recv_reply() for _ in cmds]


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_query_migrate_right_after_migrate_incoming_shows_the_bound_address(
        tmp_path: Any, kind: str) -> None:
    # used to answer {"status": "setup"} without socket-address: the address was filled in
    # by a task that ran only after the reply
    d = start_qmpjobd(str(tmp_path), "--incoming", "defer")
    c = EvClient(d.path)
    uri = "tcp:127.0.0.1:0" if kind == "tcp" else f"unix:{tmp_path}/mig.sock"
    got = _pipelined(c, {"execute": "migrate-incoming", "arguments": {"uri": uri}},
                     {"execute": "query-migrate"})
    assert got[0] == {"return": {}}
    addrs = got[1]["return"]["socket-address"]
    assert list(got[1]["return"]) == ["socket-address"]  # no status while listening (7.2)
    if kind == "unix":
        assert addrs == [{"path": f"{tmp_path}/mig.sock", "type": "unix"}]
        return
    assert addrs[0]["host"] == "127.0.0.1" and addrs[0]["type"] == "inet"
    port = int(addrs[0]["port"])
    assert port != 0  # the port the OS picked, as QEMU reports it
    probe = socket.socket()
    try:
        with pytest.raises(OSError) as e:
            probe.bind(("127.0.0.1", port))
        assert e.value.errno == errno.EADDRINUSE
    finally:
        probe.close()


@pytest.fixture
def pair(tmp_path: Any) -> Pair:
    return start_pair(str(tmp_path))


def _wait_job_concluded(pr: Pair, c: EvClient) -> None:
    """Wait for the COLO job's conclusion, by its JOB_STATUS_CHANGE event."""
    watcher = EvClient(c.path, "x-job-events")
    try:
        if any(j["status"] == "concluded" for j in watcher.ok("query-jobs")):
            return
        watcher.wait_event("JOB_STATUS_CHANGE", {"id": "colo", "status": "concluded"})
    finally:
        watcher.close()


def test_a_phase_the_primary_never_passes_is_refused(pair: Pair) -> None:
    # used to be accepted, and with wait: true the reply never came
    assert pair.p.err("x-daemon-colo-inject", {"phase": "apply", "action": "hold",
                                               "wait": True}) == (
        "GenericError", "Fault phase 'apply' does not exist on the primary")
    assert pair.p.err("x-daemon-colo-inject", {"phase": "apply", "action": "cut"})[0] == \
        "GenericError"
    pair.s.ok("x-daemon-colo-inject", {"phase": "apply", "action": "delay", "delay-ms": 1,
                                       "wait": True})  # the secondary does apply
    wait_checkpoints(pair.p, 2)


def test_clearing_a_delay_in_progress_releases_it(pair: Pair) -> None:
    pair.s.ok("x-daemon-colo-inject", {"phase": "received", "action": "delay",
                                       "delay-ms": 4294967295, "wait": True})
    n = pair.s.checkpoints()
    pair.s.ok("x-daemon-colo-inject", {"phase": "received", "action": "none"})
    wait_checkpoints(pair.s, 2)  # used to stay in the delay for 49 days
    assert pair.s.checkpoints() > n


def test_failover_releases_a_delay_in_progress(pair: Pair) -> None:
    pair.s.ok("x-daemon-colo-inject", {"phase": "received", "action": "delay",
                                       "delay-ms": 4294967295, "wait": True})
    pair.s.ok("x-colo-lost-heartbeat")
    pair.s.wait_event("COLO_EXIT", {"mode": "secondary", "reason": "request"})
    _wait_job_concluded(pair, pair.s)  # the job used to sleep on in the delay
    job = pair.s.jobs()[0]
    assert job["status"] == "concluded" and "error" not in job, job


def test_sigterm_releases_a_delay_in_progress(pair: Pair) -> None:
    pair.p.ok("x-daemon-colo-inject", {"phase": "vmstate-size", "action": "delay",
                                       "delay-ms": 4294967295, "wait": True})
    assert pair.pri.stop(signal.SIGTERM, timeout=10) == 0  # used to be killed after 30 s


@pytest.mark.parametrize("action", ["corrupt", "misorder"])
def test_a_damaged_blob_is_discarded_whole(tmp_path: Any, action: str) -> None:
    # used to be committed (checkpoint N with a digest matching neither side); the broken
    # stream was noticed only at the next checkpoint
    pr = start_pair(str(tmp_path), rate=2000, extra_s=("--workload-rate", "0"))
    p, s = pr.p, pr.s
    wait_checkpoints(s, 1)
    m = len(s.events)
    p.ok("x-daemon-colo-inject", {"phase": "blob", "action": action, "wait": True})
    s.wait_event("COLO_EXIT", {"mode": "secondary", "reason": "error"}, since=m)
    after = pr.state(s)
    history = {h["checkpoint"]: h["digest"] for h in pr.state(p)["history"]}
    assert after["checkpoint"] == max(history) - 1  # the damaged one was not committed
    assert after["digest"] == after["checkpoint-digest"] == history[after["checkpoint"]]
    assert after["runstate"] == "colo"  # stopped, as for a cut link
    assert s.names(m).count(("COLO_EXIT", {"mode": "secondary", "reason": "error"})) == 1
    assert s.jobs()[0]["error"].startswith("COLO: ") and "the primary" in s.jobs()[0]["error"]


def test_damaged_ram_in_a_checkpoint_is_discarded_whole(tmp_path: Any) -> None:
    fp, s = start_fake_pair(str(tmp_path), 0)
    before = s.ok("x-query-guest-state")
    fp.conn.sendall(wire.message(wire.CHECKPOINT_REQUEST))
    assert exact(fp.conn, 4) == b"\0\0\0\2"
    ram, rest = fp.checkpoint_parts(1)
    bad = bytearray(ram)
    bad[20] ^= 0xFF  # one byte of page data, after the primary computed its checksum
    fp.conn.sendall(wire.message(wire.VMSTATE_SEND) + bytes(bad) + rest)
    s.wait_event("COLO_EXIT", {"mode": "secondary", "reason": "error"})
    after = s.ok("x-query-guest-state")
    assert (after["checkpoint"], after["digest"]) == (before["checkpoint"], before["digest"])
    assert after["runstate"] == "colo"
    assert s.jobs()[0]["error"] == "COLO: checkpoint RAM does not match the primary's checksum"


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_listen_closes_its_socket_when_bind_fails(tmp_path: Any, kind: str,
                                                        monkeypatch: Any) -> None:
    made: list[socket.socket] = []

    class Recorded(socket.socket):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    addr = Address("tcp", host="127.0.0.1", port=busy.getsockname()[1]) if kind == "tcp" \
        else Address("unix", path=f"{tmp_path}/no/such/dir/mig.sock")
    monkeypatch.setattr(socket, "socket", Recorded)
    try:
        with pytest.raises(OSError) as e:
            await listen(addr)
        assert made, "listen() made no socket"
        # the error (kept, as a caller logging it would) used to keep an open descriptor
        assert [s.fileno() for s in made] == [-1] * len(made), e.value
    finally:
        busy.close()


async def test_tls_channel_runs_the_channel_initialiser() -> None:
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=a)
    try:
        chan = TlsChannel(reader, writer)
        # these used to be missing (only TlsChannel's own fields were set)
        assert chan.sock is not None and chan.sock.fileno() == a.fileno()
        assert (chan.sent, chan.received, chan.closed) == (0, 0, False)
        b.sendall(b"0123")
        assert await chan.recv_exact(4) == b"0123" and chan.received == 4
        await chan.send([b"xy"])
        assert b.recv(2) == b"xy" and chan.sent == 2
    finally:
        writer.close()
        b.close()


def test_queries_are_answered_while_a_large_guest_migrates(tmp_path: Any) -> None:
    # the zero-page scan of guest RAM used to run on the event loop (4.5 s per GiB): a query
    # sent meanwhile was answered only after it (here: after the client's 10 s timeout)
    path = f"{tmp_path}/dst.sock"
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(path)
    lsock.listen(1)
    pri = start_qmpjobd(str(tmp_path), "--guest-ram", "4G")  # untouched: costs no memory
    a = EvClient(pri.path)
    a.ok("migrate-set-capabilities", {"capabilities": [{"capability": "events",
                                                        "state": True}]})
    a.ok("migrate", {"uri": f"unix:{path}"})
    conn, _ = lsock.accept()  # the source scans its RAM now; nothing is read from it yet
    conn.settimeout(30)
    b = EvClient(pri.path)
    assert b.ok("query-name") == {}
    assert b.ok("query-migrate")["status"] in ("setup", "active")
    assert ("MIGRATION", {"status": "completed"}) not in a.names()
    exact(conn, wire.HEADER_SIZE)  # now let the migration run to its end
    records = read_ram(conn)
    assert sum(c for _, c, _ in records) == 4 << 18
    read_blob(conn)
    a.wait_event("MIGRATION", {"status": "completed"}, timeout=30)
    conn.close()
    lsock.close()


@pytest.mark.skipif(QEMU is None, reason=NO_QEMU_REASON)
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_migrate_incoming_then_query_migrate_live_as_qemu(tmp_path: Any, kind: str) -> None:
    """The pipelined pair of the first test, against a live QEMU 7.2: same replies (but the
    port), same events."""
    assert QEMU is not None
    results = []
    for server in ("qemu", "qmpjobd"):
        sock = f"{tmp_path}/{server}.sock"
        if server == "qemu":
            d = Daemon([QEMU, "-M", "none", "-nodefaults", "-display", "none", "-incoming",
                        "defer", "-qmp", f"unix:{sock},server=on,wait=off"], sock,
                       single_client=True)
        else:
            d = start_qmpjobd(str(tmp_path), "--incoming", "defer", name=f"{server}.sock")
        c = EvClient(d.path)
        c.ok("migrate-set-capabilities", {"capabilities": [{"capability": "events",
                                                            "state": True}]})
        uri = "tcp:127.0.0.1:0" if kind == "tcp" else f"unix:{tmp_path}/{server}-mig.sock"
        got = _pipelined(c, {"execute": "migrate-incoming", "arguments": {"uri": uri}},
                         {"execute": "query-migrate"})
        for addr in got[1]["return"].get("socket-address", []):
            assert addr.get("port") != "0"  # the bound port, never the 0 asked for
            for key in ("port", "path"):  # they differ per run (and per server)
                if key in addr:
                    addr[key] = "*"
        results.append((got, c.names()))
        d.stop()
    assert results[0] == results[1]
