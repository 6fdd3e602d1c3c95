"""libvirt with qmpjobd as its emulator, against QEMU 7.2 under TCG, same libvirt, same machine.

Measures (medians of --runs, interleaved):
- libvirt's capability probe of the emulator (its ctime touched, then
  ``virsh domcapabilities --emulatorbin``; libvirtd started here logs nothing but warnings);
- the emulator's share of the probe (see probe_work);
- ``virsh start`` until the domain runs (libvirt returns once it has sent ``cont``);
- N domains on qmpjobd started at once (``--many``): the time until all run, and each
  emulator's VmRSS once they all run.

``--prompt-reaper`` runs libvirtd under a subreaper that reaps ended processes at once, as
systemd would; without it they are left to this machine's PID 1, which reaps late, and libvirt
waits for that after every probe (qmpjobd's -daemonize reaps its own daemon).

Needs root, libvirt (see tests/libvirttest.py) and qemu-system-x86_64.
Usage: python3 benchmarks/libvirt_bench.py [--runs 5] [--many 50] [--prompt-reaper]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from libvirttest import DOMAIN, EMULATOR, IMAGES, daemons, install, pid_of, virsh, why_not

from qmpjobd.address import Address
from qmpjobd.client import Client
from qmpjobd.qemu.record import PROBE

QEMU = "/usr/bin/qemu-system-x86_64"


def probe(emulator: str) -> float:
    """libvirt probes a binary again when its ctime changes (the cache is kept in memory
    too, so removing the cache file is not enough)."""
    os.utime(emulator)
    t = time.perf_counter()
    virsh("domcapabilities", "--emulatorbin", emulator, "--virttype", "qemu")
    return time.perf_counter() - t


def probe_work(emulator: str, tmp: Path) -> float:
    """The emulator's share of a probe, without libvirt: -daemonize until it returns (the
    monitor accepts), then libvirt's probe requests (qmpjobd.qemu.record.PROBE, with
    query-qmp-schema and query-commands) answered.  libvirt's own probe time adds its
    process handling, and here mostly PID 1's slow reaping of the ended probe process."""
    sock, pidfile = tmp / "probe.sock", tmp / "probe.pid"
    t = time.perf_counter()
    subprocess.run([emulator, "-S", "-no-user-config", "-nodefaults", "-nographic",
                    "-machine", "none,accel=tcg", "-qmp", f"unix:{sock},server=on,wait=off",
                    "-pidfile", str(pidfile), "-daemonize"], check=True, timeout=60)
    pid = pid_of(str(pidfile))
    try:
        with Client(Address("unix", path=str(sock)), timeout=60) as c:
            c.negotiate()
            for cmd, args in [("query-version", None), ("query-qmp-schema", None),
                              ("query-commands", None), *PROBE]:
                c.execute(cmd, args)
        return time.perf_counter() - t
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)


def define(name: str, emulator: str, tmp: Path) -> None:
    image = IMAGES / f"{name}.raw"
    image.write_bytes(b"\0" * (16 << 20))
    xml = tmp / f"{name}.xml"
    xml.write_text(DOMAIN.format(name=name, emulator=emulator, image=image))
    virsh("define", str(xml))


def start(name: str) -> float:
    t = time.perf_counter()
    virsh("start", name)
    return time.perf_counter() - t


def remove(name: str) -> None:
    virsh("destroy", name, check=False)
    virsh("undefine", name, check=False)
    (IMAGES / f"{name}.raw").unlink(missing_ok=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--many", type=int, default=50)
    ap.add_argument("--prompt-reaper", action="store_true",
                    help="run libvirtd under a subreaper that reaps its orphans at once, as "
                         "systemd does, instead of leaving them to this machine's PID 1")
    args = ap.parse_args()
    reason = why_not()
    if reason is not None:
        print(f"skipped: {reason}")
        return 1
    install()
    emulators = {"qmpjobd": str(EMULATOR), "QEMU 7.2": QEMU}
    with tempfile.TemporaryDirectory() as d, daemons(Path(d) / "libvirtd.log", debug=False,
                                                   prompt_reaper=args.prompt_reaper):
        tmp = Path(d)
        probes: dict[str, list[float]] = {k: [] for k in emulators}
        works: dict[str, list[float]] = {k: [] for k in emulators}
        starts: dict[str, list[float]] = {k: [] for k in emulators}
        for i in range(args.runs):
            for label, emulator in emulators.items():
                probes[label].append(probe(emulator))
                works[label].append(probe_work(emulator, tmp))
                name = f"bench-{'q' if emulator == QEMU else 'j'}{i}"
                define(name, emulator, tmp)
                try:
                    starts[label].append(start(name))
                finally:
                    remove(name)
        print("| measure | qmpjobd | QEMU 7.2 (TCG) | ratio |")
        print("|---|---|---|---|")
        for title, data in (("capability probe (libvirt)", probes),
                            ("probe work (start, probe requests)", works),
                            ("virsh start -> running", starts)):
            ours, qemu = statistics.median(data["qmpjobd"]), statistics.median(data["QEMU 7.2"])
            print(f"| {title} (median of {args.runs}) | {ours * 1000:.0f} ms | "
                  f"{qemu * 1000:.0f} ms | {ours / qemu:.2f} |")

        names = [f"bench-m{i}" for i in range(args.many)]
        for name in names:
            define(name, str(EMULATOR), tmp)
        try:
            t = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.many) as pool:
                list(pool.map(start, names))
            total = time.perf_counter() - t
            rss = [rss_mb(pid) for name in names
                   if (pid := pid_of(f"/run/libvirt/qemu/{name}.pid")) is not None]
            running = sum(virsh("domstate", n).stdout.strip() == "running" for n in names)
        finally:
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(remove, names))
        print(f"\n{args.many} domains on qmpjobd started at once: {running} running after "
              f"{total:.1f} s; VmRSS per emulator median {statistics.median(rss):.1f} MB, "
              f"max {max(rss):.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
