"""QEMU 7.2's command line, parsed without side effects: argv in, a :class:`QemuConfig` out.

A line QEMU would refuse raises :class:`CmdlineError` with QEMU's text; the caller prints it
after the program name and exits 1, as QEMU does.  Options that mean nothing here are kept in
``QemuConfig.ignored`` (QEMU accepts them; so do we).  Option syntax follows QEMU's QemuOpts
(``key=value`` pairs, ``,,`` for a comma in a value, an implied first key) and, for
``-blockdev``/``-device``/``-object``, JSON when the argument starts with ``{``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ..errors import QmpjobdError

TAKES_ARGUMENT: Final = frozenset((
    "accel", "acpitable", "action", "add-fd", "append", "audio", "audiodev", "bios", "blockdev",
    "boot", "cdrom", "chardev", "chroot", "compat", "cpu", "D", "d", "debugcon", "device",
    "dfilter", "display", "drive", "dtb", "dump-vmstate", "echr", "fda", "fdb", "fsdev",
    "fw_cfg", "gdb", "global", "hda", "hdb", "hdc", "hdd", "icount", "incoming", "initrd",
    "iscsi", "k", "kernel", "L", "loadvm", "M", "m", "machine", "mem-path", "mon", "monitor",
    "msg", "mtdblock", "name", "net", "netdev", "nic", "numa", "object", "option-rom",
    "overcommit", "parallel", "pflash", "pidfile", "plugin", "qmp", "qmp-pretty", "readconfig",
    "rotate", "rtc", "runas", "sandbox", "sd", "seed", "serial", "set", "smbios", "smp",
    "spice", "tpmdev", "trace", "usbdevice", "uuid", "vga", "virtfs", "vnc", "watchdog-action",
    "writeconfig", "xen-domid",
))
"""Options followed by an argument (QEMU 7.2's qemu-options.def, HAS_ARG)."""

FLAGS: Final = frozenset((
    "S", "async-teardown", "audio-help", "daemonize", "enable-kvm", "enable-sync-profile",
    "full-screen", "h", "help", "mem-prealloc", "no-acpi", "no-fd-bootchk", "no-hpet",
    "no-reboot", "no-shutdown", "no-user-config", "nodefaults", "nographic",
    "only-migratable", "portrait", "preconfig", "s", "singlestep", "snapshot", "usb",
    "version", "win2k-hack", "xen-attach", "xen-domid-restrict",
))
"""Options without an argument."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([bkKmMgGtTpPeE]?)\s*$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_UNITS: Final = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_SIZE_HELP: Final = ("Parameter 'size' expects a non-negative number below 2^64\n"
                     "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, "
                     "peta-\nand exabytes, respectively.")


class CmdlineError(QmpjobdError):
    """A command line QEMU refuses; ``str()`` is QEMU's text (without the program name)."""


class UnlocatedError(CmdlineError):
    """An error QEMU reports without naming the option it came from."""


@dataclass
class Chardev:
    """A ``-chardev`` (or the one behind ``-qmp``): only sockets can carry a monitor."""

    id: str
    backend: str
    origin: str = ""
    """The option it came from (``-chardev ARG``), for error texts."""
    path: str | None = None
    fd: int | None = None
    host: str | None = None
    port: str | None = None
    server: bool = False
    wait: bool = True


@dataclass
class QemuConfig:
    """What the command line asks for, in the terms the daemon needs."""

    name: str | None = None
    uuid: str = "00000000-0000-0000-0000-000000000000"
    ram: int = 128 << 20
    cpus: int = 1
    max_cpus: int = 1
    topology: tuple[int, int, int] = (0, 0, 0)
    """-smp sockets, cores, threads (0: derived from the CPU count, as QEMU does)."""
    machine: str | None = None
    machine_props: dict[str, str] = field(default_factory=dict)
    accel: list[str] = field(default_factory=list)
    cpu: str | None = None
    paused: bool = False
    no_shutdown: bool = False
    daemonize: bool = False
    pidfile: str | None = None
    incoming: str | None = None
    chardevs: dict[str, Chardev] = field(default_factory=dict)
    monitors: list[Chardev] = field(default_factory=list)
    """The chardevs that carry QMP (``-mon mode=control`` and ``-qmp``), in order."""
    blockdevs: list[dict[str, Any]] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    """Accepted options that change nothing here, with their arguments (logged at debug)."""
    action: str = "run"
    """``run``, or ``help``/``version`` (print and exit 0)."""


def parse_opts(text: str, implied: str | None = None) -> dict[str, str]:
    """QemuOpts: ``a=1,b=x,,y`` -> {a: 1, b: "x,y"}; a first element without ``=`` is the
    ``implied`` key's value; a bare ``flag`` is ``flag=on`` and ``noflag`` is ``flag=off``."""
    out: dict[str, str] = {}
    items: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == ",":
            if text[i + 1:i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            items.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    items.append("".join(cur))
    for n, item in enumerate(items):
        if not item:
            continue
        if "=" in item:
            key, value = item.split("=", 1)
            out[key] = value
        elif n == 0 and implied is not None:
            out[implied] = item
        elif item.startswith("no") and len(item) > 2:
            out[item[2:]] = "off"
        else:
            out[item] = "on"
    return out


def parse_size(text: str, default_unit: str = "") -> int:
    """qemu_strtosz: a number with an optional k/M/G/T/P/E suffix (powers of 1024);
    ValueError if it is not one."""
    m = _SIZE.match(text)
    if m is None:
        raise ValueError(text)
    number, unit = m.group(1), (m.group(2) or default_unit).lower()
    shift = _UNITS[unit]
    if "." in number:
        if not shift:
            raise ValueError(text)
        value = int(float(number) * (1 << shift))
    else:
        value = int(number) << shift
    if value >= 1 << 64:
        raise ValueError(text)
    return value


def _bool(value: str) -> bool:
    return value in ("on", "yes", "true", "y")


def _json_or_keyval(text: str, implied: str | None) -> dict[str, Any]:
    if text.lstrip().startswith("{"):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise CmdlineError("JSON parse error, premature EOI"
                               if text.count("{") > text.count("}")
                               else "JSON parse error, invalid token") from None
        if not isinstance(value, dict):
            raise CmdlineError("Parameter 'driver' is missing")
        return value
    opts: dict[str, Any] = dict(parse_opts(text, implied))
    return opts


def _chardev(spec: dict[str, str], origin: str) -> Chardev:
    cid = spec.get("id")
    if not cid:
        raise CmdlineError("Parameter 'id' is missing")
    backend = spec.get("backend", "")
    if not backend:
        raise CmdlineError("chardev: \"\" missing backend")
    dev = Chardev(cid, backend, origin, server=_bool(spec.get("server", "off")),
                  wait=_bool(spec.get("wait", "on")))
    if backend == "socket":
        if "fd" in spec:
            if not spec["fd"].isdigit():
                raise CmdlineError(f"Parameter 'fd' expects an integer, not '{spec['fd']}'")
            dev.fd = int(spec["fd"])
        elif "path" in spec:
            dev.path = spec["path"]
        elif "host" in spec or "port" in spec:
            dev.host, dev.port = spec.get("host", ""), spec.get("port", "")
        else:
            raise CmdlineError("chardev: socket: no local address specified")
    return dev


def _qmp(arg: str, index: int) -> Chardev:
    """``-qmp unix:PATH,server=on,wait=off`` (or ``tcp:HOST:PORT,...``) as a chardev."""
    head, _, rest = arg.partition(",")
    opts = parse_opts(rest)
    cid = f"compat_monitor{index}"
    if head.startswith("unix:"):
        spec = {"id": cid, "backend": "socket", "path": head[5:], **opts}
    elif head.startswith("tcp:"):
        host, _, port = head[4:].rpartition(":")
        spec = {"id": cid, "backend": "socket", "host": host, "port": port, **opts}
    else:
        raise CmdlineError(f"'{head.partition(':')[0]}' is not a valid char driver")
    return _chardev(spec, f"-qmp {arg}")


def parse(argv: list[str]) -> QemuConfig:
    """Parse QEMU's arguments (without the program name); CmdlineError with QEMU's text."""
    cfg = QemuConfig()
    mons: list[str] = []
    qmps: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not word.startswith("-") or word == "-":
            cfg.ignored.append(("hda", word))  # a disk image, as -hda
            continue
        name = word[2:] if word.startswith("--") else word[1:]
        if name in FLAGS:
            arg = ""
        elif name in TAKES_ARGUMENT:
            if i >= len(argv):
                raise CmdlineError(f"{word}: requires an argument")
            arg = argv[i]
            i += 1
        else:
            raise CmdlineError(f"{word}: invalid option")
        try:
            _apply(cfg, name, arg, mons, qmps)
        except UnlocatedError:
            raise
        except CmdlineError as e:
            raise CmdlineError(f"{word} {arg}: {e}" if arg else f"{word}: {e}") from None
    for n, arg in enumerate(qmps):
        dev = _qmp(arg, n)
        cfg.chardevs[dev.id] = dev
        cfg.monitors.append(dev)
    for arg in mons:
        spec = parse_opts(arg, "chardev")
        ref = spec.get("chardev", "")
        if ref not in cfg.chardevs:
            raise CmdlineError(f'-mon {arg}: chardev "{ref}" not found')
        if any(m.id == ref for m in cfg.monitors):
            raise CmdlineError(f"-mon {arg}: Device '{ref}' is in use")
        if spec.get("mode", "readline") == "control":
            cfg.monitors.append(cfg.chardevs[ref])
        else:
            cfg.ignored.append(("mon", arg))  # HMP on a chardev is not served
    if cfg.max_cpus < cfg.cpus:
        cfg.max_cpus = cfg.cpus
    return cfg


def _apply(cfg: QemuConfig, name: str, arg: str, mons: list[str],
           qmps: list[str]) -> None:
    if name in ("h", "help"):
        cfg.action = "help"
    elif name == "version":
        cfg.action = "version"
    elif name == "S":
        cfg.paused = True
    elif name == "no-shutdown":
        cfg.no_shutdown = True
    elif name == "daemonize":
        cfg.daemonize = True
    elif name == "pidfile":
        cfg.pidfile = arg
    elif name == "incoming":
        cfg.incoming = arg
    elif name == "name":
        opts = parse_opts(arg, "guest")
        for key in opts:
            if key not in ("guest", "process", "debug-threads"):
                raise CmdlineError(f"Invalid parameter '{key}'")
        cfg.name = opts.get("guest", cfg.name)
    elif name == "uuid":
        if not _UUID.match(arg):
            raise CmdlineError("failed to parse UUID string: wrong format")
        cfg.uuid = arg.lower()
    elif name == "m":
        opts = parse_opts(arg, "size")
        try:
            cfg.ram = parse_size(opts.get("size", "128"), "M")
        except ValueError:
            raise CmdlineError(_SIZE_HELP) from None
    elif name == "smp":
        opts = parse_opts(arg, "cpus")
        for key in ("cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads"):
            if key in opts and not opts[key].isdigit():
                raise UnlocatedError(f"Parameter 'smp.{key}' expects integer")
        cfg.cpus = int(opts.get("cpus", "0")) or int(opts.get("maxcpus", "1"))
        cfg.max_cpus = int(opts.get("maxcpus", "0")) or cfg.cpus
        cfg.topology = (int(opts.get("sockets", "0")), int(opts.get("cores", "0")),
                        int(opts.get("threads", "0")))
    elif name in ("machine", "M"):
        opts = parse_opts(arg, "type")
        cfg.machine = opts.pop("type", cfg.machine)
        if "accel" in opts:
            cfg.accel = opts.pop("accel").split(":")
        cfg.machine_props.update(opts)
    elif name == "accel":
        cfg.accel.append(parse_opts(arg, "accel").get("accel", ""))
    elif name == "enable-kvm":
        cfg.accel.append("kvm")
    elif name == "cpu":
        cfg.cpu = arg.split(",", 1)[0]
    elif name == "chardev":
        dev = _chardev(parse_opts(arg, "backend"), f"-chardev {arg}")
        if dev.id in cfg.chardevs:
            raise CmdlineError(f"Duplicate ID '{dev.id}' for chardev")
        cfg.chardevs[dev.id] = dev
    elif name == "mon":
        mons.append(arg)
    elif name == "qmp":
        qmps.append(arg)
    elif name == "blockdev":
        spec = _json_or_keyval(arg, None)
        if "driver" not in spec:
            raise CmdlineError("Parameter 'driver' is missing")
        cfg.blockdevs.append(spec)
    elif name == "device":
        spec = _json_or_keyval(arg, "driver")
        if "driver" not in spec:
            raise CmdlineError("Parameter 'driver' is missing")
        cfg.devices.append(spec)
    else:
        cfg.ignored.append((name, arg))
