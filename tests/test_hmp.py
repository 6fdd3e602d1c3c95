"""human-monitor-command: the same libvirt domain on QEMU 7.2 and on qmpjobd-system-x86_64, the
same HMP command lines in the same states, the same output strings (only the domain's file
paths, the vCPU thread ids and qmpjobd's package string differ, and are normalised)."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from qmptest import NO_QEMU_REASON, QEMU, Client, strip_volatile
from test_qemu_cmdline import LAUNCH, _start_domain

from qmpjobd.hmp.commands import size_to_str
from qmpjobd.protocol.errors import QMPError
from qmpjobd.protocol.session import Session
from qmpjobd.vm import Vm

needs_qemu = pytest.mark.skipif(QEMU is None, reason=NO_QEMU_REASON)


class Side:
    """One of the two processes, with the normalisation of what necessarily differs."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], c: Client, tmp: Path) -> None:
        self.name, self.proc, self.c = name, proc, c
        self.prefix = str(tmp / name)  # tmp/NAME.sock, tmp/NAME.raw
        self.tmp = tmp
        version = c.cmd("query-version")["return"]
        self.package = version["package"]

    def normalise(self, text: str) -> str:
        text = text.replace(self.prefix, "<domain>")
        text = text.replace(str(self.tmp), "<tmp>")
        text = re.sub(r"thread_id=\d+", "thread_id=<tid>", text)
        text = re.sub(r"pty:/dev/pts/\d+", "pty:<pts>", text)
        if text.startswith("char"):  # info chardev: QEMU's order is its hash table's
            text = "".join(sorted(text.splitlines(keepends=True)))
        if self.package:  # info version: "7.2.22" then the package string
            text = text.replace(f"7.2.22{self.package}\r\n", "7.2.22<package>\r\n")
        return text

    def hmp(self, line: str, **extra: Any) -> Any:
        """The reply's return string (normalised), or its error."""
        reply = self.c.cmd("human-monitor-command", {"command-line": line, **extra})
        return self.normalise(reply["return"]) if "return" in reply else reply["error"]

    def exchange(self, request: dict[str, Any]) -> list[Any]:
        """Every message up to the reply (events with their data, timestamps dropped)."""
        msgs = strip_volatile(self.c.exchange(orjson.dumps(request)))
        return [self.normalise(m["return"]) if isinstance(m.get("return"), str) else m
                for m in msgs]

    def until(self, check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"{self.name}: {what}"
            time.sleep(0.02)  # another process's state: nothing to wait on but polling


@contextmanager
def pair(tmp: Path, extra: tuple[str, ...] = ()) -> Iterator[tuple[Side, Side]]:
    """The libvirt domain of test_qemu_cmdline on QEMU 7.2 and on qmpjobd."""
    assert QEMU is not None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sides = []
        for cmd, name in (([QEMU], "qemu"), (LAUNCH, "ours")):
            proc, c = _start_domain(cmd, tmp, name, extra)
            procs.append(proc)
            sides.append(Side(name, proc, c, tmp))
        yield sides[0], sides[1]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def same(qemu: Side, ours: Side, lines: list[str]) -> None:
    """Each line's output, compared one by one (the first difference is named)."""
    for line in lines:
        assert ours.hmp(line) == qemu.hmp(line), line


PRELAUNCH_LINES = [
    # what virsh users ask
    "info status", "info block", "info block -n", "info block -v", "info block -n -v",
    "info block libvirt-1-format", "info block libvirt-1-storage", "info block virtio-disk0",
    "info block -n libvirt-1-storage", "info block nosuch", "info block \"libvirt-1-format\"",
    "info block-jobs", "info version", "info name", "info uuid", "info cpus", "info kvm",
    "info hotpluggable-cpus", "info chardev", "info iothreads",
    # QEMU 7.2 has no "info jobs"
    "info jobs",
    # help, in every form
    "help", "?", "info", "help info", "help info  ", "help stop", "help s", "help c",
    "help info status", "help   info   status extra", "help \"info\"", "help help", "help log",
    "help log ", "help foo", "help foo bar", "help info foo", "help \"unterminated",
    "help a b c d e f g h i j k l m n o p", "help a b c d e f g h i j k l m n o p q",
    # the parser's refusals
    "", "   ", "foo", "INFO STATUS", "info foo", "  info   foo  bar", "/", "info/x", "stop/x",
    "  stop x", "  info   status  x", "info status\0 x", "info cpus x", "quit x",
    "info block -", "info block -x", "info block -v -n", "info block -n -v nosuch x",
    "block_job_cancel -x nosuch", "block_job_pause", "block_job_complete x y",
    # commands over QMP commands that refuse
    "block_job_cancel nosuch", "block_job_cancel -f nosuch", "block_job_resume nosuch",
    "x_colo_lost_heartbeat",
    # COLO-FT's drive_add -n / drive_del, refused before anything is opened
    "drive_add -n 'x", "drive_add", "drive_add -n x y", "drive_del nosuch", "drive_del",
]


@needs_qemu
def test_texts_as_qemu(tmp_path: Path) -> None:
    """Every line above gives QEMU 7.2's text, byte for byte (help tables included)."""
    with pair(tmp_path) as (qemu, ours):
        same(qemu, ours, PRELAUNCH_LINES)
        assert ours.hmp("info version") == qemu.hmp("info version") == "7.2.22<package>\r\n"
        # the current CPU: cpu-index, and QEMU's refusal of a CPU that does not exist
        for extra in ({"cpu-index": 1}, {"cpu-index": 0}, {"cpu-index": 2},
                      {"cpu-index": -1}):
            assert ours.hmp("info cpus", **extra) == qemu.hmp("info cpus", **extra), extra
        assert ours.hmp("info cpus", **{"cpu-index": 1}) == (
            "  CPU #0: thread_id=<tid>\r\n* CPU #1: thread_id=<tid>\r\n")


LIFE_CYCLE = ["info status", "cont", "info status", "cont", "stop", "info status", "stop",
              "c", "info status", "system_reset", "info status", "s", "info status",
              "system_reset", "info status", "system_powerdown", "info status", "cont",
              "info status"]
"""prelaunch, running, paused, a reset from paused (prelaunch again), powerdown while the
guest does not run (a guest that runs powers off in qmpjobd, not under QEMU's BIOS)."""


@needs_qemu
def test_run_states_and_events_as_qemu(tmp_path: Path) -> None:
    """stop, cont, system_reset, system_powerdown as HMP commands: the QMP commands' events,
    before the reply, and the same `info status` after each."""
    with pair(tmp_path) as (qemu, ours):
        for line in LIFE_CYCLE:
            req = {"execute": "human-monitor-command", "arguments": {"command-line": line}}
            assert ours.exchange(req) == qemu.exchange(req), line
        assert ours.hmp("info status") == "VM status: running\r\n"


@needs_qemu
def test_incoming_states_as_qemu(tmp_path: Path) -> None:
    """-incoming defer: inmigrate, which stop and cont only re-arm, and a reset leaves."""
    with pair(tmp_path, ("-incoming", "defer")) as (qemu, ours):
        same(qemu, ours, ["info status", "stop", "info status", "cont", "info status",
                          "system_reset", "info status"])
        assert ours.hmp("info status") == "VM status: paused (inmigrate)\r\n"


@needs_qemu
@pytest.mark.parametrize("running", [True, False], ids=["running", "prelaunch"])
def test_postmigrate_as_qemu(tmp_path: Path, running: bool) -> None:
    """After an outgoing migration (to a sink that only reads): postmigrate, left by cont."""
    with pair(tmp_path) as (qemu, ours):
        for side in (qemu, ours):
            if running:
                side.c.cmd("cont")
            sink = socket.socket()
            sink.bind(("127.0.0.1", 0))
            sink.listen(1)

            def drain(sink: socket.socket = sink) -> None:
                conn, _ = sink.accept()
                with conn, sink:
                    while conn.recv(1 << 20):
                        pass

            threading.Thread(target=drain, daemon=True).start()
            port = sink.getsockname()[1]
            assert side.c.cmd("migrate", {"uri": f"tcp:127.0.0.1:{port}"}) == {"return": {}}
            side.until(lambda side=side: side.c.cmd("query-migrate")["return"].get("status")
                       == "completed", "migration completed")
        same(qemu, ours, ["info status", "stop", "info status", "cont", "info status"])
        assert ours.hmp("info status") == "VM status: running\r\n"


def _job(side: Side) -> dict[str, Any] | None:
    jobs = side.c.cmd("query-block-jobs")["return"]
    return jobs[0] if jobs else None


@needs_qemu
def test_block_jobs_as_qemu(tmp_path: Path) -> None:
    """info block-jobs and block_job_* around a backup held back by speed=1."""
    with pair(tmp_path) as (qemu, ours):
        same(qemu, ours, ["info block-jobs"])
        for side in (qemu, ours):
            target = tmp_path / f"{side.name}-target.raw"
            target.write_bytes(b"\0" * (16 << 20))
            side.c.cmd("blockdev-add", {"driver": "file", "filename": str(target),
                                        "node-name": "target"})
            assert side.c.cmd("blockdev-backup", {
                "device": "libvirt-1-format", "target": "target", "sync": "full",
                "job-id": "bk", "speed": 1}) == {"return": {}}
            # the first slice is copied at once, then the rate limit holds the job
            side.until(lambda side=side: (_job(side) or {}).get("offset", 0) > 0,
                       "first slice copied")
        same(qemu, ours, ["info block-jobs", "block_job_complete bk", "block_job_resume bk"])
        for side in (qemu, ours):
            side.c.cmd("block-job-pause", {"device": "bk"})
            side.until(lambda side=side: (_job(side) or {}).get("status") == "paused",
                       "job paused")
        same(qemu, ours, ["info block-jobs", "block_job_cancel bk", "block_job_resume bk"])
        for side in (qemu, ours):
            side.until(lambda side=side: (_job(side) or {}).get("status") == "running",
                       "job running")
        same(qemu, ours, ["block_job_cancel bk"])
        for side in (qemu, ours):
            side.until(lambda side=side: _job(side) is None, "job gone")
        same(qemu, ours, ["info block-jobs", "block_job_cancel bk"])
        assert ours.hmp("info block-jobs") == "No active jobs\r\n"


@needs_qemu
def test_quit_as_qemu(tmp_path: Path) -> None:
    """quit: SHUTDOWN, the empty reply, then the process ends."""
    with pair(tmp_path) as (qemu, ours):
        seen = []
        for side in (qemu, ours):
            side.c.send(b'{"execute":"human-monitor-command","arguments":'
                        b'{"command-line":"quit"},"id":1}\n')
            seen.append([side.c.recv(), side.c.recv()])
            assert side.proc.wait(10) == 0
        assert strip_volatile(seen[1]) == strip_volatile(seen[0]) == [
            {"event": "SHUTDOWN", "data": {"guest": False, "reason": "host-qmp-quit"}},
            {"return": "", "id": 1}]


# -- without QEMU ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "text"), [
    ("running", "VM status: running"),
    ("paused", "VM status: paused"),
    *[(s, f"VM status: paused ({s})") for s in (
        "prelaunch", "inmigrate", "postmigrate", "finish-migrate", "shutdown", "suspended",
        "internal-error", "io-error", "guest-panicked", "watchdog", "debug", "restore-vm",
        "save-vm", "colo")],
])
def test_info_status_of_every_run_state(status: str, text: str) -> None:
    """hmp_info_status(): "running", or "paused" with any other stopped state named (the
    states a test cannot reach on QEMU without a guest follow the same rule)."""
    vm = Vm()
    try:
        vm.machine.status = status
        got = vm.hmp.human_monitor_command({"command-line": "info status"}, Session())
        assert got == text + "\r\n"
    finally:
        vm.close()


def test_without_vcpus() -> None:
    """A machine without vCPUs (-M none): no CPU to list, none to choose."""
    vm = Vm()
    try:
        s = Session()
        assert vm.hmp.human_monitor_command({"command-line": "info cpus"}, s) == ""
        assert vm.hmp.human_monitor_command({"command-line": "info name"}, s) == ""
        assert vm.hmp.human_monitor_command({"command-line": "info block"}, s) == ""
        with pytest.raises(QMPError, match="Parameter 'cpu-index' expects a CPU number"):
            vm.hmp.human_monitor_command({"command-line": "info cpus", "cpu-index": 0}, s)
    finally:
        vm.close()


def test_unimplemented_commands_say_so_as_qemu_would() -> None:
    """A command of QEMU's tables without an implementation here: QEMU's text for a command
    without a handler, up to where its arguments start."""
    vm = Vm()
    try:
        s = Session()
        assert vm.hmp.human_monitor_command({"command-line": " balloon 100"}, s) == \
            'Command " balloon " is not available.\r\n'
        assert vm.hmp.human_monitor_command({"command-line": "info pci"}, s) == \
            'Command "info pci" is not available.\r\n'
    finally:
        vm.close()


def test_size_to_str_as_qemu() -> None:
    assert [size_to_str(v) for v in (0, 999, 1000, 1024, 1536, 16 << 20, 10**12)] == [
        "0 B", "999 B", "0.977 KiB", "1 KiB", "1.5 KiB", "16 MiB", "931 GiB"]
