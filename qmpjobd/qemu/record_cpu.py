"""Record what QEMU's QOM says about a vCPU, for qom-list and qom-get of a vCPU's path.

``python3 -m qmpjobd.qemu.record_cpu [--qemu PATH] [--out FILE]`` starts the installed
``qemu-system-x86_64`` as libvirt starts a TCG domain (``-machine pc -accel tcg -cpu MODEL``,
stopped), lists the first vCPU's properties and reads each one, for every model in MODELS.
libvirt reads them all at domain start to learn the guest CPU it got.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from ..address import Address
from ..client import Client

MODELS = ("qemu64", "max")
"""The CPU models recorded: libvirt's default for TCG domains and the probe's ``max``."""

DATA = Path(__file__).with_name("data") / "qemu72-x86_64-cpu.json"
CPU_PATH = "/machine/unattached/device[0]"


def _record_model(qemu: str, model: str, tmp: str) -> dict[str, Any]:
    sock = os.path.join(tmp, f"{model}.sock")
    proc = subprocess.Popen([qemu, "-S", "-no-user-config", "-nodefaults", "-display", "none",
                             "-machine", "pc-i440fx-7.2", "-accel", "tcg", "-cpu", model,
                             "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{qemu} -cpu {model} did not start")
            time.sleep(0.02)  # a child we cannot wait on for readiness: poll for its socket
        with Client(Address("unix", path=sock), timeout=30) as c:
            c.negotiate()
            props = c.command("qom-list", {"path": CPU_PATH})
            values: dict[str, Any] = {}
            for prop in props:
                reply = c.execute("qom-get", {"path": CPU_PATH, "property": prop["name"]})
                reply.pop("id", None)
                values[prop["name"]] = reply
        return {"qom-list": props, "qom-get": values}
    finally:
        proc.terminate()
        proc.wait(30)


def record(qemu: str) -> dict[str, Any]:
    """Every model's property list and values, as the installed QEMU reports them."""
    with tempfile.TemporaryDirectory() as tmp:
        return {model: _record_model(qemu, model, tmp) for model in MODELS}


def main(argv: list[str] | None = None) -> int:
    """Record into the package's data file (or ``--out``)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    ap.add_argument("--out", type=Path, default=DATA)
    args = ap.parse_args(argv)
    if not args.qemu:
        print("qemu-system-x86_64 is not installed", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(record(args.qemu), option=orjson.OPT_SORT_KEYS) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
