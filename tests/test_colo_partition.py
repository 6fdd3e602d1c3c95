"""A network partition between a primary and a secondary in two network namespaces: with
heartbeats and a witness, exactly one side becomes the standalone primary."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from colotest import EvClient, wait_checkpoints
from qmptest import Daemon


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    a, b = f"qja{tag}", f"qjb{tag}"
    try:
        _ip("netns", "add", a)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"network namespaces are not available here: {e}")
    try:
        _ip("netns", "add", b)
        _ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        _ip("link", "set", f"va{tag}", "netns", a)
        _ip("link", "set", f"vb{tag}", "netns", b)
        for ns, dev, addr in ((a, f"va{tag}", "10.231.7.1/24"), (b, f"vb{tag}", "10.231.7.2/24")):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _daemon(ns: str, path: str, *extra: str) -> Daemon:
    return Daemon(["ip", "netns", "exec", ns, sys.executable, "-m", "qmpjobd", "--socket", path,
                   "--log-level", "warning", "--guest-ram", "4M", *extra], path)


def test_partition_with_witness_makes_exactly_one_primary(
        tmp_path: object, netns: tuple[str, str]) -> None:
    a, b = netns
    _daemon(b, f"{tmp_path}/s.sock", "--incoming", "tcp:10.231.7.2:7400")
    _daemon(a, f"{tmp_path}/p.sock")
    p, s = EvClient(f"{tmp_path}/p.sock"), EvClient(f"{tmp_path}/s.sock")
    caps = {"capabilities": [{"capability": "x-colo", "state": True},
                             {"capability": "events", "state": True}]}
    s.ok("migrate-set-capabilities", caps)
    p.ok("migrate-set-capabilities", caps)
    p.ok("migrate-set-parameters", {"x-checkpoint-delay": 100})
    p.ok("migrate", {"uri": "tcp:10.231.7.2:7400"})
    wait_checkpoints(s, 2)
    witness = f"{tmp_path}/witness"
    hb = {"interval-ms": 20, "timeout-ms": 300, "witness": witness}
    p.ok("x-daemon-heartbeat", {"listen": "10.231.7.1:7401", "peer": "10.231.7.2:7402", **hb})
    s.ok("x-daemon-heartbeat", {"listen": "10.231.7.2:7402", "peer": "10.231.7.1:7401", **hb})
    wait_checkpoints(s, 2)
    assert s.ok("x-query-colo-metrics")["heartbeat"]["peer-alive"] is True
    dev = next(line.split(":")[1].strip().split("@")[0] for line in subprocess.run(
        ["ip", "-n", a, "-o", "link"], capture_output=True, text=True).stdout.splitlines()
        if "va" in line)
    _ip("-n", a, "link", "set", dev, "down")  # the partition: no RST, nothing gets through
    deadline = time.monotonic() + 10
    decisions = {"p": "none", "s": "none"}
    while "none" in decisions.values() and time.monotonic() < deadline:
        decisions = {k: c.ok("x-query-colo-metrics")["heartbeat"]["decision"]
                     for k, c in (("p", p), ("s", s))}
    assert decisions["p"].startswith("failover"), decisions
    assert decisions["s"] == "stay: witness held by the peer", decisions
    assert p.ok("query-colo-status") == {"mode": "none", "last-mode": "primary",
                                         "reason": "request"}
    assert s.ok("query-colo-status")["mode"] == "secondary"
    assert p.ok("query-status")["status"] == "running"
    assert os.path.exists(witness)
