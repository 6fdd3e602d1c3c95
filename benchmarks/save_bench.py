"""virsh save / restore of a 1 GiB guest on qmpjobd, against QEMU 7.2 under TCG, same libvirt.

Measures (medians of --reps with min..max, interleaved: every repetition runs each condition on
both emulators, the emulator that goes first alternating between repetitions):
- ``virsh save DOMAIN FILE``: wall time until virsh returns (the guest is stopped, its state
  written to the file through the fd libvirt passes, the emulator ended);
- ``virsh restore FILE``: wall time until virsh returns (the emulator started with
  ``-incoming defer``, the state read, the guest running again);
- the size of the save file;
for two guests, the same domain XML (tests/libvirttest.py DOMAIN, ``--mib`` MiB of RAM) with
qmpjobd or /usr/bin/qemu-system-x86_64 (type='qemu', TCG) as its emulator:
- idle: RAM as the guest left it at start (QEMU's idles in the BIOS, the disk being
  unbootable; qmpjobd's model guest writes nothing);
- filled: RAM written with data before the save.  QEMU boots a 512-byte boot sector
  (BOOT_SECTOR, the code of /tmp/libvirt-ref/boot/fill.S) that fills guest RAM from 1 MiB
  to 16 MiB below its end with non-repeating words, then writes 0xD0D0D0D0 at 0x500 and
  halts; the benchmark polls that word (HMP ``xp``).  qmpjobd's model guest runs its memory
  workload (QMP ``x-daemon-workload``, pattern ``sweep``: pages in order from 0, each stamped
  with a 16-byte label, the rest of the page zero) in spells, paused with rate 0 to read
  ``x-query-guest-state``, until every page has been written (``vclock``, the count of page
  writes, reaches the page count; then ``dirty-pages``, the pages written since start, must
  be every page), and is left at rate 0.  So qmpjobd's filled guest has all its RAM written,
  QEMU's all but the first MiB and the last 16.

On qmpjobd the guest's digest (``x-query-guest-state``: RAM and device state) after the
restore must be the one it had before the save; on QEMU the fill's marker must still be there
after the restore.  Either failing stops the benchmark.

``--prompt-reaper`` runs libvirtd under a subreaper that reaps ended processes at once, as
systemd would (see libvirt_bench.py): libvirt's save waits until the emulator it ended is gone,
which, without it, is when this machine's PID 1 reaps it.

Needs root, libvirt (see tests/libvirttest.py), qemu-system-x86_64, and room for a save file
of the guest's size in /var/lib/libvirt/images (one exists at a time).
Usage: python3 benchmarks/save_bench.py [--reps 3] [--mib 1024] [--quick] [--prompt-reaper]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from libvirttest import DOMAIN, EMULATOR, IMAGES, daemons, install, virsh, wait, why_not

QEMU = "/usr/bin/qemu-system-x86_64"
EMULATORS = {"qmpjobd": str(EMULATOR), "QEMU 7.2": QEMU}
CONDITIONS = ("idle", "filled")

BOOT_SECTOR = bytes.fromhex(
    "fa31c08ed88ed0bc007ce4920c02e6920f0116787c0f20c06683c8010f22c0ea"
    "247c080066b810008ed88ec08ed0bc007c0000bf00001000b878563412890705"
    "b979379ec1c00583c70481ff0000003f72ebc70500050000d0d0d0d0f4ebfd90"
    "0000000000000000ffff0000009acf00ffff00000092cf001700607c00000000")
"""fill.S assembled (org 0x7c00): real mode -> 32-bit protected mode (flat GDT), then
``for edi = 1 MiB; edi < LIMIT; edi += 4: [edi] = eax; eax = rol(eax + 0x9e3779b9, 5)``,
then ``[0x500] = 0xD0D0D0D0``, ``hlt``."""
LIMIT_AT = 0x4C
"""Offset of LIMIT, the imm32 of ``cmp $LIMIT, %edi``."""
MARKER = "0xd0d0d0d0"


def boot_sector(mib: int) -> bytes:
    """The fill boot sector for a guest of ``mib`` MiB: fills 1 MiB .. (mib - 16) MiB (the
    top is left to the BIOS's tables; only RAM below 3 GiB, which the pc machine maps low)."""
    limit = (min(mib, 3072) - 16) << 20
    code = bytearray(BOOT_SECTOR)
    assert code[LIMIT_AT:LIMIT_AT + 4] == struct.pack("<I", 0x3F000000)
    code[LIMIT_AT:LIMIT_AT + 4] = struct.pack("<I", limit)
    return bytes(code) + bytes(510 - len(code)) + b"\x55\xaa"


def domain_name(label: str, condition: str) -> str:
    return f"savebench-{'q' if label == 'QEMU 7.2' else 'j'}-{condition}"


def define(label: str, condition: str, mib: int, tmp: Path) -> None:
    name = domain_name(label, condition)
    image = IMAGES / f"{name}.raw"
    disk = bytearray(16 << 20)
    if condition == "filled" and label == "QEMU 7.2":
        disk[:512] = boot_sector(mib)
    image.write_bytes(disk)
    xml = DOMAIN.format(name=name, emulator=EMULATORS[label], image=image)
    old = "<memory unit='MiB'>64</memory>"
    assert old in xml
    (tmp / f"{name}.xml").write_text(xml.replace(old, f"<memory unit='MiB'>{mib}</memory>"))
    virsh("define", str(tmp / f"{name}.xml"))


def remove(name: str) -> None:
    virsh("destroy", name, check=False)
    virsh("managedsave-remove", name, check=False)
    virsh("undefine", name, check=False)
    (IMAGES / f"{name}.raw").unlink(missing_ok=True)
    (IMAGES / f"{name}.save").unlink(missing_ok=True)


def qmp(name: str, command: str, arguments: dict[str, Any] | None = None) -> Any:
    request: dict[str, Any] = {"execute": command}
    if arguments is not None:
        request["arguments"] = arguments
    reply = json.loads(virsh("qemu-monitor-command", name, json.dumps(request)).stdout)
    assert "return" in reply, reply
    return reply["return"]


def marker(name: str) -> bool:
    """The QEMU guest's fill has finished (its word at 0x500)."""
    out = virsh("qemu-monitor-command", "--hmp", name, "xp /1wx 0x500").stdout
    if MARKER in out.lower():
        return True
    time.sleep(0.2)
    return False


def fill(label: str, name: str, rate: int) -> tuple[float, str]:
    """Fill the running guest's RAM; (seconds it took, how it was verified)."""
    t = time.perf_counter()
    if label == "QEMU 7.2":
        wait(lambda: marker(name), "the boot sector to fill guest RAM", timeout=300)
        return time.perf_counter() - t, "marker 0xD0D0D0D0 at 0x500"
    # x-query-guest-state hashes the pages written since the last query and, while the
    # workload writes faster than it hashes, does not return: so the workload runs for a
    # while, is paused (rate 0), the state read, and resumed until every page is written
    pages, vclock, spell = 0, 0, 0.5
    try:
        while True:
            qmp(name, "x-daemon-workload", {"rate": rate, "pattern": "sweep"})
            ran = time.perf_counter()
            time.sleep(spell)
            qmp(name, "x-daemon-workload", {"rate": 0})
            ran = time.perf_counter() - ran
            state = qmp(name, "x-query-guest-state")
            pages = state["ram-size"] // state["page-size"]
            if state["vclock"] >= pages:
                break
            pace = max((state["vclock"] - vclock) / ran, 1.0)
            vclock = state["vclock"]
            spell = min(max((pages - vclock) / pace * 1.05, 0.2), 30.0)
    finally:
        qmp(name, "x-daemon-workload", {"rate": 0})
    took = time.perf_counter() - t
    dirty = qmp(name, "x-query-guest-state")["dirty-pages"]
    assert dirty == pages, (dirty, pages)
    return took, f"dirty-pages {dirty} = ram-size/page-size {pages}"


def one(label: str, condition: str, rate: int) -> dict[str, Any]:
    """Start the domain, (fill it,) save, restore, check, destroy."""
    name = domain_name(label, condition)
    saved = IMAGES / f"{name}.save"
    saved.unlink(missing_ok=True)
    virsh("start", name)
    out: dict[str, Any] = {}
    try:
        if condition == "filled":
            out["fill"], out["verified"] = fill(label, name, rate)
        if label == "qmpjobd":
            before = qmp(name, "x-query-guest-state")["digest"]
        t = time.perf_counter()
        virsh("save", name, str(saved))
        out["save"] = time.perf_counter() - t
        out["size"] = saved.stat().st_size
        assert virsh("domstate", name).stdout.strip() == "shut off"
        t = time.perf_counter()
        virsh("restore", str(saved))
        out["restore"] = time.perf_counter() - t
        assert virsh("domstate", name).stdout.strip() == "running"
        if label == "qmpjobd":
            after = qmp(name, "x-query-guest-state")["digest"]
            assert after == before, f"{name}: digest {after} after restore, {before} saved"
            out["check"] = f"digest {before[:16]}... equal"
        elif condition == "filled":
            assert marker(name), f"{name}: the fill's marker is gone after restore"
            out["check"] = "marker kept"
    finally:
        virsh("destroy", name, check=False)
        saved.unlink(missing_ok=True)
    return out


def fmt_s(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s ({min(xs):.2f}..{max(xs):.2f})"


def fmt_b(xs: list[float]) -> str:
    med = statistics.median(xs)
    spread = f" ({min(xs):,.0f}..{max(xs):,.0f})" if min(xs) != max(xs) else ""
    return f"{med:,.0f} B{spread}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mib", type=int, default=1024, help="guest RAM in MiB (at least 32)")
    ap.add_argument("--quick", action="store_true", help="64 MiB guests, 1 repetition")
    ap.add_argument("--rate", type=int, default=1_000_000,
                    help="pages/s of qmpjobd's fill workload (it caps what it cannot keep up "
                         "with)")
    ap.add_argument("--prompt-reaper", action="store_true",
                    help="run libvirtd under a subreaper that reaps its orphans at once, as "
                         "systemd does, instead of leaving them to this machine's PID 1")
    args = ap.parse_args()
    if args.quick:
        args.mib, args.reps = 64, 1
    if args.mib < 32:
        ap.error("--mib must be at least 32")
    reason = why_not()
    if reason is not None:
        print(f"skipped: {reason}")
        return 1
    install()
    labels = list(EMULATORS)
    data: dict[tuple[str, str], list[dict[str, Any]]] = {
        (label, c): [] for label in labels for c in CONDITIONS}
    with tempfile.TemporaryDirectory() as d, daemons(Path(d) / "libvirtd.log", debug=False,
                                                   prompt_reaper=args.prompt_reaper):
        tmp = Path(d)
        names = [domain_name(label, c) for label in labels for c in CONDITIONS]
        for name in names:
            remove(name)  # a domain left over by an interrupted run
        try:
            for label in labels:
                for c in CONDITIONS:
                    define(label, c, args.mib, tmp)
            for i in range(args.reps):
                for c in CONDITIONS:
                    for label in labels[i % 2:] + labels[:i % 2]:
                        r = one(label, c, args.rate)
                        data[label, c].append(r)
                        print(f"# rep {i + 1} {c} {label}: save {r['save']:.2f} s, restore "
                              f"{r['restore']:.2f} s, {r['size']:,} B"
                              + (f", fill {r['fill']:.1f} s ({r['verified']})"
                                 if "fill" in r else "")
                              + (f", {r['check']}" if "check" in r else ""), flush=True)
        finally:
            for name in names:
                remove(name)

    ours, qemu = labels
    print(f"\n{args.mib} MiB guests, median of {args.reps} (min..max), libvirtd "
          f"{'under a prompt reaper' if args.prompt_reaper else 'reaped by PID 1'}; "
          "ratio of medians\n")
    print(f"| condition | operation | {ours} | {qemu} (TCG) | ratio {ours}/QEMU |")
    print("|---|---|---|---|---|")
    for c in CONDITIONS:
        for op, title in (("save", "virsh save"), ("restore", "virsh restore"),
                          ("size", "save file size")):
            a = [r[op] for r in data[ours, c]]
            b = [r[op] for r in data[qemu, c]]
            cell = fmt_b if op == "size" else fmt_s
            print(f"| {c} | {title} | {cell(a)} | {cell(b)} | "
                  f"{statistics.median(a) / statistics.median(b):.2f} |")
    print()
    for label in labels:
        fills = [r["fill"] for r in data[label, "filled"]]
        print(f"- {label}: filling RAM took {fmt_s(fills)}, verified by "
              f"{data[label, 'filled'][-1]['verified']}")
    checks = [r["check"] for c in CONDITIONS for r in data[ours, c]]
    print(f"- {ours}: guest digest after restore equal to the one saved in "
          f"{len(checks)}/{len(checks)} restores (idle and filled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
