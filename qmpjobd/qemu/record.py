"""Record QEMU 7.2's identity answers (the ones libvirt's capability probe asks for) from the
installed qemu-system-x86_64, into the data file qmpjobd answers from.

Run as ``python3 -m qmpjobd.qemu.record [--qemu PATH] [--out FILE]``.  QEMU is started as
libvirt probes it under TCG (``-machine none,accel=tcg``); the requests go in libvirt 9.0's
order, since some answers (module types, objects created by earlier queries) depend on what
came before, then the extra ones qmpjobd needs to answer queries libvirt did not make.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..address import Address
from ..client import Client, ClientError

DATA = Path(__file__).parent / "data" / "qemu72-x86_64.json"
"""The recording qmpjobd ships and answers from."""

QEMU_ARGS = ["-S", "-no-user-config", "-nodefaults", "-nographic", "-machine", "none,accel=tcg"]
"""QEMU's options, as libvirt 9.0 probes it under TCG (the monitor comes after them)."""

Request = tuple[str, dict[str, Any] | None]

PROBE_DEVICES = [
    "virtio-blk-pci", "virtio-net-pci", "virtio-scsi-pci", "virtio-net-ccw", "virtio-scsi-ccw",
    "vfio-pci", "scsi-hd", "ide-hd", "PIIX4_PM", "usb-redir", "usb-storage", "kvm-pit", "VGA",
    "vmware-svga", "qxl", "virtio-gpu-pci", "virtio-gpu-device", "ICH9-LPC",
    "virtio-balloon-pci", "virtio-balloon-ccw", "virtio-balloon-device", "intel-iommu", "mch",
    "nvdimm", "pcie-root-port", "usb-host", "vhost-user-fs-device", "virtio-mem-pci",
    "virtio-iommu-pci"]
"""device-list-properties typenames of libvirt 9.0's x86_64 probe, in its order."""


def _expansion(kind: str, name: str, props: dict[str, Any] | None = None) -> Request:
    model: dict[str, Any] = {"name": name}
    if props is not None:
        model["props"] = props
    return "query-cpu-model-expansion", {"type": kind, "model": model}


PROBE: list[Request] = [
    ("query-target", None),
    ("query-kvm", None),
    ("qom-list-types", None),
    *[("device-list-properties", {"typename": t}) for t in PROBE_DEVICES],
    ("qom-list-properties", {"typename": "memory-backend-file"}),
    ("qom-list-properties", {"typename": "memory-backend-memfd"}),
    ("qom-list-properties", {"typename": "max-x86_64-cpu"}),
    ("query-machines", None),
    ("qom-list-properties", {"typename": "none-machine"}),
    ("query-cpu-definitions", None),
    ("query-tpm-models", None),
    ("query-tpm-types", None),
    ("query-command-line-options", None),
    ("query-sev-capabilities", None),
    ("query-sgx-capabilities", None),
    _expansion("static", "host"),
    _expansion("static", "host", {"migratable": False}),
    _expansion("full", "host", {"migratable": False, "hv-passthrough": True}),
    _expansion("static", "max"),
    _expansion("static", "max", {"migratable": False}),
]
"""libvirt 9.0's identity requests to QEMU 7.2 x86_64 (its KVM and TCG passes, without the
negotiation, version, schema and migration queries qmpjobd answers itself)."""

EXTRA: list[Request] = [
    ("qom-list-types", {"abstract": True}),
    ("qom-list-properties", {"typename": "pc-i440fx-7.2-machine"}),
    ("qom-list-properties", {"typename": "pc-q35-7.2-machine"}),
    *[_expansion(kind, name, props) for name in ("host", "max") for kind in ("static", "full")
      for props in (None, {"migratable": False})],
]
"""What libvirt may ask besides: every type with its parent (for filtered qom-list-types),
the current machine types' properties, and both expansions of host and max."""


def plan_interfaces(types: list[dict[str, Any]]) -> list[Request]:
    """qom-list-types of each interface's implementations: which classes implement an
    interface is not in the type list, and filtered queries need it."""
    parent = {t["name"]: t.get("parent") for t in types}

    def is_interface(name: str | None) -> bool:
        while name is not None:
            if name == "interface":
                return True
            name = parent.get(name)
        return False

    return [("qom-list-types", {"implements": t["name"], "abstract": True})
            for t in types if is_interface(t["name"])]


def _start(qemu: str, sock: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([qemu, *QEMU_ARGS, "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _connect(sock: str, proc: subprocess.Popen[bytes], timeout: float) -> Client:
    """Connect once QEMU listens; a refused or missing socket means not yet."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ClientError(f"QEMU exited with status {proc.returncode} before listening")
        try:
            return Client(Address("unix", path=sock), timeout=timeout)
        except (ClientError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # nothing to wait on but the socket path: poll it


def record(qemu: str, timeout: float = 60.0) -> dict[str, Any]:
    """Run QEMU, send every request, and return the recording (QEMU's replies verbatim)."""
    with tempfile.TemporaryDirectory(prefix="qmpjobd-record-") as tmp:
        sock = os.path.join(tmp, "qmp.sock")
        proc = _start(qemu, sock)
        try:
            with _connect(sock, proc, timeout) as client:
                client.negotiate()
                version = client.command("query-version")
                records: list[dict[str, Any]] = []
                seen: set[str] = set()

                def ask(requests: list[Request]) -> None:
                    for command, args in requests:
                        key = json.dumps([command, args], sort_keys=True)
                        if key in seen:
                            continue
                        seen.add(key)
                        reply = client.execute(command, args)
                        entry: dict[str, Any] = {"execute": command}
                        if args is not None:
                            entry["arguments"] = args
                        if "error" in reply:
                            entry["error"] = reply["error"]
                        else:
                            entry["return"] = reply["return"]
                        records.append(entry)

                ask(PROBE)
                ask(EXTRA)
                every_type = next(r["return"] for r in records
                                  if r["execute"] == "qom-list-types"
                                  and r.get("arguments") == {"abstract": True})
                ask(plan_interfaces(every_type))
                client.command("quit")
            proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"qemu": version, "argv": QEMU_ARGS, "requests": records}


def dumps(recording: dict[str, Any]) -> str:
    """Compact JSON with one request per line, so that a new recording diffs readably."""
    def compact(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    lines = [compact(r) for r in recording["requests"]]
    return (f'{{"qemu":{compact(recording["qemu"])},"argv":{compact(recording["argv"])},\n'
            f'"requests":[\n' + ",\n".join(lines) + "\n]}\n")


def main(argv: list[str] | None = None) -> int:
    """Record from the installed QEMU into the data file (or ``--out``)."""
    parser = argparse.ArgumentParser(prog="python3 -m qmpjobd.qemu.record",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"),
                        help="the QEMU binary (default: qemu-system-x86_64 on PATH)")
    parser.add_argument("--out", type=Path, default=DATA, help=f"where to write ({DATA})")
    opts = parser.parse_args(argv)
    if opts.qemu is None:
        parser.error("qemu-system-x86_64 is not on PATH; give --qemu")
    try:
        recording = record(opts.qemu)
    except (ClientError, OSError, TimeoutError) as e:
        print(f"record: {e}", file=sys.stderr)
        return 1
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(dumps(recording))
    print(f"{len(recording['requests'])} requests -> {opts.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
