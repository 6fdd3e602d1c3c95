#!/usr/bin/env bash
# Measure qmpjobd against QEMU 7.2 and the floor server (benchmarks/floor.py), interleaved on
# this machine, and print the tables. Needs only this repository, python3 with orjson (uvloop
# when installed) and qemu-system-x86_64 (.ci/run installs all of them).
#   benchmarks/run.sh [--reps N] [--quick] [--modes rtt,pipeline,...] [--servers qemu,floor,qmpjobd]
# --quick: tiny counts, a smoke run of a few seconds; a full run with --reps 3 takes ~5 min.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# OUT=FILE appends one JSON line per run to FILE.
exec python3 "$here/qmpbench.py" ${OUT:+--out "$OUT"} "$@"
