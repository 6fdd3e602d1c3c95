"""getfd/closefd (descriptors passed as SCM_RIGHTS ancillary data on the monitor socket) and
migration to and from a descriptor (``fd:``), what libvirt's save and restore use: the
errors compared with QEMU 7.2, a guest saved to a file and restored from it by another
process with the same memory digest, over a pipe too."""

from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from qmptest import NO_QEMU_REASON, QEMU, Client, Daemon, start_qemu, start_qmpjobd


def _send_with_fds(c: Client, request: dict[str, Any], fds: list[int]) -> Any:
    """Send one command with ``fds`` attached (as libvirt and qemu.qmp do); its reply."""
    assert c.sock is not None
    c.sock.sendmsg([orjson.dumps(request) + b"\n"],
                   [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    return c.recv_reply()


def _getfd_cases(c: Client, path: Path) -> list[Any]:
    out = [c.cmd("getfd", {"fdname": "x"}), c.cmd("closefd", {"fdname": "x"})]
    for name in ("1abc", "save", "save"):  # a second getfd of a name replaces the first
        with open(path, "wb") as f:
            out.append(_send_with_fds(c, {"execute": "getfd", "arguments": {"fdname": name}},
                                      [f.fileno()]))
    out.append(c.cmd("closefd", {"fdname": "save"}))
    out.append(c.cmd("closefd", {"fdname": "save"}))
    with open(path, "wb") as f:  # two descriptors in one message: the first is taken
        out.append(_send_with_fds(c, {"execute": "getfd", "arguments": {"fdname": "two"}},
                                  [f.fileno(), f.fileno()]))
    out.append(c.cmd("getfd", {"fdname": "three"}))
    out.append(c.cmd("migrate", {"uri": "fd:nosuch"}))
    out.append(c.cmd("closefd", {"fdname": "two"}))
    return out


@pytest.mark.skipif(QEMU is None, reason=NO_QEMU_REASON)
def test_getfd_and_closefd_match_qemu(tmp_path: Path) -> None:
    qemu = start_qemu(str(tmp_path))
    ours = start_qmpjobd(str(tmp_path), "--fd-passing", name="ours.sock")
    got = []
    for d in (qemu, ours):
        c = Client(d.path)
        c.negotiate()
        got.append(_getfd_cases(c, tmp_path / "f"))
        c.close()
    assert got[1] == got[0]
    # without --fd-passing the daemon reads with recv(): the kernel drops what was passed
    plain = start_qmpjobd(str(tmp_path), name="plain.sock")
    c = Client(plain.path)
    c.negotiate()
    with open(tmp_path / "f", "wb") as f:
        reply = _send_with_fds(c, {"execute": "getfd", "arguments": {"fdname": "a"}},
                               [f.fileno()])
    assert reply["error"]["desc"] == "No file descriptor supplied via SCM_RIGHTS"
    c.close()


def _digest(c: Client) -> str:
    return str(c.cmd("x-query-guest-state")["return"]["digest"])


def _until(c: Client, event: str, data: dict[str, Any]) -> None:
    while True:
        msg = c.recv()
        if msg.get("event") == event and msg.get("data") == data:
            return


@pytest.mark.parametrize("medium", ["file", "pipe"])
def test_save_to_a_descriptor_and_restore_from_one(tmp_path: Path, medium: str) -> None:
    """As libvirt saves: stop, getfd, migrate fd:NAME (MIGRATION events, query-migrate);
    and restores: a new process with --incoming defer and the stream on an inherited
    descriptor, migrate-incoming fd:N, then cont.  The memory digest is the saved one."""
    src = start_qmpjobd(str(tmp_path), "--fd-passing", "--guest-ram", "8M",
                        "--workload-rate", "200", name="src.sock")
    c = Client(src.path)
    c.negotiate()
    c.cmd("migrate-set-capabilities", {"capabilities": [{"capability": "events",
                                                         "state": True}]})
    assert c.cmd("stop") == {"return": {}}
    saved = _digest(c)
    image = tmp_path / "saved.img"
    reader: subprocess.Popen[bytes] | None = None
    if medium == "file":
        with open(image, "wb") as f:
            f.write(b"HEADER" * 100)  # libvirt's own header comes first; QEMU appends
            f.flush()
            assert _send_with_fds(c, {"execute": "getfd", "arguments": {"fdname": "migrate"}},
                                  [f.fileno()]) == {"return": {}}
    else:
        rfd, wfd = os.pipe()
        with open(image, "wb") as out:
            reader = subprocess.Popen(["cat"], stdin=rfd, stdout=out)
        os.close(rfd)
        assert _send_with_fds(c, {"execute": "getfd", "arguments": {"fdname": "migrate"}},
                              [wfd]) == {"return": {}}
        os.close(wfd)
    assert c.cmd("migrate", {"uri": "fd:migrate", "detach": True}) == {"return": {}}
    _until(c, "MIGRATION", {"status": "completed"})
    info = c.cmd("query-migrate")["return"]
    assert info["status"] == "completed" and info["ram"]["total"] == 8 << 20
    assert c.cmd("query-status")["return"]["status"] == "postmigrate"
    c.close()
    if reader is not None:
        assert reader.wait(timeout=30) == 0
    # restore: the stream on an inherited descriptor, as libvirt passes it
    with open(image, "rb") as f:
        if medium == "file":
            f.seek(600)
        sock = str(tmp_path / "dst.sock")
        argv = [sys.executable, "-m", "qmpjobd", "--socket", sock, "--log-level", "warning",
                "--incoming", "defer", "--guest-ram", "8M"]
        dst = Daemon(argv, sock, pass_fds=(f.fileno(),))
        d = Client(dst.path)
        d.negotiate()
        d.cmd("migrate-set-capabilities", {"capabilities": [{"capability": "events",
                                                             "state": True}]})
        assert d.cmd("migrate-incoming", {"uri": f"fd:{f.fileno()}"}) == {"return": {}}
    _until(d, "MIGRATION", {"status": "completed"})
    assert d.cmd("query-status")["return"]["status"] == "running"
    assert _digest(d) == saved
    d.close()


def test_fd_numbers_are_only_those_inherited(tmp_path: Path) -> None:
    """fd:N names only a descriptor the process was started with, once: never one of the
    daemon's own (its listener, an image), which a migration would write over and close.
    A migrate cancelled in the same breath closes its descriptor and ends cancelled."""
    d = start_qmpjobd(str(tmp_path), "--fd-passing", "--incoming", "defer")
    c = Client(d.path)
    c.negotiate()
    for fd in (0, 1, 2, 3, 4, 5, 6, 7, 8, 99):
        reply = c.cmd("migrate-incoming", {"uri": f"fd:{fd}"})
        assert reply["error"]["desc"] == "fd: Bad file descriptor", (fd, reply)
    assert c.cmd("query-status")["return"]["status"] == "inmigrate"
    c.close()
    src = start_qmpjobd(str(tmp_path), "--fd-passing", name="src.sock")
    c = Client(src.path)
    c.negotiate()
    c.cmd("migrate-set-capabilities", {"capabilities": [{"capability": "events",
                                                         "state": True}]})
    before = len(os.listdir(f"/proc/{src.pid}/fd"))
    rfd, wfd = os.pipe()
    assert _send_with_fds(c, {"execute": "getfd", "arguments": {"fdname": "m"}},
                          [wfd]) == {"return": {}}
    os.close(wfd)
    c.send(b'{"execute":"migrate","arguments":{"uri":"fd:m"}}\n'
           b'{"execute":"migrate_cancel"}\n')
    assert c.recv_reply() == {"return": {}}
    assert c.recv_reply() == {"return": {}}
    _until(c, "MIGRATION", {"status": "cancelled"})
    assert os.read(rfd, 1) == b""  # the daemon's end of the pipe is closed
    os.close(rfd)
    assert len(os.listdir(f"/proc/{src.pid}/fd")) == before
    assert c.cmd("query-migrate")["return"]["status"] == "cancelled"
    c.close()
