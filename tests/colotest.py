"""Helpers for COLO tests: an event-keeping client and a primary/secondary pair of real
daemon processes on a unix or TCP replication link."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

import orjson
from qmptest import Client, Daemon, start_qmpjobd


class EvClient(Client):
    """A client that keeps every event it reads instead of dropping it."""

    def __init__(self, path: str, *caps: str) -> None:
        super().__init__(path)
        self.path = path
        self.events: list[dict[str, Any]] = []
        self.negotiate(*caps)

    def recv_reply(self) -> Any:
        while True:
            msg = self.recv()
            if "event" in msg:
                self.events.append(msg)
            else:
                return msg

    def ok(self, name: str, args: dict[str, Any] | None = None) -> Any:
        reply = self.cmd(name, args)
        assert "return" in reply, (name, args, reply)
        return reply["return"]

    def err(self, name: str, args: dict[str, Any] | None = None) -> tuple[str, str]:
        reply = self.cmd(name, args)
        assert "error" in reply, (name, args, reply)
        return reply["error"]["class"], reply["error"]["desc"]

    def wait_event(self, name: str, data: Any = None, timeout: float = 10.0,
                   since: int = 0) -> dict[str, Any]:
        """The first event ``name`` (with ``data``, if given) at index >= ``since``."""
        deadline = time.monotonic() + timeout
        i = since
        while True:
            while i < len(self.events):
                ev = self.events[i]
                i += 1
                if ev["event"] == name and (data is None or ev.get("data") == data):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {name} {data} within {timeout}s; saw "
                                   f"{[(e['event'], e.get('data')) for e in self.events[since:]]}")
            self.sock.settimeout(left)
            try:
                msg = self.recv()
            finally:
                self.sock.settimeout(10.0)
            if "event" in msg:
                self.events.append(msg)

    def names(self, since: int = 0) -> list[Any]:
        """Events from index ``since`` as (name, data) pairs (data None when absent)."""
        return [(e["event"], e.get("data")) for e in self.events[since:]]

    def jobs(self) -> list[dict[str, Any]]:
        """query-jobs as a client that enabled x-job-events sees it (COLO jobs included)."""
        other = EvClient(self.path, "x-job-events")
        try:
            return other.ok("query-jobs")  # type: ignore[no-any-return]
        finally:
            other.close()

    def checkpoints(self) -> int:
        return int(self.ok("x-query-colo-metrics")["checkpoints"])


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@dataclass
class Pair:
    """A running COLO pair."""

    pri: Daemon
    sec: Daemon
    p: EvClient
    s: EvClient
    uri: str
    tmp: str

    def state(self, c: EvClient) -> dict[str, Any]:
        return c.ok("x-query-guest-state")  # type: ignore[no-any-return]


def start_pair(tmp: str, transport: str = "unix", delay: int = 100, rate: int = 200,
               ram: str = "4M", extra_p: tuple[str, ...] = (), extra_s: tuple[str, ...] = (),
               caps: tuple[str, ...] = ("x-colo", "events"), sec_name: str = "sec.sock",
               pri_name: str = "pri.sock") -> Pair:
    """Start a secondary (--incoming) and a primary and enter COLO; returns once the first
    checkpoint-ready has been answered (the primary's RESUME)."""
    uri = f"unix:{tmp}/mig-{sec_name}" if transport == "unix" \
        else f"tcp:127.0.0.1:{free_port()}"
    # the secondary runs its own workload too (COLO's divergence), unless extra_s says not
    sec = start_qmpjobd(tmp, "--incoming", uri, "--guest-ram", ram, "--workload-rate", "200",
                        *extra_s, name=sec_name)
    pri = start_qmpjobd(tmp, "--guest-ram", ram, "--workload-rate", str(rate), *extra_p,
                        name=pri_name)
    s = EvClient(f"{tmp}/{sec_name}")
    p = EvClient(f"{tmp}/{pri_name}")
    caplist = [{"capability": c, "state": True} for c in caps]
    s.ok("migrate-set-capabilities", {"capabilities": caplist})
    p.ok("migrate-set-capabilities", {"capabilities": caplist})
    p.ok("migrate-set-parameters", {"x-checkpoint-delay": delay})
    p.ok("migrate", {"uri": uri})
    p.wait_event("RESUME")
    s.wait_event("RESUME")
    return Pair(pri, sec, p, s, uri, tmp)


def heartbeats(pr: Pair, timeout_ms: int, **extra: Any) -> None:
    """UDP heartbeats between the two sides of a pair (20 ms interval)."""
    a, b = free_port(), free_port()
    common = {"interval-ms": 20, "timeout-ms": timeout_ms, **extra}
    pr.p.ok("x-daemon-heartbeat", {"listen": f"127.0.0.1:{a}", "peer": f"127.0.0.1:{b}",
                                   **common})
    pr.s.ok("x-daemon-heartbeat", {"listen": f"127.0.0.1:{b}", "peer": f"127.0.0.1:{a}",
                                   **common})


def wait_checkpoints(c: EvClient, n: int, timeout: float = 10.0) -> None:
    """Wait until ``c`` has seen ``n`` more RESUME events than now."""
    since = len(c.events)
    for _ in range(n):
        ev = c.wait_event("RESUME", timeout=timeout, since=since)
        since = c.events.index(ev) + 1


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)
