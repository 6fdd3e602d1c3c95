"""Command line: ``qmpjobd --socket PATH [--tcp HOST:PORT] ...``."""

from __future__ import annotations

import argparse
import asyncio
import grp
import logging
import os
import pwd
import signal
import socket
import ssl
import sys
from typing import Any

from . import __version__, config, plugins
from .address import AddressError, parse_host_port
from .colo.guest import PATTERNS, Guest, Workload
from .jobs.core import DEFAULT_SHUTDOWN_GRACE
from .paths import default_socket
from .runtime import loop_factory, tune_malloc
from .server import Access, Limits, Server, StartupError
from .server.trace import Tracer
from .tls import TlsFiles
from .vm import Vm

log = logging.getLogger("qmpjobd")


def _version_triple(text: str) -> tuple[int, int, int]:
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError("expected MAJOR.MINOR.MICRO, e.g. 7.2.0")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _host_port(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except AddressError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    if not num.isdigit() or int(num) * units[unit] % 4096 or int(num) == 0:
        raise argparse.ArgumentTypeError("expected a positive multiple of 4K, e.g. 64M")
    return int(num) * units[unit]


def _natural(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError("expected a whole number (0 or more)")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError("expected a positive whole number")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError("expected a number of seconds (0 or more)")
    return value


class OctalMode(int):
    """A file mode that prints (and goes back into a config file) in octal."""

    def __str__(self) -> str:
        return f"0{self:o}"


def _mode(text: str) -> OctalMode:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError("expected an octal mode, e.g. 0660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError("expected an octal mode between 0000 and 0777")
    return OctalMode(mode)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used for --help in the README)."""
    p = argparse.ArgumentParser(
        prog="qmpjobd",
        description="A QMP daemon that behaves like QEMU 7.2's monitor and serves many clients.",
        epilog="subcommand: 'qmpjobd watch [SOCKET] [--once]' is a live view of a running "
               "daemon's jobs, COLO state and events (see 'qmpjobd watch --help').")
    p.add_argument("--config", metavar="FILE", default=None,
                   help="read settings from a TOML file (keys are these long option names; "
                        "flags override it)")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective settings as TOML and exit")
    p.add_argument("--socket", metavar="PATH", default=None,
                   help=f"Unix socket to listen on (default: {default_socket()}; not created "
                        "when systemd passes sockets)")
    p.add_argument("--tcp", metavar="HOST:PORT", type=_host_port, action="append", default=[],
                   help="also listen on TCP (loopback only, unless TLS is configured)")
    p.add_argument("--name", default=None, help="guest name reported by query-name")
    p.add_argument("--trace", metavar="FILE", default=None,
                   help="append every message of every connection to FILE as JSON lines")
    s = p.add_argument_group("security")
    s.add_argument("--socket-mode", type=_mode, default=_mode("0600"), metavar="OCTAL",
                   help="permissions of the Unix socket (default 0600)")
    s.add_argument("--socket-group", default=None, metavar="GROUP",
                   help="group of the Unix socket (a name or a gid)")
    s.add_argument("--allow-uid", action="append", default=[], metavar="USER",
                   help="only these users (names or uids; root always) may connect over the "
                        "Unix socket (SO_PEERCRED); repeatable")
    s.add_argument("--allow-gid", action="append", default=[], metavar="GROUP",
                   help="... or members of these primary groups; repeatable")
    s.add_argument("--tcp-tls", action="store_true",
                   help="QMP over TCP speaks TLS (needed for a non-loopback --tcp)")
    s.add_argument("--tls-cert", default=None, metavar="PEM",
                   help="TLS certificate for --tcp-tls and --colo-tls")
    s.add_argument("--tls-key", default=None, metavar="PEM", help="its private key")
    s.add_argument("--tls-ca", default=None, metavar="PEM",
                   help="CA bundle: TLS clients and COLO peers must present a certificate "
                        "signed by it")
    s.add_argument("--colo-tls", action="store_true",
                   help="use TLS (the same files) on the COLO replication link")
    s.add_argument("--fd-passing", action="store_true",
                   help="accept file descriptors from Unix-socket clients (getfd; SCM_RIGHTS); "
                        "costs CPU per request")
    s.add_argument("--nbd-any-address", action="store_true",
                   help="let nbd-server-start listen on addresses other than loopback "
                        "(the NBD server has no TLS; COLO across hosts needs this)")
    s.add_argument("--max-message", type=_positive, default=Limits.max_message, metavar="BYTES",
                   help=f"largest request a client may send (default {Limits.max_message}, "
                        "QEMU's limit)")
    p.add_argument("--qemu-version", type=_version_triple, default=(7, 2, 0),
                   metavar="X.Y.Z", help="version triple to report (default 7.2.0)")
    p.add_argument("--max-output", type=_positive, default=Limits.max_output, metavar="BYTES",
                   help="unread output after which a client is disconnected "
                        f"(default {Limits.max_output})")
    p.add_argument("--max-total-output", type=_positive, default=Limits.max_total_output,
                   metavar="BYTES",
                   help="unread output of all clients together above which the largest "
                        f"non-reading clients are disconnected (default "
                        f"{Limits.max_total_output})")
    p.add_argument("--max-clients", type=_natural, default=0, metavar="N",
                   help="clients served at once; more are closed at once (default 0: no "
                        "limit, as QEMU)")
    p.add_argument("--negotiation-timeout", type=_seconds, default=0.0, metavar="SECONDS",
                   help="close a client that has not sent qmp_capabilities within this time "
                        "(default 0: never, as QEMU)")
    p.add_argument("--shutdown-grace", type=_seconds, default=DEFAULT_SHUTDOWN_GRACE,
                   metavar="SECONDS",
                   help="at quit or SIGTERM, how long all jobs together may take to end once "
                        "cancelled before the daemon exits without them (default "
                        f"{DEFAULT_SHUTDOWN_GRACE:g}; stuck I/O is never waited for)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="load a plug-in (a module name or a .py file) and call its "
                        "register(vm); repeatable")
    g = p.add_argument_group("guest and COLO")
    g.add_argument("--incoming", metavar="URI", default=None,
                   help="wait for an incoming migration: tcp:HOST:PORT, unix:PATH or defer "
                        "(then migrate-incoming), like QEMU's -incoming")
    g.add_argument("-S", "--paused", action="store_true",
                   help="start with the guest stopped (runstate prelaunch), like QEMU's -S")
    g.add_argument("--guest-ram", type=_size, default=64 << 20, metavar="SIZE",
                   help="guest RAM size, a multiple of 4K (default 64M)")
    g.add_argument("--workload-rate", type=_natural, default=0, metavar="PAGES",
                   help="pages the synthetic guest writes per second while running "
                        "(default 0: an idle guest that costs no CPU and no memory)")
    g.add_argument("--workload-pattern", choices=PATTERNS, default="random",
                   help="which pages it writes (default random)")
    g.add_argument("--workload-seed", type=int, default=1, metavar="N",
                   help="seed of the workload's generator (default 1)")
    g.add_argument("--device-state-size", type=_positive, default=4096, metavar="BYTES",
                   help="size of the device-state blob sent with each checkpoint")
    g.add_argument("--qemu-compat", choices=("7.2", "latest"), default="7.2",
                   help="which QEMU's COLO texts to reproduce (default 7.2)")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="event loop (auto: uvloop when installed)")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"), help="stderr log level")
    p.add_argument("--version", action="version", version=f"qmpjobd {__version__}")
    return p


def _uid(name: str) -> int:
    return int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid


def access_from(args: argparse.Namespace) -> Access:
    """The security settings; KeyError/ValueError/OSError name what is wrong."""
    tls = None
    if args.tcp_tls:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("--tcp-tls needs --tls-cert and --tls-key")
        tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca).server_context()
    if (args.allow_uid or args.allow_gid) and args.tcp and not (tls and args.tls_ca):
        log.warning("--allow-uid/--allow-gid restrict the Unix socket only; TCP clients are "
                    "not checked (use --tcp-tls with --tls-ca to authenticate them)")
    if args.colo_tls and not (args.tls_cert and args.tls_key and args.tls_ca):
        raise ValueError("--colo-tls needs --tls-cert, --tls-key and --tls-ca (both sides "
                         "verify each other)")
    return Access(socket_mode=int(args.socket_mode),
                  socket_group=_gid(args.socket_group) if args.socket_group else None,
                  allow_uids=frozenset(_uid(u) for u in args.allow_uid),
                  allow_gids=frozenset(_gid(g) for g in args.allow_gid), tls=tls)


def activated_sockets() -> list[socket.socket]:
    """Sockets passed by systemd (LISTEN_PID/LISTEN_FDS, starting at fd 3)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    text = os.environ.get("LISTEN_FDS", "0") or "0"
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if not text.isdigit():
        raise StartupError(f"LISTEN_FDS={text!r} is not a number")
    out = []
    for fd in range(3, 3 + int(text)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise StartupError(f"activated fd {fd} is not a socket: {e.strerror}") from None
        if sock.type != socket.SOCK_STREAM or \
                not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise StartupError(f"activated fd {fd} is not a listening stream socket")
        out.append(sock)
    return out


def sd_notify(state: str) -> None:
    """Tell systemd about readiness or stopping (Type=notify); nothing without NOTIFY_SOCKET."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), addr)
    except OSError as e:
        log.warning("sd_notify %s failed: %s", state, e.strerror)


async def serve(args: argparse.Namespace) -> int:
    """Run the daemon until quit or a signal; returns the exit status."""
    package = f"qmpjobd {__version__}"
    if args.incoming is not None and args.incoming != "defer" \
            and not args.incoming.startswith(("tcp:", "unix:")):
        log.error("--incoming %s: expected tcp:HOST:PORT, unix:PATH or defer", args.incoming)
        return 1
    try:
        access = access_from(args)
    except (KeyError, ValueError, OSError, ssl.SSLError) as e:
        log.error("security settings: %s", e)
        return 1
    colo_tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca) if args.colo_tls else None
    try:
        tracer = Tracer(args.trace) if args.trace else None
    except OSError as e:
        log.error("--trace %s: %s", args.trace, e.strerror)
        return 1
    guest = Guest(args.guest_ram, Workload(args.workload_rate, args.workload_pattern,
                                           args.workload_seed),
                  device_size=args.device_state_size, side=1)
    vm = Vm(version=args.qemu_version, package=package, name=args.name, guest=guest,
            incoming=args.incoming, paused=args.paused, compat=args.qemu_compat,
            colo_tls=colo_tls)
    vm.nbd.any_address = args.nbd_any_address
    vm.jobs.shutdown_grace = args.shutdown_grace
    try:
        plugins.register_all(args.plugin, vm)
    except plugins.PluginError as e:
        log.error("%s", e)
        return 1
    server = Server(vm, limits=Limits(max_output=args.max_output, max_message=args.max_message,
                                      max_total_output=args.max_total_output,
                                      max_clients=args.max_clients,
                                      negotiation_timeout=args.negotiation_timeout,
                                      fd_passing=args.fd_passing),
                    access=access, tracer=tracer)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, vm.signal_stop, sig.name)
    vm.start()
    try:
        activated = activated_sockets()
        for sock in activated:
            await server.adopt(sock)
        for host, port in args.tcp:
            await server.listen_tcp(host, port)
        # the Unix socket last: once its file exists, every listener is up
        names = {s.getsockname() for s in activated if s.family == socket.AF_UNIX}
        if args.socket in names:
            log.info("--socket %s is one of the activated sockets", args.socket)
        elif args.socket is not None or not activated:
            path = args.socket or default_socket()
            if args.socket is None:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            await server.listen_unix(path)
    except StartupError as e:
        log.error("%s", e)
        await server.close()
        vm.close()
        return 1
    sd_notify("READY=1")
    await vm.stopped.wait()
    sd_notify("STOPPING=1")
    await server.close()
    vm.close()
    log.info("stopped (%s)", vm.exit_reason)
    return 0


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Command line over the --config file over the built-in defaults."""
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    lists: dict[str, Any] = {}
    if known.config:
        try:
            values = config.load(parser, known.config)
        except config.ConfigError as e:
            parser.exit(2, f"qmpjobd: config {e}\n")
        # a repeatable option given on the command line replaces the file's list
        lists = {k: v for k, v in values.items() if isinstance(v, list)}
        parser.set_defaults(**{k: v for k, v in values.items() if k not in lists})
    args = parser.parse_args(argv)
    for dest, value in lists.items():
        if not getattr(args, dest):
            setattr(args, dest, value)
    return parser, args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qmpjobd`` script (``qmpjobd watch ...`` runs the live view)."""
    argv = sys.argv[1:] if argv is None else argv
    from .colo.migration import remember_inherited_fds
    remember_inherited_fds()
    if argv and argv[0] == "watch":
        from . import watch
        return watch.main(argv[1:])
    parser, args = parse_args(argv)
    if args.print_config:
        sys.stdout.write(config.render(parser, args))
        return 0
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_malloc()
    # JSON may nest 1,024 levels (QEMU's limit); validating such a value recurses in Python,
    # which 3.11+ does without using the C stack, so allow it rather than fail internally.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    # RAM-sized work (COLO, migration) runs in threads; a shorter GIL switch interval lets the
    # event loop thread back in sooner while they run (measured: worst query latency during a
    # 1 GiB migration 37 ms -> 4-9 ms).
    sys.setswitchinterval(0.001)
    factory, loop_name = loop_factory(args.loop)
    log.info("qmpjobd %s on %s", __version__, loop_name)
    runner_args: dict[str, Any] = {"loop_factory": factory}
    with asyncio.Runner(**runner_args) as runner:
        return runner.run(serve(args))
