"""Memory and latency with many clients that never read (issue 9, item 15).

300 clients negotiate and then never read while one client floods events (stop/cont); a
prober measures a healthy client's query-name round trip the whole time.  Reports peak RSS,
RSS once the non-readers have closed (after 20 s), and the prober's p50/p99/max.

    python3 benchmarks/output_bound_bench.py [--clients 300] [--rounds 200] [--loop uvloop]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


class Conn:
    def __init__(self, path: str, rcvbuf: int | None = None) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.connect(path)
        self.buf = b""
        self.line()
        self.s.sendall(b'{"execute":"qmp_capabilities"}')
        self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def until(self, marker: bytes) -> None:
        while marker not in self.line():
            pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=200, help="1,000 events each")
    ap.add_argument("--loop", default="uvloop")
    ap.add_argument("--settle", type=float, default=20.0)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "b.sock")
    proc = subprocess.Popen([sys.executable, "-m", "qmpjobd", "--socket", path, "--loop",
                             a.loop, "--log-level", os.environ.get("BENCH_LOG", "error")])
    try:
        while not os.path.exists(path):
            time.sleep(0.05)
        base = rss_kb(proc.pid)
        idle = [Conn(path, rcvbuf=4096) for _ in range(a.clients)]
        flooder, prober = Conn(path), Conn(path)
        rtts: list[float] = []
        done = threading.Event()

        def probe() -> None:
            n = 0
            while not done.is_set():
                n += 1
                t = time.perf_counter()
                prober.s.sendall(b'{"execute":"query-name","id":%d}' % n)
                prober.until(b'"id":%d' % n)
                rtts.append(time.perf_counter() - t)
                time.sleep(0.005)

        th = threading.Thread(target=probe)
        th.start()
        batch = b'{"execute":"stop"}{"execute":"cont"}' * 500
        t0 = time.monotonic()
        for i in range(a.rounds):
            flooder.s.sendall(batch + b'{"execute":"query-name","id":"r%d"}' % i)
            flooder.until(b'"id":"r%d"' % i)
        flood_s = time.monotonic() - t0
        done.set()
        th.join()
        peak = rss_kb(proc.pid, "VmHWM")
        for c in idle:
            c.s.close()
        time.sleep(a.settle)
        after = rss_kb(proc.pid)
        rtts.sort()
        p99 = rtts[int(len(rtts) * 0.99)] * 1e3
        print(f"loop {a.loop}, {a.clients} non-reading clients, {a.rounds * 1000} events "
              f"in {flood_s:.1f} s")
        print(f"| baseline RSS MB | peak RSS MB | RSS {a.settle:.0f} s after close MB "
              "| healthy rtt p50 / p99 / max ms |")
        print("|---|---|---|---|")
        print(f"| {base / 1024:.1f} | {peak / 1024:.1f} | {after / 1024:.1f} | "
              f"{statistics.median(rtts) * 1e3:.2f} / {p99:.2f} / {rtts[-1] * 1e3:.2f} |")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
