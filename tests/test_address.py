"""One address parser for the command line, health checks, heartbeats and migration URIs: the
same range checks and the same error text everywhere."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qmpjobd.address import Address, AddressError, parse_address, parse_host_port, parse_uri


@pytest.mark.parametrize(("text", "expect"), [
    ("127.0.0.1:4444", ("127.0.0.1", 4444)),
    (":4444", ("127.0.0.1", 4444)),
    ("[::1]:0", ("::1", 0)),
    ("localhost:65535", ("localhost", 65535)),
])
def test_host_port(text: str, expect: tuple[str, int]) -> None:
    assert parse_host_port(text) == expect


@pytest.mark.parametrize(("text", "reason"), [
    ("127.0.0.1:99999", "the port must be a number from 0 to 65535"),
    ("127.0.0.1:-1", "the port must be a number from 0 to 65535"),
    ("127.0.0.1:http", "the port must be a number from 0 to 65535"),
    ("127.0.0.1:٤٤", "the port must be a number from 0 to 65535"),  # non-ASCII digits
    ("127.0.0.1", "expected HOST:PORT"),
    ("[::1:80", "unbalanced brackets around the host"),
    ("::1:80", "an IPv6 host goes in brackets: [HOST]:PORT"),
])
def test_bad_host_port_has_one_text(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as e:
        parse_host_port(text)
    assert str(e.value) == f"invalid address {text!r}: {reason}"


def test_a_minimum_port() -> None:
    with pytest.raises(AddressError, match="from 1 to 65535"):
        parse_host_port("127.0.0.1:0", min_port=1)


def test_uris_and_client_addresses() -> None:
    assert parse_uri("unix:/tmp/x.sock") == Address("unix", path="/tmp/x.sock")
    assert parse_uri("tcp::4444") == Address("tcp", host="0.0.0.0", port=4444)
    assert parse_address("tcp::4444") == Address("tcp", host="127.0.0.1", port=4444)
    assert parse_address("/run/qmpjobd/qmpjobd.sock").kind == "unix"
    assert parse_address("qmp.sock") == Address("unix", path="qmp.sock")
    assert parse_address("127.0.0.1:4444") == Address("tcp", host="127.0.0.1", port=4444)
    assert str(Address("tcp", host="::1", port=5)) == "tcp:[::1]:5"
    for bad in ("unix:", "udp:1.2.3.4:5", "tcp:1.2.3.4:70000"):
        with pytest.raises(AddressError):
            parse_uri(bad)


@pytest.mark.parametrize("argv", [
    ["-m", "qmpjobd", "--tcp", "127.0.0.1:99999"],
    ["-m", "qmpjobd.health", "--tcp", "127.0.0.1:99999"],
])
def test_out_of_range_ports_are_refused_on_the_command_line(argv: list[str]) -> None:
    """``--tcp 127.0.0.1:99999`` used to listen on port 34463 (99999 mod 65536)."""
    r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "invalid address '127.0.0.1:99999': the port must be a number from 0 to 65535" in \
        r.stdout + r.stderr
