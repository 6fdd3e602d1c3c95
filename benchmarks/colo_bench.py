"""COLO checkpoint downtime and failover time between two real qmpjobd processes.

Downtime is the primary's STOP -> RESUME per checkpoint (x-query-colo-metrics, which agrees
with the event timestamps); failover is x-colo-lost-heartbeat -> RESUME on the primary.
Usage: python3 benchmarks/colo_bench.py [--checkpoints N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from colotest import start_pair, wait_checkpoints
from qmptest import STARTED

CASES = [
    # name, transport, guest RAM, primary rate (pages/s), pattern, verify
    ("idle", "unix", "64M", 0, "random", True),
    ("idle", "tcp", "64M", 0, "random", True),
    ("100 MiB dirty", "unix", "128M", 190000, "sweep", False),
    ("100 MiB dirty", "unix", "128M", 190000, "sweep", True),
    ("100 MiB dirty", "tcp", "128M", 190000, "sweep", False),
]


def run(case: tuple[str, str, str, int, str, bool], checkpoints: int) -> dict[str, object]:
    name, transport, ram, rate, pattern, verify = case
    with tempfile.TemporaryDirectory() as tmp:
        pr = start_pair(tmp, transport, delay=200, rate=rate, ram=ram,
                        extra_p=("--workload-pattern", pattern),
                        extra_s=("--workload-rate", "0"))
        try:
            for c in (pr.p, pr.s):
                c.ok("x-daemon-colo-set", {"verify": verify})
            wait_checkpoints(pr.p, 3, timeout=30)  # warm-up: the first ones flush everything
            n0 = pr.p.checkpoints()
            wait_checkpoints(pr.p, checkpoints, timeout=120)
            m = pr.p.ok("x-query-colo-metrics")
            sm = pr.s.ok("x-query-colo-metrics")
            pr.p.ok("x-colo-lost-heartbeat")
            pr.p.wait_event("COLO_EXIT")
            pr.p.wait_event("RESUME", since=len(pr.p.events) - 1)
            fo = pr.p.ok("x-query-colo-metrics")["failover-ms"]
            return {"case": name, "transport": transport, "verify": verify,
                    "checkpoints": m["checkpoints"] - n0,
                    "dirty MiB/ckpt": round(m["dirty-pages-last"] * 4096 / (1 << 20), 1),
                    "P median": m["downtime-median-ms"], "P p90": m["downtime-p90-ms"],
                    "P max": m["downtime-max-ms"], "S median": sm["downtime-median-ms"],
                    "period": m["period-median-ms"],
                    "failover ms": fo}
        finally:
            for d in STARTED:
                d.stop()
            STARTED.clear()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoints", type=int, default=40)
    args = ap.parse_args()
    rows = [run(c, args.checkpoints) for c in CASES]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
