#!/usr/bin/env python3
"""Job benchmarks (issue 3's targets), against a qmpjobd started here with the example plug-in.

  1. backup of a 1 GiB raw file vs ``cp`` of the same file (page cache warm for both),
  2. query-jobs latency with 10,000 concluded jobs,
  3. query-version rtt p50 with 1,000 running (sleeping) jobs vs idle.

Prints one JSON object.  Run: python3 benchmarks/jobs_bench.py [--reps 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "countdown_job.py"


class Conn:
    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.buf = b""
        self.recv()
        self.cmd("qmp_capabilities")

    def recv(self) -> dict:
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return orjson.loads(line)

    def cmd(self, name: str, args: dict | None = None) -> dict:
        msg: dict = {"execute": name}
        if args:
            msg["arguments"] = args
        self.s.sendall(orjson.dumps(msg))
        while True:
            m = self.recv()
            if "event" not in m:
                return m

    def until(self, job_id: str, status: str) -> None:
        while True:
            m = self.recv()
            if m.get("event") == "JOB_STATUS_CHANGE" and m["data"] == {"id": job_id,
                                                                       "status": status}:
                return


def rtt_p50(c: Conn, n: int = 2000) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        c.cmd("query-version")
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--size-mib", type=int, default=1024)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(dir=a.dir, prefix="qmpjobd-bench-"))
    sock = str(work / "q.sock")
    # Client and daemon on separate CPUs, always the same ones: otherwise the rtt depends
    # mostly on whether the scheduler put both on one core (about 25 us) or not (about 75 us).
    pin = ["taskset", "-c", "1"] if os.cpu_count() and os.cpu_count() > 1 else []  # type: ignore[operator]
    if pin:
        os.sched_setaffinity(0, {0})
    proc = subprocess.Popen([*pin, sys.executable, "-m", "qmpjobd", "--socket", sock,
                             "--log-level", "warning", "--plugin", str(EXAMPLE)])
    out: dict = {"size_mib": a.size_mib}
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        c = Conn(sock)
        src, cp_dst, bk_dst = work / "src.img", work / "cp.img", work / "bk.img"
        with open(src, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(a.size_mib):
                f.write(block)
        c.cmd("blockdev-add", {"driver": "file", "node-name": "src", "filename": str(src)})
        cp_s, bk_s = [], []
        for rep in range(a.reps):
            for f in (cp_dst, bk_dst):
                f.unlink(missing_ok=True)
            t = time.perf_counter()
            subprocess.run(["cp", str(src), str(cp_dst)], check=True)
            subprocess.run(["sync", str(cp_dst)], check=True)
            cp_s.append(time.perf_counter() - t)
            with open(bk_dst, "wb") as f:
                f.truncate(src.stat().st_size)
            c.cmd("blockdev-add", {"driver": "file", "node-name": f"dst{rep}",
                                   "filename": str(bk_dst)})
            t = time.perf_counter()
            c.s.sendall(orjson.dumps({"execute": "blockdev-backup", "arguments": {
                "job-id": f"bk{rep}", "device": "src", "target": f"dst{rep}",
                "sync": "full"}}))
            c.until(f"bk{rep}", "null")
            bk_s.append(time.perf_counter() - t)
            c.cmd("blockdev-del", {"node-name": f"dst{rep}"})
        mib = a.size_mib
        out["cp_mib_s"] = [round(mib / s) for s in cp_s]
        out["backup_mib_s"] = [round(mib / s) for s in bk_s]
        out["backup_over_cp_median"] = round(statistics.median(
            [cs / bs for cs, bs in zip(cp_s, bk_s, strict=True)]), 2)
        for f in (src, cp_dst, bk_dst):
            f.unlink(missing_ok=True)

        idle, busy = [], []
        for rep in range(a.reps):  # alternate: idle, 1,000 running jobs (each waking 1/s)
            idle.append(rtt_p50(c, 3000))
            for i in range(1000):
                c.cmd("x-countdown", {"job-id": f"run{rep}-{i}", "steps": 1000000,
                                      "interval": 1.0})
            busy.append(rtt_p50(c, 3000))
            for i in range(1000):
                c.cmd("job-cancel", {"id": f"run{rep}-{i}"})
            while c.cmd("query-jobs")["return"]:
                time.sleep(0.05)
        out["rtt_p50_idle_us"] = [round(x, 1) for x in idle]
        out["rtt_p50_1000_jobs_us"] = [round(x, 1) for x in busy]
        out["rtt_ratio_median"] = round(statistics.median(
            [b / i for b, i in zip(busy, idle, strict=True)]), 2)
        for i in range(10000):
            c.cmd("x-countdown", {"job-id": f"done{i}", "steps": 0, "auto-dismiss": False})
        while len(c.cmd("query-jobs")["return"]) != 10000 or any(
                j["status"] != "concluded" for j in c.cmd("query-jobs")["return"]):
            time.sleep(0.05)
        samples = []
        for _ in range(20):
            t = time.perf_counter()
            r = c.cmd("query-jobs")
            samples.append(time.perf_counter() - t)
        assert len(r["return"]) == 10000
        out["query_jobs_10000_ms_median"] = round(statistics.median(samples) * 1e3, 2)
        out["query_jobs_10000_ms_max"] = round(max(samples) * 1e3, 2)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
