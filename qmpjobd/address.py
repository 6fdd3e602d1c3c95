"""Where to connect or listen: one parser for every address (the default socket is in paths.py).

``HOST:PORT`` (``--tcp``, health checks, heartbeats), ``unix:PATH`` and ``tcp:HOST:PORT``
(migration URIs, the COLO channel) and plain socket paths all go through :func:`parse_address`
or :func:`parse_host_port`, with the same range checks and the same error text.  This module
imports no daemon code, so clients (``watch``, ``health``, examples) can use it cheaply.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from .errors import QmpjobdError


class AddressError(QmpjobdError, ValueError):
    """An address that does not parse; the message is the one text every caller shows."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid address {text!r}: {reason}")
        self.text = text
        self.reason = reason


@dataclass(frozen=True)
class Address:
    """A Unix socket path or a TCP host and port."""

    kind: str
    """``unix`` or ``tcp``."""
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"

    def qapi(self) -> dict[str, str | bool]:
        """As a QAPI SocketAddress (query-migrate's ``socket-address``)."""
        if self.kind == "unix":
            return {"type": "unix", "path": self.path}
        family = "ipv6" if ":" in self.host else "ipv4"
        return {"port": str(self.port), family: True, "host": self.host, "type": "inet"}

    def connect(self, timeout: float | None = None) -> socket.socket:
        """A connected blocking socket."""
        if self.kind == "tcp":
            return socket.create_connection((self.host, self.port), timeout=timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        return sock

    async def open_connection(
            self, limit: int = 64 << 20) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """asyncio streams connected to this address."""
        if self.kind == "tcp":
            return await asyncio.open_connection(self.host, self.port, limit=limit)
        return await asyncio.open_unix_connection(self.path, limit=limit)


def parse_port(text: str, whole: str, min_port: int = 0) -> int:
    """A port number in ``min_port``..65535."""
    if not text.isascii() or not text.isdigit() or not min_port <= int(text) <= 65535:
        raise AddressError(whole, f"the port must be a number from {min_port} to 65535")
    return int(text)


def parse_host_port(text: str, default_host: str = "127.0.0.1",
                    min_port: int = 0) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` too; an empty host is ``default_host``)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise AddressError(text, "expected HOST:PORT")
    if host.startswith("[") != host.endswith("]"):
        raise AddressError(text, "unbalanced brackets around the host")
    host = host[1:-1] if host.startswith("[") else host
    if ":" in host and not text.startswith("["):
        raise AddressError(text, "an IPv6 host goes in brackets: [HOST]:PORT")
    return host or default_host, parse_port(port, text, min_port)


def parse_uri(text: str, default_host: str = "0.0.0.0") -> Address:
    """``unix:PATH`` or ``tcp:HOST:PORT`` (a migration URI)."""
    if text.startswith("unix:"):
        if len(text) == 5:
            raise AddressError(text, "the path is empty")
        return Address("unix", path=text[5:])
    if text.startswith("tcp:"):
        host, port = parse_host_port(text[4:], default_host)
        return Address("tcp", host=host, port=port)
    raise AddressError(text, "expected unix:PATH or tcp:HOST:PORT")


def parse_address(text: str) -> Address:
    """Where a client connects: ``unix:PATH``, ``tcp:HOST:PORT``, ``HOST:PORT`` or a path
    (anything with a ``/``, or without a ``:``)."""
    if text.startswith(("unix:", "tcp:")):
        return parse_uri(text, "127.0.0.1")
    if "/" in text or ":" not in text:
        if not text:
            raise AddressError(text, "the path is empty")
        return Address("unix", path=text)
    host, port = parse_host_port(text)
    return Address("tcp", host=host, port=port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback: where a listener
    without TLS may be reached only from here."""
    if host == "localhost":
        return True
    import ipaddress  # only TCP listeners ask; it costs a millisecond at every start

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
