"""A real libvirt 9.0 runs qmpjobd as its QEMU: probe, define, start and a domain's life cycle.

The daemons are started by hand (no systemd): virtlogd and libvirtd with a private log file,
unless a libvirtd already serves qemu:///system.  qmpjobd is installed the way the README's
"Under libvirt" section says, in a venv made from the system python3 outside root's home, so
that libvirt's ``libvirt-qemu`` user can run it.  Skipped, with the reason, only where libvirtd
cannot run (not installed, or its ``libvirt-qemu`` user missing).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

REPO = Path(__file__).resolve().parent.parent
PREFIX = Path("/var/lib/qmpjobd-test")
VENV = PREFIX / "venv"
EMULATOR = VENV / "bin" / "qmpjobd-system-x86_64"
IMAGES = Path("/var/lib/libvirt/images")
SOCK = Path("/run/libvirt/libvirt-sock")
NAME = "qmpjobd-t1"

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


def _why_not() -> str | None:
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


REASON = _why_not()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True,
                          text=True, timeout=120)
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def _wait(cond: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # other processes' state: nothing to block on but polling


def _pid_of(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _start_libvirtd(log: Path) -> int:
    conf = log.with_suffix(".conf")
    conf.write_text('log_filters="1:qemu.qemu_monitor 1:qemu.qemu_process 3:*"\n'
                    f'log_outputs="1:file:{log}"\n')
    subprocess.run(["libvirtd", "-d", "-f", str(conf)], check=True, timeout=30)
    _wait(lambda: SOCK.exists() and virsh("version", check=False).returncode == 0,
          "libvirtd to serve qemu:///system")
    pid = _pid_of("/run/libvirtd.pid")
    assert pid is not None
    return pid


@pytest.fixture(scope="module")
def libvirt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Running virtlogd and libvirtd (started here unless already up), and qmpjobd installed
    for libvirt-qemu; yields libvirtd's log file."""
    log = tmp_path_factory.mktemp("libvirt") / "libvirtd.log"
    os.makedirs("/var/log/libvirt/qemu", exist_ok=True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    PREFIX.mkdir(parents=True, exist_ok=True)
    if not VENV.exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(VENV)], check=True, timeout=120)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "--force-reinstall",
                    "--no-deps", str(REPO)], check=True, timeout=300)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", str(REPO)], check=True,
                   timeout=300)
    ours: list[str] = []
    """The pid files of the daemons started here (libvirtd may be restarted by a test)."""
    if not (virtlogd := _pid_of("/run/virtlogd.pid")) or not _alive(virtlogd):
        subprocess.run(["virtlogd", "-d"], check=True, timeout=30)
        _wait(lambda: _pid_of("/run/virtlogd.pid") is not None, "virtlogd")
        ours.append("/run/virtlogd.pid")
    if virsh("version", check=False).returncode != 0:
        _start_libvirtd(log)
        ours.insert(0, "/run/libvirtd.pid")
    try:
        yield log
    finally:
        virsh("destroy", NAME, check=False)
        virsh("undefine", NAME, check=False)
        for pidfile in ours:
            pid = _pid_of(pidfile)
            if pid is not None and _alive(pid):
                os.kill(pid, signal.SIGTERM)
                _wait(lambda pid=pid: not _alive(pid), f"pid {pid} to exit")


def _domain_pid() -> int | None:
    return _pid_of(f"/run/libvirt/qemu/{NAME}.pid")


def test_a_domain_lives_its_life_on_qmpjobd(libvirt: Path, tmp_path: Path) -> None:
    """define, start, what virsh shows, QMP and HMP pass-through, suspend/resume, reboot,
    libvirtd restarted under a running domain, shutdown, start, destroy, undefine."""
    image = IMAGES / f"{NAME}.raw"
    image.write_bytes(b"\0" * (16 << 20))
    xml = tmp_path / "domain.xml"
    xml.write_text(DOMAIN.format(name=NAME, emulator=EMULATOR, image=image))
    virsh("define", str(xml))
    virsh("start", NAME)
    assert virsh("domstate", NAME, "--reason").stdout.strip() == "running (booted)"
    pid = _domain_pid()
    assert pid is not None and _alive(pid)
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1].endswith(
        b"qmpjobd-system-x86_64")
    info = virsh("dominfo", NAME).stdout
    assert "CPU(s):         2" in info and "Max memory:     65536 KiB" in info
    assert f"vda      {image}" in virsh("domblklist", NAME).stdout
    assert "vda rd_req 0" in virsh("domblkstat", NAME, "vda").stdout
    status = orjson.loads(virsh("qemu-monitor-command", NAME,
                                '{"execute":"query-status"}').stdout)
    assert status["return"] == {"status": "running", "singlestep": False, "running": True}
    name = orjson.loads(virsh("qemu-monitor-command", NAME, '{"execute":"query-name"}').stdout)
    assert name["return"] == {"name": NAME}

    virsh("suspend", NAME)
    assert virsh("domstate", NAME, "--reason").stdout.strip() == "paused (user)"
    virsh("resume", NAME)
    assert virsh("domstate", NAME, "--reason").stdout.strip() == "running (unpaused)"

    virsh("reboot", NAME)  # the guest powers off; libvirt resets and resumes it
    _wait(lambda: "running" in virsh("domstate", NAME).stdout, "running after reboot")
    assert _domain_pid() == pid

    assert virsh("blockjob", NAME, "vda", "--info").stdout.strip() == \
        "No current block job for vda"
    assert "Job type:         None" in virsh("domjobinfo", NAME).stdout

    libvirtd = _pid_of("/run/libvirtd.pid")
    assert libvirtd is not None
    os.kill(libvirtd, signal.SIGTERM)
    _wait(lambda: not _alive(libvirtd), "libvirtd to exit")
    _start_libvirtd(libvirt)
    assert virsh("domstate", NAME).stdout.strip() == "running"
    assert _domain_pid() == pid
    assert orjson.loads(virsh("qemu-monitor-command", NAME, '{"execute":"query-status"}')
                        .stdout)["return"]["status"] == "running"

    virsh("shutdown", NAME)  # on_poweroff destroy: libvirt ends the process
    _wait(lambda: virsh("domstate", NAME).stdout.strip() == "shut off", "shut off")
    _wait(lambda: not _alive(pid), "the emulator to exit")

    virsh("start", NAME)
    pid = _domain_pid()
    assert pid is not None and _alive(pid)
    virsh("destroy", NAME)
    assert virsh("domstate", NAME, "--reason").stdout.strip() == "shut off (destroyed)"
    _wait(lambda: not _alive(pid), "the emulator to exit")
    virsh("undefine", NAME)
    assert virsh("domstate", NAME, check=False).returncode != 0
