"""qmpjobd-system-x86_64: QEMU 7.2's command line, its refusals (compared with the real QEMU),
libvirt's probe mode (-daemonize, -pidfile) and domain mode (a passed monitor descriptor)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qmptest import NO_QEMU_REASON, QEMU, Client, wait_for_socket

from qmpjobd.qemu import cmdline

PROG = "qmpjobd-system-x86_64"
LAUNCH = [sys.executable, "-c",
          "import sys; from qmpjobd.qemu.main import main; sys.argv[0] = sys.argv[1]; "
          "del sys.argv[1]; sys.exit(main())", PROG]
"""Runs the front end with QEMU's argv[0] convention (its basename prefixes every error)."""

BASE = ["-M", "none", "-nodefaults", "-display", "none"]

REFUSED = [
    ["-foo"],
    ["--bar", "x"],
    ["-name"],
    ["-incoming"],
    ["-m", "abc"],
    ["-m", "size=12Q"],
    ["-name", "guest=x,bogus=1"],
    ["-smp", "abc"],
    ["-uuid", "xyz"],
    ["-uuid", "1234567812341234123412345678abcd"],
    ["-mon", "chardev=nope,mode=control"],
    ["-chardev", "socket,id=c,fd=99,server=on,wait=off"],
    ["-blockdev", "{"],
    ["-chardev", "socket,id=c,path=/tmp/qmpjobd-test-refused.sock,server=on,wait=off",
     "-mon", "chardev=c,mode=control", "-mon", "chardev=c,mode=control"],
]


def run_front(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAUNCH, *args], capture_output=True, text=True, timeout=30,
                          **kw)  # type: ignore[call-overload, no-any-return]


@pytest.mark.skipif(QEMU is None, reason=NO_QEMU_REASON)
@pytest.mark.parametrize("bad", REFUSED, ids=[" ".join(c) for c in REFUSED])
def test_refused_as_qemu_refuses(bad: list[str], tmp_path: Path) -> None:
    """Same exit status and the same text after the program name as QEMU 7.2."""
    assert QEMU is not None
    link = tmp_path / PROG
    link.symlink_to(QEMU)  # QEMU prefixes its errors with its own basename
    want = subprocess.run([str(link), *BASE, *bad], capture_output=True, text=True, timeout=30)
    got = run_front([*BASE, *bad])
    assert (got.returncode, got.stderr) == (want.returncode, want.stderr)
    assert got.returncode == 1


def test_qemu_opts_syntax() -> None:
    assert cmdline.parse_opts("socket,id=c,,x,path=/a,,b,server,nowait", "backend") == {
        "backend": "socket", "id": "c,x", "path": "/a,b", "server": "on", "wait": "off"}
    assert cmdline.parse_size("64", "M") == 64 << 20
    assert cmdline.parse_size("65536k") == 64 << 20
    assert cmdline.parse_size("1.5G") == 3 << 29
    with pytest.raises(ValueError):
        cmdline.parse_size("1.5")


def test_a_libvirt_domain_line_is_understood() -> None:
    """The shape of the line libvirt 9.0 writes for a TCG domain with one raw disk."""
    cfg = cmdline.parse([
        "-name", "guest=t1,debug-threads=on", "-S",
        "-object", '{"qom-type":"secret","id":"masterKey0","format":"raw",'
                   '"file":"/var/lib/libvirt/qemu/domain-1-t1/master-key.aes"}',
        "-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram",
        "-accel", "tcg", "-cpu", "qemu64", "-m", "size=65536k",
        "-object", '{"qom-type":"memory-backend-ram","id":"pc.ram","size":67108864}',
        "-overcommit", "mem-lock=off", "-smp", "2,sockets=2,cores=1,threads=1",
        "-uuid", "0A0B0C0D-1111-2222-3333-444455556666", "-no-user-config", "-nodefaults",
        "-chardev", "socket,id=charmonitor,fd=27,server=on,wait=off",
        "-mon", "chardev=charmonitor,id=monitor,mode=control", "-rtc", "base=utc",
        "-no-shutdown", "-boot", "strict=on",
        "-blockdev", '{"driver":"file","filename":"/var/lib/libvirt/images/t1.raw",'
                     '"node-name":"libvirt-1-storage","auto-read-only":true,'
                     '"discard":"unmap"}',
        "-blockdev", '{"node-name":"libvirt-1-format","read-only":false,"driver":"raw",'
                     '"file":"libvirt-1-storage"}',
        "-device", '{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x3",'
                   '"drive":"libvirt-1-format","id":"virtio-disk0","bootindex":1}',
        "-audiodev", '{"id":"audio1","driver":"none"}',
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,"
                    "resourcecontrol=deny",
        "-msg", "timestamp=on"])
    assert (cfg.name, cfg.paused, cfg.no_shutdown) == ("t1", True, True)
    assert cfg.uuid == "0a0b0c0d-1111-2222-3333-444455556666"
    assert (cfg.ram, cfg.cpus, cfg.machine, cfg.accel) == (64 << 20, 2, "pc-i440fx-7.2", ["tcg"])
    assert [(m.id, m.fd, m.server) for m in cfg.monitors] == [("charmonitor", 27, True)]
    assert [b["node-name"] for b in cfg.blockdevs] == ["libvirt-1-storage", "libvirt-1-format"]
    assert cfg.devices[0]["drive"] == "libvirt-1-format"
    assert {name for name, _ in cfg.ignored} >= {"object", "overcommit", "rtc", "boot",
                                                 "audiodev", "sandbox", "msg"}


def _status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict ({} once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _wait_gone(pid: int, timeout: float = 10.0, zombie: bool = True) -> None:
    """Wait until ``pid`` has ended: exited (a zombie counts unless ``zombie`` is false,
    which asks for it to be reaped too)."""
    deadline = time.monotonic() + timeout
    while (status := _status(pid)) and not (zombie and status["State"].startswith("Z")):
        assert time.monotonic() < deadline, f"pid {pid} still there: {status['State']}"
        time.sleep(0.02)  # not our child (daemonized): nothing to wait on but /proc


def test_probe_mode_daemonizes_once_the_monitor_accepts(tmp_path: Path) -> None:
    """libvirt's probe: the first process exits 0 only when the monitor accepts; the daemon's
    pid is in the pidfile, its stdio is /dev/null; SIGTERM ends it with SHUTDOWN and removes
    the socket and the pidfile."""
    sock, pidfile = tmp_path / "mon.sock", tmp_path / "qemu.pid"
    done = run_front(["-S", "-no-user-config", "-nodefaults", "-nographic",
                      "-machine", "none,accel=kvm:tcg",
                      "-qmp", "unix:mon.sock,server=on,wait=off",
                      "-pidfile", "qemu.pid", "-daemonize"], cwd=tmp_path)  # relative, as QEMU
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    pid = int(pidfile.read_text())
    assert pidfile.read_text() == f"{pid}\n" and (pidfile.stat().st_mode & 0o777) == 0o600
    try:
        c = Client(str(sock), timeout=10)  # no retry needed: it accepts already
        assert c.greeting["QMP"]["version"]["qemu"] == {"micro": 22, "minor": 2, "major": 7}
        c.negotiate()
        assert c.cmd("query-status")["return"]["status"] == "prelaunch"
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        assert os.getsid(pid) != os.getsid(0) and os.readlink(f"/proc/{pid}/cwd") == "/"
        # Its parent is not init but the session's leader, which holds nothing open and
        # reaps it the moment it ends (libvirt polls kill(pid, 0) until the pid is gone).
        reaper = _status(pid)["PPid"]
        assert reaper != "1" and os.getsid(int(reaper)) == os.getsid(pid) == int(reaper)
        assert {os.readlink(f"/proc/{reaper}/fd/{fd}")
                for fd in os.listdir(f"/proc/{reaper}/fd")} == {"/dev/null"}
        os.kill(pid, signal.SIGTERM)
        ev = c.recv()
        assert ev["event"] == "SHUTDOWN" and ev["data"] == {"guest": False,
                                                            "reason": "host-signal"}
        _wait_gone(pid, zombie=False)  # reaped, not left for init
        _wait_gone(int(reaper))
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    assert not sock.exists() and not pidfile.exists()


@contextlib.contextmanager
def _pc_machine(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Client, str]]:
    """qmpjobd-system-x86_64 -machine pc with a -qmp monitor: the process, a negotiated
    client and the socket path; killed at the end if it is still running."""
    path = str(tmp_path / "m.sock")
    proc = subprocess.Popen([*LAUNCH, "-machine", "pc", "-qmp",
                             f"unix:{path},server=on,wait=off"], stderr=subprocess.PIPE)
    try:
        wait_for_socket(path, proc)
        c = Client(path)
        c.negotiate()
        yield proc, c, path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_quit_racing_a_powerdown_gives_one_shutdown(tmp_path: Path) -> None:
    with _pc_machine(tmp_path) as (proc, c, _):
        c.send(b'{"execute":"system_powerdown"}\n{"execute":"quit"}\n')
        got = []
        with contextlib.suppress(EOFError, ConnectionError):
            while True:
                m = c.recv()
                got.append((m.get("event"), (m.get("data") or {}).get("reason")))
        assert [e for e, _ in got if e == "SHUTDOWN"] == ["SHUTDOWN"]
        assert ("SHUTDOWN", "host-qmp-quit") in got
        assert proc.wait(10) == 0


def test_a_passed_socket_that_is_only_bound_is_made_to_listen(tmp_path: Path) -> None:
    path = str(tmp_path / "bound.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    fd = sock.fileno()
    proc = subprocess.Popen([*LAUNCH, "-S", "-chardev", f"socket,id=m,fd={fd},server=on",
                             "-mon", "chardev=m,mode=control"], pass_fds=(fd,),
                            stderr=subprocess.PIPE)
    sock.close()
    try:
        wait_for_socket(path, proc)
        c = Client(path)
        c.negotiate()
        assert c.cmd("query-status")["return"]["status"] == "prelaunch"
    finally:
        proc.kill()
        proc.wait()


def test_a_monitor_on_a_pty_is_refused(tmp_path: Path) -> None:
    got = run_front(["-S", "-chardev", "pty,id=m", "-mon", "chardev=m,mode=control"])
    assert got.returncode == 1
    assert "a QMP monitor must be a socket chardev here" in got.stderr


def test_a_locked_pidfile_is_refused(tmp_path: Path) -> None:
    sock, pidfile = tmp_path / "mon.sock", tmp_path / "qemu.pid"
    args = ["-S", "-machine", "none", "-qmp", f"unix:{sock},server=on,wait=off",
            "-pidfile", str(pidfile)]
    first = subprocess.Popen([*LAUNCH, *args], stderr=subprocess.PIPE)
    try:
        wait_for_socket(str(sock), first)
        Client(str(sock), timeout=10).negotiate()
        second = run_front(args)
        assert second.returncode == 1
        assert second.stderr == (f"{PROG}: cannot create PID file: Cannot lock pid file: "
                                 "Resource temporarily unavailable\n")
    finally:
        first.terminate()
        first.wait(10)


def test_domain_mode_serves_a_passed_listening_descriptor(tmp_path: Path) -> None:
    """libvirt's domain start: the monitor is a listening socket it passes as fd=N; no fork;
    -S holds the guest in prelaunch until cont; -name and -blockdev take effect."""
    path = str(tmp_path / "monitor.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1)
    fd = lsock.fileno()
    image = tmp_path / "t1.raw"
    image.write_bytes(b"\0" * (1 << 20))
    proc = subprocess.Popen([
        *LAUNCH, "-name", "guest=t1,debug-threads=on", "-S", "-no-user-config", "-nodefaults",
        "-chardev", f"socket,id=charmonitor,fd={fd},server=on,wait=off",
        "-mon", "chardev=charmonitor,id=monitor,mode=control", "-no-shutdown",
        "-blockdev", f'{{"driver":"file","filename":"{image}","node-name":"libvirt-1-storage",'
                     '"auto-read-only":true,"discard":"unmap"}',
        "-blockdev", '{"node-name":"libvirt-1-format","read-only":false,"driver":"raw",'
                     '"file":"libvirt-1-storage"}'], pass_fds=(fd,), stderr=subprocess.PIPE)
    lsock.close()
    try:
        c = Client(path, timeout=10)
        c.negotiate()
        assert c.cmd("query-name") == {"return": {"name": "t1"}}
        assert c.cmd("query-status")["return"]["status"] == "prelaunch"
        nodes = c.cmd("query-named-block-nodes", {"flat": True})["return"]
        assert {n["node-name"] for n in nodes} == {"libvirt-1-storage", "libvirt-1-format"}
        got = c.exchange(b'{"execute":"cont"}')
        assert [m.get("event", m.get("return")) for m in got] == ["RESUME", {}]  # QEMU's order
        assert c.cmd("query-status")["return"]["status"] == "running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_bad_blockdev_is_refused_with_qemus_text(tmp_path: Path) -> None:
    got = run_front(["-S", "-machine", "none", "-blockdev",
                     '{"driver":"file","filename":"/nonexistent/x.raw","node-name":"n1"}'])
    assert got.returncode == 1
    assert got.stderr.startswith(f"{PROG}: -blockdev ")
    assert "Could not open '/nonexistent/x.raw': No such file or directory" in got.stderr


def domain_args(image: Path, monitor: list[str]) -> list[str]:
    """A domain's command line as libvirt 9.0 writes it (recorded), with ``monitor``."""
    return [
        "-name", "guest=t1,debug-threads=on", "-S",
        "-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off", "-accel", "tcg",
        "-cpu", "qemu64", "-m", "64", "-overcommit", "mem-lock=off",
        "-smp", "2,sockets=2,cores=1,threads=1",
        "-uuid", "0659dba2-2930-496c-a2c7-d43f0096dd6b", "-display", "none",
        "-no-user-config", "-nodefaults", *monitor, "-rtc", "base=utc", "-no-shutdown",
        "-boot", "strict=on",
        "-blockdev", f'{{"driver":"file","filename":"{image}","node-name":"libvirt-1-storage",'
                     '"auto-read-only":true,"discard":"unmap"}',
        "-blockdev", '{"node-name":"libvirt-1-format","read-only":false,"driver":"raw",'
                     '"file":"libvirt-1-storage"}',
        "-device", '{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x2",'
                   '"drive":"libvirt-1-format","id":"virtio-disk0","bootindex":1}',
        "-audiodev", '{"id":"audio1","driver":"none"}',
        "-device", "virtio-balloon-pci,id=balloon0,bus=pci.0,addr=0x3",
        "-chardev", "pty,id=charserial0", "-device", "isa-serial,chardev=charserial0,id=serial0",
        "-device", "virtio-rng-pci,bus=pci.0,addr=0x4", "-msg", "timestamp=on"]


START_QUERIES = [
    ("query-chardev", None), ("query-hotpluggable-cpus", None), ("query-cpus-fast", None),
    ("query-iothreads", None), ("query-named-block-nodes", {"flat": True}),
    ("qom-list", {"path": "/machine/peripheral"}), ("query-block", None),
    ("query-blockstats", None), ("query-blockstats", {"query-nodes": True}),
    ("query-uuid", None), ("query-name", None), ("query-status", None),
    ("balloon", {"value": 67108864}), ("balloon", {"value": 0}), ("query-balloon", None),
]
"""What libvirt asks while it starts a domain (recorded), and a few identity queries."""


def _normalise(value: object) -> object:
    """Drop what differs between two processes: thread ids, allocation, paths, timings."""
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()
                if k not in ("thread-id", "actual-size", "idle_time_ns", "filename", "file")}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _start_domain(cmd: list[str], tmp: Path, name: str,
                  extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], Client]:
    """The libvirt domain of :func:`domain_args` (and ``extra`` options) on ``cmd``, its
    monitor negotiated; files are ``tmp/NAME.sock`` and ``tmp/NAME.raw``."""
    path = str(tmp / f"{name}.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1)
    fd = lsock.fileno()
    image = tmp / f"{name}.raw"
    image.write_bytes(b"\0" * (16 << 20))
    proc = subprocess.Popen([*cmd, *domain_args(image, [
        "-chardev", f"socket,id=charmonitor,fd={fd},server=on,wait=off",
        "-mon", "chardev=charmonitor,id=monitor,mode=control"]), *extra], pass_fds=(fd,),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lsock.close()
    c = Client(path, timeout=20)
    c.negotiate()
    return proc, c


@pytest.mark.skipif(QEMU is None, reason=NO_QEMU_REASON)
def test_a_libvirt_domain_start_is_answered_as_qemu_answers(tmp_path: Path) -> None:
    """The same libvirt command line, and libvirt's start-up queries, on QEMU 7.2 under TCG
    and on qmpjobd: equal replies but for tids, allocation and paths."""
    assert QEMU is not None
    procs = []
    try:
        qemu, qc = _start_domain([QEMU], tmp_path, "qemu")
        procs.append(qemu)
        ours, oc = _start_domain(LAUNCH, tmp_path, "ours")
        procs.append(ours)
        for name, args in START_QUERIES:
            want, got = qc.cmd(name, args), oc.cmd(name, args)
            if name == "qom-list":  # QEMU lists children in its hash table's order
                for reply in (want, got):
                    reply["return"].sort(key=lambda p: (p["type"] != "string", p["name"]))
            if name == "query-chardev":  # the same: chardevs are children of /chardevs
                for reply in (want, got):
                    reply["return"].sort(key=lambda c: c["label"])
            assert _normalise(got) == _normalise(want), name
        for vcpu in qc.cmd("query-cpus-fast")["return"]:  # libvirt reads every property
            path = vcpu["qom-path"]
            props = qc.cmd("qom-list", {"path": path})
            assert oc.cmd("qom-list", {"path": path}) == props
            for prop in props["return"]:
                args = {"path": path, "property": prop["name"]}
                assert oc.cmd("qom-get", args) == qc.cmd("qom-get", args), args
        for vcpu in oc.cmd("query-cpus-fast")["return"]:
            tid = vcpu["thread-id"]
            comm = Path(f"/proc/{ours.pid}/task/{tid}/comm").read_text()
            assert comm == f"CPU {vcpu['cpu-index']}/TCG\n"
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.skipif(QEMU is None, reason=NO_QEMU_REASON)
def test_life_cycle_events_as_qemu(tmp_path: Path) -> None:
    """stop/cont/system_reset in the order and states QEMU 7.2 gives them."""
    assert QEMU is not None
    script = [b'{"execute":"cont"}', b'{"execute":"stop"}', b'{"execute":"system_reset"}',
              b'{"execute":"query-status"}', b'{"execute":"cont"}',
              b'{"execute":"system_reset"}', b'{"execute":"query-status"}']
    seen = []
    procs = []
    try:
        for cmd, name in (([QEMU], "qemu"), (LAUNCH, "ours")):
            proc, c = _start_domain(cmd, tmp_path, name)
            procs.append(proc)
            out = []
            for line in script:
                out += [m.get("event", m.get("return")) for m in c.exchange(line)]
            seen.append(out)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert seen[1] == seen[0]


def test_powerdown_powers_the_guest_off(tmp_path: Path) -> None:
    """system_powerdown: the emulated guest shuts down (QEMU's events for a guest that powers
    off); with -no-shutdown it stays in runstate shutdown until system_reset and cont."""
    proc, c = _start_domain(LAUNCH, tmp_path, "ours")
    try:
        got = [m.get("event", m.get("return")) for m in c.exchange(b'{"execute":"cont"}')]
        assert got == ["RESUME", {}]
        got = [m.get("event", m.get("return"))
               for m in c.exchange(b'{"execute":"system_powerdown"}')]
        assert got == ["POWERDOWN", {}]  # the guest answers after the reply
        shutdown, stop = c.recv(), c.recv()
        assert (shutdown["event"], shutdown["data"], stop["event"]) == (
            "SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}, "STOP")
        assert c.cmd("query-status")["return"]["status"] == "shutdown"
        assert c.cmd("cont")["error"]["desc"] == "Resetting the Virtual Machine is required"
        c.cmd("system_reset")
        assert c.cmd("query-status")["return"]["status"] == "prelaunch"
        assert c.cmd("cont") == {"return": {}}
    finally:
        proc.kill()
        proc.wait()


def test_powerdown_without_no_shutdown_ends_the_process(tmp_path: Path) -> None:
    with _pc_machine(tmp_path) as (proc, c, path):
        got = [m.get("event", m.get("return"))
               for m in c.exchange(b'{"execute":"system_powerdown"}')]
        assert got == ["POWERDOWN", {}]
        ev = c.recv()
        assert (ev["event"], ev["data"]) == ("SHUTDOWN", {"guest": True,
                                                          "reason": "guest-shutdown"})
        assert proc.wait(10) == 0
        assert not Path(path).exists()


@pytest.mark.skipif(QEMU is None, reason=NO_QEMU_REASON)
@pytest.mark.parametrize("accel", ["kvm:tcg", "tcg"])
def test_the_accelerator_is_chosen_as_qemu_chooses(accel: str, tmp_path: Path) -> None:
    """libvirt probes with accel=kvm:tcg, then tcg: query-kvm must say what QEMU says on this
    host (KVM in use when /dev/kvm opens), or libvirt keeps probing again."""
    assert QEMU is not None
    answers = []
    for cmd, name in (([QEMU], "qemu"), (LAUNCH, "ours")):
        sock = tmp_path / f"{name}.sock"
        proc = subprocess.Popen([*cmd, "-S", "-no-user-config", "-nodefaults", "-nographic",
                                 "-machine", f"none,accel={accel}",
                                 "-qmp", f"unix:{sock},server=on,wait=off"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_socket(str(sock), proc)
            c = Client(str(sock))
            c.negotiate()
            answers.append((c.cmd("query-kvm"), c.cmd("human-monitor-command",
                                                      {"command-line": "info kvm"})))
        finally:
            proc.kill()
            proc.wait()
    assert answers[1] == answers[0]
