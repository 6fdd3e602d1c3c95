"""``qmpjobd-system-x86_64``: qmpjobd started with QEMU 7.2's command line, as libvirt runs it.

It builds the same :class:`~qmpjobd.vm.Vm` and :class:`~qmpjobd.server.Server` as ``qmpjobd``
does, from QEMU's options: monitors from ``-qmp``/``-chardev``+``-mon`` (a socket path, or a
listening descriptor libvirt passes in), ``-S``, ``-name``, ``-m``, ``-incoming``, block nodes
from ``-blockdev``.  With ``-daemonize`` the first process exits 0 only once every monitor
accepts, as QEMU's does; ``-pidfile`` is written, locked and removed as QEMU does it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import stat
import sys
from typing import Any, NoReturn

import orjson

from .. import __version__
from ..colo.guest import Guest
from ..colo.migration import remember_inherited_fds
from ..errors import QmpjobdError
from ..hardware import Chardev as HwChardev
from ..hardware import Device
from ..protocol.errors import QMPError
from ..runtime import loop_factory, tune_malloc
from ..server import Access, Limits, Server, StartupError
from ..vm import Vm
from . import cmdline
from .cmdline import Chardev, CmdlineError, QemuConfig

log = logging.getLogger("qmpjobd.qemu")

QEMU_VERSION = (7, 2, 22)
"""The QEMU release whose identity this front end presents."""

_USAGE = """\
QEMU emulator version 7.2.22 (qmpjobd {version})
usage: {prog} [options] [disk_image]

qmpjobd accepts QEMU 7.2's command line as libvirt writes it and serves QMP on the
monitors it names (-qmp, -chardev socket + -mon mode=control). See qmpjobd's README,
section "Under libvirt".
"""


class Failed(QmpjobdError):
    """Start-up failed; the message is QEMU's text, printed after the program name."""


class PidFile:
    """QEMU's pidfile: created 0600, locked, holding ``PID\\n``, removed at exit."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)  # removed at exit, after the daemon's chdir("/")
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise Failed(f"cannot create PID file: Cannot open pid file: {e.strerror}") \
                from None
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise Failed("cannot create PID file: Cannot lock pid file: Resource "
                         "temporarily unavailable") from None

    def write(self) -> None:
        """Record the pid of the process that serves (after any daemonizing fork)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def remove(self) -> None:
        """Unlink and close (at exit)."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _fd_socket(dev: Chardev) -> socket.socket:
    """The listening socket libvirt passed as ``fd=N``."""
    assert dev.fd is not None
    try:
        st = os.fstat(dev.fd)
    except OSError:
        st = None
    if st is None or not stat.S_ISSOCK(st.st_mode):
        raise Failed(f"{dev.origin}: File descriptor '{dev.fd}' is not a socket")
    sock = socket.socket(fileno=dev.fd)
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.listen(1)  # a bound socket QEMU would make listen itself
    return sock


def kvm_usable() -> bool:
    """Whether this process can open /dev/kvm read-write, as QEMU's KVM start-up needs."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def choose_accel(cfg: QemuConfig) -> str:
    """The first accelerator of ``-accel``/``-machine accel=`` that starts (QEMU tries them
    in order; TCG always starts, KVM when /dev/kvm opens); TCG when none is named."""
    for accel in cfg.accel or ["tcg"]:
        if accel == "tcg" or (accel == "kvm" and kvm_usable()):
            return accel
    if cfg.accel == ["kvm"]:
        raise Failed("-accel kvm: failed to initialize kvm: No such file or directory")
    raise Failed("no accelerator found")


def build_vm(cfg: QemuConfig) -> Vm:
    """The Vm a QEMU command line describes; Failed with QEMU's text for a bad -blockdev."""
    accel = choose_accel(cfg)
    try:
        guest = Guest(-(-cfg.ram // 8192) * 8192 or 128 << 20, side=1)
    except (ValueError, OSError) as e:
        raise Failed(f"cannot set up guest memory 'pc.ram': {getattr(e, 'strerror', None) or e}") \
            from None
    has_guest = cfg.machine != "none"
    vm = Vm(version=QEMU_VERSION, package=f"qmpjobd {__version__}", name=cfg.name,
            guest=guest, incoming=cfg.incoming, paused=cfg.paused,
            cpus=cfg.cpus if has_guest else 0, cpu_model=cfg.cpu or "qemu64", uuid=cfg.uuid,
            max_cpus=cfg.max_cpus if has_guest else 0, topology=cfg.topology)
    vm.identity.kvm_enabled = accel == "kvm"
    vm.hardware.accel = accel.upper()
    vm.machine.guest_acpi = has_guest
    vm.machine.no_shutdown = cfg.no_shutdown
    add = vm.schema.commands["blockdev-add"]
    for spec in cfg.blockdevs:
        try:
            vm.block.add(vm.schema.check_arguments(add, spec))
        except QMPError as e:
            vm.close()
            raise Failed(f"-blockdev {_render(spec)}: {e.desc}") from None
    for spec in cfg.devices:
        drive = spec.get("drive")
        try:
            vm.hardware.add_device(Device(str(spec.get("id", "")), str(spec["driver"]),
                                          str(drive) if drive is not None else None,
                                          spec))
        except QMPError as e:
            vm.close()
            raise Failed(f"-device {_render(spec)}: {e.desc}") from None
    for name, arg in cfg.ignored:
        log.debug("accepted, no effect here: -%s %s", name, arg)
    return vm


def _render(spec: dict[str, Any]) -> str:
    return orjson.dumps(spec).decode()


async def serve(cfg: QemuConfig, ready: int | None, pidfile: PidFile | None) -> int:
    """Serve the monitors until quit or a signal; ``ready`` is the daemonizing parent's pipe."""
    vm = build_vm(cfg)
    umask = os.umask(0)
    os.umask(umask)
    server = Server(vm, access=Access(socket_mode=0o777 & ~umask),
                    limits=Limits(fd_passing=True))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, vm.signal_stop, sig.name)
    ptys: list[int] = []
    try:
        vm.start()
        passed = {dev.id: _fd_socket(dev) for dev in cfg.chardevs.values() if dev.fd is not None}
        remember_inherited_fds({dev.fd for dev in cfg.chardevs.values() if dev.fd is not None})
        monitors = {dev.id for dev in cfg.monitors}
        used = monitors | {str(d["chardev"]) for d in cfg.devices if "chardev" in d}
        for dev in cfg.chardevs.values():
            if dev.id in monitors and dev.backend != "socket":
                raise Failed(f"{dev.origin}: a QMP monitor must be a socket chardev here")
            if dev.backend == "pty":
                master, slave = os.openpty()
                ptys += (master, slave)
                where = f"pty:{os.ttyname(slave)}"
                sys.stderr.write(f"char device redirected to {where[4:]} (label {dev.id})\n")
            elif dev.backend != "socket":
                where = dev.backend
            elif dev.fd is not None:
                sock = passed[dev.id]
                if dev.id in monitors:
                    await server.adopt(sock)
                name = sock.getsockname()
                where = (f"unix:{name}" if sock.family == socket.AF_UNIX
                         else "tcp:{}:{}".format(*name[:2])) + ",server=on"
            elif dev.path is not None:
                if dev.id in monitors:  # absolute: the daemon's chdir("/") comes later
                    await server.listen_unix(os.path.abspath(dev.path))
                where = f"unix:{dev.path},server=on"
            else:
                if dev.id in monitors:
                    await server.listen_tcp(dev.host or "127.0.0.1", int(dev.port or 0))
                where = f"tcp:{dev.host}:{dev.port},server=on"
            vm.hardware.chardevs.append(HwChardev(dev.id, where, dev.id in used))
    except (StartupError, Failed, OSError, ValueError, QMPError) as e:
        await server.close()
        vm.close()
        for fd in ptys:
            os.close(fd)
        raise Failed(e.desc if isinstance(e, QMPError) else str(e)) from None
    if pidfile is not None:
        pidfile.write()
    if ready is not None:
        os.chdir("/")  # as QEMU's os_setup_post: relative paths were opened by now
        _detach_stdio()
        os.write(ready, b"\0")
        os.close(ready)
    await vm.stopped.wait()
    await server.close()
    vm.close()
    for fd in ptys:
        os.close(fd)
    return 0


def _detach_stdio() -> None:
    """As QEMU's os_setup_post: stdin, stdout and stderr become /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _daemonize() -> int:
    """QEMU's os_daemonize: the caller's process waits for the daemon's status byte and exits
    with it; returns (in the daemon, a grandchild in its own session) the pipe to report on.

    Unlike QEMU, the session leader stays, as the daemon's parent (see :func:`_reap`)."""
    rfd, wfd = os.pipe()
    if os.fork() > 0:
        os.close(wfd)
        status = os.read(rfd, 1)
        os._exit(0 if status == b"\0" else 1)
    os.close(rfd)
    os.setsid()
    daemon = os.fork()
    if daemon > 0:
        _reap(daemon)
    os.umask(0o027)
    return wfd


def _reap(daemon: int) -> NoReturn:
    """Wait for the daemon and exit with its status.

    A daemon whose parent has exited is reaped by init; until then it is a zombie, and
    ``kill(pid, 0)`` still finds it.  libvirt polls just that after it stops a probe
    process, and under an init that reaps late (a container's PID 1) each probe then waits
    seconds.  So the parent stays, holding nothing (stdio on /dev/null, every other
    descriptor closed, the daemon's stop signals ignored), and reaps the daemon at once."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _detach_stdio()
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    _, status = os.waitpid(daemon, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)  # a signal as the shells report it


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``qmpjobd-system-x86_64``."""
    argv = sys.argv if argv is None else argv
    remember_inherited_fds()
    prog = os.path.basename(argv[0]) if argv else "qmpjobd-system-x86_64"
    try:
        cfg = cmdline.parse(argv[1:])
    except CmdlineError as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return 1
    if cfg.action == "version":
        sys.stdout.write(f"QEMU emulator version 7.2.22 (qmpjobd {__version__})\n"
                         "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project "
                         "developers\n")
        return 0
    if cfg.action == "help":
        sys.stdout.write(_USAGE.format(version=__version__, prog=prog))
        return 0
    logging.basicConfig(level=os.environ.get("QMPJOBD_LOG_LEVEL", "warning").upper(),
                        stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_malloc()
    sys.setswitchinterval(0.001)
    ready = _daemonize() if cfg.daemonize else None
    pidfile = None
    try:
        if cfg.pidfile is not None:
            pidfile = PidFile(cfg.pidfile)
        factory, _ = loop_factory("auto")
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(serve(cfg, ready, pidfile))
    except Failed as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return 1
    finally:
        if pidfile is not None:
            pidfile.remove()
