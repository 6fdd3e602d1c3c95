#!/usr/bin/env bash
# Measure qmpjobd against QEMU 7.2 and the floor servers with the shared harness, interleaved
# on this machine, then print the tables. Needs ../shared/bench (next to this checkout),
# qemu-system-x86_64, gcc, orjson and uvloop. Takes about 12 minutes with --reps 3.
#   benchmarks/run.sh [--reps N] [--modes rtt,pipeline,...] [--servers qemu1,qemu52,uv,...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bench=${QMPBENCH:-$here/../../shared/bench}
[ -d "$bench" ] || bench=$here/../shared/bench
out=${OUT:-$here/perf-raw.jsonl}
sock=/tmp/qmpjobd-bench.sock
python3 "$bench/run_suite.py" --out "$out" "$@" \
  --add "qmpjobd=$sock=$(command -v python3) -m qmpjobd --socket $sock --log-level warning"
python3 "$bench/summarize.py" "$out"
