"""Event-loop responsiveness while guest RAM moves: the round-trip time of `query-name` from
another client (p50, p99, worst) during

* the migration of a guest with a 1 GiB RAM (`--guest-ram`), on the source and the
  destination, from `migrate` until MIGRATION completed;
* COLO checkpoints of about 100 MiB of dirty RAM each (a sweeping workload, x-checkpoint-delay
  200 ms), on the primary and the secondary.

Each probe sends one `query-name` at a time over a real Unix socket, back to back with a 1 ms
pause.  Usage (from a clone, after `pip install -e .`):

    python3 benchmarks/loop_latency_bench.py [--ram 1G] [--colo-seconds 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import orjson
from colotest import EvClient, start_pair, wait_checkpoints
from qmptest import STARTED, start_qmpjobd

RATE = 130000
"""Pages/s the COLO primary writes: about 100 MiB in a 200 ms checkpoint interval."""


class Probe(threading.Thread):
    """Measures query-name round trips on its own connection until stopped."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(path)
        self.buf = b""
        self._line()  # greeting
        self.sock.sendall(b'{"execute":"qmp_capabilities"}\n')
        self._reply()
        self.rtts: list[float] = []
        self.stop_flag = threading.Event()

    def _line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("daemon closed the probe connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def _reply(self) -> Any:
        while True:
            msg = orjson.loads(self._line())
            if "event" not in msg:
                return msg

    def run(self) -> None:
        while not self.stop_flag.is_set():
            t = time.perf_counter()
            self.sock.sendall(b'{"execute":"query-name"}\n')
            self._reply()
            self.rtts.append((time.perf_counter() - t) * 1000.0)
            time.sleep(0.001)

    def finish(self) -> list[float]:
        self.stop_flag.set()
        self.join()
        self.sock.close()
        return self.rtts


def summary(where: str, rtts: list[float]) -> dict[str, Any]:
    d = sorted(rtts)
    return {"where": where, "samples": len(d), "p50 ms": round(statistics.median(d), 3),
            "p99 ms": round(d[min(len(d) - 1, int(len(d) * 0.99))], 3),
            "worst ms": round(d[-1], 3)}


def migration_case(ram: str, fill: bool) -> list[dict[str, Any]]:
    """A guest migrates (its RAM all written first, or all zero); probes on both daemons."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            dst = start_qmpjobd(tmp, "--incoming", f"unix:{tmp}/mig.sock", "--guest-ram", ram,
                                name="dst.sock")
            src = start_qmpjobd(tmp, "--guest-ram", ram, "--workload-pattern", "sweep",
                                name="src.sock")
            c = EvClient(src.path)
            c.ok("migrate-set-capabilities", {"capabilities": [{"capability": "events",
                                                                "state": True}]})
            # write every page once (a sweep), then stop writing: the loop's own workload
            # must not be what the probes measure
            pages = c.ok("x-query-guest-state")["ram-size"] // 4096
            while fill:
                c.ok("x-daemon-workload", {"rate": 2_000_000})
                time.sleep(1.0)
                c.ok("x-daemon-workload", {"rate": 0})
                if c.ok("x-query-guest-state")["vclock"] >= pages:
                    break
            probes = [Probe(src.path), Probe(dst.path)]
            for p in probes:
                p.start()
            t0 = time.perf_counter()
            c.ok("migrate", {"uri": f"unix:{tmp}/mig.sock"})
            c.wait_event("MIGRATION", {"status": "completed"}, timeout=300)
            took = time.perf_counter() - t0
            what = f"migration {ram} {'written' if fill else 'zero'}"
            rows = [summary(f"{what}: source", probes[0].finish()),
                    summary(f"{what}: destination", probes[1].finish())]
            for r in rows:
                r["case seconds"] = round(took, 2)
            return rows
        finally:
            for d in STARTED:
                d.stop()
            STARTED.clear()


def colo_case(seconds: float) -> list[dict[str, Any]]:
    """COLO with about 100 MiB dirtied between two checkpoints (as benchmarks/colo_bench.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            pr = start_pair(tmp, "unix", delay=200, rate=RATE, ram="128M",
                            extra_p=("--workload-pattern", "sweep"),
                            extra_s=("--workload-rate", "0"))
            wait_checkpoints(pr.p, 3, timeout=30)
            n0 = pr.p.checkpoints()
            probes = [Probe(pr.pri.path), Probe(pr.sec.path)]
            for p in probes:
                p.start()
            time.sleep(seconds)
            rows = [summary("COLO ~100 MiB/checkpoint: primary", probes[0].finish()),
                    summary("COLO ~100 MiB/checkpoint: secondary", probes[1].finish())]
            n = pr.p.checkpoints() - n0
            for r in rows:
                r["case seconds"] = seconds
                r["checkpoints"] = n
                # the mean: start-to-start scheduling alternates long and short intervals
                r["MiB/checkpoint"] = round(RATE * seconds / max(n, 1) * 4096 / (1 << 20), 1)
            return rows
        finally:
            for d in STARTED:
                d.stop()
            STARTED.clear()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ram", default="1G", help="guest RAM of the migration case")
    ap.add_argument("--colo-seconds", type=float, default=5.0)
    ap.add_argument("--only", choices=("migration", "colo"))
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    if args.only in (None, "migration"):
        rows += migration_case(args.ram, True) + migration_case(args.ram, False)
    if args.only in (None, "colo"):
        rows += colo_case(args.colo_seconds)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()
