#!/usr/bin/env python3
"""NBD read throughput: qmpjobd's NBD server (block-export-add of a raw node over a file node)
against qemu-nbd serving the same file read-only, with the same clients, interleaved.

A raw image of --size-mib (1 GiB) is written once with non-zero data (a random MiB, each MiB
carrying its own number, so no two MiB are alike) and fsync'd; both servers then read it from
the page cache (it is not dropped: warm for both, so this measures the servers, not the disk).

Clients, each reading the whole export once per run:
- ``qemu-img convert`` into a ``null-co`` target (``-n --target-image-opts``): nothing is
  written, the read path alone;
- ``qemu-img convert`` into a raw file (``-O raw``, removed after each run): the end-to-end
  copy, mostly the page-cache write of the output;
- ``nbdcopy URI null:`` as it comes (several connections when the server advertises
  multi-conn; both do, qemu-nbd runs with ``-e 8`` so that it accepts them);
- ``nbdcopy -C 1 URI null:``: one connection.

Per run: MiB/s of the client, and the CPU time (utime + stime of /proc/PID/stat, all
threads) each server spent per GiB read.  Every repetition runs each client against both
servers, the server order alternating; the tables show medians over repetitions with
min..max, and ratios as the median of per-repetition ratios.  The first repetition's file
copies are compared with the source (``cmp``).

Needs qemu-img, qemu-nbd and nbdcopy (libnbd-bin).  The daemon is run from this checkout.
Usage: python3 benchmarks/nbd_bench.py [--reps 5] [--dir /var/tmp] [--quick] [--out FILE]
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
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")
SERVERS = ("qmpjobd", "qemu-nbd")
CLIENTS = {
    "convert-null": "qemu-img convert → null-co",
    "convert-file": "qemu-img convert → raw file",
    "nbdcopy": "nbdcopy → null: (multi-conn)",
    "nbdcopy-1": "nbdcopy -C 1 → null:",
}


def make_image(path: Path, size_mib: int) -> None:
    """Non-zero pseudo-random data: one random MiB, each copy stamped with its index at
    both ends (so no two MiB are equal and nothing reads as zero), then fsync."""
    block = bytearray(os.urandom(MiB))
    with open(path, "wb") as f:
        for i in range(size_mib):
            block[:8] = (i + 1).to_bytes(8, "little")
            block[-8:] = ((i + 1) * 0x9E3779B97F4A7C15 & (1 << 64) - 1).to_bytes(8, "little")
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_for(path: str, proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(400):
        if os.path.exists(path):
            return
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before listening")
        time.sleep(0.025)
    raise SystemExit(f"{what} did not create {path}")


class Qmp:
    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile("rwb")
        self.f.readline()  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> Any:
        msg: dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            reply = json.loads(self.f.readline())
            if "event" in reply:
                continue
            if "error" in reply:
                raise SystemExit(f"{name}: {reply['error']}")
            return reply["return"]

    def close(self) -> None:
        self.f.close()
        self.s.close()


class Server:
    """One NBD server process serving ``image`` as export ``disk`` on a Unix socket."""

    def __init__(self, name: str, work: Path, image: Path) -> None:
        self.name = name
        self.nbd_sock = str(work / f"{name}.nbd")
        self.qmp: Qmp | None = None
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
        if name == "qmpjobd":
            qmp_sock = str(work / "qmp.sock")
            self.proc = subprocess.Popen([sys.executable, "-m", "qmpjobd", "--socket",
                                          qmp_sock, "--log-level", "warning"],
                                         cwd=REPO, env=env)
            wait_for(qmp_sock, self.proc, "qmpjobd")
            self.qmp = Qmp(qmp_sock)
            self.qmp.cmd("blockdev-add", {"driver": "file", "filename": str(image),
                                          "node-name": "f0"})
            self.qmp.cmd("blockdev-add", {"driver": "raw", "file": "f0", "node-name": "r0"})
            self.qmp.cmd("nbd-server-start", {"addr": {"type": "unix",
                                                       "data": {"path": self.nbd_sock}}})
            self.qmp.cmd("block-export-add", {"type": "nbd", "id": "e", "node-name": "r0",
                                              "name": "disk"})
        else:
            self.proc = subprocess.Popen(["qemu-nbd", "-f", "raw", "-r", "-t", "-e", "8",
                                          "-x", "disk", "-k", self.nbd_sock, str(image)])
            wait_for(self.nbd_sock, self.proc, "qemu-nbd")
        self.uri = f"nbd+unix:///disk?socket={self.nbd_sock}"

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.qmp is not None:
            self.qmp.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def client_argv(client: str, uri: str, size: int, out: Path) -> list[str]:
    if client == "convert-null":
        return ["qemu-img", "convert", "-n", "-f", "raw", uri, "--target-image-opts",
                f"driver=null-co,size={size}"]
    if client == "convert-file":
        return ["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(out)]
    if client == "nbdcopy":
        return ["nbdcopy", uri, "null:"]
    return ["nbdcopy", "-C", "1", uri, "null:"]


def run_one(server: Server, client: str, size: int, out: Path, image: Path,
            check: bool) -> dict[str, Any]:
    out.unlink(missing_ok=True)
    argv = client_argv(client, server.uri, size, out)
    cpu0 = server.cpu()
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t
    cpu = server.cpu() - cpu0
    row: dict[str, Any] = {"server": server.name, "client": client, "seconds": elapsed,
                           "mib_s": size / MiB / elapsed,
                           "cpu_s_per_gib": cpu / (size / (1 << 30))}
    if check and client == "convert-file":
        row["same"] = subprocess.run(["cmp", "-s", str(image), str(out)]).returncode == 0
        if not row["same"]:
            raise SystemExit(f"{server.name}: the copy differs from the image")
    out.unlink(missing_ok=True)
    return row


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"


def cell(vals: list[float]) -> str:
    if not vals:
        return "-"
    text = fmt(statistics.median(vals))
    return text + (f" ({fmt(min(vals))}..{fmt(max(vals))})" if len(vals) > 1 else "")


def table(rows: list[dict[str, Any]], reps: int, size_mib: int, clients: list[str]) -> str:
    head = ["client", "qmpjobd MiB/s", "qemu-nbd MiB/s", "qmpjobd / qemu-nbd (goal ≥ 0.8)",
            "qmpjobd CPU s/GiB", "qemu-nbd CPU s/GiB"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for client in clients:
        by: dict[str, dict[int, dict[str, Any]]] = {s: {} for s in SERVERS}
        for r in rows:
            if r["client"] == client:
                by[r["server"]][r["rep"]] = r
        ratios = [by["qmpjobd"][i]["mib_s"] / by["qemu-nbd"][i]["mib_s"]
                  for i in sorted(set(by["qmpjobd"]) & set(by["qemu-nbd"]))]
        out.append("| " + " | ".join([
            CLIENTS[client],
            cell([r["mib_s"] for r in by["qmpjobd"].values()]),
            cell([r["mib_s"] for r in by["qemu-nbd"].values()]),
            f"{statistics.median(ratios):.2f}" if ratios else "-",
            cell([r["cpu_s_per_gib"] for r in by["qmpjobd"].values()]),
            cell([r["cpu_s_per_gib"] for r in by["qemu-nbd"].values()]),
        ]) + " |")
    return (f"{reps} repetition(s), {size_mib} MiB image (page cache warm), servers "
            f"alternating; medians (min..max), ratio = median of per-repetition ratios.\n\n"
            + "\n".join(out) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5, quick 2)")
    ap.add_argument("--size-mib", type=int, default=None,
                    help="image size in MiB (default 1024, quick 64)")
    ap.add_argument("--dir", default="/var/tmp", help="where the images go (default /var/tmp)")
    ap.add_argument("--clients", default=",".join(CLIENTS),
                    help=f"comma-separated subset of {', '.join(CLIENTS)}")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 64 MiB, 2 repetitions")
    ap.add_argument("--out", default=None, help="append one JSON line per run to this file")
    a = ap.parse_args()
    reps = a.reps or (2 if a.quick else 5)
    size_mib = a.size_mib or (64 if a.quick else 1024)
    clients = [c for c in a.clients.split(",") if c]
    if bad := [c for c in clients if c not in CLIENTS]:
        ap.error(f"unknown client: {', '.join(bad)}")
    for tool in ("qemu-img", "qemu-nbd", "nbdcopy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"nbd_bench: needs {tool}")
    work = Path(tempfile.mkdtemp(dir=a.dir, prefix="qmpjobd-nbd-bench-"))
    image, out = work / "image.raw", work / "out.raw"
    servers: list[Server] = []
    rows: list[dict[str, Any]] = []
    try:
        make_image(image, size_mib)
        size = size_mib * MiB
        servers = [Server(name, work, image) for name in SERVERS]
        for s in servers:  # warm-up: both read the file once (and it is in the page cache)
            run_one(s, "convert-null", size, out, image, False)
        for rep in range(reps):
            order = servers if rep % 2 == 0 else servers[::-1]
            for client in clients:
                for s in order:
                    row = run_one(s, client, size, out, image, rep == 0) | {"rep": rep}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr) if os.environ.get("VERBOSE") \
                        else None
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)
    if a.out:
        with open(a.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print(table(rows, reps, size_mib, clients))
    return 0


if __name__ == "__main__":
    sys.exit(main())
