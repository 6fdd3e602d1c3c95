"""QEMU 7.2's human monitor (monitor/hmp.c) as ``human-monitor-command`` runs it.

A command line is split the way QEMU splits it: the command name ends at white space or ``/``,
``info`` looks its subcommand up in a second table, and the arguments are parsed by the
command's ``args_type`` string (``name:B?``, ``force:-f``...), with QEMU's texts for every
refusal.  Every name QEMU 7.2's tables know is known here (``table.py``, with their help
texts); the ones qmpjobd implements carry an implementation, the rest answer as QEMU does for a
command compiled without its handler.  The output is collected per command line and returned
with QEMU's ``\\r\\n`` line ends.

Implementations call the QMP handlers of the same registry, as QEMU's hmp_* functions call
qmp_*: the HMP ``stop`` is the QMP ``stop``, events included.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..protocol.errors import QMPError
from ..protocol.session import Session
from ..schema import Registry
from .table import COMMANDS, INFO_COMMANDS, LOG_HELP

SPACE = " \t\n\v\f\r"
"""qemu_isspace(): C's isspace() in the C locale."""

_NAME_MAX = 255
"""get_command_name() keeps this many characters of a command name."""

_STR_MAX = 1023
"""get_str() keeps this many characters of an argument (its buffer is 1024 bytes)."""

Run = Callable[["Monitor", dict[str, Any]], "Awaitable[Any] | None"]
"""A command's implementation: the monitor to print on and the parsed arguments; it may
return an awaitable (the reply then waits for it)."""


@dataclass
class Command:
    """One entry of an HMP command table."""

    name: str
    """Names separated by ``|`` (``cont|c``)."""
    params: str
    help: str
    args_type: str = ""
    run: Run | None = None
    sub: list[Command] | None = None
    """The subcommand table (``info``'s)."""

    def matches(self, name: str) -> bool:
        """hmp_compare_cmd(): ``name`` is one of the ``|``-separated names."""
        return name in self.name.split("|")


class Monitor:
    """One human-monitor-command run: QEMU's temporary MonitorHMP (output buffer, CPU)."""

    def __init__(self, hmp: Hmp, session: Session, cpu_index: int | None) -> None:
        self.hmp = hmp
        self.session = session
        self.cpu_index = cpu_index
        """The monitor's current CPU (``info cpus`` marks it), as ``cpu-index`` chose it."""
        self._out: list[str] = []

    def printf(self, text: str) -> None:
        """monitor_printf(): ``\\n`` becomes ``\\r\\n`` when the output is returned."""
        self._out.append(text)

    def qmp(self, name: str, args: dict[str, Any] | None = None) -> Any:
        """Call QMP command ``name`` (its handler in this registry), as hmp_* calls qmp_*."""
        return self.hmp.registry.handlers[name](args or {}, self.session)

    def error(self, e: QMPError) -> None:
        """hmp_handle_error(): ``Error: `` and the QMP error's text."""
        self.printf(f"Error: {e.desc}\n")

    def qmp_or_error(self, name: str, args: dict[str, Any] | None = None) -> Any:
        """:meth:`qmp`, printing a refusal as hmp_handle_error() does (then None)."""
        try:
            return self.qmp(name, args)
        except QMPError as e:
            self.error(e)
            return None

    def output(self) -> str:
        """What human-monitor-command returns: monitor_puts() writes every ``\\n`` as
        ``\\r\\n``."""
        return "".join(self._out).replace("\n", "\r\n")


def _table(entries: tuple[tuple[str, str, str], ...]) -> list[Command]:
    return [Command(name, params, help_) for name, params, help_ in entries]


class Hmp:
    """QEMU 7.2's HMP command tables, with the commands qmpjobd implements."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.info = _table(INFO_COMMANDS)
        self.commands = _table(COMMANDS)
        self._lookup("info").sub = self.info

    def _lookup(self, name: str) -> Command:
        """The entry of ``name`` (``info X`` for a subcommand)."""
        words = name.split()
        table = self.info if words[0] == "info" and len(words) == 2 else self.commands
        for cmd in table:
            if cmd.matches(words[-1]):
                return cmd
        raise KeyError(f"HMP has no command {name!r}")

    def implement(self, name: str, args_type: str, run: Run) -> None:
        """Give QEMU's command ``name`` (``stop``, ``info block``) its argument types (QEMU's
        ``args_type`` string) and its implementation."""
        cmd = self._lookup(name)
        if cmd.run is not None:
            raise KeyError(f"HMP command {name!r} is already implemented")
        for spec in filter(None, args_type.split(",")):
            kind = spec.partition(":")[2]
            string = kind[:1] in ("F", "B", "s", "S") and kind[1:] in ("", "?")
            if not string and not (kind[:1] == "-" and len(kind) == 2):
                raise ValueError(f"HMP argument type {spec!r} of {name} is not supported")
        cmd.args_type, cmd.run = args_type, run

    # -- the QMP command -----------------------------------------------------------------------

    def human_monitor_command(self, args: dict[str, Any], session: Session) -> Any:
        """human-monitor-command: run one command line, return what it printed."""
        cpu_index = self._cpu(args.get("cpu-index"), session)
        mon = Monitor(self, session, cpu_index)
        pending = self.handle(mon, args["command-line"])
        if pending is not None and inspect.isawaitable(pending):
            async def finish() -> str:
                await pending
                return mon.output()
            return finish()
        return mon.output()

    def _cpu(self, index: int | None, session: Session) -> int | None:
        """The monitor's CPU: ``cpu-index`` if a vCPU has it (QEMU's error otherwise), by
        default the first vCPU."""
        cpus = [c["cpu-index"] for c in self.registry.handlers["query-cpus-fast"]({}, session)]
        if index is None:
            return cpus[0] if cpus else None
        if index not in cpus:
            raise QMPError("Parameter 'cpu-index' expects a CPU number")
        return index

    # -- monitor/hmp.c ---------------------------------------------------------------------------

    def handle(self, mon: Monitor, line: str) -> Awaitable[Any] | None:
        """handle_hmp_command()."""
        found = self._parse_command(mon, line, 0, self.commands)
        if found is None:
            return None
        cmd, pos = found
        if cmd.run is None:
            mon.printf(f'Command "{line[:pos]}" is not available.\n')
            return None
        args = _parse_arguments(mon, line, pos, cmd)
        if args is None:
            while pos > 0 and line[pos - 1] in SPACE:
                pos -= 1
            mon.printf(f'Try "help {line[:pos]}" for more information\n')
            return None
        return cmd.run(mon, args)

    def _parse_command(self, mon: Monitor, line: str, pos: int,
                       table: list[Command]) -> tuple[Command, int] | None:
        """monitor_parse_command(): the entry and where its arguments start, or None (after
        printing QEMU's complaint) for an unknown name; nothing at all for a blank line."""
        p = _skip(line, pos)
        if p == len(line):
            return None
        start = p
        while p < len(line) and line[p] != "/" and line[p] not in SPACE:
            p += 1
        name = line[start:p][:_NAME_MAX]
        cmd = next((c for c in table if c.matches(name)), None)
        if cmd is None:
            mon.printf(f"unknown command: '{line[:p]}'\n")
            return None
        p = _skip(line, p)
        if cmd.sub is not None and p < len(line):
            return self._parse_command(mon, line, p, cmd.sub)
        return cmd, p

    def help(self, mon: Monitor, name: str | None) -> None:
        """help_cmd()."""
        args: list[str] = []
        if name is not None:
            if name == "log":
                mon.printf(LOG_HELP)
                return
            parsed = _split_args(name)
            if parsed is None:
                return
            args = parsed
        self._help_dump(mon, self.commands, args, 0)

    def _help_dump(self, mon: Monitor, table: list[Command], args: list[str],
                   index: int) -> None:
        """help_cmd_dump()."""
        if index >= len(args):
            for cmd in table:
                _help_one(mon, cmd, args[:index])
            return
        for cmd in table:
            if cmd.matches(args[index]):
                if cmd.sub is not None:
                    self._help_dump(mon, cmd.sub, args, index + 1)
                else:
                    _help_one(mon, cmd, args[:index])
                return
        mon.printf("unknown command: '" + " ".join(args[:index + 1]) + "'\n")


def _help_one(mon: Monitor, cmd: Command, prefix: list[str]) -> None:
    """help_cmd_dump_one()."""
    mon.printf("".join(f"{a} " for a in prefix) + f"{cmd.name} {cmd.params} -- {cmd.help}\n")


def _skip(line: str, p: int) -> int:
    while p < len(line) and line[p] in SPACE:
        p += 1
    return p


def _char(line: str, p: int) -> str:
    """The character at ``p``; "" at the end (C's terminating NUL)."""
    return line[p] if p < len(line) else ""


_ESCAPES = {"n": "\n", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


def _get_str(line: str, p: int) -> tuple[str | None, int]:
    """get_str(): a word, or a double-quoted string with QEMU's escapes; None where QEMU
    fails (its complaints go to QEMU's stdout, not to the monitor)."""
    p = _skip(line, p)
    if p == len(line):
        return None, p
    out: list[str] = []
    if line[p] == '"':
        p += 1
        while p < len(line) and line[p] != '"':
            if line[p] == "\\":
                c = _char(line, p + 1)
                p += 2
                if c not in _ESCAPES:
                    return None, p
                out.append(_ESCAPES[c])
            else:
                out.append(line[p])
                p += 1
        if p >= len(line):  # unterminated string
            return None, p
        p += 1
    else:
        while p < len(line) and line[p] not in SPACE:
            out.append(line[p])
            p += 1
    return "".join(out)[:_STR_MAX], p


def _split_args(text: str) -> list[str] | None:
    """parse_cmdline(): at most 16 words (or quoted strings), None past that or on a bad
    string."""
    args: list[str] = []
    p = 0
    while True:
        p = _skip(text, p)
        if p == len(text):
            return args
        if len(args) >= 16:
            return None
        word, p = _get_str(text, p)
        if word is None:
            return None
        args.append(word)


def _parse_arguments(mon: Monitor, line: str, p: int, cmd: Command) -> dict[str, Any] | None:
    """monitor_parse_arguments() for the argument types the implemented commands use:
    strings (``s``, ``B``, ``F``), the rest of the line (``S``) and flags (``-x``)."""
    types = cmd.args_type
    t = 0
    args: dict[str, Any] = {}
    label = cmd.name
    while True:
        if types[t:t + 1] == ",":
            t += 1
        colon = types.find(":", t)
        if colon < 0:
            break
        key, kind = types[t:colon], types[colon + 1]
        t = colon + 2
        if kind in "FBs":
            p = _skip(line, p)
            if types[t:t + 1] == "?":
                t += 1
                if p == len(line):
                    continue
            value, p = _get_str(line, p)
            if value is None:
                what = {"F": "filename", "B": "block device name"}.get(kind, "string")
                mon.printf(f"{label}: {what} expected\n")
                return None
            args[key] = value
        elif kind == "-":
            start = p
            flag = types[t]
            t += 1
            p = _skip(line, p)
            if _char(line, p) == "-":
                p += 1
                given = _char(line, p)
                if given != flag:
                    if f"-{given}" not in types[t:]:  # is_valid_option()
                        # a "%c" of the terminating NUL ends monitor_printf's text there
                        mon.printf(f"{label}: unsupported option -{given}"
                                   + ("\n" if given else ""))
                        return None
                    p = start  # another flag's turn
                else:
                    p += 1
                    args[key] = True
        elif kind == "S":
            p = _skip(line, p)
            if types[t:t + 1] == "?":
                t += 1
                if p == len(line):
                    continue
            if p == len(line):
                mon.printf(f"{label}: string expected\n")
                return None
            args[key] = line[p:]
            p = len(line)
        else:  # implement() accepts no other type
            raise AssertionError(kind)
    p = _skip(line, p)
    if p != len(line):
        mon.printf(f"{label}: extraneous characters at the end of line\n")
        return None
    return args
