"""Health check: a real QMP handshake against a running qmpjobd.

    python3 -m qmpjobd.health [SOCKET] [--tcp HOST:PORT] [--timeout S]

Connects (Unix socket, or TCP with ``--tcp``), reads the greeting and checks it carries
``QMP.version``, sends ``qmp_capabilities`` and expects ``{"return": {}}``, then sends
``query-status`` and expects a return. Prints exactly one line, ``ok: <status>`` (the run
state, e.g. ``ok: running`` or ``ok: inmigrate`` on a COLO secondary) or
``unhealthy: <reason>``, and exits 0 or 1. Every failure, bad arguments included, exits 1:
Docker's HEALTHCHECK reserves exit status 2.

The whole conversation shares one deadline (``--timeout``, default 3 s), so a daemon that
accepts but never greets or never answers is reported within it. Events the daemon sends
meanwhile (STOP/RESUME at every COLO checkpoint, for instance) are skipped. The run state is
reported, not judged: a paused guest is still a healthy daemon.

Standard library only; it does not import the daemon's modules unless SOCKET is omitted (then
the daemon's own default, ``qmpjobd.paths.default_socket()``, is used).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any, NoReturn

DEFAULT_TIMEOUT = 3.0
MAX_LINE = 1 << 20
"""Longest message accepted (a greeting or a query-status reply is a few hundred bytes)."""
STATUS_ID = "qmpjobd-health"


class Unhealthy(Exception):
    """The check failed; the message is the one-line reason."""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("expected HOST:PORT, e.g. 127.0.0.1:4444")
    return host.strip("[]") or "127.0.0.1", int(port)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python3 -m qmpjobd.health",
                description="QMP handshake health check for qmpjobd: prints 'ok: <status>' "
                            "and exits 0, or prints 'unhealthy: <reason>' and exits 1.")
    p.add_argument("socket", nargs="?", metavar="SOCKET", default=None,
                   help="the daemon's Unix socket (default: the daemon's own default)")
    p.add_argument("--tcp", metavar="HOST:PORT", type=_host_port, default=None,
                   help="check a --tcp listener instead of a Unix socket")
    p.add_argument("--timeout", metavar="S", type=_positive, default=DEFAULT_TIMEOUT,
                   help=f"seconds for the whole check (default {DEFAULT_TIMEOUT:g})")
    return p


def _short(data: bytes | str, limit: int = 60) -> str:
    """A one-line, bounded rendering of something the peer sent."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


class _Conn:
    """A socket with one deadline for everything, reading CRLF/LF-terminated JSON lines."""

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.timeout = timeout
        self.buf = b""

    def _remaining(self, what: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Unhealthy(f"timed out after {self.timeout:g}s waiting for {what}")
        return left

    def send(self, obj: dict[str, Any], what: str) -> None:
        self.sock.settimeout(self._remaining(what))
        try:
            self.sock.sendall(json.dumps(obj).encode() + b"\n")
        except TimeoutError:
            raise Unhealthy(f"timed out after {self.timeout:g}s sending {what}") from None
        except OSError as e:
            raise Unhealthy(f"connection lost sending {what}: {e.strerror or e}") from None

    def recv(self, what: str) -> Any:
        """The next message; ``what`` names it in failure reasons."""
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_LINE:
                raise Unhealthy(f"{what}: no end of line after {MAX_LINE} bytes")
            self.sock.settimeout(self._remaining(what))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise Unhealthy(f"timed out after {self.timeout:g}s waiting for {what}") from None
            except OSError as e:
                raise Unhealthy(f"connection lost waiting for {what}: {e.strerror or e}") from None
            if not chunk:
                extra = f" (got {_short(self.buf)})" if self.buf.strip() else ""
                raise Unhealthy(f"connection closed before {what}{extra}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            raise Unhealthy(f"garbage instead of {what}: {_short(line)}") from None

    def reply(self, what: str, msg_id: str | None = None) -> Any:
        """The next message that is not an event (and carries ``msg_id`` if given)."""
        while True:
            msg = self.recv(what)
            if isinstance(msg, dict) and "event" in msg:
                continue
            if msg_id is not None and isinstance(msg, dict) and "id" in msg \
                    and msg["id"] != msg_id:
                continue  # not the reply we wait for (cannot happen on a fresh connection)
            return msg


def _error_text(msg: Any) -> str | None:
    """'Class: desc' for a QMP error reply, else None."""
    if isinstance(msg, dict) and isinstance(msg.get("error"), dict):
        err = msg["error"]
        return f"{err.get('class', '?')}: {err.get('desc', '')}"
    return None


def _connect(target: str | tuple[str, int], timeout: float) -> socket.socket:
    if isinstance(target, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except BaseException:
            sock.close()
            raise
        return sock
    where = f"{target[0]}:{target[1]}"
    try:
        return socket.create_connection(target, timeout=timeout)
    except socket.gaierror as e:
        raise Unhealthy(f"cannot resolve {where}: {e.strerror or e}") from None


def check(target: str | tuple[str, int], timeout: float = DEFAULT_TIMEOUT) -> str:
    """Run the handshake; returns the run state, raises :class:`Unhealthy`."""
    where = target if isinstance(target, str) else f"{target[0]}:{target[1]}"
    deadline = time.monotonic() + timeout
    try:
        sock = _connect(target, timeout)
    except Unhealthy:
        raise
    except FileNotFoundError:
        raise Unhealthy(f"no socket at {where} (daemon not started, or stopped)") from None
    except ConnectionRefusedError:
        raise Unhealthy(f"connection refused on {where} (nothing listening)") from None
    except PermissionError:
        raise Unhealthy(f"permission denied on {where} (the socket is mode 0600: "
                        "run the check as the daemon's user)") from None
    except TimeoutError:
        raise Unhealthy(f"timed out after {timeout:g}s connecting to {where}") from None
    except OSError as e:
        raise Unhealthy(f"cannot connect to {where}: {e.strerror or e}") from None
    with sock:
        conn = _Conn(sock, deadline, timeout)
        greeting = conn.recv("the greeting")
        qmp = greeting.get("QMP") if isinstance(greeting, dict) else None
        if not isinstance(qmp, dict) or not isinstance(qmp.get("version"), dict):
            raise Unhealthy(f"not a QMP greeting: {_short(json.dumps(greeting))}")

        conn.send({"execute": "qmp_capabilities"}, "qmp_capabilities")
        reply = conn.reply("the reply to qmp_capabilities")
        if reply != {"return": {}}:
            err = _error_text(reply)
            raise Unhealthy(f"qmp_capabilities failed: {err}" if err is not None
                            else f"unexpected reply to qmp_capabilities: "
                                 f"{_short(json.dumps(reply))}")

        conn.send({"execute": "query-status", "id": STATUS_ID}, "query-status")
        reply = conn.reply("the reply to query-status", STATUS_ID)
        err = _error_text(reply)
        if err is not None:
            raise Unhealthy(f"query-status failed: {err}")
        ret = reply.get("return") if isinstance(reply, dict) else None
        if not isinstance(ret, dict) or not isinstance(ret.get("status"), str):
            raise Unhealthy(f"unexpected reply to query-status: {_short(json.dumps(reply))}")
        return str(ret["status"])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python3 -m qmpjobd.health``; returns the exit status (0 or 1)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print(f"unhealthy: bad arguments: {e}")
        parser.print_usage(sys.stderr)
        return 1
    if args.tcp is not None and args.socket is not None:
        print("unhealthy: bad arguments: give SOCKET or --tcp, not both")
        return 1
    target: str | tuple[str, int]
    if args.tcp is not None:
        target = args.tcp
    elif args.socket is not None:
        target = args.socket
    else:
        from .paths import default_socket
        target = default_socket()
    try:
        status = check(target, args.timeout)
    except Unhealthy as e:
        print(f"unhealthy: {e}", flush=True)
        return 1
    print(f"ok: {status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
