"""Connection rules that the sans-I/O session and the transport enforce together, with real
sockets and processes: half-close, the socket path, unencodable replies, the total output bound,
running out of file descriptors, --max-clients and --negotiation-timeout."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from qmptest import NO_QEMU_REASON, QEMU, Client, Daemon, start_qemu, start_qmpjobd, strip_volatile

from qmpjobd.server import Server
from qmpjobd.vm import Vm


def half_closed(path: str, data: bytes, timeout: float = 30.0) -> list[Any]:
    """Send ``data``, shut down the writing side (as ``printf ... | socat`` does), and read
    every message until the server closes; the greeting is left out."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(1 << 16):
            buf += chunk
    return [orjson.loads(line) for line in buf.split(b"\r\n")[1:] if line]


def _normalise(msgs: list[Any]) -> list[Any]:
    """Timestamps and how far a rate-limited copy got are the only differences allowed."""
    out = []
    for m in strip_volatile(msgs):
        if m.get("event", "").startswith("BLOCK_JOB_"):
            m = {**m, "data": {k: v for k, v in m["data"].items() if k != "offset"}}
        ret = m.get("return")
        if isinstance(ret, list):
            m = {**m, "return": [{k: v for k, v in j.items() if k != "current-progress"}
                                 for j in ret]}
        out.append(m)
    return out


def _backup_script(tmp: Path, tail: bytes) -> bytes:
    src, dst = tmp / "src.img", tmp / "dst.img"
    for f in (src, dst):
        with open(f, "wb") as fh:
            fh.truncate(16 << 20)
    return b"".join(orjson.dumps(m) for m in [
        {"execute": "qmp_capabilities"},
        {"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "s",
                                                  "filename": str(src)}},
        {"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "d",
                                                  "filename": str(dst)}},
        {"execute": "blockdev-backup", "arguments": {"job-id": "j", "device": "s", "target": "d",
                                                     "sync": "full", "speed": 1 << 20}},
    ]) + tail


HALF_CLOSE_CASES = {
    "plain": b'{"execute":"qmp_capabilities"}{"execute":"query-status","id":1}'
             b'{"execute":"stop","id":2}{"execute":"cont","id":3}{"execute":"nope","id":4}'
             b'{"execute":"query-name","id":5}{"execute":"query-stat',
    "live-job": b'{"execute":"query-name","id":"after"}',
    "quit-during-backup": b'{"execute":"query-jobs"}{"execute":"quit"}',
}


@pytest.mark.skipif(QEMU is None, reason=NO_QEMU_REASON)
@pytest.mark.parametrize("case", list(HALF_CLOSE_CASES))
def test_half_close_gets_every_reply_and_event_as_qemu(tmp_path: Path, case: str) -> None:
    data = HALF_CLOSE_CASES[case]
    if case != "plain":
        data = _backup_script(tmp_path, data)
    seen = {}
    for kind, start in (("qemu", start_qemu), ("qmpjobd", start_qmpjobd)):
        (tmp_path / kind).mkdir()
        d = start(str(tmp_path / kind))
        try:
            seen[kind] = _normalise(half_closed(d.path, data))
        finally:
            d.stop()
    assert seen["qmpjobd"] == seen["qemu"]
    if case == "quit-during-backup":
        assert seen["qemu"][-1] == {"return": {}}
        assert any(m.get("event") == "BLOCK_JOB_CANCELLED" for m in seen["qemu"])


def test_peer_gone_while_a_command_runs_is_a_disconnect(daemon: Daemon, tmp_path: Path) -> None:
    """A full close is not a half-close: what was queued behind a running command is dropped
    (qmp-protocol.md §10), here a stop queued behind a long-running backup's start."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(daemon.path)
        s.sendall(b'{"execute":"qmp_capabilities"}')
        s.recv(4096)
    with Client(daemon.path) as c:
        c.negotiate()
        assert c.cmd("query-status")["return"]["status"] == "running"


# -- item 3: the socket path appears only once the daemon accepts --------------------------


async def test_socket_path_appears_only_when_it_accepts(tmp_path: Path) -> None:
    """1,000 starts, each raced by a thread that connects the instant the path exists."""
    path = str(tmp_path / "race.sock")
    refused: list[str] = []
    stop = threading.Event()
    armed = threading.Event()
    done = threading.Event()

    def racer() -> None:
        while not stop.is_set():
            armed.wait()
            armed.clear()
            while not os.path.exists(path):
                if stop.is_set():
                    return
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(path)
                except OSError as e:
                    refused.append(e.strerror or str(e))
            done.set()

    t = threading.Thread(target=racer)
    t.start()
    vm = Vm()
    try:
        for _ in range(1000):
            srv = Server(vm)
            armed.set()
            await srv.listen_unix(path)
            await asyncio.get_running_loop().run_in_executor(None, done.wait, 10)
            done.clear()
            await srv.close()
    finally:
        stop.set()
        armed.set()
        t.join()
        vm.close()
    assert refused == []


# -- item 6: a reply that cannot be encoded -------------------------------------------------

PLUGIN = '''
import asyncio

def register(vm):
    vm.schema.command("x-bad-sync", {})
    vm.schema.command("x-bad-async", {})
    vm.registry.register("x-bad-sync", lambda args, session: {"a": {1, 2}})

    async def bad(args, session):
        await asyncio.sleep(0)
        return {1, 2}

    vm.registry.register("x-bad-async", bad)
'''


def test_unencodable_reply_is_an_error_and_the_session_goes_on(tmp_path: Path) -> None:
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(PLUGIN)
    d = start_qmpjobd(str(tmp_path), "--plugin", str(plugin))
    with Client(d.path) as c:
        c.negotiate()
        for cmd in ("x-bad-sync", "x-bad-async", "x-bad-sync", "x-bad-async"):
            reply = c.cmd(cmd, id=cmd)
            assert reply == {"id": cmd, "error": {
                "class": "GenericError",
                "desc": f"internal error in {cmd}: its result cannot be encoded"}}
            assert c.cmd("query-status", id="s")["id"] == "s"
    assert d.stop() == 0
    err = d.stderr()
    assert "command x-bad-sync returned a value that cannot be sent as JSON" in err
    assert "command x-bad-async returned a value that cannot be sent as JSON" in err


# -- item 15: a bound on all clients' unread output together ---------------------------------


def test_total_unread_output_is_bounded_largest_first(tmp_path: Path) -> None:
    """Non-reading clients that joined early hold the most unread output and are cut first;
    the ones that joined late and the client that reads are untouched."""
    d = start_qmpjobd(str(tmp_path), "--max-output", str(8 << 20),
                      "--max-total-output", str(2 << 20), "--log-level", "info")

    def idle_clients(n: int) -> list[Client]:
        out = []
        for _ in range(n):
            c = Client(d.path)
            c.negotiate()
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            out.append(c)
        return out

    early = idle_clients(4)
    with Client(d.path) as healthy:
        healthy.negotiate()
        batch = b'{"execute":"stop"}{"execute":"cont"}' * 500

        def flood(rounds: int) -> None:  # 1,000 events (about 75 kB) a round
            for i in range(rounds):
                msgs = healthy.exchange(batch, sentinel_id=f"r{i}")
                assert len(msgs) == 2000  # 1,000 replies and 1,000 events: nothing lost

        flood(20)
        late = idle_clients(4)
        flood(4)
        assert healthy.cmd("query-status", id="ok")["id"] == "ok"
    assert [_was_cut(c) for c in late] == [False] * 4
    assert sum(_was_cut(c) for c in early) >= 2
    for c in early + late:
        c.close()
    assert d.stop() == 0
    assert "disconnecting the largest reader" in d.stderr()


def _was_cut(c: Client) -> bool:
    """Whether the server dropped this never-reading client: reading all it was sent ends in
    EOF; a client still connected has no more to read after it caught up."""
    c.sock.settimeout(2.0)
    try:
        while c.sock.recv(1 << 20):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


# -- item 18: out of file descriptors, --max-clients, --negotiation-timeout ------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_out_of_file_descriptors_keeps_serving_and_recovers(tmp_path: Path, loop: str) -> None:
    path = str(tmp_path / "fd.sock")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    proc = subprocess.Popen(
        [sys.executable, "-m", "qmpjobd", "--socket", path, "--loop", loop,
         "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=low_limit)
    d = Daemon.__new__(Daemon)
    d.path, d.proc = path, proc
    from qmptest import STARTED, wait_for_socket
    STARTED.append(d)
    wait_for_socket(path, proc)
    first = Client(path)
    first.negotiate()
    clients = []
    # connect until a client gets no greeting: the daemon has run out of descriptors
    for _ in range(80):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        s.connect(path)
        try:
            greeted = s.recv(4096)
        except TimeoutError:
            greeted = b""
        clients.append(s)
        if not greeted:
            break
    else:
        pytest.fail("80 clients were greeted under a limit of 48 descriptors")
    waiting = clients[-1]
    # the connected client is still served
    for i in range(20):
        assert first.cmd("query-status", id=i)["id"] == i
    # free descriptors: the waiting client is accepted and greeted
    for s in clients[:10]:
        s.close()
    waiting.settimeout(10)
    assert b'"QMP"' in waiting.recv(4096)
    for s in clients[10:]:
        s.close()
    first.close()
    assert d.stop() == 0
    err = d.stderr()
    assert "cannot accept a connection" in err
    assert err.count("Traceback") == 0
    assert err.count("cannot accept a connection") <= 30


def test_max_clients_closes_the_one_too_many(tmp_path: Path) -> None:
    d = start_qmpjobd(str(tmp_path), "--max-clients", "2")
    a, b = Client(d.path), Client(d.path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(d.path)
        assert s.recv(4096) == b""  # closed without a greeting
    b.close()
    with Client(d.path) as c:  # a slot is free again (the server has seen b go: retry)
        c.negotiate()
    a.negotiate()
    a.close()
    assert d.stop() == 0
    assert "--max-clients 2 reached" in d.stderr()


def test_negotiation_timeout(tmp_path: Path) -> None:
    d = start_qmpjobd(str(tmp_path), "--negotiation-timeout", "0.2")
    with Client(d.path) as silent, Client(d.path) as good:
        good.negotiate()
        silent.sock.settimeout(10)
        assert silent.sock.recv(4096) == b""
        assert good.cmd("query-status", id=1)["id"] == 1
    assert d.stop() == 0
    assert "no capabilities negotiation within 0.2s" in d.stderr()


def test_bad_limit_options_are_refused(tmp_path: Path) -> None:
    for opt, value in (("--negotiation-timeout", "-1"), ("--max-clients", "x"),
                       ("--max-total-output", "0")):
        r = subprocess.run([sys.executable, "-m", "qmpjobd", opt, value],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2
        assert opt in r.stderr
