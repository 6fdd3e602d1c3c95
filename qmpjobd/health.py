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

It uses qmpjobd's blocking QMP client (``qmpjobd.client``) and imports no daemon code; without
SOCKET it checks the daemon's own default, ``qmpjobd.paths.default_socket()``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any, NoReturn

from .address import Address, AddressError, parse_host_port
from .client import GREETING, Client, ClientError, short
from .errors import QmpjobdError
from .paths import default_socket

DEFAULT_TIMEOUT = 3.0
STATUS_ID = "qmpjobd-health"


class Unhealthy(QmpjobdError):
    """The check failed; the message is the one-line reason."""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _host_port(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except AddressError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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


def _error_text(msg: Any) -> str | None:
    """'Class: desc' for a QMP error reply, else None."""
    if isinstance(msg, dict) and isinstance(msg.get("error"), dict):
        err = msg["error"]
        return f"{err.get('class', '?')}: {err.get('desc', '')}"
    return None


def check(target: str | tuple[str, int], timeout: float = DEFAULT_TIMEOUT) -> str:
    """Run the handshake; returns the run state, raises :class:`Unhealthy`."""
    if isinstance(target, str):
        addr, where = Address("unix", path=target), target
    else:
        addr, where = Address("tcp", host=target[0], port=target[1]), f"{target[0]}:{target[1]}"
    client = Client(addr, deadline=time.monotonic() + timeout, connect=False)
    try:
        try:
            client.sock = addr.connect(timeout)
        except socket.gaierror as e:
            raise Unhealthy(f"cannot resolve {where}: {e.strerror or e}") from None
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
        return _converse(client)
    except TimeoutError as e:
        raise Unhealthy(f"timed out after {timeout:g}s waiting for {e}") from None
    except ClientError as e:
        raise Unhealthy(str(e)) from None
    finally:
        client.close()


def _converse(client: Client) -> str:
    while client.proto.greeting is None:
        client.receive(GREETING)
    reply = client.execute("qmp_capabilities", with_id=False)
    if reply != {"return": {}}:
        err = _error_text(reply)
        raise Unhealthy(f"qmp_capabilities failed: {err}" if err is not None
                        else f"unexpected reply to qmp_capabilities: "
                             f"{short(json.dumps(reply))}")
    reply = client.execute("query-status", msg_id=STATUS_ID)
    err = _error_text(reply)
    if err is not None:
        raise Unhealthy(f"query-status failed: {err}")
    ret = reply.get("return") if isinstance(reply, dict) else None
    if not isinstance(ret, dict) or not isinstance(ret.get("status"), str):
        raise Unhealthy(f"unexpected reply to query-status: {short(json.dumps(reply))}")
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
