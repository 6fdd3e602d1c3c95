#!/usr/bin/env python3
"""Backup and mirror of a 1 GiB raw disk while the emulated guest writes 20 MiB/s, against
``cp`` of the same file, and the guest's write latency during each job against no job.

Each job runs in a fresh ``qmpjobd-system-x86_64`` from this checkout: a raw disk (file node
``src-file``, raw node ``src``) on a ``virtio-blk-pci`` device ``virtio-disk0``, and a 1 GiB
target (``tgt``) created empty (sparse) just before.  The guest is ``x-daemon-disk-workload``:
4 KiB blocks, random offsets over the whole disk, --rate (20 MiB/s).  Per repetition, in an
order that rotates:

- ``cp --sparse=never`` of the source (page cache warm), and the ``sync`` of the copy after
  it (timed apart: cp alone is the baseline, cp + sync the baseline with the data on disk);
- ``blockdev-backup`` sync=full: the workload runs --idle-seconds without a job first (the
  idle latency), then the time from the command to BLOCK_JOB_COMPLETED;
- ``blockdev-mirror`` sync=full: idle as above, then the command until BLOCK_JOB_READY,
  ``job-complete``, until BLOCK_JOB_COMPLETED (the mirror fdatasyncs its target before READY
  and at the end, as QEMU's does; the backup leaves that flush to the background).

Throughput is size / time.  The write latency comes from inside the daemon: x-query-disk-
workload reports counts only, so the daemon is started through this script (``--daemon``),
which wraps the workload's node (DiskWorkload.node_of, called in the workload's worker
thread) in a proxy that times each BlockNode.pwrite, the exact call the guest's writes make
(copy-before-write, mirror's dirty tracking and its final freeze all happen inside it).  Two
figures per write:
- *service*: how long the pwrite call took;
- *lateness*: its completion time minus the moment the workload's schedule made it due
  (start + (n + 1) * block / rate).  It includes the workload's 10 ms batching tick (so idle
  it is about 0-10 ms), plus any stall of the event loop or the worker pool before a batch.
The samples go back over a side Unix socket.  No qmpjobd file is changed.

Usage: python3 benchmarks/blockjob_bench.py [--reps 3] [--dir /var/tmp] [--quick] [--out FILE]
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
import threading
import time
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
DEVICE = "virtio-disk0"
KINDS = ("cp", "backup", "mirror", "backup-quiet", "mirror-quiet")
"""cp; the jobs with the guest writing; the jobs without it (for comparison)."""

# -- the daemon side (``--daemon SAMPLE_SOCKET -- QEMU ARGS``) ------------------------------------

_SAMPLES: list[list[tuple[int, int]]] = [[]]
"""(service ns, lateness ns) per guest write since the last fetch."""


def _instrument() -> None:
    """Time every pwrite of every disk workload; nothing else changes."""
    from qmpjobd.block import workload as wl

    class TimedNode:
        __slots__ = ("_node", "_work")

        def __init__(self, node: Any, work: Any) -> None:
            self._node, self._work = node, work

        def __getattr__(self, name: str) -> Any:
            return getattr(self._node, name)

        def pwrite(self, offset: int, data: bytes, event: bool = False) -> None:
            t = time.monotonic_ns()
            self._node.pwrite(offset, data, event)
            end = time.monotonic_ns()
            work = self._work
            k = work._bench_k
            work._bench_k = k + 1
            due = work._bench_t0 + (k + 1) * work.block * 1_000_000_000 // work.rate
            _SAMPLES[0].append((end - t, end - due))

    init, start = wl.DiskWorkload.__init__, wl.DiskWorkload.start

    def new_init(self: Any, device: str, node_of: Any, args: dict[str, Any]) -> None:
        init(self, device, lambda: cast(Any, TimedNode(node_of(), self)), args)

    def new_start(self: Any) -> None:
        self._bench_t0, self._bench_k = time.monotonic_ns(), 0  # _run's start, to < 1 ms
        start(self)

    wl.DiskWorkload.__init__ = new_init  # type: ignore[method-assign]
    wl.DiskWorkload.start = new_start  # type: ignore[method-assign]


def _serve_samples(path: str) -> None:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(4)

    def loop() -> None:
        while True:
            conn, _ = srv.accept()
            taken, _SAMPLES[0] = _SAMPLES[0], []
            with conn:
                conn.sendall(json.dumps(taken).encode())

    threading.Thread(target=loop, daemon=True, name="bench samples").start()


def daemon(sample_sock: str, qemu_args: list[str]) -> int:
    sys.path.insert(0, str(REPO))
    _instrument()
    _serve_samples(sample_sock)
    from qmpjobd.qemu.main import main as qemu_main
    return qemu_main(["qmpjobd-system-x86_64", *qemu_args])


# -- the driver ------------------------------------------------------------------------------


def make_image(path: Path, size_mib: int) -> None:
    """Non-zero pseudo-random data, no two MiB alike, fsync'd."""
    block = bytearray(os.urandom(MiB))
    with open(path, "wb") as f:
        for i in range(size_mib):
            block[:8] = (i + 1).to_bytes(8, "little")
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


class Qmp:
    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile("rwb")
        self.f.readline()
        self.events: list[dict[str, Any]] = []
        self.cmd("qmp_capabilities")

    def send(self, name: str, args: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()

    def _next(self) -> dict[str, Any]:
        line = self.f.readline()
        if not line:
            raise SystemExit("the daemon closed its monitor")
        return cast(dict[str, Any], json.loads(line))

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> Any:
        self.send(name, args)
        while True:
            m = self._next()
            if "event" in m:
                self.events.append(m)
                continue
            if "error" in m:
                raise SystemExit(f"{name}: {m['error']}")
            return m["return"]

    def event(self, name: str) -> dict[str, Any]:
        for i, m in enumerate(self.events):
            if m["event"] == name:
                return self.events.pop(i)
        while True:
            m = self._next()
            if m.get("event") == name:
                return m
            if "event" in m:
                self.events.append(m)

    def close(self) -> None:
        self.f.close()
        self.s.close()


class Vm:
    """qmpjobd-system-x86_64 with the disk on a device and an empty target, started through
    this script so that the guest's writes are timed."""

    def __init__(self, work: Path, src: Path, tgt: Path) -> None:
        self.qmp_sock, self.sample_sock = str(work / "vm.sock"), str(work / "samples.sock")
        for p in (self.qmp_sock, self.sample_sock):
            Path(p).unlink(missing_ok=True)

        def node(**o: Any) -> list[str]:
            return ["-blockdev", json.dumps(o)]

        args = ["-M", "pc", "-accel", "tcg", "-nodefaults", "-display", "none", "-m", "64",
                *node(driver="file", filename=str(src), **{"node-name": "src-file"}),
                *node(driver="raw", file="src-file", **{"node-name": "src"}),
                "-device", json.dumps({"driver": "virtio-blk-pci", "drive": "src",
                                       "id": DEVICE}),
                *node(driver="file", filename=str(tgt), **{"node-name": "tgt-file"}),
                *node(driver="raw", file="tgt-file", **{"node-name": "tgt"}),
                "-qmp", f"unix:{self.qmp_sock},server=on,wait=off"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--daemon",
                                      self.sample_sock, "--", *args], cwd=REPO, env=env)
        for _ in range(400):
            if os.path.exists(self.qmp_sock) and os.path.exists(self.sample_sock):
                break
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon exited with {self.proc.returncode}")
            time.sleep(0.025)
        self.qmp = Qmp(self.qmp_sock)

    def samples(self) -> list[tuple[int, int]]:
        """The writes timed since the last call."""
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.sample_sock)
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
        s.close()
        return [(a, b) for a, b in json.loads(data)]

    def workload(self, rate: int) -> None:
        self.qmp.cmd("x-daemon-disk-workload", {"device": DEVICE, "rate": rate,
                                                "block-size": 4096, "pattern": "random"})

    def written(self) -> int:
        return sum(w["bytes"] for w in self.qmp.cmd("x-query-disk-workload"))

    def stop(self) -> None:
        self.qmp.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


def lat_stats(samples: list[tuple[int, int]], seconds: float) -> dict[str, float]:
    service = [a / 1e6 for a, _ in samples]
    late = [b / 1e6 for _, b in samples]
    return {"n": len(samples), "service_p50": pct(service, 50), "service_p99": pct(service, 99),
            "service_max": max(service, default=float("nan")),
            "service_mean": statistics.fmean(service) if service else float("nan"),
            "writer_busy": sum(service) / 1e3 / seconds,
            "late_p50": pct(late, 50), "late_p99": pct(late, 99),
            "late_max": max(late, default=float("nan"))}


def run_cp(src: Path, dst: Path) -> dict[str, Any]:
    dst.unlink(missing_ok=True)
    t = time.perf_counter()
    subprocess.run(["cp", "--sparse=never", str(src), str(dst)], check=True)
    cp_s = time.perf_counter() - t
    subprocess.run(["sync", str(dst)], check=True)
    sync_s = time.perf_counter() - t
    dst.unlink()
    return {"kind": "cp", "seconds": cp_s, "seconds_with_sync": sync_s}


def run_job(kind: str, work: Path, src: Path, tgt: Path, size: int, a: argparse.Namespace
            ) -> dict[str, Any]:
    tgt.unlink(missing_ok=True)
    with open(tgt, "wb") as f:
        f.truncate(size)
    vm = Vm(work, src, tgt)
    guest = not kind.endswith("-quiet")
    try:
        if guest:
            vm.workload(a.rate)
            time.sleep(0.5)  # warm-up: the pool's threads exist, the first batches are out
            vm.samples()
            time.sleep(a.idle_seconds)
        idle = vm.samples()
        w0 = vm.written()
        t = time.perf_counter()
        row: dict[str, Any] = {"kind": kind}
        if kind.startswith("backup"):
            vm.qmp.cmd("blockdev-backup", {"job-id": "j", "device": "src", "target": "tgt",
                                           "sync": "full"})
        else:
            vm.qmp.cmd("blockdev-mirror", {"job-id": "j", "device": "src", "target": "tgt",
                                           "sync": "full"})
            vm.qmp.event("BLOCK_JOB_READY")
            row["seconds_ready"] = time.perf_counter() - t
            vm.qmp.cmd("job-complete", {"id": "j"})
        done = vm.qmp.event("BLOCK_JOB_COMPLETED")
        row["seconds"] = time.perf_counter() - t
        during = vm.samples()
        row["written_mib_s"] = (vm.written() - w0) / MiB / row["seconds"]
        if "error" in done["data"]:
            raise SystemExit(f"{kind} failed: {done['data']['error']}")
        if guest:
            vm.workload(0)
            row["idle"] = lat_stats(idle, a.idle_seconds)
            row["job"] = lat_stats(during, row["seconds"])
        return row
    finally:
        vm.stop()
        tgt.unlink(missing_ok=True)


def med(vals: list[float], digits: int = 0) -> str:
    vals = [v for v in vals if v == v]
    if not vals:
        return "-"

    def f(v: float) -> str:
        return f"{v:,.{digits}f}"

    text = f(statistics.median(vals))
    return text + (f" ({f(min(vals))}..{f(max(vals))})" if len(vals) > 1 else "")


def tables(rows: list[dict[str, Any]], a: argparse.Namespace, size_mib: int) -> str:
    by: dict[str, dict[int, dict[str, Any]]] = {k: {} for k in KINDS}
    for r in rows:
        by[r["kind"]][r["rep"]] = r

    def rate(kind: str, key: str = "seconds") -> dict[int, float]:
        return {i: size_mib / r[key] for i, r in by[kind].items() if key in r}

    cp, cps = rate("cp"), rate("cp", "seconds_with_sync")

    def ratio(x: dict[int, float], base: dict[int, float]) -> str:
        rs = [x[i] / base[i] for i in sorted(set(x) & set(base))]
        return f"{statistics.median(rs):.2f}" if rs else "-"

    out = [f"{len(by['cp'])} repetition(s), {size_mib} MiB raw disk (page cache warm), guest "
           f"writing {a.rate / MiB:g} MiB/s of random 4 KiB blocks during the jobs; medians "
           "(min..max), ratios = median of per-repetition ratios.", "",
           "| copy | MiB/s | seconds | / cp (goal ≥ 0.8) | / (cp + sync) | guest MiB/s written "
           "meanwhile |", "|---|---|---|---|---|---|"]
    lines = [("cp --sparse=never", cp, "seconds", "cp"),
             ("cp --sparse=never, then sync", cps, "seconds_with_sync", "cp"),
             ("blockdev-backup sync=full → COMPLETED", rate("backup"), "seconds", "backup"),
             ("blockdev-mirror sync=full → READY", rate("mirror", "seconds_ready"),
              "seconds_ready", "mirror"),
             ("blockdev-mirror → READY → job-complete → COMPLETED", rate("mirror"), "seconds",
              "mirror"),
             ("backup, guest not writing", rate("backup-quiet"), "seconds", "backup-quiet"),
             ("mirror → READY, guest not writing", rate("mirror-quiet", "seconds_ready"),
              "seconds_ready", "mirror-quiet"),
             ("mirror → COMPLETED, guest not writing", rate("mirror-quiet"), "seconds",
              "mirror-quiet")]
    lines = [x for x in lines if by[x[3]]]
    for title, mib_s, key, kind in lines:
        secs = [x[key] for x in by[kind].values() if key in x]
        guest = [x["written_mib_s"] for x in by[kind].values() if "written_mib_s" in x]
        out.append(f"| {title} | {med(list(mib_s.values()))} | {med(secs, 2)} | "
                   f"{ratio(mib_s, cp) if kind != 'cp' else '-'} | "
                   f"{ratio(mib_s, cps) if kind != 'cp' else '-'} | {med(guest, 1)} |")
    out += ["", "Guest write latency, ms (pwrite of each 4 KiB write, timed in the daemon; "
            "idle = the same daemon just before its job):", "",
            "| per write | idle (before backup) | during backup | backup / idle "
            "(goal ≤ 2) | idle (before mirror) | during mirror | mirror / idle |",
            "|---|---|---|---|---|---|---|"]
    for title, key in (("service p50", "service_p50"), ("service p99", "service_p99"),
                       ("service max", "service_max"), ("service mean", "service_mean"),
                       ("writer thread busy (share of time, not ms)", "writer_busy"),
                       ("lateness p50", "late_p50"),
                       ("lateness p99", "late_p99"), ("lateness max", "late_max")):
        cells = [title]
        for kind in ("backup", "mirror"):
            rs = by[kind].values()
            idle = [r["idle"][key] for r in rs]
            job = [r["job"][key] for r in rs]
            ratios = [r["job"][key] / r["idle"][key] for r in rs if r["idle"][key]]
            cells += [med(idle, 3), med(job, 3),
                      f"{statistics.median(ratios):.2f}" if ratios else "-"]
        out.append("| " + " | ".join(cells) + " |")
    n_idle = sum(r["idle"]["n"] for k in ("backup", "mirror") for r in by[k].values())
    n_job = sum(r["job"]["n"] for k in ("backup", "mirror") for r in by[k].values())
    out += ["", f"Writes timed: {n_idle:,} idle, {n_job:,} during jobs."]
    return "\n".join(out) + "\n"


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--daemon":
        rest = sys.argv[3:]
        return daemon(sys.argv[2], rest[1:] if rest[:1] == ["--"] else rest)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3, quick 1)")
    ap.add_argument("--size-mib", type=int, default=None,
                    help="disk size in MiB (default 1024, quick 64)")
    ap.add_argument("--rate", type=int, default=20 * MiB,
                    help="guest write rate, bytes/s (default 20 MiB/s)")
    ap.add_argument("--idle-seconds", type=float, default=None,
                    help="workload without a job before each job (default 3, quick 0.5)")
    ap.add_argument("--dir", default="/var/tmp", help="where the images go (default /var/tmp)")
    ap.add_argument("--no-quiet", dest="quiet", action="store_false",
                    help="skip the backup and mirror runs without guest writes")
    ap.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    ap.add_argument("--out", default=None, help="append one JSON line per run to this file")
    a = ap.parse_args()
    reps = a.reps or (1 if a.quick else 3)
    size_mib = a.size_mib or (64 if a.quick else 1024)
    if a.idle_seconds is None:
        a.idle_seconds = 0.5 if a.quick else 3.0
    work = Path(tempfile.mkdtemp(dir=a.dir, prefix="qmpjobd-blockjob-bench-"))
    src, tgt, cp_dst = work / "disk.raw", work / "target.raw", work / "cp.raw"
    rows: list[dict[str, Any]] = []
    try:
        make_image(src, size_mib)
        subprocess.run(["sync"], check=True)
        kinds = [k for k in KINDS if a.quiet or not k.endswith("-quiet")]
        for rep in range(reps):
            for kind in kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]:
                if kind == "cp":
                    row = run_cp(src, cp_dst)
                else:
                    row = run_job(kind, work, src, tgt, size_mib * MiB, a)
                row["rep"] = rep
                rows.append(row)
                if os.environ.get("VERBOSE"):
                    print(json.dumps(row), file=sys.stderr)
                subprocess.run(["sync"], check=True)  # no writeback left for the next run
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.out:
        with open(a.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print(tables(rows, a, size_mib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
