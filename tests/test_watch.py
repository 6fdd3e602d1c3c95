"""``qmpjobd watch``: frames, a real pseudo-terminal, no polling while idle, daemon exit.

The watcher runs as its own process, as a user would run it; its output is read with
timeouts (select on a pty master or a reader thread on a pipe), never after a fixed sleep.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from qmptest import QEMU, Client, Daemon, start_qemu, start_qmpjobd, until_status

from qmpjobd.watch import (
    CURSOR_SHOW,
    RateMeter,
    State,
    emit_line,
    main,
    progress_bar,
    render,
)

REPO = Path(__file__).resolve().parent.parent
PLUGIN = str(REPO / "examples" / "countdown_job.py")
WATCH = [sys.executable, "-c",
         "import sys; from qmpjobd.watch import main; sys.exit(main(sys.argv[1:]))"]
CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MIB = 1 << 20


def plain(text: str) -> str:
    """Terminal output without its control sequences (colours, cursor moves, clears)."""
    return CSI.sub("", text).replace("\r", "")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("NO_COLOR", None)
    return e


@pytest.fixture
def jobd(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon with the countdown plug-in (running jobs with progress)."""
    d = start_qmpjobd(str(tmp_path), "--plugin", PLUGIN)
    yield d
    d.stop()


def client(d: Daemon) -> Client:
    c = Client(d.path)
    c.negotiate()
    return c


def countdown(c: Client, job_id: str, steps: int, interval: float) -> None:
    reply = c.cmd("x-countdown", {"job-id": job_id, "steps": steps, "interval": interval,
                                  "auto-dismiss": False})
    assert reply == {"return": {}}, reply


# -- a watcher on a pipe, read by a thread ---------------------------------------------------

class PipeWatch:
    """The watcher with stdout on a pipe: it prints plain frames; lines collected by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*WATCH, *args], cwd=REPO, env=env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode().rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append("<EOF>")
            self.cond.notify_all()

    def wait_line(self, pattern: str, timeout: float = 10.0, start: int = 0) -> int:
        """Index of the first line from ``start`` matching ``pattern`` (a regex)."""
        rx = re.compile(pattern)
        found: list[int] = []

        def seen() -> bool:
            for i in range(start, len(self.lines)):
                if rx.search(self.lines[i]):
                    found.append(i)
                    return True
            return False

        with self.cond:
            if not self.cond.wait_for(seen, timeout):
                raise AssertionError(f"no line matching {pattern!r} in {timeout}s:\n"
                                     + "\n".join(self.lines[-40:]))
        return found[0]

    def wait(self, timeout: float = 10.0) -> int:
        rc = self.proc.wait(timeout)
        self.thread.join(timeout)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def watchers() -> Iterator[list[PipeWatch]]:
    started: list[PipeWatch] = []
    yield started
    for w in started:
        w.stop()


# -- a watcher on a real pseudo-terminal -----------------------------------------------------

class PtyWatch:
    """The watcher with a pty as its terminal (stdin, stdout and stderr), 120x40."""

    def __init__(self, *args: str, cols: int = 120, rows: int = 40) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen([*WATCH, *args], cwd=REPO, env=env(), stdin=slave,
                                     stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.master = master
        self.raw = b""
        self.pos = 0  # expect() searches the plain text from here

    def _read(self, timeout: float) -> bool:
        """Read what is there (waiting up to ``timeout``); False at EOF."""
        ready, _, _ = select.select([self.master], [], [], max(0.0, timeout))
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.raw += data
        return bool(data)

    @property
    def text(self) -> str:
        return plain(self.raw.decode(errors="replace"))

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait for ``pattern`` in the output after the previous match; returns the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.text, self.pos)
            if m is not None:
                self.pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0 or (not self._read(min(left, 0.5)) and self.proc.poll() is not None):
                tail = self.text[-3000:]
                raise AssertionError(f"no {pattern!r} within {timeout}s; output ends:\n{tail}")

    def wait(self, timeout: float = 10.0) -> int:
        """Drain the terminal until the process exits; its exit status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if not self._read(0.1):
                break
        rc = self.proc.wait(max(0.1, deadline - time.monotonic()))
        while self._read(0):  # what is still buffered
            pass
        return rc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def ptys() -> Iterator[list[PtyWatch]]:
    started: list[PtyWatch] = []
    yield started
    for p in started:
        p.close()


# -- a counting proxy ------------------------------------------------------------------------

class CountingProxy:
    """A Unix-socket proxy in front of the daemon that records every client->server line."""

    def __init__(self, listen: str, upstream: str) -> None:
        self.upstream = upstream
        self.sent: list[tuple[float, str]] = []  # (monotonic time, command name)
        self.cond = threading.Condition()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(listen)
        self.server.listen()
        self.socks: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                down, _ = self.server.accept()
                up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                up.connect(self.upstream)
                self.socks += [down, up]
                threading.Thread(target=self._pump, args=(down, up, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(up, down, False),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if count:
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    with self.cond:
                        for line in lines:
                            if line.strip():
                                self.sent.append((time.monotonic(),
                                                  orjson.loads(line).get("execute", "?")))
                        self.cond.notify_all()
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def count(self) -> int:
        with self.cond:
            return len(self.sent)

    def wait_for(self, pred: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``pred()`` holds (checked on every command); False after ``timeout``."""
        with self.cond:
            return self.cond.wait_for(pred, timeout)

    def close(self) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


# -- rendering (pure) ------------------------------------------------------------------------

def test_progress_bar_and_rates() -> None:
    assert progress_bar(0.0, 10) == "[----------]   0%"
    assert progress_bar(0.5, 10) == "[#####-----]  50%"
    assert progress_bar(1.0, 10) == "[##########] 100%"
    meter = RateMeter()
    meter.update({"bk": {"offset": 0}}, 10.0)
    meter.update({"bk": {"offset": MIB}}, 10.2)  # too soon: no figure from 0.2 s
    assert meter.rates == {}
    meter.update({"bk": {"offset": 4 * MIB}}, 11.0)
    assert meter.rates == {"bk": pytest.approx(4 * MIB)}
    meter.update({}, 12.0)
    assert meter.rates == {}


def test_render_fits_the_width_and_shows_everything() -> None:
    state = State(
        status={"status": "running", "running": True},
        jobs=[{"current-progress": 25, "total-progress": 100, "status": "running",
               "type": "backup", "id": "bk"},
              {"current-progress": 3, "total-progress": 10, "status": "concluded",
               "type": "x-countdown", "id": "c1", "error": "countdown failed at step 3"}],
        block_jobs={"bk": {"device": "bk", "offset": 25, "len": 100, "speed": 8 * MIB,
                           "io-status": "ok", "paused": False}},
        colo={"mode": "primary", "last-mode": "none", "reason": "none"},
        migrate={"status": "colo"},
        metrics={"checkpoints": 12, "downtime-median-ms": 3.25, "downtime-p90-ms": 7.5,
                 "dirty-pages-last": 321, "failover-ms": 41.0},
        rates={"bk": 2.5 * MIB})
    state.events.append({"timestamp": {"seconds": 1700000000, "microseconds": 123456},
                         "event": "JOB_STATUS_CHANGE", "data": {"status": "running",
                                                                "id": "bk"}})
    for width in (60, 80, 132):
        lines = [emit_line(line, width, False) for line in render(state, "/s.sock", width)]
        assert all(len(line) <= width for line in lines), (width, lines)
        assert all(line == line.rstrip() for line in lines)
    text = "\n".join(emit_line(line, 132, False) for line in render(state, "/s.sock", 132))
    assert re.search(r"bk\s+backup\s+running\s+\[#+-+\]\s+25%\s+2\.5 MiB/s max 8\.0 MiB/s",
                     text), text
    assert re.search(r"c1\s+x-countdown\s+concluded\s+\[#+-+\]\s+30%\s+-\n"
                     r"    error: countdown failed at step 3\n", text), text
    for piece in ("mode primary", "last-mode none", "reason none", "migration colo",
                  "checkpoints 12", "downtime median 3.2 ms", "p90 7.5 ms",
                  "dirty pages last 321", "failover 41.0 ms", "running",
                  ".123  JOB_STATUS_CHANGE  status=running id=bk"):
        assert piece in text, (piece, text)
    colored = emit_line(render(state, "/s.sock", 132)[0], 132, True)
    assert "\x1b[" in colored and plain(colored) == emit_line(render(state, "/s.sock", 132)[0],
                                                               132, False)


# -- against a daemon ------------------------------------------------------------------------

def test_once_shows_a_running_job(jobd: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    with client(jobd) as c:
        assert c.cmd("x-countdown", {"job-id": "bad", "steps": 4, "fail-at": 2,
                                     "interval": 0.01, "auto-dismiss": False}) == {"return": {}}
        until_status(c, "concluded", "bad")
        countdown(c, "c1", 1000, 0.05)
        assert main([jobd.path, "--once"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out  # plain text
    header = out.splitlines()[0]
    assert re.fullmatch(r"qmpjobd watch  running  \d\d:\d\d:\d\d  \S+/qmpjobd\.sock", header)
    assert len(header) <= 80 and (jobd.path in header or header.count("...") == 1)
    assert re.search(r"^  ID\s+TYPE\s+STATUS\s+PROGRESS\s+SPEED$", out, re.M), out
    assert re.search(r"^  c1\s+x-countdown\s+running\s+\[[#-]{10,}\]\s+\d+%\s+-$", out,
                     re.M), out
    assert re.search(r"^  bad\s+x-countdown\s+concluded\s+\[#+-+\]\s+25%\s+-\n"
                     r"    error: countdown failed at step 2$", out, re.M), out
    assert "mode none  last-mode none  reason none  migration none" in out
    assert "checkpoints 0" in out
    assert all(len(line) <= 80 for line in out.splitlines())


def test_once_as_a_process_and_with_block_jobs(jobd: Daemon) -> None:
    with client(jobd) as c:
        for node in ("n1", "n2"):
            c.cmd("blockdev-add", {"driver": "null-co", "node-name": node, "size": 1 << 30})
        assert c.cmd("blockdev-backup", {"job-id": "bk", "device": "n1", "target": "n2",
                                         "sync": "full", "speed": 4 * MIB,
                                         "auto-dismiss": False}) == {"return": {}}
        out = subprocess.run([*WATCH, jobd.path, "--once", "--no-color"], cwd=REPO, env=env(),
                             capture_output=True, timeout=30, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^  bk\s+backup\s+running\s+\[[#-]+\]\s+\d+%\s+- max 4\.0 MiB/s$",
                     out.stdout, re.M), out.stdout


def test_live_in_a_pty_job_appears_progresses_and_concludes(
        jobd: Daemon, ptys: list[PtyWatch]) -> None:
    w = PtyWatch(jobd.path, "--interval", "0.1")
    ptys.append(w)
    w.expect(r"qmpjobd watch  running  \d\d:\d\d:\d\d  \S+")
    w.expect(r"\(no jobs\)")
    raw_start = w.raw
    assert b"\x1b[?1049h" in raw_start and b"\x1b[?25l" in raw_start  # alt screen, no cursor
    assert b"\x1b[32m" in w.raw  # colours on a terminal ("running" in green)
    with client(jobd) as c:
        countdown(c, "c1", 40, 0.05)
        w.expect(r"JOB_STATUS_CHANGE  status=running id=c1")
        seen: list[int] = []
        while len(seen) < 2:  # two different percentages while running
            m = w.expect(r"c1\s+x-countdown\s+running\s+\[[#-]+\]\s+(\d+)%")
            pct = int(m.group(1))
            if 0 < pct < 100 and pct not in seen:
                seen.append(pct)
        assert seen == sorted(seen)
        until_status(c, "concluded", "c1")
        w.expect(r"c1\s+x-countdown\s+concluded\s+\[#+\]\s+100%")
        w.expect(r"JOB_STATUS_CHANGE  status=concluded id=c1")
    w.proc.send_signal(signal.SIGINT)
    assert w.wait() == 0
    tail = w.raw[len(raw_start):]
    assert CURSOR_SHOW.encode() in tail and b"\x1b[?1049l" in tail
    assert "connection closed" not in w.text


def test_block_job_speed_is_measured(jobd: Daemon, watchers: list[PipeWatch]) -> None:
    w = PipeWatch(jobd.path, "--interval", "0.2")
    watchers.append(w)
    w.wait_line(r"\(no jobs\)")
    with client(jobd) as c:
        for node in ("n1", "n2"):
            c.cmd("blockdev-add", {"driver": "null-co", "node-name": node, "size": 1 << 30})
        assert c.cmd("blockdev-backup", {"job-id": "bk", "device": "n1", "target": "n2",
                                         "sync": "full", "speed": 8 * MIB}) == {"return": {}}
        rx = r"^  bk\s+backup\s+running\s+\[[#-]+\]\s+\d+%\s+([\d.]+) (KiB|MiB)/s max 8\.0 MiB/s$"
        i = w.wait_line(rx)
        m = re.search(rx, w.lines[i])
        assert m is not None
        rate = float(m.group(1)) * (MIB if m.group(2) == "MiB" else 1024)
        assert 1 * MIB <= rate <= 32 * MIB, w.lines[i]
        c.cmd("block-job-cancel", {"device": "bk", "force": True})
        w.wait_line(r"BLOCK_JOB_CANCELLED")


def test_keys_resize_and_sigterm_in_a_pty(jobd: Daemon, ptys: list[PtyWatch]) -> None:
    w = PtyWatch(jobd.path, "--no-color", cols=120)
    ptys.append(w)
    w.expect(r"mode none  last-mode none  reason none  migration none\n")
    assert b"\x1b[32m" not in w.raw and b"\x1b[1m" not in w.raw  # --no-color
    fcntl.ioctl(w.master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 40, 0, 0))
    w.proc.send_signal(signal.SIGWINCH)  # the kernel sends it to the foreground group only
    w.expect(r"reason none\s*\n\s+migration none")  # redrawn for 40 columns
    os.write(w.master, b"x")  # another key: a redraw, the view goes on
    w.expect(r"qmpjobd watch")
    assert w.proc.poll() is None
    w.proc.send_signal(signal.SIGTERM)
    assert w.wait() == 0
    assert w.raw.rstrip().endswith(b"\x1b[?1049l")


def test_q_quits(jobd: Daemon, ptys: list[PtyWatch]) -> None:
    w = PtyWatch(jobd.path)
    ptys.append(w)
    w.expect(r"\(none yet\)")
    os.write(w.master, b"q")
    assert w.wait() == 0
    assert CURSOR_SHOW.encode() in w.raw


def test_no_polling_while_idle_and_refreshes_are_coalesced(
        jobd: Daemon, tmp_path: Path, watchers: list[PipeWatch]) -> None:
    proxy = CountingProxy(str(tmp_path / "proxy.sock"), jobd.path)
    try:
        # --interval 0.05: a polling watcher would send ~40 refreshes in the idle window
        w = PipeWatch(str(tmp_path / "proxy.sock"), "--interval", "0.05")
        watchers.append(w)
        w.wait_line(r"^qmpjobd watch ")
        w.wait_line(r"\(none yet\)")
        handshake = proxy.count()
        assert handshake <= 7, proxy.sent  # qmp_capabilities and one refresh
        assert proxy.sent[0][1] == "qmp_capabilities"
        assert not proxy.wait_for(lambda: len(proxy.sent) > handshake, 2.0), proxy.sent

        # a job: its events cause refreshes, and the timer runs while it runs
        with client(jobd) as c:
            countdown(c, "c1", 10, 0.05)
            assert proxy.wait_for(lambda: len(proxy.sent) > handshake, 10.0)
            until_status(c, "concluded", "c1")
            w.wait_line(r"c1\s+x-countdown\s+concluded")
            c.cmd("job-dismiss", {"id": "c1"})
            null = w.wait_line(r"status=null id=c1")
            frame = max(i for i in range(null) if w.lines[i].startswith("JOBS ("))
            assert w.lines[frame] == "JOBS (0)"  # that frame was drawn after a refresh
        settled = proxy.count()
        assert not proxy.wait_for(lambda: len(proxy.sent) > settled, 1.5), proxy.sent[settled:]

        refreshes = [t for t, name in proxy.sent if name == "query-status"]
        gaps = [b - a for a, b in itertools.pairwise(refreshes)]
        assert len(refreshes) >= 3
        assert min(gaps) >= 0.08, gaps  # at most one refresh per ~100 ms
        assert len(refreshes) < 40  # the job ran ~0.5 s
    finally:
        proxy.close()


@pytest.mark.parametrize("how", ["shutdown", "kill"])
def test_daemon_exit_ends_the_watcher(how: str, tmp_path: Path,
                                      watchers: list[PipeWatch]) -> None:
    d = start_qmpjobd(str(tmp_path))
    w = PipeWatch(d.path)
    watchers.append(w)
    w.wait_line(r"\(none yet\)")
    d.stop(signal.SIGTERM if how == "shutdown" else signal.SIGKILL)
    assert w.wait() == (0 if how == "shutdown" else 1)
    assert w.lines[-2:] == ["connection closed", "<EOF>"]
    if how == "shutdown":
        assert any("SHUTDOWN" in line and "reason=host-signal" in line for line in w.lines)


def test_daemon_exit_in_a_pty_restores_the_terminal(tmp_path: Path,
                                                   ptys: list[PtyWatch]) -> None:
    d = start_qmpjobd(str(tmp_path))
    w = PtyWatch(d.path)
    ptys.append(w)
    w.expect(r"\(none yet\)")
    before = len(w.raw)
    with client(d) as c:
        c.cmd("quit")
    assert w.wait() == 0
    tail = w.raw[before:].decode(errors="replace")
    assert tail.index(CURSOR_SHOW) < tail.index("connection closed")
    assert "\x1b[?1049l" in tail
    assert "SHUTDOWN" in plain(tail)  # the last frame stays on the normal screen


def test_cannot_connect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nobody.sock"), "--once"]) == 1
    assert "cannot connect" in capsys.readouterr().err


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_once_against_qemu(tmp_path: Path) -> None:
    """QEMU offers no x-job-events and has no x-query-colo-metrics: plain negotiation, and
    the metrics are left out."""
    q = start_qemu(str(tmp_path))
    try:
        out = subprocess.run([*WATCH, q.path, "--once"], cwd=REPO, env=env(),
                             capture_output=True, timeout=30, text=True)
    finally:
        q.stop()
    assert out.returncode == 0, out.stderr
    assert "(no jobs)" in out.stdout
    assert "migration none" in out.stdout
    assert "checkpoints" not in out.stdout

