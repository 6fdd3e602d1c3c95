"""A real libvirt 9.0 runs qmpjobd as its QEMU: probe, define, start and a domain's life cycle.

Skipped, with the reason, only where libvirtd cannot run (not installed, or its
``libvirt-qemu`` user missing); see tests/libvirttest.py for how the daemons are run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from libvirttest import (
    DOMAIN,
    EMULATOR,
    IMAGES,
    alive,
    daemons,
    install,
    pid_of,
    start_libvirtd,
    virsh,
    wait,
    why_not,
)

REASON = why_not()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
NAME = "qmpjobd-t1"


@pytest.fixture(scope="module")
def libvirt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Running daemons and qmpjobd installed for libvirt-qemu; yields libvirtd's log file."""
    log = tmp_path_factory.mktemp("libvirt") / "libvirtd.log"
    install()
    with daemons(log):
        try:
            yield log
        finally:
            virsh("destroy", NAME, check=False)
            virsh("undefine", NAME, check=False)


def _domain_pid() -> int | None:
    return pid_of(f"/run/libvirt/qemu/{NAME}.pid")


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
    assert pid is not None and alive(pid)
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
    hmp = virsh("qemu-monitor-command", NAME, "--hmp", "info status").stdout
    assert hmp.strip() == "VM status: running"
    assert "Attached to:      /machine/peripheral/virtio-disk0/virtio-backend" in virsh(
        "qemu-monitor-command", NAME, "--hmp", "info block").stdout

    virsh("suspend", NAME)
    assert virsh("domstate", NAME, "--reason").stdout.strip() == "paused (user)"
    virsh("resume", NAME)
    assert virsh("domstate", NAME, "--reason").stdout.strip() == "running (unpaused)"

    virsh("reboot", NAME)  # the guest powers off; libvirt resets and resumes it
    wait(lambda: "running" in virsh("domstate", NAME).stdout, "running after reboot")
    assert _domain_pid() == pid

    assert virsh("blockjob", NAME, "vda", "--info").stdout.strip() == \
        "No current block job for vda"
    assert "Job type:         None" in virsh("domjobinfo", NAME).stdout

    libvirtd = pid_of("/run/libvirtd.pid")
    assert libvirtd is not None
    os.kill(libvirtd, signal.SIGTERM)
    wait(lambda: not alive(libvirtd), "libvirtd to exit")
    start_libvirtd(libvirt)
    assert virsh("domstate", NAME).stdout.strip() == "running"
    assert _domain_pid() == pid
    assert orjson.loads(virsh("qemu-monitor-command", NAME, '{"execute":"query-status"}')
                        .stdout)["return"]["status"] == "running"

    virsh("shutdown", NAME)  # on_poweroff destroy: libvirt ends the process
    wait(lambda: virsh("domstate", NAME).stdout.strip() == "shut off", "shut off")
    wait(lambda: not alive(pid), "the emulator to exit")

    virsh("start", NAME)
    pid = _domain_pid()
    assert pid is not None and alive(pid)
    virsh("destroy", NAME)
    assert virsh("domstate", NAME, "--reason").stdout.strip() == "shut off (destroyed)"
    wait(lambda: not alive(pid), "the emulator to exit")
    virsh("undefine", NAME)
    assert virsh("domstate", NAME, check=False).returncode != 0


def _workload(name: str, rate: int) -> None:
    """The emulated guest's writes to vda (virtio-disk0), through libvirt's QMP pass-through;
    rate 0 stops it once its last write is done."""
    reply = orjson.loads(virsh("qemu-monitor-command", name, orjson.dumps({
        "execute": "x-daemon-disk-workload",
        "arguments": {"device": "virtio-disk0", "rate": rate}}).decode()).stdout)
    assert reply["return"] == {}, reply


def _workload_writes(name: str) -> int:
    reply = orjson.loads(virsh("qemu-monitor-command", name,
                               '{"execute":"x-query-disk-workload"}').stdout)
    return int(reply["return"][0]["writes"]) if reply["return"] else 0


@contextmanager
def _defined(name: str, tmp_path: Path, image: Path, *made: Path) -> Iterator[None]:
    """A domain ``name`` on ``image`` defined for the block; then destroyed, its managed
    save and definition removed, and the image and ``made`` (files or directories) deleted."""
    xml = tmp_path / "domain.xml"
    xml.write_text(DOMAIN.format(name=name, emulator=EMULATOR, image=image))
    virsh("define", str(xml))
    try:
        yield
    finally:
        virsh("destroy", name, check=False)
        virsh("managedsave-remove", name, check=False)
        virsh("undefine", name, check=False)
        for path in (image, *made):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _guest_wrote(name: str, image: Path) -> bytes:
    """Let the guest write to its disk, pause the writer; the disk's bytes then."""
    _workload(name, 4 << 20)
    wait(lambda: _workload_writes(name) > 50, "the guest's writes")
    _workload(name, 0)
    return image.read_bytes()


def test_blockcopy_pivots_finishes_and_aborts(libvirt: Path, tmp_path: Path) -> None:
    """virsh blockcopy on qmpjobd, as on QEMU 7.2 (same outputs, tried on both): libvirt
    creates the copy with blockdev-create, mirrors, and with --pivot the disk is the copy
    afterwards; --finish leaves the disk where it is; an unfinished copy shows in blockjob
    --info and goes with --abort.  Each finished copy equals the disk.  Last, a copy made
    while the guest writes (x-daemon-disk-workload), the writer stopped before the pivot,
    equals the disk it leaves."""
    name = f"{NAME}-copy"
    image = IMAGES / f"{name}.raw"
    image.write_bytes(bytes(range(256)) * (16 << 12))  # 16 MiB, not all zeros
    copies = [IMAGES / f"{name}-{n}.raw" for n in ("pivot", "finish", "abort", "written",
                                                     "synchronous")]
    for copy in copies:
        copy.unlink(missing_ok=True)
    with _defined(name, tmp_path, image, *copies):
        virsh("start", name)
        done = virsh("blockcopy", name, "vda", str(copies[0]), "--wait", "--verbose", "--pivot",
                     "--transient-job")
        assert "Successfully pivoted" in done.stdout
        assert f"vda      {copies[0]}" in virsh("domblklist", name).stdout
        assert "vda rd_req 0" in virsh("domblkstat", name, "vda").stdout
        done = virsh("blockcopy", name, "vda", str(copies[1]), "--wait", "--finish",
                     "--transient-job")
        assert "Successfully copied" in done.stdout
        assert f"vda      {copies[0]}" in virsh("domblklist", name).stdout
        assert copies[0].read_bytes() == copies[1].read_bytes() == image.read_bytes()
        virsh("blockcopy", name, "vda", str(copies[2]), "--transient-job", "--bandwidth", "1")
        info = virsh("blockjob", name, "vda", "--info").stdout
        assert "Bandwidth limit: 1048576 bytes/s (1.000 MiB/s)" in info
        # a block copy is no domain job: libvirt answers these itself (as with QEMU 7.2)
        assert "Job type:         None" in virsh("domjobinfo", name).stdout
        refused = virsh("domjobabort", name, check=False)
        assert refused.returncode == 1 and "no job is active on the domain" in refused.stderr
        virsh("blockjob", name, "vda", "--abort")
        assert virsh("blockjob", name, "vda", "--info").stdout.strip() == \
            "No current block job for vda"
        assert f"vda      {copies[0]}" in virsh("domblklist", name).stdout

        _workload(name, 4 << 20)
        wait(lambda: _workload_writes(name) > 50, "the guest's writes")
        ready = virsh("blockcopy", name, "vda", str(copies[3]), "--wait", "--transient-job")
        assert "Now in mirroring phase" in ready.stdout
        written = _workload_writes(name)
        wait(lambda: _workload_writes(name) > written + 50, "writes while mirroring")
        _workload(name, 0)
        virsh("blockjob", name, "vda", "--pivot")
        assert f"vda      {copies[3]}" in virsh("domblklist", name).stdout
        assert copies[3].read_bytes() == copies[0].read_bytes() != image.read_bytes()

        # --synchronous-writes: libvirt asks for copy-mode write-blocking
        _workload(name, 4 << 20)
        ready = virsh("blockcopy", name, "vda", str(copies[4]), "--wait", "--transient-job",
                      "--synchronous-writes")
        assert "Now in mirroring phase" in ready.stdout
        written = _workload_writes(name)
        wait(lambda: _workload_writes(name) > written + 50, "writes while mirroring")
        _workload(name, 0)
        virsh("blockjob", name, "vda", "--pivot")
        assert f"vda      {copies[4]}" in virsh("domblklist", name).stdout
        assert copies[4].read_bytes() == copies[3].read_bytes()


def test_a_push_backup_is_the_disk(libvirt: Path, tmp_path: Path) -> None:
    """virsh backup-begin in push mode on qmpjobd, as on QEMU 7.2 (same outputs, tried on
    both): libvirt creates the target, runs a backup transaction and dismisses the job;
    domjobinfo --completed reports it.  The guest writes (x-daemon-disk-workload) before the
    backup and again from the moment it has begun; the target is the disk as it was when the
    backup began, the copy this test takes at that instant with the writer paused."""
    name = f"{NAME}-backup"
    image = IMAGES / f"{name}.raw"
    image.write_bytes(bytes(range(256)) * (16 << 12))
    target = IMAGES / f"{name}-target.raw"
    target.unlink(missing_ok=True)
    backup = tmp_path / "backup.xml"
    backup.write_text(f"<domainbackup mode='push'><disks><disk name='vda' type='file'>"
                      f"<target file='{target}'/><driver type='raw'/></disk></disks>"
                      "</domainbackup>")
    with _defined(name, tmp_path, image, target):
        virsh("start", name)
        at_start = _guest_wrote(name, image)
        assert "Backup started" in virsh("backup-begin", name, str(backup)).stdout
        written = _workload_writes(name)
        _workload(name, 64 << 20)
        wait(lambda: "Job type:         None" in virsh("domjobinfo", name).stdout,
             "the backup to end")
        _workload(name, 0)
        done = virsh("domjobinfo", name, "--completed").stdout
        assert "Job type:         Completed" in done and "Operation:        Backup" in done
        assert "File processed:   16.000 MiB" in done
        assert target.read_bytes() == at_start
        assert _workload_writes(name) > written and image.read_bytes() != at_start


def test_a_pull_backup_is_the_disk_over_nbd(libvirt: Path, tmp_path: Path) -> None:
    """virsh backup-begin in pull mode on qmpjobd, as on QEMU 7.2 (the same QMP, recorded
    there): libvirt creates a qcow2 scratch image over the disk (blockdev-create), starts a
    sync=none backup into it and exports it over NBD as ``vda``.  While the guest keeps
    writing, qemu-img convert and nbdcopy read the export: both equal the disk as it was at
    backup-begin.  domjobinfo shows the job; domjobabort ends it (libvirt then stops the NBD
    server and deletes the nodes) and domjobinfo --completed tells so."""
    import grp
    import pwd
    name = f"{NAME}-pull"
    image = IMAGES / f"{name}.raw"
    image.write_bytes(bytes(range(256)) * (16 << 12))
    scratch = IMAGES / f"{name}-scratch.qcow2"
    scratch.unlink(missing_ok=True)
    sockdir = IMAGES / f"{name}-nbd"
    shutil.rmtree(sockdir, ignore_errors=True)
    sockdir.mkdir()
    os.chown(sockdir, pwd.getpwnam("libvirt-qemu").pw_uid, grp.getgrnam("libvirt-qemu").gr_gid)
    sock = sockdir / "nbd.sock"
    backup = tmp_path / "backup.xml"
    backup.write_text(f"<domainbackup mode='pull'><server transport='unix' socket='{sock}'/>"
                      f"<disks><disk name='vda' backup='yes' type='file'>"
                      f"<scratch file='{scratch}'/></disk></disks></domainbackup>")
    with _defined(name, tmp_path, image, scratch, sockdir):
        virsh("start", name)
        at_start = _guest_wrote(name, image)
        assert "Backup started" in virsh("backup-begin", name, str(backup)).stdout
        assert "exportname='vda'" in virsh("backup-dumpxml", name).stdout
        written = _workload_writes(name)
        _workload(name, 8 << 20)
        wait(lambda: _workload_writes(name) > written + 100, "writes during the backup")
        info = virsh("domjobinfo", name).stdout
        assert "Job type:         Unbounded" in info and "Operation:        Backup" in info
        assert "Temporary disk space total: 16.000 MiB" in info
        uri = f"nbd+unix:///vda?socket={sock}"
        for argv, out in ((["qemu-img", "convert", "-f", "raw", "-O", "raw", uri],
                           tmp_path / "pulled.raw"),
                          (["nbdcopy", uri], tmp_path / "copied.raw")):
            if shutil.which(argv[0]) is None:
                continue
            subprocess.run([*argv, str(out)], check=True, timeout=120)
            assert out.read_bytes() == at_start
        _workload(name, 0)
        assert image.read_bytes() != at_start  # the guest did write meanwhile
        virsh("domjobabort", name)
        wait(lambda: "Job type:         None" in virsh("domjobinfo", name).stdout,
             "the backup to end")
        wait(lambda: not scratch.exists(), "libvirt to delete the scratch image")
        done = virsh("domjobinfo", name, "--completed").stdout
        assert "Job type:         Completed" in done and "Operation:        Backup" in done
        assert "Error message:    Operation canceled" in done
        monitor = orjson.loads(virsh("qemu-monitor-command", name,
                                     '{"execute":"query-block-exports"}').stdout)
        assert monitor["return"] == []


def _monitor(name: str, request: dict[str, object]) -> object:
    reply = orjson.loads(virsh("qemu-monitor-command", name, orjson.dumps(request).decode())
                         .stdout)
    assert "return" in reply, reply
    return reply["return"]


def _digest(name: str) -> str:
    reply = orjson.loads(virsh("qemu-monitor-command", name,
                               '{"execute":"x-query-guest-state"}').stdout)
    return str(reply["return"]["digest"])


def test_save_restore_and_managedsave_keep_the_guest(libvirt: Path, tmp_path: Path) -> None:
    """virsh save, restore and managedsave on qmpjobd, as on QEMU 7.2 (the same QMP,
    recorded there), and a save that domjobinfo watches and domjobabort ends: libvirt
    stops the guest, passes the file with getfd (SCM_RIGHTS) and
    migrates to fd:migrate; on restore it starts the emulator with -incoming defer and the
    file as an inherited descriptor, migrate-incoming fd:N, then cont.  The guest's memory
    digest after each restore is the one it had when saved, and domjobinfo --completed
    reports the save."""
    name = f"{NAME}-save"
    image = IMAGES / f"{name}.raw"
    image.write_bytes(bytes(16 << 20))
    saved = IMAGES / f"{name}.save"
    saved.unlink(missing_ok=True)
    with _defined(name, tmp_path, image, saved):
        virsh("start", name)
        before = _digest(name)
        # a save held (a qmpjobd drill) before its RAM: domjobinfo shows it, domjobabort
        # cancels it (migrate_cancel) and libvirt resumes the guest
        _monitor(name, {"execute": "x-daemon-colo-inject",
                        "arguments": {"phase": "ram", "action": "hold"}})
        save = subprocess.Popen(["virsh", "-c", "qemu:///system", "save", name, str(saved)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait(lambda: "Operation:        Save" in virsh("domjobinfo", name).stdout,
             "the save to show in domjobinfo")
        assert "Job type:         Unbounded" in virsh("domjobinfo", name).stdout
        virsh("domjobabort", name)
        _, err = save.communicate(timeout=60)
        assert save.returncode == 1
        assert "operation aborted: job 'domain save' canceled by client" in err
        assert virsh("domstate", name).stdout.strip() == "running"
        _monitor(name, {"execute": "x-daemon-colo-inject",
                        "arguments": {"phase": "ram", "action": "none"}})
        assert not saved.exists()
        assert f"Domain '{name}' saved to {saved}" in virsh("save", name, str(saved)).stdout
        assert virsh("domstate", name).stdout.strip() == "shut off"
        head = saved.read_bytes()[:16]
        assert head == b"LibvirtQemudSave"
        assert f"Domain restored from {saved}" in virsh("restore", str(saved)).stdout
        assert virsh("domstate", name).stdout.strip() == "running"
        assert _digest(name) == before
        done = virsh("domjobinfo", name, "--completed").stdout
        assert "Job type:         Completed" in done
        assert f"Domain '{name}' state saved by libvirt" in virsh("managedsave", name).stdout
        assert "Managed save:   yes" in virsh("dominfo", name).stdout
        virsh("start", name)
        assert virsh("domstate", name).stdout.strip() == "running"
        assert _digest(name) == before
