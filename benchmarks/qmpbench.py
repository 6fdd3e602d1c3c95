"""qmpjobd's benchmark harness: qmpjobd, QEMU 7.2 and a floor server (benchmarks/floor.py, no
parsing at all) measured interleaved on this machine, with ratios per repetition.

    python3 benchmarks/qmpbench.py [--reps N] [--quick] [--modes rtt,...] [--servers ...]

Modes (the same requests go to every server):
  rtt        one client, sequential query-version round trips: p50 / p99, server CPU each
  pipeline   one client, DEPTH query-version requests in flight: requests/s, server CPU each
  handshake  connect, greeting, qmp_capabilities, close, again: connections/s
  clients    C clients at once, each doing round trips for T seconds: p99, requests/s
  fanout     C idle subscribers; a driver sends stop/cont: p99 of the time until the last
             subscriber has the STOP/RESUME event
QEMU serves one client per monitor, so the many-client modes run against a QEMU with C + 2
monitors; the one-client modes against a QEMU with one (its rtt grows with the monitors).
Each run appends a JSON line to --out; the tables (medians over repetitions, ratios as the
median of per-repetition ratios) go to stdout as markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODES = ("rtt", "pipeline", "handshake", "clients", "fanout")
SERVERS = ("qemu", "floor", "qmpjobd")
SIZES = {
    "full": {"rtt": 20000, "pipeline": 100000, "depth": 64, "handshake": 2000,
             "clients": 50, "seconds": 5.0, "fanout": 500},
    "quick": {"rtt": 200, "pipeline": 2000, "depth": 16, "handshake": 50,
              "clients": 4, "seconds": 0.3, "fanout": 20},
}
REQ = b'{"execute":"query-version","id":%d}\n'
CAPS = b'{"execute":"qmp_capabilities"}\n'

# -- servers ---------------------------------------------------------------------------------


class Server:
    """A server process listening on one or more Unix sockets."""

    def __init__(self, name: str, argv: list[str], paths: list[str]) -> None:
        self.name, self.paths = name, paths
        self.log = os.path.join(os.path.dirname(paths[0]), f"{name}.log")
        with open(self.log, "wb") as log:  # a file, not a pipe nobody drains
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        for path in paths:
            while not self._listening(path):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"qmpbench: {name} did not start on {path}: "
                                     f"{self.log_text()}")
                time.sleep(0.02)

    def log_text(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-2000:]

    @staticmethod
    def _listening(path: str) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(path)
            except OSError:
                return False
            return True

    def cpu_ns(self) -> int:
        """CPU time of all the server's threads so far (schedstat: nanoseconds)."""
        total = 0
        for f in glob.glob(f"/proc/{self.proc.pid}/task/*/schedstat"):
            with contextlib.suppress(OSError), open(f) as fh:
                total += int(fh.read().split()[0])
        return total

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1000
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(kind: str, tmp: str, monitors: int = 1) -> Server:
    """``qemu`` (with ``monitors`` QMP monitors), ``floor`` or ``qmpjobd``."""
    if kind == "qemu":
        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            raise SystemExit("qmpbench: qemu-system-x86_64 is not installed "
                             "(apt-get install qemu-system-x86), or leave out --servers qemu")
        paths = [f"{tmp}/qemu{monitors}-{i}.sock" for i in range(monitors)]
        argv = [qemu, "-M", "none", "-nodefaults", "-display", "none"]
        for p in paths:
            argv += ["-qmp", f"unix:{p},server=on,wait=off"]
        return Server(f"qemu{monitors}", argv, paths)
    path = f"{tmp}/{kind}.sock"
    if kind == "floor":
        return Server(kind, [sys.executable, os.path.join(HERE, "floor.py"), path], [path])
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + env_path if env_path else "")
    return Server(kind, [sys.executable, "-m", "qmpjobd", "--socket", path,
                         "--log-level", "warning"], [path])

# -- the client ------------------------------------------------------------------------------


class Conn:
    """A negotiated QMP connection (asyncio streams)."""

    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w = r, w

    @classmethod
    async def open(cls, path: str) -> Conn:
        r, w = await asyncio.open_unix_connection(path, limit=1 << 24)
        c = cls(r, w)
        greeting = await c.line()
        if b'"QMP"' not in greeting:
            raise RuntimeError(f"{path}: no QMP greeting")
        c.w.write(CAPS)
        await c.reply()
        return c

    async def line(self) -> bytes:
        return await self.r.readuntil(b"\n")  # no per-read timeout: run_mode has one

    async def reply(self) -> bytes:
        """The next line that is not an event."""
        while True:
            line = await self.line()
            if b'"event"' not in line:
                return line

    def close(self) -> None:
        self.w.close()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def rtt(paths: list[str], size: dict[str, Any]) -> dict[str, float]:
    c = await Conn.open(paths[0])
    lat = []
    clock = time.perf_counter
    for i in range(size["rtt"]):
        t0 = clock()
        c.w.write(REQ % i)
        await c.reply()
        lat.append(clock() - t0)
    c.close()
    return {"p50_us": pct(lat, 0.5) * 1e6, "p99_us": pct(lat, 0.99) * 1e6,
            "ops": size["rtt"]}


async def pipeline(paths: list[str], size: dict[str, Any]) -> dict[str, float]:
    """Keeps ``depth`` requests in flight: each batch of replies read is refilled at once."""
    c = await Conn.open(paths[0])
    n, depth = size["pipeline"], size["depth"]
    t0 = time.perf_counter()
    sent = min(depth, n)
    c.w.write(b"".join(REQ % i for i in range(sent)))
    done = 0
    while done < n:
        chunk = await c.r.read(1 << 16)
        if not chunk:
            raise RuntimeError("connection closed during the pipeline")
        got = chunk.count(b"\n")  # one reply per line: nothing here triggers events
        done += got
        more = min(got, n - sent)
        if more:
            c.w.write(b"".join(REQ % i for i in range(sent, sent + more)))
            sent += more
    elapsed = time.perf_counter() - t0
    c.close()
    return {"req_s": n / elapsed, "ops": n}


async def handshake(paths: list[str], size: dict[str, Any]) -> dict[str, float]:
    n = size["handshake"]
    t0 = time.perf_counter()
    for _ in range(n):
        c = await Conn.open(paths[0])
        c.close()
        await c.w.wait_closed()
    return {"conn_s": n / (time.perf_counter() - t0), "ops": n}


async def clients(paths: list[str], size: dict[str, Any]) -> dict[str, float]:
    conns = [await Conn.open(paths[i % len(paths)]) for i in range(size["clients"])]
    deadline = time.perf_counter() + size["seconds"]
    lat: list[float] = []

    async def one(c: Conn) -> None:
        clock, i = time.perf_counter, 0
        while clock() < deadline:
            t0 = clock()
            c.w.write(REQ % i)
            await c.reply()
            lat.append(clock() - t0)
            i += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    return {"p99_us": pct(lat, 0.99) * 1e6, "req_s": len(lat) / elapsed, "ops": len(lat)}


async def fanout(paths: list[str], size: dict[str, Any]) -> dict[str, float]:
    driver = await Conn.open(paths[0])
    subs = [await Conn.open(paths[1 + i % (len(paths) - 1)] if len(paths) > 1 else paths[0])
            for i in range(size["clients"])]
    arrivals: list[float] = []
    all_in = asyncio.Event()

    async def listen(c: Conn) -> None:
        while True:
            line = await c.r.readuntil(b"\n")
            if b'"event"' in line:
                arrivals.append(time.perf_counter())
                if len(arrivals) == len(subs):
                    all_in.set()

    tasks = [asyncio.create_task(listen(c)) for c in subs]
    lat = []
    try:
        for i in range(size["fanout"]):
            arrivals.clear()
            all_in.clear()
            t0 = time.perf_counter()
            driver.w.write(b'{"execute":"%s","id":%d}\n' % (b"cont" if i % 2 else b"stop", i))
            await driver.reply()
            await all_in.wait()
            lat.append(max(arrivals) - t0)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for c in [driver, *subs]:
        c.close()
    return {"p99_us": pct(lat, 0.99) * 1e6, "ops": size["fanout"]}


RUNNERS: dict[str, Callable[[list[str], dict[str, Any]], Coroutine[Any, Any, dict[str, float]]]]
RUNNERS = {"rtt": rtt, "pipeline": pipeline, "handshake": handshake, "clients": clients,
           "fanout": fanout}

async def run_mode(mode: str, srv: Server, size: dict[str, Any]) -> dict[str, float]:
    """One mode against one server, within a time limit (a stuck server fails the run)."""
    limit = 300.0 if size["rtt"] >= SIZES["full"]["rtt"] else 60.0
    try:
        return await asyncio.wait_for(RUNNERS[mode](srv.paths, size), limit)
    except Exception as e:
        why = f"took over {limit} s" if isinstance(e, TimeoutError) else repr(e)
        raise SystemExit(f"qmpbench: {mode} against {srv.name} failed: {why}; its log: "
                         f"{srv.log_text() or '(empty)'}") from None

# -- the suite -------------------------------------------------------------------------------

MEASURES = [  # (title, mode, key, unit, higher is better)
    ("rtt p50, query-version", "rtt", "p50_us", "µs", False),
    ("rtt p99", "rtt", "p99_us", "µs", False),
    ("server CPU per request (rtt)", "rtt", "cpu_us", "µs", False),
    ("pipelined requests/s, depth {depth}", "pipeline", "req_s", "/s", True),
    ("server CPU per request (pipeline)", "pipeline", "cpu_us", "µs", False),
    ("handshakes/s", "handshake", "conn_s", "/s", True),
    ("{clients} clients at once, p99", "clients", "p99_us", "µs", False),
    ("{clients} clients at once, requests/s", "clients", "req_s", "/s", True),
    ("fan-out to {clients}, last subscriber p99", "fanout", "p99_us", "µs", False),
    ("VmRSS idle", "idle", "rss_mb", "MB", False),
]


def run_suite(args: argparse.Namespace) -> list[dict[str, Any]]:
    size = args.size
    rows: list[dict[str, Any]] = []
    run_id = time.strftime("%Y%m%dT%H%M%S")
    with tempfile.TemporaryDirectory(prefix="qmpbench-") as tmp:
        single = {k: start(k, tmp) for k in args.servers}
        many = {k: (start("qemu", tmp, int(size["clients"]) + 2) if k == "qemu" else single[k])
                for k in args.servers} if {"clients", "fanout"} & set(args.modes) else {}
        try:
            for k, srv in single.items():  # idle RSS after one handshake
                asyncio.run(handshake(srv.paths, {"handshake": 1}))
                rows.append({"run": run_id, "rep": 0, "mode": "idle", "server": k,
                             "rss_mb": srv.rss_mb()})
            for rep in range(args.reps):
                order = list(args.servers[rep % len(args.servers):]) + \
                    list(args.servers[:rep % len(args.servers)])
                for mode in args.modes:
                    for k in order:
                        srv = (many if mode in ("clients", "fanout") else single)[k]
                        cpu0 = srv.cpu_ns()
                        result = asyncio.run(run_mode(mode, srv, size))
                        result["cpu_us"] = (srv.cpu_ns() - cpu0) / 1000 / result["ops"]
                        row = {"run": run_id, "rep": rep, "mode": mode, "server": k,
                               "instance": srv.name, **result}
                        rows.append(row)
                        if args.verbose:
                            print(json.dumps(row), file=sys.stderr)
        finally:
            for srv in {id(s): s for s in [*single.values(), *many.values()]}.values():
                srv.stop()
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def fmt(value: float, unit: str = "") -> str:
    """1,234 or 12.3, with the unit after (none for rates)."""
    text = f"{value:,.1f}" if value < 1000 and unit != "/s" else f"{value:,.0f}"
    return text if unit in ("", "/s") else f"{text} {unit}"


def tables(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown: the medians per server, then the ratios."""
    size = args.size
    servers = [s for s in SERVERS if s in args.servers]
    head = ["measure", *[{"qemu": "QEMU 7.2"}.get(s, s) for s in servers]]
    ratio_cols = [(a, b) for a, b in (("qmpjobd", "qemu"), ("qmpjobd", "floor"),
                                      ("floor", "qemu")) if a in servers and b in servers]
    head += [f"{a} / {b}" for a, b in ratio_cols]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for title, mode, key, unit, _higher in MEASURES:
        if mode != "idle" and mode not in args.modes:
            continue
        by_rep: dict[str, dict[int, float]] = {}
        for r in rows:
            if r["mode"] == mode and key in r:
                by_rep.setdefault(r["server"], {})[r["rep"]] = r[key]
        cells = [title.format(**size)]
        for s in servers:
            vals = list(by_rep.get(s, {}).values())
            cell = fmt(statistics.median(vals), unit) if vals else "-"
            if len(vals) > 1:
                cell += f" ({fmt(min(vals))}..{fmt(max(vals))})"
            cells.append(cell)
        for a, b in ratio_cols:
            reps = sorted(set(by_rep.get(a, {})) & set(by_rep.get(b, {})))
            ratios = [by_rep[a][i] / by_rep[b][i] for i in reps if by_rep[b][i]]
            cells.append(f"{statistics.median(ratios):.2f}x" if ratios else "-")
        out.append("| " + " | ".join(cells) + " |")
    sizes = (f"rtt -n {size['rtt']}, pipeline -n {size['pipeline']}, handshake -n "
             f"{size['handshake']}, clients -c {size['clients']} -t {size['seconds']} s, "
             f"fanout -c {size['clients']} -n {size['fanout']}")
    return (f"{args.reps} repetition(s), servers interleaved; {sizes}; client loop "
            f"{asyncio_loop_name()}.\n\n" + "\n".join(out) + "\n")


def asyncio_loop_name() -> str:
    return "uvloop" if "uvloop" in sys.modules else "asyncio"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny counts: a smoke run that proves the harness works (seconds)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset")
    ap.add_argument("--clients", type=int, default=None, metavar="N",
                    help="clients in the clients and fanout modes (default 50, quick 4); "
                         "QEMU gets N + 2 monitors")
    ap.add_argument("--out", default=None, help="append one JSON line per run to this file")
    ap.add_argument("--verbose", action="store_true", help="print each run's JSON to stderr")
    args = ap.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    args.servers = [s for s in args.servers.split(",") if s]
    bad = [m for m in args.modes if m not in MODES] + \
        [s for s in args.servers if s not in SERVERS]
    if bad or args.reps < 1:
        ap.error(f"unknown mode or server: {', '.join(bad)}" if bad else "--reps must be >= 1")
    args.size = dict(SIZES["quick" if args.quick else "full"])
    if args.clients is not None:
        args.size["clients"] = args.clients
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(tables(run_suite(args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
