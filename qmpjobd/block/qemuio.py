"""qemu-io's command interpreter (QEMU 7.2's qemu-io-cmds.c) over one block node.

QEMU's HMP ``qemu-io`` runs these commands on a drive, a device's backend or a node: the
deterministic guest writer and reader that tests use.  Parsing and texts are QEMU's:
``breakline()`` splits on single spaces, options are GNU getopt's (permuted, ``--`` ends
them), numbers are ``cvtnum()``'s (``4k``, ``0x200``, ``1.5M``), and reports are
``print_report()``'s.  QEMU writes what the commands print to its standard output and its
usage complaints to standard error, not into the monitor's reply; the caller decides where
:class:`Output` goes.

:func:`prepare` runs on the event loop (it only parses the command name and counts the
arguments); :func:`execute` does the I/O and runs in a worker thread.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import QmpjobdError
from .nodes import BlockNode
from .qemuio_help import EXTENDED_HELP

REQUEST_MAX = (0x7FFFFFFF >> 9) << 9
"""BDRV_REQUEST_MAX_BYTES: the longest read or write a request may ask for."""

INT64_MAX = (1 << 63) - 1

CHUNK = 4 << 20
"""Bytes per pread/pwrite: a long request never needs a buffer of its own length."""

DEFAULT_WRITE_PATTERN = 0xCD
"""What ``write`` writes without -P (qemu-io's 0xcdcdcdcd)."""


class Output:
    """Where a command's text goes: QEMU's stdout (reports, complaints) and stderr (usage
    errors).  ``out`` and ``err`` receive text as it is produced."""

    def __init__(self, out: Callable[[str], None], err: Callable[[str], None]) -> None:
        self.out = out
        self.err = err


class Collect(Output):
    """An Output that keeps the text (for tests and for callers that print it later)."""

    def __init__(self) -> None:
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        super().__init__(self.stdout.append, self.stderr.append)


class Usage(QmpjobdError):
    """The command's usage line is printed (qemuio_command_usage) and it returns."""


class Failed(QmpjobdError):
    """The command printed its complaint and returns."""


@dataclass(frozen=True)
class Command:
    """One entry of qemu-io's command table."""

    name: str
    altname: str | None
    argmin: int
    argmax: int
    args: str | None
    """None prints nothing; "" (``map``'s) still prints its separating space."""
    oneline: str
    write: bool = False
    """Needs write permission (QEMU's ct->perm): refused on a read-only node."""
    implemented: bool = True

    def usage(self) -> str:
        """qemuio_command_usage()."""
        return f"{self.name} {self.args} -- {self.oneline}\n"

    def oneline_help(self, name: str) -> str:
        """help_oneline(): the name as given, the arguments if any, the summary."""
        args = "" if self.args is None else self.args + " "
        return f"{name} {args}-- {self.oneline}\n"


# -- numbers and text ------------------------------------------------------------------------

_NUM = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?|\.[0-9]+)([bBkKmMgGtTpPeE]?)")
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
          "p": 1 << 50, "e": 1 << 60}


def cvtnum(text: str) -> int:
    """cvtnum(): a byte count with an optional binary suffix; -EINVAL or -ERANGE."""
    m = _NUM.fullmatch(text)
    if m is None:
        return -errno.EINVAL
    number, suffix = m.group(1), m.group(2).lower()
    unit = _UNITS[suffix]
    if number[:2].lower() == "0x":
        value = int(number, 16) * unit
    elif "." in number:
        if not suffix or suffix == "b":
            return -errno.EINVAL  # a fraction of a byte
        value = int(float(number) * unit)
    else:
        value = int(number, 10) * unit
    return -errno.ERANGE if value > INT64_MAX else value


def cvtnum_error(rc: int, arg: str) -> str:
    """print_cvtnum_err()."""
    if rc == -errno.EINVAL:
        return ("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- "
                f"{arg}\n")
    if rc == -errno.ERANGE:
        return f"Parsing error: argument too large -- {arg}\n"
    return f"Parsing error: {arg}\n"


def _number(arg: str) -> int:
    value = cvtnum(arg)
    if value < 0:
        raise Failed(cvtnum_error(value, arg))
    return value


def _strtol(arg: str) -> int | None:
    """C's strtol(arg, &end, 0) when all of ``arg`` is the number, else None."""
    m = re.fullmatch(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", arg)
    if m is None:
        return None
    digits = m.group(2)
    base = 16 if digits[:2].lower() == "0x" else 8 if digits.startswith("0") else 10
    return int(digits, base) * (-1 if m.group(1) == "-" else 1)


SLEEP_MAX_MS = 0x7FFFFFFF
"""``sleep`` waits at most this long (24.8 days); longer asks are cut to it."""


def sleep_ms(arg: str, out: Output) -> int | None:
    """sleep_f()'s argument: milliseconds, or None after its complaint."""
    ms = _strtol(arg)
    if ms is None or ms < 0:
        out.out(f"{arg} is not a valid number\n")
        return None
    return min(ms, SLEEP_MAX_MS)


def parse_pattern(arg: str) -> int:
    """parse_pattern(): strtol(arg, 0) within 0..255."""
    value = _strtol(arg)
    if value is not None and 0 <= value <= 255:
        return value
    raise Failed(f"{arg} is not a valid pattern byte\n")


_SIZE_UNITS = ((1 << 60, " EiB"), (1 << 50, " PiB"), (1 << 40, " TiB"), (1 << 30, " GiB"),
               (1 << 20, " MiB"), (1 << 10, " KiB"))


def cvtstr(value: float) -> str:
    """cvtstr(): ``%.3f`` of a binary unit (``%f`` bytes below 1 KiB), its first ``.000``
    replaced by the unit."""
    text, suffix = f"{value:f}", " bytes"
    for size, unit in _SIZE_UNITS:
        if value >= size:
            text, suffix = f"{value / size:.3f}", unit
            break
    cut = text.find(".000")
    return text[:cut] + suffix if cut >= 0 else text + suffix


def timestr(seconds: float, fixed: bool = False) -> str:
    """timestr(): ``SS.ss sec`` under a second, else (or ``fixed``, for -C) ``H:MM:SS.ss``."""
    whole = int(seconds)
    frac = seconds - whole
    if whole == 0 and not fixed:
        return f"{frac:05.2f} sec"
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60 + frac:05.2f}"


def report(op: str, seconds: float, offset: int, count: int, total: int, cnt: int,
           machine: bool) -> str:
    """print_report(): what was done, then the statistics (``-C``: one CSV line only)."""
    seconds = max(seconds, 1e-9)
    if machine:
        return (f"{total},{cnt},{timestr(seconds, fixed=True)},{total / seconds:.3f},"
                f"{cnt / seconds:.3f}\n")
    return (f"{op} {total}/{count} bytes at offset {offset}\n"
            f"{cvtstr(float(total))}, {cnt} ops; {timestr(seconds)} "
            f"({cvtstr(total / seconds)}/sec and {cnt / seconds:.4f} ops/sec)\n")


def dump_buffer(data: bytes, offset: int) -> str:
    """dump_buffer(): 16 bytes a row, hex then the alphanumerics (others as ``.``)."""
    rows = []
    for i in range(0, len(data), 16):
        row = data[i:i + 16]
        text = "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else "." for b in row)
        rows.append(f"{offset + i:08x}:  " + "".join(f"{b:02x} " for b in row) + " "
                    + text + "\n")
    return "".join(rows)


# -- getopt ----------------------------------------------------------------------------------

def getopt(cmd: Command, argv: list[str], optstring: str, out: Output
           ) -> tuple[list[tuple[str, str]], list[str]]:
    """GNU getopt(): options anywhere before ``--`` (operands permuted after them); an
    unknown option or a missing argument is glibc's complaint and then the usage line."""
    takes = {c: optstring[i + 1:i + 2] == ":" for i, c in enumerate(optstring) if c != ":"}
    opts: list[tuple[str, str]] = []
    operands: list[str] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            operands += argv[i:]
            break
        if not arg.startswith("-") or arg == "-":
            operands.append(arg)
            continue
        j = 1
        while j < len(arg):
            c = arg[j]
            j += 1
            if c not in takes:
                out.err(f"{argv[0]}: invalid option -- '{c}'\n")
                raise Usage
            if not takes[c]:
                opts.append((c, ""))
                continue
            if j < len(arg):
                opts.append((c, arg[j:]))
            elif i < len(argv):
                opts.append((c, argv[i]))
                i += 1
            else:
                out.err(f"{argv[0]}: option requires an argument -- '{c}'\n")
                raise Usage
            break
    return opts, operands


# -- I/O helpers -----------------------------------------------------------------------------

def _strerror(e: OSError) -> str:
    return os.strerror(e.errno or errno.EIO)


def _check_range(node: BlockNode, offset: int, count: int) -> None:
    """blk_check_byte_request(): a request past the end is EIO, and nothing is done."""
    length = node.length
    if offset > length or length - offset < count:
        raise OSError(errno.EIO, os.strerror(errno.EIO))


def _read(node: BlockNode, offset: int, count: int, keep: bool,
          check: tuple[int, int, int] | None) -> tuple[bool, bytes]:
    """Read a range a chunk at a time; whether the ``(pattern, start, length)`` window of it
    does not hold only that byte, and (with ``keep``) the data."""
    _check_range(node, offset, count)
    bad = False
    kept: list[bytes] = []
    for done in range(0, count, CHUNK):
        data = node.pread(offset + done, min(CHUNK, count - done))
        if check is not None and not bad:
            pattern, start, length = check
            lo, hi = max(start, done), min(start + length, done + len(data))
            bad = lo < hi and _mismatch(data[lo - done:hi - done], pattern)
        if keep:
            kept.append(data)
    return bad, b"".join(kept)


def _aligned(offset: int, count: int) -> None:
    """VM state and compressed requests are whole sectors."""
    for what, value in (("offset", offset), ("count", count)):
        if value % 512:
            raise Failed(f"{value} is not a sector-aligned value for '{what}'\n")


def _write(node: BlockNode, offset: int, count: int, source: bytes) -> None:
    """Write ``source`` repeated over a range, a chunk at a time."""
    if node.read_only:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))
    _check_range(node, offset, count)
    period = len(source)
    repeated = source * (min(CHUNK, count) // period + 2)
    for done in range(0, count, CHUNK):
        n = min(CHUNK, count - done)
        phase = done % period
        node.pwrite(offset + done, repeated[phase:phase + n])


def _pattern_file(path: str, count: int, out: Output) -> bytes:
    """qemu_io_alloc_from_file(): the file's first ``count`` bytes, repeated to fill the
    buffer; perror()'s text when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(min(count, CHUNK))
    except OSError as e:
        out.err(f"{path}: {os.strerror(e.errno or errno.EIO)}\n")
        raise Failed("") from None
    if not data:
        out.err(f"{path}: {os.strerror(errno.EIO)}\n")
        raise Failed("")
    return data


def _mismatch(data: bytes, byte: int) -> bool:
    return data.count(byte) != len(data)


# -- commands --------------------------------------------------------------------------------

Run = Callable[[BlockNode, Command, list[str], Output], None]


def _read_f(node: BlockNode, cmd: Command, argv: list[str], out: Output) -> None:
    opts, rest = getopt(cmd, argv, "bCl:pP:qs:v", out)
    flags = {c for c, _ in opts}
    pattern = pattern_offset = 0
    pattern_count: int | None = None
    for c, value in opts:
        if c == "l":
            pattern_count = _number(value)
        elif c == "P":
            pattern = parse_pattern(value)
        elif c == "s":
            pattern_offset = _number(value)
    offset, count = _range(rest)
    if "P" not in flags and ("l" in flags or "s" in flags):
        raise Usage
    if pattern_count is None:
        pattern_count = count - pattern_offset
    if pattern_count < 0 or pattern_count + pattern_offset > count:
        raise Failed("pattern verification range exceeds end of read data\n")
    if "b" in flags:
        _aligned(offset, count)
    _read_report(node, flags, offset, count, (pattern, pattern_offset, pattern_count), "read",
                 out)


def _read_report(node: BlockNode, flags: set[str], offset: int, count: int,
                 check: tuple[int, int, int], verb: str, out: Output) -> None:
    """Read, check the ``(pattern, start, length)`` window if -P was given, then print as
    read_f and readv_f do: the mismatch, then (unless -q) the dump (-v) and the report."""
    start = time.perf_counter()
    try:
        if "b" in flags:
            raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))
        bad, data = _read(node, offset, count, "v" in flags, check if "P" in flags else None)
    except OSError as e:
        raise Failed(f"{verb} failed: {_strerror(e)}\n") from None
    elapsed = time.perf_counter() - start
    if bad:
        out.out(f"Pattern verification failed at offset {offset + check[1]}, "
                f"{check[2]} bytes\n")
    if "q" in flags:
        return
    if "v" in flags:
        out.out(dump_buffer(data, offset))
    out.out(report("read", elapsed, offset, count, count, 1, "C" in flags))


def _write_f(node: BlockNode, cmd: Command, argv: list[str], out: Output) -> None:
    opts, rest = getopt(cmd, argv, "bcCfnpP:qs:uz", out)
    flags = {c for c, _ in opts}
    pattern = _pattern(opts, DEFAULT_WRITE_PATTERN)
    if len(rest) != 2:
        raise Usage
    checks = (("b" in flags and "z" in flags, "-b and -z cannot be specified at the same time"),
              ("f" in flags and "b" in flags, "-f and -b cannot be specified at the same time"),
              ("n" in flags and "z" not in flags, "-n requires -z to be specified"),
              ("u" in flags and "z" not in flags, "-u requires -z to be specified"),
              (len(flags & {"z", "P", "s"}) > 1,
               "Only one of -z, -P, and -s can be specified at the same time"))
    for bad, text in checks:
        if bad:
            raise Failed(text + "\n")
    offset = _number(rest[0])
    count = _number(rest[1])
    if count > REQUEST_MAX and "n" not in flags:
        raise Failed(f"length cannot exceed {REQUEST_MAX} without -n, given {rest[1]}\n")
    if "b" in flags or "c" in flags:
        _aligned(offset, count)
    source = bytes([0 if "z" in flags else pattern])
    if "s" in flags:
        source = _pattern_file(next(v for c, v in opts if c == "s"), count, out)
    start = time.perf_counter()
    try:
        if "b" in flags or "c" in flags:  # no VM state and no compression on raw/file
            raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))
        _write(node, offset, count, source)
    except OSError as e:
        raise Failed(f"write failed: {_strerror(e)}\n") from None
    elapsed = time.perf_counter() - start
    if "q" not in flags:
        out.out(report("wrote", elapsed, offset, count, count, 1, "C" in flags))


def _range(rest: list[str]) -> tuple[int, int]:
    """The ``off len`` operands of read and discard, within one request's length."""
    if len(rest) != 2:
        raise Usage
    offset = _number(rest[0])
    count = _number(rest[1])
    if count > REQUEST_MAX:
        raise Failed(f"length cannot exceed {REQUEST_MAX}, given {rest[1]}\n")
    return offset, count


def _pattern(opts: list[tuple[str, str]], default: int) -> int:
    """The last -P's byte (each -P is checked as getopt meets it), else ``default``."""
    pattern = default
    for c, value in opts:
        if c == "P":
            pattern = parse_pattern(value)
    return pattern


def _vector(rest: list[str]) -> tuple[int, list[int]]:
    offset = _number(rest[0])
    lens = [_number(arg) for arg in rest[1:]]
    return offset, lens


def _readv_f(node: BlockNode, cmd: Command, argv: list[str], out: Output) -> None:
    opts, rest = getopt(cmd, argv, "CP:qv" if cmd.name == "readv" else "CiP:qv", out)
    flags = {c for c, _ in opts}
    pattern = _pattern(opts, 0)
    if len(rest) < 2:
        raise Usage
    offset, lens = _vector(rest)
    count = sum(lens)
    _read_report(node, flags, offset, count, (pattern, 0, count), "readv", out)


def _writev_f(node: BlockNode, cmd: Command, argv: list[str], out: Output) -> None:
    aio = cmd.name == "aio_write"
    opts, rest = getopt(cmd, argv, "CfiP:quz" if aio else "CfP:q", out)
    flags = {c for c, _ in opts}
    pattern = _pattern(opts, DEFAULT_WRITE_PATTERN)
    if len(rest) < 2:
        raise Usage
    if aio and "z" in flags and "P" in flags:
        raise Failed("-z and -P cannot be specified at the same time\n")
    if aio and "u" in flags and "z" not in flags:
        raise Failed("-u requires -z to be specified\n")
    offset, lens = _vector(rest)
    count = sum(lens)
    start = time.perf_counter()
    try:
        _write(node, offset, count, bytes([0 if "z" in flags else pattern]))
    except OSError as e:
        raise Failed(f"{'aio_write' if aio else 'writev'} failed: {_strerror(e)}\n") from None
    elapsed = time.perf_counter() - start
    if aio and "z" in flags:  # QEMU 7.2 never sets this request's start time: it reports
        elapsed = time.monotonic()  # the whole CLOCK_MONOTONIC reading (the host's uptime)
    if "q" not in flags:
        out.out(report("wrote", elapsed, offset, count, count, 1, "C" in flags))


def _discard_f(node: BlockNode, cmd: Command, argv: list[str], out: Output) -> None:
    opts, rest = getopt(cmd, argv, "Cq", out)
    flags = {c for c, _ in opts}
    offset, count = _range(rest)
    start = time.perf_counter()
    try:
        _check_range(node, offset, count)
        node.discard(offset, count)
    except OSError as e:
        raise Failed(f"discard failed: {_strerror(e)}\n") from None
    elapsed = time.perf_counter() - start
    if "q" not in flags:
        out.out(report("discard", elapsed, offset, count, count, 1, "C" in flags))


def _flush_f(node: BlockNode, cmd: Command, argv: list[str], out: Output) -> None:
    try:
        node.flush()
    except OSError as e:
        raise Failed(f"flush failed: {_strerror(e)}\n") from None


def _length_f(node: BlockNode, cmd: Command, argv: list[str], out: Output) -> None:
    out.out(cvtstr(float(node.length)) + "\n")


def _info_f(node: BlockNode, cmd: Command, argv: list[str], out: Output) -> None:
    # QEMU prints the format name twice for a protocol node (the node's and its driver's).
    names = [node.driver] * (2 if node.driver == "file" else 1)
    out.out("".join(f"format name: {n}\n" for n in names)
            + "cluster size: 0 bytes\nvm state offset: 0 bytes\n")


def _map_f(node: BlockNode, cmd: Command, argv: list[str], out: Output) -> None:
    length = node.length  # raw and file report every byte allocated
    out.out(f"{cvtstr(float(length))} (0x{length:x}) bytes     allocated at offset "
            f"{cvtstr(0.0)} (0x0)\n")


def _alloc_f(node: BlockNode, cmd: Command, argv: list[str], out: Output) -> None:
    offset = _number(argv[1])
    count = _number(argv[2]) if len(argv) > 2 else 512
    count = max(0, min(count, node.length - offset))  # cut at the end of the disk
    out.out(f"{count}/{count} bytes allocated at offset {cvtstr(float(offset))}\n")


# -- the table -------------------------------------------------------------------------------

_RUN: dict[str, Run] = {
    "read": _read_f, "write": _write_f, "readv": _readv_f, "aio_read": _readv_f,
    "writev": _writev_f, "aio_write": _writev_f, "discard": _discard_f, "flush": _flush_f,
    "aio_flush": _flush_f, "length": _length_f, "info": _info_f, "map": _map_f,
    "alloc": _alloc_f,
}


COMMANDS: tuple[Command, ...] = (
    Command("abort", None, 0, 0, None, "simulate a program crash using abort(3)",
            implemented=False),
    Command("aio_flush", None, 0, 0, None, "completes all outstanding aio requests"),
    Command("aio_read", None, 2, -1, "[-Ciqv] [-P pattern] off len [len..]",
            "asynchronously reads a number of bytes"),
    Command("aio_write", None, 2, -1, "[-Cfiquz] [-P pattern] off len [len..]",
            "asynchronously writes a number of bytes", write=True),
    Command("alloc", None, 1, 2, "offset [count]",
            "checks if offset is allocated in the file"),
    Command("break", None, 2, 2, "event tag",
            "sets a breakpoint on event and tags the stopped request as tag",
            implemented=False),
    Command("discard", None, 2, -1, "[-Cq] off len",
            "discards a number of bytes at a specified offset", write=True),
    Command("flush", None, 0, 0, None, "flush all in-core file state to disk"),
    Command("help", "?", 0, 1, "[command]", "help for one or all commands"),
    Command("info", "i", 0, 0, None, "prints information about the current file"),
    Command("length", "l", 0, 0, None, "gets the length of the current file"),
    Command("map", None, 0, 0, "", "prints the allocated areas of a file"),
    Command("read", "r", 2, -1, "[-abCqv] [-P pattern [-s off] [-l len]] off len",
            "reads a number of bytes at a specified offset"),
    Command("readv", None, 2, -1, "[-Cqv] [-P pattern] off len [len..]",
            "reads a number of bytes at a specified offset"),
    Command("remove_break", None, 1, 1, "tag", "remove a breakpoint by tag",
            implemented=False),
    Command("reopen", None, 0, -1, "[(-r|-w)] [-c cache] [-o options]",
            "reopens an image with new options", implemented=False),
    Command("resume", None, 1, 1, "tag", "resumes the request tagged as tag",
            implemented=False),
    Command("sigraise", None, 1, 1, "signal", "raises a signal", implemented=False),
    Command("sleep", None, 1, 1, None, "waits for the given value in milliseconds"),
    Command("truncate", "t", 1, 3, "[-m prealloc_mode] off",
            "truncates the current file at the given offset", write=True,
            implemented=False),
    Command("wait_break", None, 1, 1, "tag", "waits for the suspension of a request",
            implemented=False),
    Command("write", "w", 2, -1, "[-bcCfnquz] [-P pattern | -s source_file] off len",
            "writes a number of bytes at a specified offset", write=True),
    Command("writev", None, 2, -1, "[-Cfq] [-P pattern] off len [len..]",
            "writes a number of bytes at a specified offset", write=True),
)


def find(name: str) -> Command | None:
    """find_command(): by name or alias."""
    for cmd in COMMANDS:
        if name in (cmd.name, cmd.altname):
            return cmd
    return None


def breakline(line: str) -> list[str]:
    """breakline(): words separated by single spaces (empty words dropped)."""
    return [w for w in line.split(" ") if w]


@dataclass
class Prepared:
    """A command line ready to run: the command and its words (``argv[0]`` as typed)."""

    cmd: Command
    argv: list[str]


def prepare(line: str, out: Output) -> Prepared | None:
    """qemuio_command() up to the permission check: find the command and count its
    arguments (complaints go to ``out.err``); None when there is nothing to run."""
    argv = breakline(line)
    if not argv:
        return None
    cmd = find(argv[0])
    if cmd is None:
        out.err(f'command "{argv[0]}" not found\n')
        return None
    given = len(argv) - 1
    if given < cmd.argmin or (cmd.argmax != -1 and given > cmd.argmax):
        if cmd.argmax == -1:
            text = f"expected at least {cmd.argmin} arguments"
        elif cmd.argmin == cmd.argmax:
            text = f"expected {cmd.argmin} arguments"
        else:
            text = f"expected between {cmd.argmin} and {cmd.argmax} arguments"
        out.err(f"bad argument count {given} to {argv[0]}, {text}\n")
        return None
    return Prepared(cmd, argv)


def execute(node: BlockNode, prepared: Prepared, out: Output) -> None:
    """Run a prepared command on ``node`` (in a worker thread: it does the I/O)."""
    cmd, argv = prepared.cmd, prepared.argv
    if cmd.name == "help":
        out.out(_help(argv[1] if len(argv) > 1 else None))
        return
    run = _RUN.get(cmd.name)
    if run is None or not cmd.implemented:
        out.err(f"qemu-io: {cmd.name} is not implemented by qmpjobd\n")
        return
    try:
        run(node, cmd, argv, out)
    except Usage:
        out.out(cmd.usage())
    except Failed as e:
        if str(e):
            out.out(str(e))


def _help(name: str | None) -> str:
    """help_f(): every command's one line, or one command's with its extended help."""
    if name is None:
        return "".join(c.oneline_help(c.name) for c in COMMANDS) + \
            "\nUse 'help commandname' for extended help.\n"
    cmd = find(name)
    if cmd is None:
        return f"command {name} not found\n"
    return cmd.oneline_help(name) + EXTENDED_HELP.get(cmd.name, "")
