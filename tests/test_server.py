"""The server in this test's event loop, with a plug-in command that blocks until released.

Covers OOB overtaking, in-band ordering behind a blocked command, disconnect while a command
runs or is queued (qmp-protocol.md §9-§10), socket file handling, and the CLI's exit paths.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from qmptest import Client, start_qmpjobd

from qmpjobd.protocol.session import Session
from qmpjobd.server import Server, StartupError
from qmpjobd.vm import Vm


class Blocker:
    """A plug-in command ``x-block`` that waits until the test releases it."""

    def __init__(self, server: Server) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        server.vm.schema.command("x-block", {"*tag": "str"}, returns="str")
        server.vm.registry.register("x-block", self.handle)

    def handle(self, args: dict[str, Any], session: Session) -> Any:
        async def run() -> str:
            self.started.set()
            await self.release.wait()
            self.finished.set()
            return str(args.get("tag", "done"))
        return run()


class AClient:
    """An asyncio stream client for in-loop tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: str, *caps: str) -> AClient:
        r, w = await asyncio.open_unix_connection(path)
        c = cls(r, w)
        greeting = await c.recv()
        assert "QMP" in greeting
        c.send({"execute": "qmp_capabilities", "arguments": {"enable": list(caps)}})
        assert await c.recv() == {"return": {}}
        return c

    def send(self, msg: Any) -> None:
        self.writer.write(orjson.dumps(msg))

    async def recv(self, timeout: float = 5.0) -> Any:
        line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), timeout)
        return orjson.loads(line)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    srv = Server(Vm())
    path = str(tmp_path / "s.sock")
    await srv.listen_unix(path)
    srv.path = path  # type: ignore[attr-defined]
    yield srv
    await srv.close()
    srv.vm.close()


async def test_oob_overtakes_blocked_command(server: Any) -> None:
    block = Blocker(server)
    c = await AClient.open(server.path, "oob")
    c.send({"execute": "x-block", "id": "ib-blocks-1"})
    c.send({"execute": "query-name", "id": "ib-quick-1"})
    for i in (1, 2, 3):
        c.send({"exec-oob": "query-yank", "id": f"oob-{i}"})
    assert [(await c.recv())["id"] for _ in range(3)] == ["oob-1", "oob-2", "oob-3"]
    assert block.started.is_set() and not block.finished.is_set()
    block.release.set()
    assert await c.recv() == {"return": "done", "id": "ib-blocks-1"}
    assert await c.recv() == {"return": {}, "id": "ib-quick-1"}
    await c.close()


async def test_without_oob_requests_wait_for_the_blocked_one(server: Any) -> None:
    block = Blocker(server)
    c = await AClient.open(server.path)
    other = await AClient.open(server.path)
    c.send({"execute": "x-block", "arguments": {"tag": "first"}, "id": 1})
    c.send({"exec-oob": "query-yank", "id": 2})
    c.send({"execute": "query-name", "id": 3})
    await block.started.wait()
    # another client is not held up by this one's blocked command
    other.send({"execute": "query-status", "id": "x"})
    assert (await other.recv())["id"] == "x"
    block.release.set()
    assert await c.recv() == {"return": "first", "id": 1}
    assert await c.recv() == {"id": 2, "error": {
        "class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}}
    assert await c.recv() == {"return": {}, "id": 3}
    await c.close()
    await other.close()


async def test_oob_queue_limit_pauses_reading(server: Any) -> None:
    """With 8 in-band requests queued behind a blocked one, a later OOB request waits."""
    block = Blocker(server)
    c = await AClient.open(server.path, "oob")
    c.send({"execute": "x-block", "id": "b"})
    for i in range(9):
        c.send({"execute": "query-name", "id": f"q{i}"})
    c.send({"exec-oob": "query-yank", "id": "oob"})
    await block.started.wait()
    # No silence window: an OOB request answered while the queue is full would be the first
    # reply, before "b"'s; the order below shows it waited behind q0.
    block.release.set()
    ids = [(await c.recv())["id"] for _ in range(11)]
    assert ids[0] == "b"
    assert ids.index("oob") > ids.index("q0")
    assert [i for i in ids if i.startswith("q")] == [f"q{i}" for i in range(9)]
    await c.close()


async def test_disconnect_drops_queued_and_discards_running_reply(server: Any) -> None:
    block = Blocker(server)
    c = await AClient.open(server.path)
    c.send({"execute": "x-block", "id": 1})
    c.send({"execute": "stop", "id": 2})
    await block.started.wait()
    await c.close()
    await asyncio.wait_for(server._all_gone.wait(), 5)  # the server has seen the hang-up
    block.release.set()
    await block.finished.wait()
    d = await AClient.open(server.path)
    d.send({"execute": "query-status", "id": "s"})
    # the queued stop never ran, and no stale reply reaches the new client
    assert await d.recv() == {"return": {"status": "running", "singlestep": False,
                                         "running": True}, "id": "s"}
    await d.close()


async def test_events_skip_clients_still_negotiating(server: Any) -> None:
    r, w = await asyncio.open_unix_connection(server.path)
    await r.readuntil(b"\r\n")
    a = await AClient.open(server.path)
    a.send({"execute": "stop", "id": 1})
    assert (await a.recv())["event"] == "STOP"
    assert (await a.recv())["id"] == 1
    w.write(b'{"execute":"qmp_capabilities"}')
    assert orjson.loads(await r.readuntil(b"\r\n")) == {"return": {}}
    w.write(b'{"execute":"cont","id":9}')
    msgs = [orjson.loads(await r.readuntil(b"\r\n")) for _ in range(2)]
    assert [m.get("event", m.get("id")) for m in msgs] == ["RESUME", 9]
    w.close()
    await a.close()


async def test_socket_mode_and_stale_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "m.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # a socket file nobody listens on
    srv = Server(Vm())
    await srv.listen_unix(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    other = Server(Vm())
    with pytest.raises(StartupError, match="in use"):
        await other.listen_unix(path)
    await srv.close()
    assert not os.path.exists(path)
    Path(path).write_text("not a socket")
    with pytest.raises(StartupError, match="not a socket"):
        await Server(Vm()).listen_unix(path)


async def test_tcp_loopback_only(tmp_path: Path) -> None:
    srv = Server(Vm())
    with pytest.raises(StartupError, match="non-loopback"):
        await srv.listen_tcp("0.0.0.0", 0)
    await srv.listen_tcp("127.0.0.1", 0)
    host, port = srv.tcp_addresses()[0]
    r, w = await asyncio.open_connection(host, port)
    assert b'"QMP"' in await r.readuntil(b"\r\n")
    w.close()
    await srv.close()


def test_sigterm_sends_shutdown_and_removes_socket(tmp_path: Path) -> None:
    d = start_qmpjobd(str(tmp_path))
    with Client(d.path) as c:
        c.negotiate()
        d.proc.send_signal(signal.SIGTERM)
        ev = c.recv()
        assert ev["event"] == "SHUTDOWN"
        assert ev["data"] == {"guest": False, "reason": "host-signal"}
        assert set(ev["timestamp"]) == {"seconds", "microseconds"}
        assert d.proc.wait(10) == 0
    assert not os.path.exists(d.path)


def test_sigint_exits_zero(tmp_path: Path) -> None:
    d = start_qmpjobd(str(tmp_path))
    assert d.stop(signal.SIGINT) == 0
    assert not os.path.exists(d.path)


def test_quit_event_reply_exit(tmp_path: Path) -> None:
    d = start_qmpjobd(str(tmp_path))
    with Client(d.path) as c, Client(d.path) as watcher:
        c.negotiate()
        watcher.negotiate()
        c.send(b'{"execute":"quit","id":"bye"}')
        ev = c.recv()
        assert ev["event"] == "SHUTDOWN"
        assert ev["data"] == {"guest": False, "reason": "host-qmp-quit"}
        assert c.recv() == {"return": {}, "id": "bye"}
        with pytest.raises(EOFError):
            c.recv()
        assert watcher.recv()["event"] == "SHUTDOWN"
    assert d.proc.wait(10) == 0
    assert not os.path.exists(d.path)


def test_second_daemon_on_live_socket_fails(tmp_path: Path) -> None:
    d = start_qmpjobd(str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "qmpjobd", "--socket", d.path],
                       capture_output=True, timeout=20)
    assert r.returncode == 1
    assert b"in use" in r.stderr
    with Client(d.path) as c:  # the first one is unharmed
        c.negotiate()
    d.stop()


def test_cli_version_and_help() -> None:
    r = subprocess.run([sys.executable, "-m", "qmpjobd", "--version"], capture_output=True,
                       timeout=20)
    assert r.returncode == 0 and r.stdout.startswith(b"qmpjobd ")
    r = subprocess.run([sys.executable, "-m", "qmpjobd", "--help"], capture_output=True,
                       timeout=20)
    assert r.returncode == 0 and b"--socket" in r.stdout and b"--tcp" in r.stdout


def test_query_version_is_configurable(tmp_path: Path) -> None:
    d = start_qmpjobd(str(tmp_path), "--qemu-version", "7.2.22", "--name", "vm1")
    with Client(d.path) as c:
        assert c.greeting["QMP"]["version"]["qemu"] == {"micro": 22, "minor": 2, "major": 7}
        c.negotiate()
        v = c.cmd("query-version")["return"]
        assert v["qemu"] == {"micro": 22, "minor": 2, "major": 7}
        assert v["package"].startswith("qmpjobd ")
        assert c.cmd("query-name")["return"] == {"name": "vm1"}
    d.stop()
