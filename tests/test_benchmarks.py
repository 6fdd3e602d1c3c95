"""benchmarks/run.sh works from the repository alone: its --quick smoke run starts QEMU 7.2,
the floor server and qmpjobd, runs every mode against each and prints the tables.  Only the
shape of the output is checked, never a timing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from qmptest import QEMU

ROOT = Path(__file__).resolve().parent.parent
MODES = {"rtt", "pipeline", "handshake", "clients", "fanout"}


def test_quick_benchmark_run_prints_the_tables(tmp_path: Path) -> None:
    servers = ["qemu", "floor", "qmpjobd"] if QEMU else ["floor", "qmpjobd"]
    raw = tmp_path / "raw.jsonl"
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "run.sh"), "--quick", "--reps",
                          "2", "--servers", ",".join(servers)],
                         env={**os.environ, "OUT": str(raw)}, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    header = next(x for x in out.stdout.splitlines() if x.startswith("| measure |"))
    if QEMU:
        assert "| QEMU 7.2 | floor | qmpjobd | qmpjobd / qemu | qmpjobd / floor |" in header
    for title in ("rtt p50, query-version", "pipelined requests/s", "handshakes/s",
                  "4 clients at once, p99", "fan-out to 4, last subscriber p99",
                  "server CPU per request (rtt)", "VmRSS idle"):
        row = next((x for x in out.stdout.splitlines() if x.startswith(f"| {title}")), None)
        assert row is not None, (title, out.stdout, out.stderr)
        assert "| - |" not in row, (row, out.stdout, out.stderr)  # every server measured
    rows = [json.loads(x) for x in raw.read_text().splitlines()]
    measured = {(r["mode"], r["server"], r["rep"]) for r in rows if r["mode"] != "idle"}
    assert measured == {(m, s, rep) for m in MODES for s in servers for rep in (0, 1)}, \
        out.stdout + out.stderr
    assert not list(tmp_path.glob("*.sock"))  # nothing left behind
