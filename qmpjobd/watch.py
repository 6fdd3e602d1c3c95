"""``qmpjobd watch SOCKET``: a live terminal view of a daemon's jobs and COLO state.

A plain QMP client over the Unix socket (it works against QEMU too).  It asks for the state
(query-status, query-jobs, query-block-jobs, query-colo-status, query-migrate and, where the
daemon has it, x-query-colo-metrics) once at start, then again only when an event says
something changed, at most once per ``COALESCE`` seconds, plus every ``--interval`` seconds
while some job runs (progress is not evented).  An idle daemon gets no commands at all.

On a terminal it draws in place on the alternate screen with the cursor hidden (restored on
exit; Ctrl-C, SIGTERM and ``q`` quit with status 0).  Without a terminal it prints each frame
as plain text; ``--once`` prints a single frame and exits.  When the daemon goes away it prints
``connection closed`` and exits 0 if the daemon announced SHUTDOWN first, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import textwrap
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

from .address import Address
from .client import AsyncClient, ClientError, ConnectionClosed
from .paths import default_socket

COALESCE = 0.1
"""Minimum time between two state refreshes (and two redraws), in seconds."""

SETTLE = 0.02
"""How long a refresh waits for the rest of an event burst (a COLO checkpoint's STOP,
MIGRATION_PASS and RESUME come within a few milliseconds)."""

RATE_WINDOW = 0.5
"""Block job speeds are measured over at least this many seconds of offsets."""

GREETING_TIMEOUT = 10.0
EVENT_LOG = 5

REFRESH_EVENTS = frozenset({"JOB_STATUS_CHANGE", "STOP", "RESUME", "COLO_EXIT", "MIGRATION",
                            "MIGRATION_PASS", "SHUTDOWN"})
REFRESH_PREFIXES = ("BLOCK_JOB_", "JOB_")

ACTIVE_STATUSES = frozenset({"running"})
"""Job statuses whose progress moves without events: these keep the interval timer on."""

QUERIES = ("query-status", "query-jobs", "query-block-jobs", "query-colo-status",
           "query-migrate", "x-query-colo-metrics")

# ANSI control sequences
ALT_SCREEN_ON = "\x1b[?1049h"
ALT_SCREEN_OFF = "\x1b[?1049l"
CURSOR_HIDE = "\x1b[?25l"
CURSOR_SHOW = "\x1b[?25h"
HOME = "\x1b[H"
CLEAR_EOL = "\x1b[K"
CLEAR_EOS = "\x1b[J"
RESET = "\x1b[0m"

BOLD, DIM, RED, GREEN, YELLOW, CYAN = "1", "2", "31", "32", "33", "36"

STATUS_STYLE = {"running": GREEN, "ready": GREEN, "created": CYAN, "paused": YELLOW,
                "standby": YELLOW, "waiting": YELLOW, "pending": YELLOW, "aborting": RED,
                "concluded": DIM, "null": DIM, "prelaunch": YELLOW, "inmigrate": CYAN,
                "postmigrate": YELLOW, "colo": CYAN, "shutdown": RED,
                "internal-error": RED, "io-error": RED, "guest-panicked": RED}


# -- state -----------------------------------------------------------------------------------

@dataclass
class State:
    """What the last refresh returned (None: that query failed or is not available)."""

    status: dict[str, Any] | None = None
    jobs: list[dict[str, Any]] = field(default_factory=list)
    block_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    colo: dict[str, Any] | None = None
    migrate: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    rates: dict[str, float] = field(default_factory=dict)
    """Measured bytes/s of block jobs, from successive offsets."""
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENT_LOG))
    refreshed: bool = False


class RateMeter:
    """Bytes/s of each block job from its offsets, measured over at least RATE_WINDOW."""

    def __init__(self) -> None:
        self._anchor: dict[str, tuple[int, float]] = {}
        self.rates: dict[str, float] = {}

    def update(self, block_jobs: dict[str, dict[str, Any]], now: float) -> None:
        """Feed the offsets of one refresh taken at ``now`` (monotonic seconds)."""
        for gone in set(self._anchor) - set(block_jobs):
            del self._anchor[gone]
            self.rates.pop(gone, None)
        for job_id, info in block_jobs.items():
            offset = info.get("offset")
            if not isinstance(offset, int):
                continue
            anchor = self._anchor.get(job_id)
            if anchor is None or offset < anchor[0]:
                self._anchor[job_id] = (offset, now)
                self.rates.pop(job_id, None)
            elif now - anchor[1] >= RATE_WINDOW:
                self.rates[job_id] = (offset - anchor[0]) / (now - anchor[1])
                self._anchor[job_id] = (offset, now)


# -- rendering -------------------------------------------------------------------------------

Segment = tuple[str, str]
"""Text and its SGR style ("" for none)."""
Line = list[Segment]


def _seg(text: str, style: str = "") -> Segment:
    return (text, style)


def line_text(line: Line) -> str:
    """The visible text of a line."""
    return "".join(t for t, _ in line)


def emit_line(line: Line, width: int, color: bool) -> str:
    """One line cut to ``width`` columns, with SGR codes when ``color``."""
    cut: list[Segment] = []
    left = width
    for text, style in line:
        if left <= 0:
            break
        cut.append((text[:left], style))
        left -= len(text)
    while cut and not cut[-1][0].rstrip():  # no trailing blanks
        cut.pop()
    if cut:
        cut[-1] = (cut[-1][0].rstrip(), cut[-1][1])
    return "".join(f"\x1b[{style}m{text}{RESET}" if color and style and text else text
                   for text, style in cut)


def _fmt_rate(value: float) -> str:
    for unit in ("B/s", "KiB/s", "MiB/s", "GiB/s"):
        if value < 1024 or unit == "GiB/s":
            return f"{value:.0f} {unit}" if unit == "B/s" else f"{value:.1f} {unit}"
        value /= 1024
    return ""  # pragma: no cover


def _fmt_ms(value: Any) -> str:
    return f"{value:.1f} ms" if isinstance(value, int | float) else "-"


def _fmt_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _progress(job: dict[str, Any]) -> float:
    cur, total = job.get("current-progress", 0), job.get("total-progress", 0)
    if isinstance(cur, int) and isinstance(total, int) and total > 0:
        return min(1.0, max(0.0, cur / total))
    if job.get("status") in ("concluded", "null") and not job.get("error"):
        return 1.0
    return 0.0


def progress_bar(fraction: float, width: int) -> str:
    """``[#####-----]  50%`` with ``width`` cells inside the brackets."""
    filled = int(fraction * width + 1e-9)
    return f"[{'#' * filled}{'-' * (width - filled)}] {int(fraction * 100 + 1e-9):3d}%"


def _speed_cell(job_id: str, status: str, state: State) -> str:
    """Measured bytes/s (right-aligned, so the column does not jump) and the limit, if any."""
    info = state.block_jobs.get(job_id)
    if info is None:
        return "-"
    rate = state.rates.get(job_id)
    cell = _fmt_rate(rate) if rate is not None and status in ACTIVE_STATUSES else "-"
    limit = info.get("speed")
    if isinstance(limit, int) and limit > 0:
        cell = f"{cell:>10} max {_fmt_rate(limit)}"
    return cell


def _error_cell(job: dict[str, Any], state: State) -> str:
    notes = []
    if job.get("error"):
        notes.append(str(job["error"]))
    info = state.block_jobs.get(str(job.get("id")))
    if info is not None:
        if info.get("io-status") not in (None, "ok"):
            notes.append(f"io-status {info['io-status']}")
        if info.get("paused") and job.get("status") not in ("paused", "standby"):
            notes.append("pause requested")
    return "; ".join(notes)


def _job_lines(state: State, width: int) -> list[Line]:
    jobs = state.jobs
    if not jobs:
        return [[_seg("  (no jobs)", DIM)]]
    ids = [str(j.get("id", "")) for j in jobs]
    types = [str(j.get("type", "")) for j in jobs]
    statuses = [str(j.get("status", "")) for j in jobs]
    speeds = [_speed_cell(i, s, state) for i, s in zip(ids, statuses, strict=True)]
    errors = [_error_cell(j, state) for j in jobs]
    id_w = min(24, max(2, *map(len, ids)))
    type_w = min(16, max(4, *map(len, types)))
    status_w = max(9, *map(len, statuses))
    speed_w = max(5, *map(len, speeds))
    fixed = 2 + id_w + 2 + type_w + 2 + status_w + 2 + 7 + 2 + speed_w
    bar_w = max(10, min(40, width - fixed))
    cols = (f"  {{:<{id_w}}}  {{:<{type_w}}}  ", f"{{:<{status_w}}}",
            f"  {{:<{bar_w + 7}}}  {{:<{speed_w}}}")
    head = cols[0].format("ID", "TYPE") + cols[1].format("STATUS") + \
        cols[2].format("PROGRESS", "SPEED")
    lines: list[Line] = [[_seg(head.rstrip(), BOLD)]]
    for job, job_id, job_type, status, speed, error in zip(jobs, ids, types, statuses, speeds,
                                                          errors, strict=True):
        style = RED if job.get("error") else STATUS_STYLE.get(status, "")
        lines.append([_seg(cols[0].format(job_id[:id_w], job_type[:type_w])),
                      _seg(cols[1].format(status), style),
                      _seg(cols[2].format(progress_bar(_progress(job), bar_w), speed))])
        if error:  # on lines of its own: error texts are long
            for i, part in enumerate(textwrap.wrap(error, max(20, width - 11))[:3]):
                lines.append([_seg("    error: " if i == 0 else " " * 11, RED), _seg(part)])
    return lines


def _wrap(chunks: list[str], width: int) -> list[str]:
    """Join chunks with two spaces, starting a new line where one would overflow."""
    lines: list[str] = []
    cur = ""
    for chunk in chunks:
        if cur and len(cur) + 2 + len(chunk) > width:
            lines.append(cur)
            cur = chunk
        else:
            cur = f"{cur}  {chunk}" if cur else chunk
    if cur:
        lines.append(cur)
    return lines


def _colo_lines(state: State, width: int) -> list[Line]:
    status = []
    if state.colo is not None:
        status += [f"mode {state.colo.get('mode', '-')}",
                   f"last-mode {state.colo.get('last-mode', '-')}",
                   f"reason {state.colo.get('reason', '-')}"]
    else:
        status.append("(query-colo-status not available)")
    if state.migrate is not None:
        status.append(f"migration {state.migrate.get('status', 'none')}")
        if state.migrate.get("error-desc"):
            status.append(f"error {state.migrate['error-desc']}")
    texts = _wrap(status, width - 2)
    m = state.metrics
    if m is not None:
        texts += _wrap([f"checkpoints {m.get('checkpoints', 0)}",
                        f"downtime median {_fmt_ms(m.get('downtime-median-ms'))}",
                        f"p90 {_fmt_ms(m.get('downtime-p90-ms'))}",
                        f"dirty pages last {m.get('dirty-pages-last', '-')}",
                        f"failover {_fmt_ms(m.get('failover-ms'))}"], width - 2)
    return [[_seg("COLO", BOLD)], *([_seg("  " + text)] for text in texts)]


def event_time(event: dict[str, Any]) -> str:
    """The event's own timestamp as local HH:MM:SS.mmm."""
    ts = event.get("timestamp")
    if isinstance(ts, dict) and isinstance(ts.get("seconds"), int):
        micro = ts.get("microseconds", 0)
        micro = micro if isinstance(micro, int) else 0
        return time.strftime("%H:%M:%S", time.localtime(ts["seconds"])) + \
            f".{micro // 1000:03d}"
    return "--:--:--.---"


def _event_lines(state: State) -> list[Line]:
    out: list[Line] = [[_seg(f"EVENTS (last {EVENT_LOG})", BOLD)]]
    if not state.events:
        out.append([_seg("  (none yet)", DIM)])
    for ev in state.events:
        data = ev.get("data")
        detail = " ".join(f"{k}={_fmt_value(v)}" for k, v in data.items()) \
            if isinstance(data, dict) else ""
        out.append([_seg(f"  {event_time(ev)}  "), _seg(str(ev.get("event")), CYAN),
                    _seg(f"  {detail}" if detail else "")])
    return out


def render(state: State, socket_path: str, width: int, now: float | None = None) -> list[Line]:
    """The whole frame: header, jobs table, COLO section, recent events."""
    width = max(20, width)
    run = state.status.get("status", "?") if state.status is not None else "?"
    clock = time.strftime("%H:%M:%S", time.localtime(time.time() if now is None else now))
    room = width - len(f"qmpjobd watch  {run}  {clock}  ")
    if len(socket_path) > room:  # keep the end of a long path: its file name
        socket_path = "..." + socket_path[len(socket_path) - max(0, room - 3):]
    lines: list[Line] = [[_seg("qmpjobd watch", BOLD), _seg("  "),
                          _seg(str(run), STATUS_STYLE.get(str(run), "")),
                          _seg(f"  {clock}  {socket_path}")],
                         [],
                         [_seg(f"JOBS ({len(state.jobs)})", BOLD)]]
    lines += _job_lines(state, width)
    lines.append([])
    lines += _colo_lines(state, width)
    lines.append([])
    lines += _event_lines(state)
    return lines


def terminal_width(stream: TextIO) -> int:
    """Columns of the terminal behind ``stream``; $COLUMNS, else 80, when there is none."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        pass
    cols = os.environ.get("COLUMNS", "")
    return int(cols) if cols.isdigit() and int(cols) > 0 else 80


def terminal_height(stream: TextIO) -> int:
    """Rows of the terminal behind ``stream`` (24 when unknown)."""
    try:
        return os.get_terminal_size(stream.fileno()).lines or 24
    except (OSError, ValueError, AttributeError):
        return 24


# -- the watcher -----------------------------------------------------------------------------

class Watcher:
    """Keeps the state fresh from events and draws it."""

    def __init__(self, client: AsyncClient, socket_path: str, out: TextIO, *, tty: bool,
                 color: bool, interval: float) -> None:
        self.client = client
        self.socket_path = socket_path
        self.out = out
        self.tty = tty
        self.color = color
        self.interval = interval
        self.state = State()
        self.meter = RateMeter()
        self.unsupported: set[str] = set()
        self.wake = asyncio.Event()
        self.need_refresh = True
        self.undrawn = False
        """Events came since the last frame."""
        self.shutdown_seen = False
        self._last_refresh = -1e9
        self._last_draw = -1e9

    # state

    def active(self) -> bool:
        """Some job's progress moves without events."""
        return any(j.get("status") in ACTIVE_STATUSES for j in self.state.jobs)

    async def refresh(self) -> None:
        """Ask for the whole state (pipelined); skip queries the daemon does not have."""
        names = [n for n in QUERIES if n not in self.unsupported]
        futures = {n: self.client.send(n) for n in names}
        replies: dict[str, Any] = {}
        for name, fut in futures.items():
            reply = await fut
            if "error" in reply:
                if reply["error"].get("class") == "CommandNotFound":
                    self.unsupported.add(name)
                replies[name] = None
            else:
                replies[name] = reply.get("return")
        st = self.state

        def as_dict(value: Any) -> dict[str, Any] | None:
            return value if isinstance(value, dict) else None

        def as_list(value: Any) -> list[dict[str, Any]]:
            return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []

        st.status = as_dict(replies.get("query-status"))
        st.jobs = as_list(replies.get("query-jobs"))
        st.block_jobs = {str(b.get("device")): b for b in as_list(replies.get("query-block-jobs"))}
        st.colo = as_dict(replies.get("query-colo-status"))
        st.migrate = as_dict(replies.get("query-migrate"))
        st.metrics = as_dict(replies.get("x-query-colo-metrics"))
        self.meter.update(st.block_jobs, time.monotonic())
        st.rates = dict(self.meter.rates)
        st.refreshed = True

    def on_event(self, event: dict[str, Any]) -> None:
        """Log the event; state-changing ones schedule a (coalesced) refresh."""
        self.state.events.append(event)
        self.undrawn = True
        name = str(event.get("event", ""))
        if name == "SHUTDOWN":
            self.shutdown_seen = True
        if name in REFRESH_EVENTS or name.startswith(REFRESH_PREFIXES):
            self.need_refresh = True
        self.wake.set()

    # drawing

    def frame(self) -> list[str]:
        """The current frame as text lines (with SGR codes when colouring)."""
        width = terminal_width(self.out)
        lines = [emit_line(line, width, self.color)
                 for line in render(self.state, self.socket_path, width)]
        if self.tty:
            rows = terminal_height(self.out)
            if len(lines) > rows:
                hidden = len(lines) - rows + 1
                lines = [*lines[:rows - 1], emit_line([_seg(f"... {hidden} more lines", DIM)],
                                                      width, self.color)]
        return lines

    def draw(self) -> None:
        """Redraw in place on a terminal; print a frame otherwise."""
        self.undrawn = False
        lines = self.frame()
        if self.tty:
            self.out.write(HOME + (CLEAR_EOL + "\n").join(lines) + CLEAR_EOL + CLEAR_EOS)
        else:
            self.out.write("\n".join(lines) + "\n\n")
        self.out.flush()

    # the loop

    async def pump_events(self) -> None:
        """Move events from the client's queue to the state."""
        while True:
            self.on_event(await self.client.events.get())

    async def run(self) -> None:
        """Refresh and draw until cancelled or the connection closes."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            deadlines = []
            if self.active():
                deadlines.append(self._last_refresh + self.interval)
            if self.tty:  # the header clock: a local redraw at each new second, no QMP
                deadlines.append(now + 1.0 - (time.time() % 1.0) + 0.01)
            if not self.wake.is_set() and not self.need_refresh:
                timeout = max(0.0, min(deadlines) - now) if deadlines else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)
            gap = self._last_draw + COALESCE - loop.time()
            if self.need_refresh and self.state.refreshed:
                gap = max(gap, SETTLE)
            if gap > 0:
                await asyncio.sleep(gap)
            self.wake.clear()
            now = loop.time()
            due = self.active() and now >= self._last_refresh + self.interval - 0.01
            if self.need_refresh or due:
                self.need_refresh = False
                self._last_refresh = now
                await self.refresh()
            self._last_draw = loop.time()
            self.draw()


# -- entry point -----------------------------------------------------------------------------

def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Options of ``qmpjobd watch``."""
    p = argparse.ArgumentParser(
        prog="qmpjobd watch",
        description="Live view of a QMP daemon's jobs and COLO state, driven by its events.")
    p.add_argument("socket", nargs="?", default=None, metavar="SOCKET",
                   help=f"the daemon's QMP Unix socket (default: {default_socket()})")
    p.add_argument("--once", action="store_true",
                   help="print one frame as plain text and exit")
    p.add_argument("--interval", type=_interval, default=1.0, metavar="SECONDS",
                   help="progress refresh while some job runs (default 1.0); "
                        "otherwise only events cause a refresh")
    p.add_argument("--no-color", action="store_true", help="no colours (also: $NO_COLOR)")
    return p


@contextlib.contextmanager
def _terminal(out: TextIO, stdin: TextIO | None) -> Iterator[None]:
    """Alternate screen, hidden cursor, no echo of typed keys; all restored on exit."""
    saved: list[Any] | None = None
    fd = -1
    if stdin is not None:
        try:
            import termios
            fd = stdin.fileno()
            saved = termios.tcgetattr(fd)
            mode = termios.tcgetattr(fd)
            mode[3] &= ~(termios.ECHO | termios.ICANON)
            mode[6][termios.VMIN] = 1
            mode[6][termios.VTIME] = 0
            termios.tcsetattr(fd, termios.TCSANOW, mode)
        except (ImportError, OSError, ValueError):
            saved = None
    out.write(ALT_SCREEN_ON + CURSOR_HIDE + HOME + CLEAR_EOS)
    out.flush()
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            out.write(RESET + CURSOR_SHOW + ALT_SCREEN_OFF)
            out.flush()
        if saved is not None:
            import termios
            with contextlib.suppress(OSError):
                termios.tcsetattr(fd, termios.TCSANOW, saved)


async def _watch(args: argparse.Namespace, path: str) -> int:
    out = sys.stdout
    try:
        client = await AsyncClient.connect(Address("unix", path=path), timeout=GREETING_TIMEOUT,
                                           capabilities=["x-job-events"], id_prefix="watch-")
    except (OSError, ClientError) as e:
        print(f"qmpjobd watch: cannot connect to {path}: {e}", file=sys.stderr)
        return 1
    tty = not args.once and out.isatty()
    color = tty and not args.no_color and not os.environ.get("NO_COLOR")
    watcher = Watcher(client, path, out, tty=tty, color=color, interval=args.interval)
    try:
        if args.once:
            try:
                await watcher.refresh()
            except ConnectionClosed:
                print("connection closed", file=out)
                return 1
            while not client.events.empty():  # events that came with the replies
                watcher.on_event(client.events.get_nowait())
            out.write("\n".join(watcher.frame()) + "\n")
            out.flush()
            return 0
        return await _live(watcher, client, out, tty)
    finally:
        await client.close()


async def _live(watcher: Watcher, client: AsyncClient, out: TextIO, tty: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    stdin = sys.stdin if tty and sys.stdin is not None and sys.stdin.isatty() else None
    if tty:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGWINCH, watcher.wake.set)
            handled.append(signal.SIGWINCH)

    def on_key() -> None:
        assert stdin is not None
        try:
            data = os.read(stdin.fileno(), 1024)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(stdin.fileno())
        elif b"q" in data or b"Q" in data:
            stop.set()
        else:
            watcher.wake.set()  # any other key: redraw

    closed = False
    with _terminal(out, stdin) if tty else contextlib.nullcontext():
        if stdin is not None:
            loop.add_reader(stdin.fileno(), on_key)
        tasks = [loop.create_task(watcher.pump_events()), loop.create_task(watcher.run())]
        waiters = [loop.create_task(stop.wait()), loop.create_task(client.closed.wait())]
        try:
            await asyncio.wait([*waiters, tasks[1]], return_when=asyncio.FIRST_COMPLETED)
            closed = not stop.is_set()
            if tasks[1].done() and not tasks[1].cancelled():
                exc = tasks[1].exception()
                if exc is not None and not isinstance(exc, ConnectionClosed):
                    raise exc
        finally:
            if stdin is not None:
                loop.remove_reader(stdin.fileno())
            for task in (*tasks, *waiters):
                task.cancel()
            await asyncio.gather(*tasks, *waiters, return_exceptions=True)
            for sig in handled:
                loop.remove_signal_handler(sig)
        if closed:  # events that arrived just before the end (SHUTDOWN among them)
            while not client.events.empty():
                watcher.on_event(client.events.get_nowait())
    if not closed:
        return 0
    if tty or watcher.undrawn:  # the last known state (on the normal screen), its last events
        watcher.tty = False
        out.write("\n".join(watcher.frame()) + "\n")
    out.write("connection closed\n")
    out.flush()
    return 0 if watcher.shutdown_seen else 1


def main(argv: list[str]) -> int:
    """``qmpjobd watch [SOCKET] [--once] [--interval SECONDS] [--no-color]``."""
    args = build_parser().parse_args(argv)
    path = args.socket or default_socket()
    try:
        return asyncio.run(_watch(args, path))
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed
        return 0
    except BrokenPipeError:  # e.g. piped into head: no error at the final flush either
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
