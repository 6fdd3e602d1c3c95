"""The NBD server and block exports, run the same on QEMU 7.2 and on qmpjobd-system-x86_64
and compared: the QMP commands (replies, errors, BLOCK_EXPORT_DELETED and its order), the
bytes of the NBD handshake and of transmission (a small client that sends exactly what the
test says), and the output of real NBD clients (nbdinfo, qemu-nbd --list, qemu-img)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import qemupair
from nbdclient import NbdClient, connect_go
from qemupair import Side
from qmptest import NO_QEMU_REASON, QEMU

needs_qemu = pytest.mark.skipif(QEMU is None, reason=NO_QEMU_REASON)

MiB = 1 << 20
UNIX = {"type": "unix", "data": {"path": "<tmp>/<side>-nbd.sock"}}


def _argv(name: str) -> list[str]:
    """A 4 MiB raw disk: file node ``f0`` under raw ``r0``, and a read-only ``ro``."""
    return ["-M", "none", "-nodefaults", "-display", "none",
            "-blockdev", '{"driver":"file","filename":"<image>","node-name":"f0"}',
            "-blockdev", '{"driver":"raw","file":"f0","node-name":"r0"}',
            "-blockdev", '{"driver":"file","filename":"<image>","node-name":"rof",'
                         '"read-only":true}',
            "-blockdev", '{"driver":"raw","file":"rof","node-name":"ro","read-only":true}']


@contextmanager
def pair(tmp: Path) -> Iterator[tuple[Side, Side]]:
    """QEMU 7.2 and qmpjobd over the same 4 MiB image (a copy each), 64 KiB of 0x11 at 0."""
    for name in ("qemu", "ours"):
        (tmp / f"{name}.raw").write_bytes(b"\x11" * 65536 + bytes(4 * MiB - 65536))
    with qemupair.pair(tmp, lambda name: [a.replace("<image>", str(tmp / f"{name}.raw"))
                                          for a in _argv(name)]) as sides:
        yield sides


def _both(qemu: Side, ours: Side, name: str, args: dict[str, Any] | None = None) -> Any:
    got = [side.run(name, args) for side in (qemu, ours)]
    assert got[1] == got[0], (name, args)
    return got[0]


def _prepare(qemu: Side, ours: Side) -> None:
    """A bitmap b0 that saw one write at 1 MiB, then disabled; b1 enabled; the server up."""
    for name, args in (("block-dirty-bitmap-add", {"node": "r0", "name": "b0"}),
                       ("block-dirty-bitmap-add", {"node": "r0", "name": "b1",
                                                   "granularity": 4096}),
                       ("human-monitor-command",
                        {"command-line": 'qemu-io r0 "write -P 0x22 1M 64k"'}),
                       ("block-dirty-bitmap-disable", {"node": "r0", "name": "b0"}),
                       ("nbd-server-start", {"addr": UNIX})):
        _both(qemu, ours, name, args)


def _export(name: str = "exp1", eid: str = "e1", **extra: Any) -> dict[str, Any]:
    return {"type": "nbd", "id": eid, "node-name": "r0", "name": name, **extra}


QMP: list[tuple[str, dict[str, Any] | None]] = [
    ("query-block-exports", None),
    ("block-export-del", {"id": "nosuch"}),
    ("nbd-server-start", {"addr": UNIX}),
    ("block-export-add", _export(bitmaps=["b0"])),
    ("block-export-add", _export()),
    ("block-export-add", _export(eid="e2")),
    ("block-export-add", _export(name="exp2", eid="e2", bitmaps=["nosuch"])),
    ("block-export-add", _export(name="exp2", eid="e2", bitmaps=["b1"])),
    ("block-export-add", _export(name="exp2", eid="e2", bitmaps=["b0"])),
    ("block-export-add", {"type": "nbd", "id": "e3", "node-name": "nosuch"}),
    ("block-export-add", {"type": "nbd", "id": "e3", "node-name": "ro", "writable": True}),
    ("block-export-add", {"type": "nbd", "id": "e3", "node-name": "ro",
                          "description": "read only"}),
    ("block-export-add", {"type": "nbd", "id": "e4", "node-name": "f0", "name": "w",
                          "writable": True, "bitmaps": ["b1"]}),
    ("block-export-add", {"type": "nbd", "id": "", "node-name": "r0"}),
    ("block-export-add", {"type": "nbd", "id": "e5", "node-name": "r0", "name": "q",
                          "bitmaps": [{"node": "r0", "name": "b1"}]}),
    ("block-export-add", {"type": "nbd", "id": "e6", "node-name": "r0", "name": "q2",
                          "bitmaps": [{"node": "nosuch", "name": "b1"}]}),
    ("block-export-add", {"type": "nbd", "id": "e6", "node-name": "r0", "name": "q2",
                          "bitmaps": [{"node": "r0", "name": "nosuch"}]}),
    ("nbd-server-add", {"device": "ro", "name": "ro-w", "writable": True}),
    ("nbd-server-start", {"addr": {"type": "unix", "path": "<tmp>/x"}}),
    ("query-block-exports", None),
    ("blockdev-del", {"node-name": "ro"}),
    ("block-dirty-bitmap-remove", {"node": "r0", "name": "b0"}),
    ("block-dirty-bitmap-clear", {"node": "r0", "name": "b0"}),
    ("nbd-server-add", {"device": "nosuch"}),
    ("nbd-server-add", {"device": "r0"}),
    ("nbd-server-add", {"device": "r0", "name": "exp9"}),
    ("nbd-server-add", {"device": "r0", "name": "n2", "writable": True, "bitmap": "b1"}),
    ("query-block-exports", None),
    ("nbd-server-remove", {"name": "nosuch"}),
    ("nbd-server-remove", {"name": "r0"}),
    ("block-export-del", {"id": "e1"}),
    ("block-export-del", {"id": "e1"}),
    ("query-block-exports", None),
    ("nbd-server-stop", None),
    ("query-block-exports", None),
    ("nbd-server-stop", None),
    ("nbd-server-add", {"device": "r0"}),
    ("block-export-add", _export()),
    ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "<tmp>/no/such/dir"}}}),
    ("nbd-server-start", {"addr": UNIX, "tls-creds": "nosuch"}),
]


@needs_qemu
def test_qmp_commands_match_qemu(tmp_path: Path) -> None:
    with pair(tmp_path) as (qemu, ours):
        for name, args in (("block-dirty-bitmap-add", {"node": "r0", "name": "b0"}),
                           ("block-dirty-bitmap-add", {"node": "r0", "name": "b1"}),
                           ("block-dirty-bitmap-disable", {"node": "r0", "name": "b0"})):
            _both(qemu, ours, name, args)
        for name, args in QMP:
            _both(qemu, ours, name, args)


def _options(c: NbdClient) -> list[Any]:
    """The handshake options a client may send, each with the server's replies."""
    out: list[Any] = [c.greeting]
    steps: list[tuple[str, Any]] = [
        ("list", b""), ("list", b"x"), ("info", ("exp1",)), ("info", ("exp1", 0, 1, 2, 3)),
        ("info", ("nosuch",)), ("info", ("",)), ("starttls", b""), (11, b""), (99, b"abc"),
        ("list-meta", ("exp1",)), ("list-meta", ("exp1", "qemu:")),
        ("list-meta", ("exp1", "qemu:dirty-bitmap:")), ("list-meta", ("exp1", "base:")),
        ("list-meta", ("exp1", "qemu:dirty-bitmap:b0", "nosuch:x", "base:allocation")),
        ("list-meta", ("nosuch",)),
        ("set-meta", ("exp1", "base:allocation")),
        ("structured-reply", b"x"), ("structured-reply", b""), ("structured-reply", b""),
        ("list-meta", ("exp1",)),
        ("set-meta", ("exp1", "qemu:dirty-bitmap:b0", "base:allocation", "qemu:")),
        ("set-meta", ("exp1",)),
        ("set-meta", ("exp1", "base:allocation", "qemu:dirty-bitmap:b0")),
    ]
    for opt, arg in steps:
        if isinstance(arg, tuple) and opt in ("info", "go"):
            out.append((opt, arg, c.go(arg[0], *arg[1:], opt=str(opt))))
        elif isinstance(arg, tuple):
            out.append((opt, arg, c.meta(str(opt), *arg)))
        else:
            out.append((opt, arg, c.option(opt, arg)))
    return out


def _transmission(c: NbdClient) -> list[Any]:
    out: list[Any] = []
    for cmd, offset, length, flags in (
            ("read", 0, 4096, 0), ("read", 65536 - 512, 2048, 0), ("read", 0, 0, 0),
            ("read", 4 * MiB - 512, 1024, 0), ("read", 4 * MiB, 0, 0),
            ("read", 0, 65536 * 2, 4), ("read", 1 * MiB - 4096, 3 * 4096, 0),
            ("block-status", 0, 4 * MiB, 0), ("block-status", 0, 4 * MiB, 8),
            ("block-status", 1 * MiB + 4096, 8192, 0), ("block-status", 0, 0, 0),
            ("block-status", 4 * MiB - 512, 4096, 0),
            ("write", 0, 512, 0), ("trim", 0, 512, 0), ("write-zeroes", 0, 512, 0),
            ("flush", 0, 0, 0), ("cache", 0, 4096, 0), ("cache", 4 * MiB, 4096, 0),
            (42, 0, 0, 0)):
        payload = b"\x33" * length if cmd == "write" else b""
        if isinstance(cmd, int):
            c.sock.sendall(struct.pack(">IHHQQI", 0x25609513, flags, cmd, 7, offset, length))
            out.append((cmd, c.chunks()))
            continue
        out.append((cmd, offset, length, flags,
                    c.request(cmd, offset, length, flags, payload, structured=True)))
    return out


@needs_qemu
def test_wire_matches_qemu(tmp_path: Path) -> None:
    """Every handshake option and transmission request compared byte for byte (parsed)."""
    with pair(tmp_path) as (qemu, ours):
        _prepare(qemu, ours)
        _both(qemu, ours, "block-export-add", _export(bitmaps=["b0"]))
        got = {}
        for side in (qemu, ours):
            c = NbdClient(str(tmp_path / f"{side.name}-nbd.sock"))
            got[side.name] = _options(c)
            got[side.name].append(c.go("exp1")[-1])
            got[side.name].append(_transmission(c))
            c.send_request("disc")
            assert c.eof()
            c.close()
        for a, b in zip(got["qemu"], got["ours"], strict=True):
            assert b == a
        # a plain (no structured replies) client: simple replies, data after the header
        for side in (qemu, ours):
            c = connect_go(str(tmp_path / f"{side.name}-nbd.sock"), "exp1", structured=False)
            got[side.name] = [c.request("read", 1 * MiB, 4096),
                              c.request("write", 0, 4, payload=b"abcd"),
                              c.request("read", 4 * MiB, 1)]
            c.close()
        assert got["ours"] == got["qemu"]


def _clients(sock: Path, export: str) -> list[list[str]]:
    uri = f"nbd+unix:///{export}?socket={sock}"
    return [["nbdinfo", "--list", f"nbd+unix:///?socket={sock}"], ["nbdinfo", uri],
            ["nbdinfo", "--json", uri], ["nbdinfo", "--map", uri],
            ["nbdinfo", "--map=qemu:dirty-bitmap:b0", uri],
            ["nbdinfo", "--map", "--totals", uri],
            ["qemu-nbd", "--list", "-k", str(sock)],
            ["qemu-img", "info", uri], ["qemu-img", "map", "--output=json", uri]]


@needs_qemu
@pytest.mark.skipif(shutil.which("nbdinfo") is None, reason="nbdinfo is not installed "
                    "(apt-get install libnbd-bin)")
def test_real_clients_see_what_they_see_on_qemu(tmp_path: Path) -> None:
    """nbdinfo, qemu-nbd --list and qemu-img print the same for both exports."""
    with pair(tmp_path) as (qemu, ours):
        _prepare(qemu, ours)
        _both(qemu, ours, "block-export-add", _export(bitmaps=["b0"], description="disk"))
        _both(qemu, ours, "block-export-add", {"type": "nbd", "id": "e2", "node-name": "f0",
                                               "writable": True})
        out = {}
        for side in (qemu, ours):
            sock = tmp_path / f"{side.name}-nbd.sock"
            runs = []
            for export in ("exp1", "f0"):
                for argv in _clients(sock, export):
                    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
                    runs.append([x.replace(str(sock), "<sock>") for x in (
                        " ".join(argv), str(done.returncode), done.stdout, done.stderr)])
            out[side.name] = runs
        for a, b in zip(out["qemu"], out["ours"], strict=True):
            assert b == a


@needs_qemu
def test_removal_with_a_client_connected_matches_qemu(tmp_path: Path) -> None:
    """safe refuses while a client is connected; hard disconnects it, and the export (shown
    shutting down meanwhile) goes with BLOCK_EXPORT_DELETED; nbd-server-stop does the same to
    every export."""
    with pair(tmp_path) as (qemu, ours):
        _prepare(qemu, ours)
        for eid, name in (("e1", "exp1"), ("e2", "exp2")):
            _both(qemu, ours, "block-export-add", _export(name=name, eid=eid))
        got: dict[str, list[Any]] = {}
        for side in (qemu, ours):
            sock = str(tmp_path / f"{side.name}-nbd.sock")
            first, second = connect_go(sock, "exp1"), connect_go(sock, "exp2")
            seen = [side.run("block-export-del", {"id": "e1"}),
                    side.run("nbd-server-remove", {"name": "e1"})]
            # the reply and the event once the client is gone, in an order that depends
            # on timing in QEMU (the client's coroutine may end before the reply or after;
            # qmpjobd's event comes after the reply): compared as a set
            got_del = side.run("block-export-del", {"id": "e1", "mode": "hard"})
            seen.append(sorted(map(repr, got_del + side.until_event(
                "BLOCK_EXPORT_DELETED", got_del))))
            seen.append(first.eof())
            seen.append(side.run("query-block-exports"))
            got_stop = side.run("nbd-server-stop")
            seen.append(sorted(map(repr, got_stop + side.until_event(
                "BLOCK_EXPORT_DELETED", got_stop))))
            seen.append(second.eof())
            seen.append(side.run("query-block-exports"))
            first.close()
            second.close()
            got[side.name] = seen
        assert got["ours"] == got["qemu"]


@needs_qemu
def test_writes_through_a_writable_export_match_qemu(tmp_path: Path) -> None:
    """Writes, FUA, trims and zeroes through the export land in the image as on QEMU, mark
    the node's enabled bitmap, and a guest write is seen by the next NBD read."""
    with pair(tmp_path) as (qemu, ours):
        _prepare(qemu, ours)
        _both(qemu, ours, "block-export-add", {"type": "nbd", "id": "w", "node-name": "r0",
                                               "name": "w", "writable": True})
        got: dict[str, list[Any]] = {}
        for side in (qemu, ours):
            c = connect_go(str(tmp_path / f"{side.name}-nbd.sock"), "w",
                           contexts=("base:allocation", "qemu:dirty-bitmap:b1"))
            seen = [c.request("write", 4096, 8192, 1, b"\x44" * 8192, structured=True),
                    c.request("write-zeroes", 0, 4096, 0, structured=True),
                    c.request("write-zeroes", 2 * MiB, 64 * 1024, 16, structured=True),
                    c.request("write-zeroes", 2 * MiB, 64 * 1024, 2, structured=True),
                    c.request("trim", 8192, 4096, 0, structured=True),
                    c.request("write", 4 * MiB - 2, 4, 0, b"abcd", structured=True),
                    c.request("block-status", 0, 4 * MiB, 0, structured=True)]
            seen.append(side.hmp('qemu-io r0 "write -P 0x55 3M 512"'))
            seen.append(c.request("read", 3 * MiB, 1024, 4, structured=True))
            seen.append(side.run("x-debug-block-dirty-bitmap-sha256", {"node": "r0",
                                                                         "name": "b1"}))
            c.send_request("disc")
            assert c.eof()
            c.close()
            seen.append((tmp_path / f"{side.name}.raw").read_bytes())
            got[side.name] = seen
        for a, b in zip(got["qemu"], got["ours"], strict=True):
            assert b == a


# -- qmpjobd alone: real clients copying, TCP, limits, hostile and slow clients --------------

def _daemon_with_disk(tmp_path: Path, size: int = 8 * MiB) -> tuple[Any, Any, Path]:
    """A qmpjobd daemon with a raw node ``r0`` over tmp/disk.raw (patterned, with holes) and
    its monitor client."""
    from qmptest import Client, start_qmpjobd
    image = tmp_path / "disk.raw"
    with open(image, "wb") as f:
        f.truncate(size)
        for i in range(0, size, 1 * MiB):
            f.seek(i)
            f.write(bytes([i // MiB + 1]) * 65536)
    d = start_qmpjobd(str(tmp_path))
    c = Client(d.path)
    c.negotiate()
    for args in ({"driver": "file", "filename": str(image), "node-name": "f0"},
                 {"driver": "raw", "file": "f0", "node-name": "r0"}):
        assert c.cmd("blockdev-add", args) == {"return": {}}
    return d, c, image


def _ok(c: Any, name: str, args: dict[str, Any] | None = None) -> Any:
    reply = c.cmd(name, args)
    assert "return" in reply, (name, args, reply)
    return reply["return"]


needs_nbd_tools = pytest.mark.skipif(
    shutil.which("nbdcopy") is None or shutil.which("qemu-img") is None,
    reason="nbdcopy and qemu-img are not installed (apt-get install libnbd-bin qemu-utils)")


@needs_nbd_tools
def test_real_clients_copy_in_and_out(tmp_path: Path) -> None:
    """qemu-img convert and nbdcopy read the export byte-exact; qemu-img convert and nbdcopy
    write a writable export; qemu-img compare agrees; nbdinfo maps a bitmap of guest writes."""
    d, c, image = _daemon_with_disk(tmp_path)
    sock = tmp_path / "nbd.sock"
    _ok(c, "block-dirty-bitmap-add", {"node": "r0", "name": "since"})
    _ok(c, "human-monitor-command", {"command-line": 'qemu-io r0 "write -P 0x77 3M 128k"'})
    _ok(c, "block-dirty-bitmap-disable", {"node": "r0", "name": "since"})
    _ok(c, "nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(sock)}}})
    _ok(c, "block-export-add", {"type": "nbd", "id": "e", "node-name": "r0", "name": "disk",
                                "bitmaps": ["since"]})
    uri = f"nbd+unix:///disk?socket={sock}"

    def run(*argv: str) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return done.stdout

    run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(tmp_path / "a.raw"))
    run("nbdcopy", uri, str(tmp_path / "b.raw"))
    want = image.read_bytes()
    assert (tmp_path / "a.raw").read_bytes() == want
    assert (tmp_path / "b.raw").read_bytes() == want
    assert "Images are identical" in run("qemu-img", "compare", "-f", "raw", "-F", "raw",
                                         uri, str(image))
    assert run("nbdinfo", "--map=qemu:dirty-bitmap:since", uri).split() == [
        "0", str(3 * MiB), "0", "clean", str(3 * MiB), str(128 * 1024), "1", "dirty",
        str(3 * MiB + 128 * 1024), str(5 * MiB - 128 * 1024), "0", "clean"]
    # writing: a second disk exported writable, filled by each client in turn
    other = tmp_path / "other.raw"
    other.write_bytes(bytes(8 * MiB))
    _ok(c, "blockdev-add", {"driver": "file", "filename": str(other), "node-name": "o"})
    _ok(c, "block-export-add", {"type": "nbd", "id": "w", "node-name": "o", "writable": True})
    wuri = f"nbd+unix:///o?socket={sock}"
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image), wuri)
    assert other.read_bytes() == want
    other.write_bytes(bytes(8 * MiB))
    run("nbdcopy", str(image), wuri)
    assert other.read_bytes() == want
    c.close()
    d.stop()


def test_tcp_on_loopback_only_without_tls(tmp_path: Path) -> None:
    """TCP on 127.0.0.1 serves; any other address is refused (there is no TLS here), as is a
    second server, and the daemon goes on."""
    from colotest import free_port
    d, c, _ = _daemon_with_disk(tmp_path)
    for host in ("0.0.0.0", "192.0.2.1", "::"):
        reply = c.cmd("nbd-server-start", {"addr": {"type": "inet", "data": {
            "host": host, "port": "10809"}}})
        assert reply["error"]["desc"] == (f"qmpjobd serves NBD without TLS on loopback only, "
                                          f"not on '{host}' (see --nbd-any-address)")
    port = free_port()
    _ok(c, "nbd-server-start", {"addr": {"type": "inet", "data": {"host": "127.0.0.1",
                                                                  "port": str(port)}}})
    assert c.cmd("nbd-server-start", {"addr": {"type": "inet", "data": {
        "host": "127.0.0.1", "port": str(port)}}})["error"]["desc"] == \
        "NBD server already running"
    _ok(c, "block-export-add", {"type": "nbd", "id": "e", "node-name": "r0"})
    sock = __import__("socket").create_connection(("127.0.0.1", port), timeout=10)
    client = NbdClient.__new__(NbdClient)
    client.sock, client.handle = sock, 0
    client.greeting = client.recv(18)
    sock.sendall(struct.pack(">I", 3))
    assert client.go("r0")[-1][0] == 1
    assert client.request("read", 0, 4)[0]["data"] == b"\x01" * 4
    client.close()
    _ok(c, "nbd-server-stop")
    c.close()
    d.stop()


def test_max_connections_leaves_the_next_client_waiting(tmp_path: Path) -> None:
    """With max-connections 1 a second client gets its greeting only once the first left."""
    import select
    d, c, _ = _daemon_with_disk(tmp_path)
    sock = str(tmp_path / "nbd.sock")
    _ok(c, "nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock}},
                                "max-connections": 1})
    _ok(c, "block-export-add", {"type": "nbd", "id": "e", "node-name": "r0"})
    first = connect_go(sock, "r0")
    import socket as socketmod
    second = socketmod.socket(socketmod.AF_UNIX)
    second.connect(sock)  # the kernel's backlog takes it; the server does not accept yet
    assert select.select([second], [], [], 0.5)[0] == []  # no greeting while full
    first.send_request("disc")
    assert first.eof()
    second.settimeout(10)
    assert second.recv(8) == b"NBDMAGIC"
    second.close()
    first.close()
    c.close()
    d.stop()


def test_hostile_clients_are_dropped_and_the_rest_go_on(tmp_path: Path) -> None:
    """Bad magic, an oversized option, unknown client flags, a write longer than the limit,
    a client gone mid-request: each connection ends, the daemon and other clients go on."""
    d, c, _ = _daemon_with_disk(tmp_path)
    sock = str(tmp_path / "nbd.sock")
    _ok(c, "nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock}}})
    _ok(c, "block-export-add", {"type": "nbd", "id": "e", "node-name": "r0",
                                "writable": True})
    good = connect_go(sock, "r0")
    bad = NbdClient(sock)
    bad.sock.sendall(b"NOTIHAVE" + bytes(8))
    assert bad.eof()
    bad = NbdClient(sock)
    bad.sock.sendall(struct.pack(">QII", 0x49484156454F5054, 3, 1 << 30))
    assert bad.eof()
    bad = NbdClient(sock, flags=0x80)
    assert bad.eof()
    bad = connect_go(sock, "r0")
    bad.sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, (32 << 20) + 1))
    assert bad.eof()
    bad = connect_go(sock, "r0")
    bad.sock.sendall(struct.pack(">IHHQQI", 0x12345678, 0, 0, 1, 0, 4))
    assert bad.eof()
    bad = connect_go(sock, "r0")
    bad.sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, 4096) + b"x" * 100)
    bad.close()  # gone in the middle of a write's payload
    # a read past the limit fails alone; the connection goes on
    got = good.request("read", 0, (32 << 20) + 1, structured=True)
    assert got[0]["type"] == 32769 and got[0]["payload"][:4] == b"\x00\x00\x00\x16"
    assert good.request("read", 0, 4, structured=True)[0]["payload"][8:] == b"\x01" * 4
    assert _ok(c, "query-block-exports") == [{"id": "e", "type": "nbd", "node-name": "r0",
                                              "shutting-down": False}]
    good.close()
    c.close()
    d.stop()


def test_a_client_that_does_not_read_slows_no_one(tmp_path: Path) -> None:
    """A client that sends reads and never takes the replies fills its own socket and its
    16 request slots; the monitor and another client keep being served."""
    d, c, _ = _daemon_with_disk(tmp_path)
    sock = str(tmp_path / "nbd.sock")
    _ok(c, "nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock}}})
    _ok(c, "block-export-add", {"type": "nbd", "id": "e", "node-name": "r0"})
    stuck = connect_go(sock, "r0")
    stuck.sock.setblocking(False)
    sent = 0
    request = struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, 1 * MiB)
    try:
        for _ in range(200):  # 200 MiB of replies asked for; the socket holds far less
            stuck.sock.send(request)
            sent += 1
    except BlockingIOError:
        pass
    assert sent > 16
    other = connect_go(sock, "r0")
    for i in range(20):
        got = other.request("read", i * 4096, 4096, flags=4, structured=True)
        assert len(got[0]["payload"]) == 8 + 4096
    assert _ok(c, "query-block-exports")[0]["id"] == "e"
    # a hard removal frees the export despite the stuck client
    assert c.cmd("block-export-del", {"id": "e", "mode": "hard"}) == {"return": {}}
    while True:
        msg = c.recv()
        if msg.get("event") == "BLOCK_EXPORT_DELETED":
            break
    assert _ok(c, "query-block-exports") == []
    stuck.close()
    other.close()
    c.close()
    d.stop()


@needs_qemu
def test_single_connection_server_matches_qemu(tmp_path: Path) -> None:
    """With max-connections 1, exports do not advertise multi-conn; nbd-server-stop ends
    every export (with or without a client) before its reply.  The order of those events
    is QEMU's bottom halves' order, not compared."""
    with pair(tmp_path) as (qemu, ours):
        _both(qemu, ours, "nbd-server-start", {"addr": UNIX, "max-connections": 1})
        for eid in ("e1", "e2", "e3"):
            _both(qemu, ours, "block-export-add", _export(name=eid, eid=eid))
        got = {}
        for side in (qemu, ours):
            c = NbdClient(str(tmp_path / f"{side.name}-nbd.sock"))
            got[side.name] = [c.go("e1")]
            stop = side.run("nbd-server-stop")
            got[side.name].append((sorted(m["data"]["id"] for m in stop[:-1]), stop[-1]))
            got[side.name].append(c.eof())
            c.close()
        assert got["ours"] == got["qemu"]


@needs_qemu
def test_contexts_set_for_another_export_are_dropped_as_qemu(tmp_path: Path) -> None:
    """Meta contexts set for one export do not carry over to another chosen with GO (QEMU's
    nbd_check_meta_export): block status there is refused, the connection goes on."""
    with pair(tmp_path) as (qemu, ours):
        _prepare(qemu, ours)
        _both(qemu, ours, "block-export-add", _export(bitmaps=["b0"]))
        _both(qemu, ours, "block-export-add", {"type": "nbd", "id": "e2", "node-name": "f0"})
        got = {}
        for side in (qemu, ours):
            c = NbdClient(str(tmp_path / f"{side.name}-nbd.sock"))
            c.option("structured-reply")
            seen = [c.meta("set-meta", "exp1", "qemu:dirty-bitmap:b0", "base:allocation"),
                    c.go("f0")[-1],
                    c.request("block-status", 0, 65536, structured=True),
                    c.request("read", 0, 4, flags=4, structured=True)]
            c.close()
            got[side.name] = seen
        assert got["ours"] == got["qemu"]
