"""A COLO failover drill with qemu.qmp: start a primary and a secondary qmpjobd, replicate,
kill -9 the primary in the middle of a checkpoint, fail over on the secondary, and check that
the survivor holds exactly the last committed checkpoint.

    python3 examples/colo_failover_drill.py [--phase blob] [--dir /tmp/drill]

Exit status 0 when the drill passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from qemu.qmp import QMPClient


def start(path: str, *extra: str) -> subprocess.Popen[bytes]:
    """A qmpjobd process, once its socket is there."""
    proc = subprocess.Popen([sys.executable, "-m", "qmpjobd", "--socket", path,
                             "--log-level", "error", "--guest-ram", "16M", *extra])
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"qmpjobd did not start on {path}")
        time.sleep(0.02)
    return proc


async def next_event(events: Any, name: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next event called ``name`` from a qemu.qmp listener."""
    while True:
        ev = await asyncio.wait_for(events.get(), timeout)
        if ev["event"] == name:
            return dict(ev)


async def drill(workdir: str, phase: str) -> bool:
    mig = f"unix:{workdir}/colo.sock"
    # the secondary's own workload is off, so its live state is exactly what it committed
    sec_proc = start(f"{workdir}/sec.sock", "--incoming", mig, "--workload-rate", "0")
    pri_proc = start(f"{workdir}/pri.sock", "--workload-rate", "2000")
    pri, sec = QMPClient("primary"), QMPClient("secondary")
    await pri.connect(f"{workdir}/pri.sock")
    await sec.connect(f"{workdir}/sec.sock")
    try:
        with sec.listener(("RESUME", "COLO_EXIT")) as sec_events:
            caps = [{"capability": "x-colo", "state": True},
                    {"capability": "events", "state": True}]
            for qmp in (pri, sec):
                await qmp.execute("migrate-set-capabilities", {"capabilities": caps})
            await pri.execute("migrate-set-parameters", {"x-checkpoint-delay": 100})
            await pri.execute("migrate", {"uri": mig})
            for _ in range(4):  # COLO up, then three checkpoints
                await next_event(sec_events, "RESUME")
            print("replicating:", await pri.execute("query-colo-status"),
                  await sec.execute("query-colo-status"))

            await pri.execute("x-daemon-colo-inject",
                              {"phase": phase, "action": "hold", "wait": True})
            history = {h["checkpoint"]: h["digest"]
                       for h in (await pri.execute("x-query-guest-state"))["history"]}
            print(f"primary held at '{phase}'; killing it (pid {pri_proc.pid})")
            pri_proc.send_signal(signal.SIGKILL)
            pri_proc.wait()
            print("secondary:", await next_event(sec_events, "COLO_EXIT"))
            state = await sec.execute("x-query-guest-state")
            await sec.execute("x-colo-lost-heartbeat")
            await next_event(sec_events, "RESUME")
        status = await sec.execute("query-colo-status")
        metrics = await sec.execute("x-query-colo-metrics")
        print("after failover:", status, "failover", metrics.get("failover-ms"), "ms")
        committed = history.get(state["checkpoint"])
        ok = (state["digest"] == state["checkpoint-digest"] == committed
              and status["last-mode"] == "secondary" and status["mode"] == "none")
        print(f"checkpoint {state['checkpoint']}: survivor digest "
              f"{'matches' if state['digest'] == committed else 'DIFFERS from'} the primary's")
        return ok
    finally:
        await sec.disconnect()
        with contextlib.suppress(EOFError, OSError):  # its peer was killed: EOF is expected
            await pri.disconnect()
        for proc in (sec_proc, pri_proc):
            if proc.poll() is None:
                proc.terminate()
                proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", default="blob",
                    choices=("request", "reply", "vmstate-send", "ram", "vmstate-size", "blob",
                             "received", "loaded"))
    ap.add_argument("--dir", default=None, help="where the sockets go (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ok = asyncio.run(drill(args.dir or tmp, args.phase))
    print("drill passed" if ok else "drill FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
