"""Helpers for running a real libvirtd with qmpjobd as its emulator (tests and benchmarks).

The daemons are started by hand (no systemd): virtlogd, and libvirtd with a private log file.
qmpjobd is installed the way the README's "Under libvirt" section says, in a venv made from
the system python3 outside root's home, so that libvirt's ``libvirt-qemu`` user can run it.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PREFIX = Path("/var/lib/qmpjobd-test")
VENV = PREFIX / "venv"
EMULATOR = VENV / "bin" / "qmpjobd-system-x86_64"
IMAGES = Path("/var/lib/libvirt/images")
SOCK = Path("/run/libvirt/libvirt-sock")

DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{emulator}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{image}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""


def why_not() -> str | None:
    """Why libvirtd cannot run here, or None."""
    for tool in ("libvirtd", "virtlogd", "virsh"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install libvirt-daemon " \
                   "libvirt-daemon-driver-qemu libvirt-clients)"
    try:
        pwd.getpwnam("libvirt-qemu")
    except KeyError:
        return "libvirt's libvirt-qemu user does not exist (.ci/run creates it)"
    if os.geteuid() != 0:
        return "libvirtd for qemu:///system needs root"
    return None




def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True,
                          text=True, timeout=120)
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def wait(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``cond`` (the state of other processes: nothing to block on) until true."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def pid_of(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


REAPER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
subprocess.run(sys.argv[1:], check=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""
"""Runs a command as a child subreaper that reaps every orphan below it at once, as systemd
does for a service: ``libvirtd -d`` under it sees its ended processes vanish promptly."""


def start_libvirtd(log: Path, debug: bool = True, prompt_reaper: bool = False) -> int:
    """libvirtd in the background, logging to ``log`` (with every monitor message if
    ``debug``: for a test's post-mortem, not for timing); returns its pid.  With
    ``prompt_reaper`` it runs under :data:`REAPER` instead of leaving its orphans to PID 1."""
    conf = log.with_suffix(".conf")
    filters = "1:qemu.qemu_monitor 1:qemu.qemu_process 3:*" if debug else "3:*"
    conf.write_text(f'log_filters="{filters}"\nlog_outputs="1:file:{log}"\n')
    cmd = ["libvirtd", "-d", "-f", str(conf)]
    if prompt_reaper:  # the reaper leaves once libvirtd and every orphan have ended
        subprocess.Popen([sys.executable, "-c", REAPER, *cmd], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        subprocess.run(cmd, check=True, timeout=30)
    wait(lambda: SOCK.exists() and virsh("version", check=False).returncode == 0,
         "libvirtd to serve qemu:///system")
    pid = pid_of("/run/libvirtd.pid")
    assert pid is not None
    return pid




def install() -> None:
    """qmpjobd from this checkout into the venv libvirt-qemu can run."""
    os.makedirs("/var/log/libvirt/qemu", exist_ok=True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    PREFIX.mkdir(parents=True, exist_ok=True)
    if not VENV.exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(VENV)], check=True, timeout=120)
    pip = str(VENV / "bin" / "pip")
    subprocess.run([pip, "install", "-q", "--force-reinstall", "--no-deps", str(REPO)],
                   check=True, timeout=300)
    subprocess.run([pip, "install", "-q", str(REPO)], check=True, timeout=300)


@contextmanager
def kvm_as_debian() -> Iterator[None]:
    """/dev/kvm as Debian's udev rule leaves it (root:kvm 0660) for the duration.  Root-only,
    as on some build machines, it makes libvirt probe every emulator again at each lookup
    (the probe, which keeps CAP_DAC_OVERRIDE, opens it; libvirt's own check as libvirt-qemu
    cannot), seconds each time, for QEMU and qmpjobd alike."""
    try:
        st = os.stat("/dev/kvm")
    except OSError:
        yield
        return
    os.chown("/dev/kvm", 0, grp.getgrnam("kvm").gr_gid)
    os.chmod("/dev/kvm", 0o660)
    try:
        yield
    finally:
        os.chown("/dev/kvm", st.st_uid, st.st_gid)
        os.chmod("/dev/kvm", st.st_mode & 0o777)


@contextmanager
def daemons(log: Path, debug: bool = True, prompt_reaper: bool = False) -> Iterator[None]:
    """virtlogd and libvirtd running (started here unless already up; those started here are
    stopped at the end, by their pid files, as a test may restart libvirtd), with /dev/kvm
    as on a Debian host."""
    with kvm_as_debian():
        yield from _daemons(log, debug, prompt_reaper)


def _daemons(log: Path, debug: bool, prompt_reaper: bool = False) -> Iterator[None]:
    ours: list[str] = []
    if not (virtlogd := pid_of("/run/virtlogd.pid")) or not alive(virtlogd):
        subprocess.run(["virtlogd", "-d"], check=True, timeout=30)
        wait(lambda: pid_of("/run/virtlogd.pid") is not None, "virtlogd")
        ours.append("/run/virtlogd.pid")
    if virsh("version", check=False).returncode != 0:
        start_libvirtd(log, debug, prompt_reaper)
        ours.insert(0, "/run/libvirtd.pid")
    try:
        yield
    finally:
        for pidfile in ours:
            pid = pid_of(pidfile)
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGTERM)
                wait(lambda pid=pid: not alive(pid), f"pid {pid} to exit")
