"""Test helpers: start real daemons (qmpjobd, QEMU 7.2) and talk raw QMP to them over sockets."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from qmpjobd import client
from qmpjobd.address import Address

QEMU = shutil.which("qemu-system-x86_64")
NO_QEMU_REASON = "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"


def _listening(path: str) -> bool | None:
    """Whether a socket bound to ``path`` listens, from /proc/net/unix (None: unreadable)."""
    try:
        with open("/proc/net/unix") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
            return True
    return False


def wait_for_socket(path: str, proc: subprocess.Popen[bytes], timeout: float = 10.0,
                    single_client: bool = False) -> None:
    """Block until something accepts connections on ``path`` (or the process dies).

    A single-client server (QEMU's monitor) is not probed with a connection: that would take
    its one client slot, and it refuses the next connection until it has noticed the probe
    leave (seen for over 3 s on a loaded machine).  Its listening socket is looked up in
    /proc/net/unix instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        if single_client and (up := _listening(path)) is not None:
            if up:
                return
        else:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(path)
                    return
            except OSError:
                pass
        # nothing to wait on but the file system: poll the socket path
        time.sleep(0.01)
    raise TimeoutError(f"nothing listening on {path} after {timeout}s")


STARTED: list[Daemon] = []
"""Every process started through this module; conftest stops leftovers after each test."""


class Daemon:
    """A qmpjobd (or QEMU) process started for one test."""

    def __init__(self, argv: list[str], path: str, single_client: bool = False,
                 pass_fds: tuple[int, ...] = ()) -> None:
        self.path = path
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     pass_fds=pass_fds)
        STARTED.append(self)
        wait_for_socket(path, self.proc, single_client=single_client)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process and wait for it; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def start_qmpjobd(tmp: str, *extra: str, name: str = "qmpjobd.sock") -> Daemon:
    path = os.path.join(tmp, name)
    argv = [sys.executable, "-m", "qmpjobd", "--socket", path, "--log-level", "warning", *extra]
    return Daemon(argv, path)


def start_qemu(tmp: str) -> Daemon:
    assert QEMU is not None
    path = os.path.join(tmp, "qemu.sock")
    argv = [QEMU, "-M", "none", "-nodefaults", "-display", "none",
            "-qmp", f"unix:{path},server=on,wait=off"]
    return Daemon(argv, path, single_client=True)


def connect_unix(path: str, timeout: float = 10.0) -> socket.socket:
    """A socket connected to ``path``.  QEMU's single-client monitor refuses a connection for a
    moment while it has not yet noticed that the previous client (or the start-up probe) left,
    so a refused connection is retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except ConnectionRefusedError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # nothing to wait on but the listening socket: poll it


class Client(client.Client):
    """A raw QMP test client over a real Unix socket, built on qmpjobd's own blocking client
    (its connection handling and line framing): it sends bytes exactly as given and reads
    every line in arrival order, events and replies alike."""

    keep_raw_below: int | None = None
    """Keep only lines shorter than this in ``raw_lines`` (None: every line)."""

    def __init__(self, path: str, timeout: float = 10.0,
                 sock: socket.socket | None = None) -> None:
        super().__init__(Address("unix", path=path), timeout=timeout, connect=False)
        self.proto = client.Protocol(newline=b"\r\n")
        self.sock = sock if sock is not None else connect_unix(path, timeout)
        self.sock.settimeout(timeout)
        self.raw_lines: list[bytes] = []
        self.greeting = self.recv()

    def send(self, data: bytes, what: str = "a request") -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def recv_line(self) -> bytes:
        assert self.sock is not None
        while (line := self.proto.next_line()) is None:
            chunk = self.sock.recv(4 << 20)
            if not chunk:
                raise EOFError("connection closed")
            self.proto.feed(chunk)
        if self.keep_raw_below is None or len(line) < self.keep_raw_below:
            self.raw_lines.append(line)
        return line

    def recv(self) -> Any:
        return orjson.loads(self.recv_line())

    def recv_reply(self) -> Any:
        """Next message that is not an event."""
        while True:
            msg = self.recv()
            if "event" not in msg:
                return msg

    def cmd(self, name: str, args: dict[str, Any] | None = None, **extra: Any) -> Any:
        req: dict[str, Any] = {"execute": name, **extra}
        if args is not None:
            req["arguments"] = args
        self.send(orjson.dumps(req) + b"\n")
        return self.recv_reply()

    def negotiate(self, *caps: str) -> None:
        reply = self.cmd("qmp_capabilities", {"enable": list(caps)} if caps else None)
        assert reply == {"return": {}}, reply

    def exchange(self, data: bytes, sentinel_id: str = "__end__") -> list[Any]:
        """Send ``data`` then a sentinel query-name; return every message before its reply."""
        self.send(data + b'\n{"execute":"query-name","id":"' + sentinel_id.encode() + b'"}\n')
        out = []
        while True:
            msg = self.recv()
            if msg.get("id") == sentinel_id and ("return" in msg or "error" in msg):
                return out
            out.append(msg)


def until_status(c: Client, status: str, job_id: str) -> list[Any]:
    """Read messages until JOB_STATUS_CHANGE ``status`` for ``job_id``; return all of them."""
    seen = []
    while True:
        msg = c.recv()
        seen.append(msg)
        if msg.get("event") == "JOB_STATUS_CHANGE" and msg["data"] == {"status": status,
                                                                       "id": job_id}:
            return seen


def strip_volatile(msgs: list[Any]) -> list[Any]:
    """Drop what legitimately differs between QEMU and qmpjobd: timestamps."""
    out = []
    for m in msgs:
        if isinstance(m, dict) and "timestamp" in m:
            m = {k: v for k, v in m.items() if k != "timestamp"}
        out.append(m)
    return out


@contextmanager
def connected(path: str, *caps: str, negotiate: bool = True) -> Iterator[Client]:
    c = Client(path)
    try:
        if negotiate:
            c.negotiate(*caps)
        yield c
    finally:
        c.close()
