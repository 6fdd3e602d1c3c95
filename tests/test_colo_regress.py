"""Regression tests for the COLO defects of issue 9 (each test says what used to go wrong)."""

from __future__ import annotations

import errno
import json
import socket
from typing import Any

import pytest
from colotest import EvClient
from qmptest import start_qmpjobd


def _pipelined(c: EvClient, *cmds: dict[str, Any]) -> list[Any]:
    """Send several commands in one write (no round trip between them); their replies."""
    c.send(b"".join(json.dumps(cmd).encode() + b"\n" for cmd in cmds))
    return [c.recv_reply() for _ in cmds]


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_query_migrate_right_after_migrate_incoming_shows_the_bound_address(
        tmp_path: Any, kind: str) -> None:
    # used to answer {"status": "setup"} without socket-address: the address was filled in
    # by a task that ran only after the reply
    d = start_qmpjobd(str(tmp_path), "--incoming", "defer")
    c = EvClient(d.path)
    uri = "tcp:127.0.0.1:0" if kind == "tcp" else f"unix:{tmp_path}/mig.sock"
    got = _pipelined(c, {"execute": "migrate-incoming", "arguments": {"uri": uri}},
                     {"execute": "query-migrate"})
    assert got[0] == {"return": {}}
    addrs = got[1]["return"]["socket-address"]
    assert list(got[1]["return"]) == ["socket-address"]  # no status while listening (7.2)
    if kind == "unix":
        assert addrs == [{"path": f"{tmp_path}/mig.sock", "type": "unix"}]
        return
    assert addrs[0]["host"] == "127.0.0.1" and addrs[0]["type"] == "inet"
    port = int(addrs[0]["port"])
    assert port != 0  # the port the OS picked, as QEMU reports it
    probe = socket.socket()
    try:
        with pytest.raises(OSError) as e:
            probe.bind(("127.0.0.1", port))
        assert e.value.errno == errno.EADDRINUSE
    finally:
        probe.close()
