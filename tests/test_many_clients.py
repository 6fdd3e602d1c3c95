"""Many clients on one qmpjobd socket: fan-out of events, slow and greedy clients, disconnects.

Everything waits on replies or events with timeouts; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from qmptest import Daemon, start_qmpjobd

TIMEOUT = 30.0
N_CLIENTS = 200
RUNNING = {"status": "running", "singlestep": False, "running": True}
PAUSED = {"status": "paused", "singlestep": False, "running": False}


class AClient:
    """An asyncio QMP client over the Unix socket.

    With ``start_reader()`` a task sorts incoming messages into replies (a queue, in order) and
    events (a list); without it the test reads the stream itself (or not at all).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 name: str) -> None:
        self.reader = reader
        self.writer = writer
        self.name = name
        self.greeting: Any = None
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.events: list[Any] = []
        self.log: list[Any] = []  # every message after the greeting, in arrival order
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.eof: BaseException | None = None

    @classmethod
    async def open(cls, path: str, name: str = "", negotiate: bool = True,
                   reader_task: bool = True, limit: int = 16 << 20) -> AClient:
        """Connect; asyncio reads ahead up to 2 * ``limit`` bytes even when nobody reads."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(path, limit=limit), TIMEOUT)
        c = cls(reader, writer, name)
        c.greeting = await c.recv()
        assert "QMP" in c.greeting, c.greeting
        if reader_task:
            c.start_reader()
        if negotiate:
            c.send({"execute": "qmp_capabilities"})
            reply = await (c.reply() if reader_task else c.recv())
            assert reply == {"return": {}}, reply
        return c

    async def recv(self) -> Any:
        line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), TIMEOUT)
        return orjson.loads(line)

    def start_reader(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self.reader.readuntil(b"\r\n")
                msg = orjson.loads(line)
                self.log.append(msg)
                if "event" in msg:
                    self.events.append(msg)
                else:
                    self.replies.put_nowait(msg)
                self._changed.set()
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            self.eof = e
            self._changed.set()

    def send(self, data: bytes | dict[str, Any]) -> None:
        self.writer.write(data if isinstance(data, bytes) else orjson.dumps(data) + b"\n")

    async def reply(self) -> Any:
        return await asyncio.wait_for(self.replies.get(), TIMEOUT)

    async def cmd(self, name: str, args: dict[str, Any] | None = None, **extra: Any) -> Any:
        req: dict[str, Any] = {"execute": name, **extra}
        if args is not None:
            req["arguments"] = args
        self.send(req)
        return await self.reply()

    async def wait_for(self, pred: Callable[[], bool], what: str = "") -> None:
        """Wait (event-driven, with a timeout) until ``pred()`` holds."""
        async def loop() -> None:
            while not pred():
                if self.eof is not None:
                    raise AssertionError(f"{self.name}: connection closed ({self.eof!r}) "
                                         f"while waiting for {what}")
                self._changed.clear()
                await self._changed.wait()
        try:
            await asyncio.wait_for(loop(), TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"{self.name}: timed out waiting for {what}") from None

    async def wait_events(self, n: int) -> list[Any]:
        await self.wait_for(lambda: len(self.events) >= n, f"{n} events "
                            f"(have {len(self.events)})")
        return self.events

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def event_key(e: dict[str, Any]) -> tuple[str, int, int]:
    ts = e["timestamp"]
    return e["event"], ts["seconds"], ts["microseconds"]


async def stop_cont(driver: AClient, n: int, tag: str = "") -> list[Any]:
    """n stop/cont pairs, one at a time; the driver sees each event before its reply."""
    seen = len(driver.events)
    for i in range(n):
        for name, ev, status in (("stop", "STOP", PAUSED), ("cont", "RESUME", RUNNING)):
            rid = f"{tag}{name}-{i}"
            assert await driver.cmd(name, id=rid) == {"return": {}, "id": rid}
            # the command's event is written before its reply (§11)
            assert [e["event"] for e in driver.events[seen:]] == [ev]
            seen += 1
            assert await driver.cmd("query-status", id="st") == {"return": status, "id": "st"}
    return driver.events[-2 * n:]


async def assert_quiet(c: AClient, n_events: int, rid: str) -> None:
    """A round trip, after which ``c`` must still have exactly ``n_events`` events."""
    assert await c.cmd("query-status", id=rid) == {"return": RUNNING, "id": rid}
    assert len(c.events) == n_events, (c.name, c.events[n_events:])


# ---------------------------------------------------------------------------------------------


async def test_200_clients_round_trips_and_event_fanout(daemon: Daemon) -> None:
    async def session(i: int) -> AClient:
        c = await AClient.open(daemon.path, f"c{i}")
        # five pipelined requests in one write, then five one at a time
        cmds = ["query-name", "query-status", "query-version", "query-yank", "nope"]
        c.send(b"".join(orjson.dumps({"execute": name, "id": f"c{i}-p{k}"})
                        for k, name in enumerate(cmds)))
        replies = [await c.reply() for _ in cmds]
        assert [r["id"] for r in replies] == [f"c{i}-p{k}" for k in range(5)]
        assert replies[0]["return"] == {}
        assert replies[1]["return"]["status"] in ("running", "paused")
        assert replies[2]["return"]["qemu"]["major"] == 7
        assert replies[3]["return"] == []
        assert replies[4]["error"]["class"] == "CommandNotFound"
        for k in range(5):
            rid = [i, "seq", k, {"client": i}]
            assert await c.cmd("query-name", id=rid) == {"return": {}, "id": rid}
        return c

    clients = await asyncio.gather(*(session(i) for i in range(N_CLIENTS)))
    try:
        driver = await AClient.open(daemon.path, "driver")
        n = 15
        emitted = await stop_cont(driver, n)
        assert [e["event"] for e in emitted] == ["STOP", "RESUME"] * n
        want = [event_key(e) for e in emitted]
        assert want == sorted(want, key=lambda k: (k[1], k[2])), "timestamps go backwards"

        async def check(c: AClient) -> None:
            await c.wait_events(2 * n)
            # every event once, in order, with the driver's (identical) timestamp
            assert [event_key(e) for e in c.events] == want, c.name
            assert all(set(e) == {"event", "timestamp"} for e in c.events)
            await assert_quiet(c, 2 * n, f"{c.name}-final")

        await asyncio.gather(*(check(c) for c in clients))
        await assert_quiet(driver, 2 * n, "driver-final")
        print(f"200 clients: daemon RSS {daemon.rss_kb()} kB")
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    assert daemon.proc.poll() is None


async def test_negotiating_client_gets_no_events(daemon: Daemon) -> None:
    driver = await AClient.open(daemon.path, "driver")
    pending = await AClient.open(daemon.path, "pending", negotiate=False)
    try:
        # `pending` is connected (it has its greeting) but still in negotiation mode
        await stop_cont(driver, 3)
        err = await pending.cmd("query-status", id="early")
        assert err == {"id": "early", "error": {
            "class": "CommandNotFound",
            "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
        await stop_cont(driver, 2)
        # the events were dropped, not queued: negotiating now delivers none of them
        assert await pending.cmd("qmp_capabilities", id="neg") == {"return": {}, "id": "neg"}
        await assert_quiet(pending, 0, "after-neg")
        assert pending.log == [err, {"return": {}, "id": "neg"},
                               {"return": RUNNING, "id": "after-neg"}]
        # from now on it is a subscriber like any other
        new = await stop_cont(driver, 1, "late-")
        await pending.wait_events(2)
        assert [event_key(e) for e in pending.events] == [event_key(e) for e in new]
    finally:
        await pending.close()
        await driver.close()


def poll_hup(sock: socket.socket) -> bool:
    """True once the peer has closed (POLLHUP/POLLRDHUP), without reading anything."""
    p = select.poll()
    p.register(sock, select.POLLIN | select.POLLRDHUP)
    return any(ev & (select.POLLHUP | select.POLLRDHUP | select.POLLERR)
               for _, ev in p.poll(0))


def drain(sock: socket.socket) -> tuple[bytes, str]:
    """Everything left in the socket, and how it ended ("eof" or "reset")."""
    sock.settimeout(TIMEOUT)
    chunks: list[bytes] = []
    while True:
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            return b"".join(chunks), "reset"
        if not data:
            return b"".join(chunks), "eof"
        chunks.append(data)


async def test_slow_reader_is_disconnected_others_unaffected(tmp_path: Any) -> None:
    d = start_qmpjobd(str(tmp_path), "--max-output", "65536")
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fast: list[AClient] = []
    driver: AClient | None = None
    try:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(TIMEOUT)
        slow.connect(d.path)
        slow.sendall(b'{"execute":"qmp_capabilities"}\n')
        # greeting + negotiation reply; from now on this client reads nothing
        got = b""
        while got.count(b"\r\n") < 2:
            got += slow.recv(4096)
        assert orjson.loads(got.split(b"\r\n")[1]) == {"return": {}}
        slow_head = got

        driver = await AClient.open(d.path, "driver")
        fast = [await AClient.open(d.path, f"fast{i}") for i in range(3)]

        async def batch(k: int, pairs: int = 100) -> None:
            """Pipeline `pairs` stop/cont pairs; wait for the replies and the fast clients."""
            assert driver is not None
            driver.send(b"".join(
                orjson.dumps({"execute": name, "id": f"b{k}-{i}-{name}"})
                for i in range(pairs) for name in ("stop", "cont")))
            for i in range(pairs):
                for name in ("stop", "cont"):
                    rid = f"b{k}-{i}-{name}"
                    assert await driver.reply() == {"return": {}, "id": rid}
            total = len(driver.events)
            await asyncio.gather(*(c.wait_events(total) for c in fast))

        batches = 0
        while not poll_hup(slow):
            assert batches < 100, "the slow client was never disconnected (~1.6 MB unread)"
            await batch(batches)
            batches += 1
        disconnected_after = len(driver.events)
        # the others keep being served after the cut
        for k in range(batches, batches + 2):
            await batch(k)
        emitted = driver.events
        assert [e["event"] for e in emitted] == ["STOP", "RESUME"] * (len(emitted) // 2)
        for c in fast:
            assert [event_key(e) for e in c.events] == [event_key(e) for e in emitted], c.name
            await assert_quiet(c, len(emitted), f"{c.name}-final")

        # the slow client: what it was sent is an intact prefix, then the connection ends
        rest, how = drain(slow)
        lines = (slow_head + rest).split(b"\r\n")
        lines.pop()  # partial (or empty) tail after the last CRLF
        msgs = [orjson.loads(x) for x in lines[2:]]
        assert all("event" in m for m in msgs)
        assert [event_key(m) for m in msgs] == [event_key(e) for e in emitted[:len(msgs)]]
        assert len(msgs) < disconnected_after, "slow client got everything: never cut off"
        print(f"slow client cut after {disconnected_after} events ({how}); "
              f"it had {len(msgs)} in its socket")
        assert d.proc.poll() is None
        c2 = await AClient.open(d.path, "after")
        assert await c2.cmd("query-status", id=1) == {"return": RUNNING, "id": 1}
        await c2.close()
    finally:
        slow.close()
        for c in fast:
            await c.close()
        if driver is not None:
            await driver.close()
        d.stop()
    assert d.proc.returncode == 0
    log = d.stderr()
    assert "Traceback" not in log, log[-3000:]


async def test_pipelined_10000_requests_backpressure_not_loss(daemon: Daemon) -> None:
    n = 10000
    pad = "x" * 500
    # a small stream limit, so that not reading really stops reading the socket
    greedy = await AClient.open(daemon.path, "greedy", reader_task=False, limit=16384)
    other = await AClient.open(daemon.path, "other")
    try:
        ids = [f"{k:05d}-{pad}" for k in range(n)]
        greedy.send(b"".join(orjson.dumps({"execute": "query-name", "id": rid}) for rid in ids))
        writing = asyncio.get_running_loop().create_task(greedy.writer.drain())
        # While `greedy` reads nothing, another client is served normally, events included.
        for k in range(100):
            assert await other.cmd("query-status", id=k) == {"return": RUNNING, "id": k}
        await stop_cont(other, 1)
        # ~5 MB of requests cannot all be absorbed while ~5 MB of replies go unread: the
        # daemon stopped reading, so our write is still pending (backpressure, not buffering).
        assert not writing.done(), "daemon buffered 5 MB of requests from a client not reading"
        # Now read: all 10,000 replies, in order, plus the two events somewhere among them.
        got: list[Any] = []
        events: list[Any] = []
        while len(got) < n:
            msg = await greedy.recv()
            (events if "event" in msg else got).append(msg)
        await asyncio.wait_for(writing, TIMEOUT)
        assert [m.get("id") for m in got] == ids
        assert all(m == {"return": {}, "id": rid} for m, rid in zip(got, ids, strict=True))
        # one more round trip: anything still in flight before it has arrived afterwards
        greedy.send({"execute": "query-name", "id": "last"})
        while (msg := await greedy.recv()).get("id") != "last":
            assert "event" in msg, msg
            events.append(msg)
        assert [e["event"] for e in events] == ["STOP", "RESUME"]
        assert [event_key(e) for e in events] == [event_key(e) for e in other.events]
    finally:
        await greedy.close()
        await other.close()


@pytest.mark.parametrize("how", ["close", "half-close"])
async def test_disconnect_with_queued_commands(daemon: Daemon, how: str) -> None:
    watcher = await AClient.open(daemon.path, "watcher")
    try:
        for round_ in range(3):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(TIMEOUT)
            s.connect(daemon.path)
            # many requests with big replies (the schema is ~200 kB), queued behind each other,
            # then a partial request; close without reading anything
            reqs = [b'{"execute":"qmp_capabilities"}']
            reqs += [b'{"execute":"query-qmp-schema","id":%d}' % k for k in range(300)]
            reqs += [b'{"execute":"query-name","id":%d}' % k for k in range(2000)]
            s.setblocking(False)
            data = b"".join(reqs) + b'{"execute":"query-na'
            with contextlib.suppress(BlockingIOError):
                s.send(data)
            if how == "half-close":
                s.shutdown(socket.SHUT_WR)  # the daemon sees EOF first, then the close
            s.close()
            # a new client gets a fresh greeting, negotiation and a clean parser
            c = await AClient.open(daemon.path, f"new{round_}", negotiate=False,
                                   reader_task=False)
            c.send(b'{"execute":"query-status","id":"neg"}{"execute":"qmp_capabilities",'
                   b'"id":"q"}{"execute":"query-name","id":"n"}')
            assert (await c.recv())["error"]["class"] == "CommandNotFound"
            assert await c.recv() == {"return": {}, "id": "q"}
            assert await c.recv() == {"return": {}, "id": "n"}
            await c.close()
            assert await watcher.cmd("query-name", id=round_) == {"return": {}, "id": round_}
        assert daemon.proc.poll() is None
        assert daemon.rss_kb() < 200 * 1024
        assert watcher.events == []
    finally:
        await watcher.close()
    assert daemon.stop() == 0
    log = daemon.stderr()
    assert "Traceback" not in log, log[-3000:]


async def test_many_clients_connect_and_vanish(daemon: Daemon) -> None:
    """200 clients that connect and leave at once (some mid-request) leave no trace."""
    async def vanish(i: int) -> None:
        _, writer = await asyncio.open_unix_connection(daemon.path)
        if i % 3:
            writer.write(b'{"execute":"qmp_capabilities"}{"execute":"stop"}' if i % 3 == 1
                         else b'{"execute":"qmp_capabi')
        writer.close()

    await asyncio.gather(*(vanish(i) for i in range(N_CLIENTS)))
    c = await AClient.open(daemon.path, "survivor")
    try:
        assert (await c.cmd("query-status", id=1))["id"] == 1
        assert await c.cmd("cont", id=2) == {"return": {}, "id": 2}
        assert await c.cmd("query-status", id=3) == {"return": RUNNING, "id": 3}
    finally:
        await c.close()
    assert daemon.proc.poll() is None
    assert os.path.exists(daemon.path)
