"""HMP qemu-io: the same command lines on QEMU 7.2 and on qmpjobd-system-x86_64, compared on
the monitor's replies, on what each process prints (QEMU prints qemu-io's text on its stdout and
stderr, not in the reply) and on the disk images' bytes afterwards.

Recorded on QEMU 7.2.22: a virtio-blk-pci id names a proxy without a backend, so ``-d`` works
for ide-hd and not for it; a node a device uses without share-rw refuses writes with a
permission conflict; writes work in prelaunch; qemu-io emits no QMP events, not even for EIO.
"""

from __future__ import annotations

import errno
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from qmptest import NO_QEMU_REASON, QEMU, Client, strip_volatile, wait_for_socket
from test_qemu_cmdline import LAUNCH

from qmpjobd.block import qemuio

needs_qemu = pytest.mark.skipif(QEMU is None, reason=NO_QEMU_REASON)

MiB = 1 << 20

LINES = [
    # -d: an ide-hd's own backend; a virtio-blk-pci proxy has none
    'qemu-io -d ide-disk0 "write 0 4096"',
    'qemu-io -d ide-disk0 "write -P 0xab 0 4096"',
    'qemu-io -d ide-disk0 "w -P 171 4096 512"',
    'qemu-io -d ide-disk0 "write -q -P 0x11 8192 512"',
    'qemu-io -d ide-disk0 "write -z 12288 4096"',
    'qemu-io -d ide-disk0 "write -P 1 16385 3"',
    'qemu-io -d ide-disk0 "write -P 0x5a 1048000 1000"',
    'qemu-io -d ide-disk0 "write -P 0x5a 1048576 512"',
    'qemu-io -d ide-disk0 "write 1k 1.5k"',
    'qemu-io -d ide-disk0 "write -P 0x22 -c 0 512"',
    'qemu-io -d ide-disk0 "write -b 0 512"',
    'qemu-io -d ide-disk0 "write -u 0 512"',
    'qemu-io -d ide-disk0 "write -P 0x100 0 512"',
    'qemu-io -d ide-disk0 "write abc 512"',
    'qemu-io -d ide-disk0 "write 0"',
    'qemu-io -d ide-disk0 "write"',
    'qemu-io -d ide-disk0 "write -f -P 0x77 20480 512"',
    'qemu-io -d ide-disk0 "write -C -P 0x66 24576 512"',
    'qemu-io -d ide-disk0 "write 0 512 -q"',
    'qemu-io -d ide-disk0 "read -P 0xcd 0 512"',
    'qemu-io -d ide-disk0 "read -P 0xab 0 4096"',
    'qemu-io -d ide-disk0 "r -q -P 0xab 512 512"',
    'qemu-io -d ide-disk0 "read -v 16380 40"',
    'qemu-io -d ide-disk0 "read -v -P 0x66 24576 17"',
    'qemu-io -d ide-disk0 "read -s 0 -l 512 -P 0xcd 0 1024"',
    'qemu-io -d ide-disk0 "read -P 0x66 -s 0 -l 600 0 512"',
    'qemu-io -d ide-disk0 "read 1048576 512"',
    'qemu-io -d ide-disk0 "read 0 0"',
    'qemu-io -d ide-disk0 "read 0 -1"',
    'qemu-io -d ide-disk0 "read -C 0 1M"',
    'qemu-io -d ide-disk0 "discard 0 4096"',
    'qemu-io -d ide-disk0 "read -v 0 16"',
    'qemu-io -d ide-disk0 "discard -q 1048576 512"',
    'qemu-io -d ide-disk0 "writev -P 0x44 32768 512 512"',
    'qemu-io -d ide-disk0 "readv -P 0x44 32768 1024"',
    'qemu-io -d ide-disk0 "readv -P 0x45 32768 1024"',
    'qemu-io -d ide-disk0 "aio_write -P 0x33 36864 4096"',
    'qemu-io -d ide-disk0 "aio_flush"',
    'qemu-io -d ide-disk0 "aio_read -P 0x33 36864 4096"',
    'qemu-io -d ide-disk0 "flush"',
    'qemu-io -d ide-disk0 "length"',
    'qemu-io -d ide-disk0 "info"',
    'qemu-io -d ide-disk0 "map"',
    'qemu-io -d ide-disk0 "alloc 0 4096"',
    'qemu-io -d ide-disk0 "foo"',
    'qemu-io -d ide-disk0 ""',
    'qemu-io -d ide-disk0 "help write"',
    'qemu-io -d ide-disk0 "help"',
    *[f'qemu-io -d ide-disk0 "help {c}"' for c in ("read", "r", "readv", "aio_read",
                                                   "aio_write", "writev", "discard", "map",
                                                   "length", "sleep", "nosuch")],
    # the checks in QEMU's order, and the texts helper experiments recorded
    'qemu-io -d ide-disk0 "write -b -z 0 512"',
    'qemu-io -d ide-disk0 "write -n 0 512"',
    'qemu-io -d ide-disk0 "write -z -P 1 0 512"',
    'qemu-io -d ide-disk0 "write -P"',
    'qemu-io -d ide-disk0 "write -x 0 512"',
    'qemu-io -d ide-disk0 "write 0 512 extra"',
    'qemu-io -d ide-disk0 "write -c 1 512"',
    'qemu-io -d ide-disk0 "write 0 3G"',
    'qemu-io -d ide-disk0 "write -n -z 0 3G"',
    'qemu-io -d ide-disk0 "write 0 1.5"',
    'qemu-io -d ide-disk0 "write 0 1e"',
    'qemu-io -d ide-disk0 "write 0 99999999999999999999"',
    'qemu-io -d ide-disk0 "write -q -P 0x2e 010 0x10"',
    'qemu-io -d ide-disk0 "write -s /nonexistent 0 512"',
    'qemu-io -d ide-disk0 "write -s PATTERN_FILE 40960 512"',
    'qemu-io -d ide-disk0 "read -v 40960 48"',
    'qemu-io -d ide-disk0 "read -b 0 512"',
    'qemu-io -d ide-disk0 "read -b 1 512"',
    'qemu-io -d ide-disk0 "read -l 512 0 1024"',
    'qemu-io -d ide-disk0 "read -P 0xab -s 1024 0 1024"',
    'qemu-io -d ide-disk0 "read -P 0x100 0 1"',
    'qemu-io -d ide-disk0 "readv 1048576 512"',
    'qemu-io -d ide-disk0 "aio_read 1048576 512"',
    'qemu-io -d ide-disk0 "aio_write -P 0x20 1048576 512"',
    'qemu-io -d ide-disk0 "aio_write -z 45056 4096"',
    'qemu-io -d ide-disk0 "discard 0 3"',
    'qemu-io -d ide-disk0 "discard 1048576 512"',
    'qemu-io -d ide-disk0 "alloc 0"',
    'qemu-io -d ide-disk0 "alloc 1048576 512"',
    'qemu-io -d ide-disk0 "alloc 0 2M"',
    'qemu-io -d ide-disk0 "alloc 0 1 2"',
    'qemu-io -d ide-disk0 "flush 1"',
    'qemu-io -d ide-disk0 "sleep 10"',
    'qemu-io -d ide-disk0 "sleep abc"',
    'qemu-io -d virtio-disk0 "read 0 512"',
    'qemu-io -d nosuch "read 0 512"',
    'qemu-io -d disk-format "read 0 512"',
    # node names: a device without share-rw keeps writes out of its node and the file below
    'qemu-io nosuch "read 0 512"',
    'qemu-io virtio-disk0 "read 0 512"',
    'qemu-io disk-format "write -P 0x10 0 512"',
    'qemu-io disk-storage "write -P 0x10 0 512"',
    'qemu-io disk-format "read -P 0 0 512"',
    'qemu-io disk-format "write -P 0x100 0 512"',  # the permission is checked first
    'qemu-io disk-format "write"',  # ... after the argument count
    'qemu-io disk-storage "discard 0 512"',
    'qemu-io shared-format "write -P 0x21 0 4096"',
    'qemu-io shared-storage "write -P 0x22 4096 4096"',
    # discard stops at a layer without discard=unmap: the format node here, not the file
    'qemu-io shared-format "discard 0 4096"',
    'qemu-io shared-storage "discard 4096 2048"',
    'qemu-io shared-format "read -v 0 16"',
    'qemu-io shared-format "read -v 4096 16"',
    'qemu-io ro-storage "write 0 512"',
    'qemu-io ro-storage "discard 0 512"',
    'qemu-io ro-storage "read -P 0 0 512"',
    'qemu-io ro-storage "length"',
    'qemu-io ro-storage "info"',
    'qemu-io',
    'qemu-io -d ide-disk0',
    'qemu-io -d ide-disk0 "read 0 512" extra',
]


def _argv(tmp: Path, name: str) -> list[str]:
    """QEMU's command line for the devices and nodes LINES use; images are tmp/NAME-*.raw."""
    def node(**opts: object) -> list[str]:
        return ["-blockdev", orjson.dumps(opts).decode()]

    def device(**props: object) -> list[str]:
        return ["-device", orjson.dumps(props).decode()]

    images = {what: str(tmp / f"{name}-{what}.raw") for what in ("disk", "ide", "shared", "ro")}
    return ["-M", "pc", "-nodefaults", "-display", "none", "-S", "-accel", "tcg",
            "-qmp", f"unix:{tmp / name}.sock,server=on,wait=off",
            *node(driver="file", filename=images["disk"], **{"node-name": "disk-storage"}),
            *node(driver="raw", file="disk-storage", **{"node-name": "disk-format"}),
            *device(driver="virtio-blk-pci", bus="pci.0", addr="0x2", drive="disk-format",
                    id="virtio-disk0"),
            *node(driver="file", filename=images["ide"], discard="unmap",
                  **{"node-name": "ide-storage"}),
            *node(driver="raw", file="ide-storage", discard="unmap",
                  **{"node-name": "ide-format"}),
            *device(driver="ide-hd", bus="ide.0", unit=0, drive="ide-format", id="ide-disk0"),
            *node(driver="file", filename=images["shared"], discard="unmap",
                  **{"node-name": "shared-storage"}),
            *node(driver="raw", file="shared-storage", **{"node-name": "shared-format"}),
            *device(driver="virtio-blk-pci", bus="pci.0", addr="0x3", drive="shared-format",
                    id="virtio-disk1", **{"share-rw": True}),
            *node(driver="file", filename=images["ro"], **{"node-name": "ro-storage",
                                                          "read-only": True})]


class Side:
    """One process: its monitor, and its stdout and stderr (files, read at the end)."""

    def __init__(self, name: str, cmd: list[str], tmp: Path) -> None:
        self.name, self.tmp = name, tmp
        for what in ("disk", "ide", "shared", "ro"):
            (tmp / f"{name}-{what}.raw").write_bytes(bytes(MiB))
        self.stdout, self.stderr = tmp / f"{name}.out", tmp / f"{name}.err"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen([*cmd, *_argv(tmp, name)], stdout=out, stderr=err)
        wait_for_socket(str(tmp / f"{name}.sock"), self.proc, single_client=name == "qemu")
        self.c = Client(str(tmp / f"{name}.sock"), timeout=20)
        self.c.negotiate()

    def hmp(self, line: str) -> list[object]:
        """Everything the monitor sends for the line: its reply, and any events."""
        line = line.replace("PATTERN_FILE", str(self.tmp / "pattern"))
        request = {"execute": "human-monitor-command", "arguments": {"command-line": line}}
        return strip_volatile(self.c.exchange(orjson.dumps(request)))

    def quit(self) -> None:
        self.c.cmd("quit")
        self.proc.wait(timeout=20)

    def printed(self) -> tuple[str, str]:
        """stdout and stderr, the times and rates of each report left out."""
        return (_no_timing(self.stdout.read_text()), self.stderr.read_text())

    def image(self, what: str) -> bytes:
        return (self.tmp / f"{self.name}-{what}.raw").read_bytes()


def _no_timing(text: str) -> str:
    """Reports keep their size and op count; times and rates (and -C's) are dropped."""
    text = re.sub(r"(?m)^(.+, \d+ ops); .*$", r"\1; <timing>", text)
    return re.sub(r"(?m)^(\d+,\d+),[0-9:.]+,[0-9.]+,[0-9.]+$", r"\1,<timing>", text)


@contextmanager
def pair(tmp: Path) -> Iterator[tuple[Side, Side]]:
    """QEMU 7.2 (its stdio line-buffered, so each report is out before the reply) and qmpjobd,
    with the same devices and nodes."""
    assert QEMU is not None
    sides: list[Side] = []
    try:
        sides.append(Side("qemu", ["stdbuf", "-oL", "-eL", QEMU], tmp))
        sides.append(Side("ours", LAUNCH, tmp))
        yield sides[0], sides[1]
    finally:
        for side in sides:
            if side.proc.poll() is None:
                side.proc.kill()
                side.proc.wait()


@needs_qemu
def test_qemu_io_as_qemu(tmp_path: Path) -> None:
    """Every line of LINES: the same reply and events (there are none, not even for EIO),
    and at the end the same stdout, stderr and images."""
    (tmp_path / "pattern").write_bytes(b"qmpjobd\n")  # repeated to fill a write -s buffer
    with pair(tmp_path) as (qemu, ours):
        for line in LINES:
            assert ours.hmp(line) == qemu.hmp(line), line
        qemu.quit()
        ours.quit()
        assert ours.printed() == qemu.printed()
        for what in ("disk", "ide", "shared", "ro"):
            assert ours.image(what) == qemu.image(what), what
    written = ours.image("ide")
    # discarded (unmap all the way down, so zeros), then 16 bytes of 0x2e at 010 (decimal)
    assert written[:4096] == bytes(10) + b"\x2e" * 16 + bytes(4096 - 26)
    assert written[4096:4608] == b"\xab" * 512 and written[36864:40960] == b"\x33" * 4096
    assert written[40960:40976] == b"qmpjobd\nqmpjobd\n"
    shared = ours.image("shared")
    assert shared[:4096] == b"\x21" * 4096 and shared[4096:8192] == bytes(2048) + b"\x22" * 2048


def test_numbers_sizes_and_times_are_qemus() -> None:
    """cvtnum's suffixes and errors, cvtstr's units and timestr's two forms (as recorded)."""
    assert [qemuio.cvtnum(t) for t in ("4k", "1.5k", "0x200", "1M", "1m", "512", "2b")] == \
        [4096, 1536, 512, MiB, MiB, 512, 2]
    assert [qemuio.cvtnum(t) for t in ("abc", "1.5", "-1", "99999999999999999999")] == \
        [-errno.EINVAL, -errno.EINVAL, -errno.EINVAL, -errno.ERANGE]
    sizes = {3: "3 bytes", 512: "512 bytes", 1000: "1000 bytes", 1536: "1.500 KiB",
             4096: "4 KiB", 100000: "97.656 KiB", 1048575: "1023.999 KiB", MiB: "1 MiB"}
    assert {n: qemuio.cvtstr(float(n)) for n in sizes} == sizes
    assert qemuio.timestr(0.3) == "00.30 sec" and qemuio.timestr(5.1) == "0:00:05.10"
    assert qemuio.timestr(0.001, fixed=True) == "0:00:00.00"


def test_a_long_read_and_write_use_bounded_buffers(tmp_path: Path) -> None:
    """A request longer than CHUNK is done a chunk at a time, the pattern checked across
    chunk boundaries."""
    from qmpjobd.block.nodes import FileNode
    image = tmp_path / "big.raw"
    image.write_bytes(bytes(3 * qemuio.CHUNK))
    node = FileNode("big", str(image))
    try:
        out = qemuio.Collect()
        length = 2 * qemuio.CHUNK + 4096
        prepared = qemuio.prepare(f"write -P 0x5c -q 4096 {length}", out)
        assert prepared is not None
        qemuio.execute(node, prepared, out)
        for line, failed in ((f"read -q -P 0x5c 4096 {length}", False),
                             (f"read -q -P 0x5c 0 {length}", True)):
            out = qemuio.Collect()
            prepared = qemuio.prepare(line, out)
            assert prepared is not None
            qemuio.execute(node, prepared, out)
            assert bool(out.stdout) is failed, line
    finally:
        node.close()
    data = image.read_bytes()
    assert data[4096:4096 + length] == b"\x5c" * length and data[:4096] == bytes(4096)
