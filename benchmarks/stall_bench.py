#!/usr/bin/env python3
"""Does one hostile message stall other clients?  (issue 9, item 14)

Starts its own qmpjobd, keeps a healthy client sending query-version back to back, and meanwhile
has a second client send one worst-case message (60 MiB each, near the 64 MiB limit) followed by
a sentinel.  Reports the healthy client's rtt (p50/p99/max) while each message is being read and
processed, how long the message took, and how many bytes of replies it produced.

Prints one JSON object per case.  Run from a checkout:
  python3 benchmarks/stall_bench.py [--cases esc-n,c3-stray,...] [--mib 60] [--repo PATH]
``--repo`` picks the qmpjobd source tree to start (default: this checkout), to compare commits.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
SENTINEL = b'\n{"execute":"query-name","id":"__end__"}\n'


def _arg(value: bytes) -> bytes:
    """query-version with one unexpected argument: the reply is a short error."""
    return b'{"execute":"query-version","arguments":{"x":' + value + b"}}"


CASES: dict[str, Callable[[int], bytes]] = {
    # a string with one escape (takes the exact path)
    "esc-n": lambda n: _arg(b'"' + b"a" * (n // 2) + b"\\n" + b"a" * (n // 2) + b'"'),
    # a string of bad UTF-8 ended by a control byte: one stray-token error echoing it
    "c3-stray": lambda n: _arg(b'"' + b"\xc3" * n + b"\n"),
    # the same bytes outside a string: one error, then the lexer skips the run
    "c3-top": lambda n: b"\xc3" * n + b"\n",
    # valid non-ASCII UTF-8
    "non-ascii": lambda n: _arg(b'"' + "é".encode() * (n // 2) + b'"'),
    # \u escapes all the way
    "u-escapes": lambda n: _arg(b'"' + b"\\u00e9" * (n // 6) + b'"'),
    # deep nesting: one "nesting depth limit" error per 1025 brackets
    "deep": lambda n: b"[" * n + b"\x00",
    # the most tokens a message may have (2 Mi), 4 MiB whatever --mib says
    "tokens": lambda n: _arg(b"[" + b",".join([b"0"] * 1048570) + b"]"),
    # a 60 MiB number (QEMU: a double, here inf)
    "long-number": lambda n: _arg(b"1" * n),
    # a long id echoed back: the reply is as long as the message
    "id-echo": lambda n: b'{"execute":"query-name","id":"' + b"a" * n + b"\\n" + b'"}',
}


class Client:
    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.buf = b""
        self.received = 0
        self.line()
        self.s.sendall(b'{"execute":"qmp_capabilities"}')
        self.line()

    def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise EOFError("connection closed")
            self.received += len(chunk)
            self.buf += chunk

    def close(self) -> None:
        self.s.close()


def healthy(path: str, stop: threading.Event, rtts: list[float]) -> None:
    """query-version back to back until told to stop."""
    c = Client(path)
    try:
        while not stop.is_set():
            t = time.perf_counter()
            c.s.sendall(b'{"execute":"query-version"}')
            c.line()
            rtts.append(time.perf_counter() - t)
    finally:
        c.close()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_case(path: str, name: str, payload: bytes) -> dict[str, object]:
    attacker = Client(path)
    stop = threading.Event()
    rtts: list[float] = []
    h = threading.Thread(target=healthy, args=(path, stop, rtts))
    h.start()
    while len(rtts) < 200:  # warm: the healthy client is in its loop
        time.sleep(0.001)
    before = len(rtts)
    t0 = time.perf_counter()
    sender = threading.Thread(target=attacker.s.sendall, args=(payload + SENTINEL,))
    sender.start()
    replies = 0
    outcome = "ok"
    try:
        while b'"__end__"' not in attacker.line():
            replies += 1
    except (EOFError, ConnectionResetError):
        outcome = "connection lost"
    elapsed = time.perf_counter() - t0
    stop.set()
    h.join()  # its last request may be the one that waited longest
    during = rtts[before:]
    attacker.close()
    sender.join()
    ms = [x * 1000 for x in during] or [float("nan")]
    return {
        "case": name, "outcome": outcome, "message_bytes": len(payload),
        "seconds": round(elapsed, 2),
        "replies": replies, "reply_bytes": attacker.received,
        "healthy_requests": len(during),
        "healthy_rtt_ms": {"p50": round(statistics.median(ms), 3), "p99": round(pct(ms, 0.99), 2),
                           "max": round(max(ms), 2)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--mib", type=int, default=60)
    ap.add_argument("--repo", default=str(HERE.parent))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "qmpjobd.sock")
        env = dict(os.environ, PYTHONPATH=a.repo)
        proc = subprocess.Popen([sys.executable, "-m", "qmpjobd", "--socket", path,
                                 "--log-level", "error"], env=env, cwd=a.repo)
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(path):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("qmpjobd did not start")
                time.sleep(0.05)
            idle: list[float] = []
            stop = threading.Event()
            t = threading.Thread(target=healthy, args=(path, stop, idle))
            t.start()
            time.sleep(1.0)
            stop.set()
            t.join()
            ms = [x * 1000 for x in idle]
            print(json.dumps({"case": "idle", "healthy_rtt_ms": {
                "p50": round(statistics.median(ms), 3), "p99": round(pct(ms, 0.99), 2),
                "max": round(max(ms), 2)}}), flush=True)
            for name in a.cases.split(","):
                payload = CASES[name](a.mib << 20)
                print(json.dumps(run_case(path, name, payload)), flush=True)
                if proc.poll() is not None:
                    raise SystemExit(f"qmpjobd exited ({proc.returncode}) during {name}")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
