"""The COLO stream byte for byte, against a fake peer written here: a real primary talking to
a scripted secondary, and a scripted primary talking to a real secondary."""

from __future__ import annotations

import socket
import struct

import crc32c
import pytest
from colotest import EvClient
from qmptest import start_qmpjobd

from qmpjobd.colo import wire
from qmpjobd.colo.channel import SectionCrc
from qmpjobd.colo.guest import Guest

PAGES = 256  # --guest-ram 1M


async def test_the_ram_checksum_is_crc32c() -> None:
    """A section's checksum is CRC-32C (Castagnoli): its check value, fed in two pieces."""
    crc = SectionCrc()
    crc.add(b"1234")
    crc.add(memoryview(b"56789"))
    assert await crc.result() == 0xE3069283


def exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_ram(conn: socket.socket, raw: list[bytes] | None = None) -> list[tuple[int, int, int]]:
    """Records up to EOS as (first, count, flags); page data is read and dropped (every byte
    read is appended to ``raw`` when given)."""
    out = []
    keep = raw if raw is not None else []
    while True:
        keep.append(exact(conn, 8))
        first, flags = wire.parse_record_head(keep[-1])
        if flags == wire.REC_EOS:
            return out
        keep.append(exact(conn, 4))
        (count,) = struct.unpack(">I", keep[-1])
        if flags == wire.REC_PAGE:
            keep.append(exact(conn, count * 4096))
        out.append((first, count, flags))


def read_blob(conn: socket.socket) -> bytes:
    assert exact(conn, 4) == b"\0\0\0\4"
    (n,) = struct.unpack(">Q", exact(conn, 8))
    return exact(conn, n)


def test_primary_bytes_against_a_scripted_secondary(tmp_path: object) -> None:
    path = f"{tmp_path}/fake.sock"
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(path)
    lsock.listen(1)
    pri = start_qmpjobd(str(tmp_path), "--guest-ram", "1M", "--workload-rate", "500")
    p = EvClient(pri.path)
    p.ok("migrate-set-capabilities", {"capabilities": [
        {"capability": "x-colo", "state": True}, {"capability": "events", "state": True}]})
    p.ok("migrate-set-parameters", {"x-checkpoint-delay": 3600000})
    p.ok("migrate", {"uri": f"unix:{path}"})
    conn, _ = lsock.accept()
    conn.settimeout(10)
    assert wire.parse_header(exact(conn, wire.HEADER_SIZE))[:3] == (4096, PAGES, True)
    records = read_ram(conn)
    assert sum(c for _, c, _ in records) >= PAGES  # every page, zero or not, then the dirty
    assert len(read_blob(conn)) == 4096
    p.wait_event("MIGRATION", {"status": "colo"})
    assert p.ok("query-status")["status"] == "finish-migrate"  # stopped until ready
    conn.sendall(wire.message(wire.CHECKPOINT_READY))
    p.wait_event("RESUME")
    for _ in range(2):
        p.ok("x-daemon-colo-checkpoint")
        assert exact(conn, 4) == b"\0\0\0\1"
        assert p.ok("query-status")["status"] == "running"  # stops only after the reply
        conn.sendall(wire.message(wire.CHECKPOINT_REPLY))
        assert exact(conn, 4) == b"\0\0\0\3"
        raw: list[bytes] = []
        assert all(f == wire.REC_PAGE for _, _, f in read_ram(conn, raw))
        blob = read_blob(conn)
        assert len(blob) == 4096
        section = b"".join(raw)  # then the section's length and CRC-32C and the blob's SHA-256
        assert exact(conn, wire.CHECK_SIZE) == \
            wire.checkpoint_check(len(section), crc32c.crc32c(section), blob)
        assert p.ok("query-status")["status"] == "colo"
        since = len(p.events)
        conn.sendall(wire.message(wire.VMSTATE_RECEIVED))
        conn.sendall(wire.message(wire.VMSTATE_LOADED))
        p.wait_event("RESUME", since=since)
    assert [d["pass"] for e, d in p.names() if e == "MIGRATION_PASS"] == [1, 2, 3, 4]
    conn.close()
    lsock.close()


def blob_and_check(ram: bytes, blob: bytes) -> bytes:
    """What follows a checkpoint's RAM section: vmstate-size, the blob and their check."""
    return wire.vmstate_size(len(blob)) + blob + wire.checkpoint_check(len(ram),
                                                                      crc32c.crc32c(ram), blob)


class FakePrimary:
    """Drives a real secondary through the stream with a local guest model as the oracle."""

    def __init__(self, path: str) -> None:
        self.conn = socket.socket(socket.AF_UNIX)
        self.conn.settimeout(10)
        self.conn.connect(path)
        self.guest = Guest(PAGES * 4096, side=1)

    def initial(self) -> None:
        g = self.guest
        g.step(10)
        data = [wire.header(4096, PAGES, True, g.side), wire.record(0, PAGES, wire.REC_PAGE),
                bytes(g.ram.data[:PAGES * 4096]), wire.eos()]
        blob = g.device_state(0)
        self.conn.sendall(b"".join(data) + wire.vmstate_size(len(blob)) + blob)
        g.dirty.clear()

    def checkpoint_parts(self, seq: int) -> tuple[bytes, bytes]:
        """(the RAM section, the vmstate-size message, blob and check) for the pages written
        now."""
        g = self.guest
        g.step(5)
        ram = b"".join(wire.record(p, 1, wire.REC_PAGE) + bytes(g.ram.data[p * 4096:(p + 1) * 4096])
                       for p in sorted(g.dirty)) + wire.eos()
        g.dirty.clear()
        return ram, blob_and_check(ram, g.device_state(seq))

    def digest(self, seq: int) -> str:
        self.guest.hashes.mark_runs([(0, PAGES)])
        self.guest.hashes.refresh()()
        return self.guest.hashes.root(self.guest.device_state(seq))


def start_fake_pair(tmp: str, rate: int) -> tuple[FakePrimary, EvClient]:
    """A real secondary (its own workload at ``rate``) replicating a scripted primary."""
    path = f"{tmp}/mig.sock"
    sec = start_qmpjobd(tmp, "--incoming", f"unix:{path}", "--guest-ram", "1M",
                        "--workload-rate", str(rate))
    s = EvClient(sec.path)
    fp = FakePrimary(path)
    fp.initial()
    assert exact(fp.conn, 4) == b"\0\0\0\0"  # checkpoint-ready opens the return path
    s.wait_event("RESUME")
    return fp, s


@pytest.fixture
def fake_pair(tmp_path: object) -> tuple[FakePrimary, EvClient]:
    return start_fake_pair(str(tmp_path), 300)


def test_secondary_bytes_and_digests_against_a_scripted_primary(
        fake_pair: tuple[FakePrimary, EvClient]) -> None:
    fp, s = fake_pair
    assert s.names()[-1] == ("RESUME", None)
    assert s.ok("x-query-guest-state")["checkpoint-digest"] == fp.digest(0)
    for seq in (1, 2, 3):
        since = len(s.events)
        fp.conn.sendall(wire.message(wire.CHECKPOINT_REQUEST))
        assert exact(fp.conn, 4) == b"\0\0\0\2"
        ram, blob = fp.checkpoint_parts(seq)
        fp.conn.sendall(wire.message(wire.VMSTATE_SEND) + ram + blob)
        assert exact(fp.conn, 8) == b"\0\0\0\5\0\0\0\6"
        s.wait_event("RESUME", since=since)
        st = s.ok("x-query-guest-state")
        assert st["checkpoint"] == seq
        assert st["checkpoint-digest"] == fp.digest(seq)  # the secondary's own pages reverted


@pytest.mark.parametrize("cut", ["mid-ram", "mid-blob"])
def test_partial_checkpoint_is_never_applied(fake_pair: tuple[FakePrimary, EvClient],
                                             cut: str) -> None:
    fp, s = fake_pair
    s.ok("x-daemon-workload", {"rate": 0})
    before = s.ok("x-query-guest-state")
    fp.conn.sendall(wire.message(wire.CHECKPOINT_REQUEST))
    assert exact(fp.conn, 4) == b"\0\0\0\2"
    ram, blob = fp.checkpoint_parts(1)
    data = wire.message(wire.VMSTATE_SEND) + (ram[:len(ram) // 2] if cut == "mid-ram"
                                              else ram + blob[:len(blob) - wire.CHECK_SIZE
                                                              - 100])
    fp.conn.sendall(data)
    fp.conn.close()
    s.wait_event("COLO_EXIT", {"mode": "secondary", "reason": "error"})
    after = s.ok("x-query-guest-state")
    assert after["checkpoint"] == before["checkpoint"] == 0
    assert after["digest"] == before["digest"]
    assert after["runstate"] == "colo"
    job = s.jobs()[0]
    assert job["status"] == "concluded"
    if cut == "mid-blob":
        size = len(blob) - 12 - wire.CHECK_SIZE
        assert job["error"] == f"Got {size - 100} VMState data, less than expected {size}"


@pytest.mark.parametrize("index,text", [(7, "Invalid message"),
                                        (5, "Unexpected COLO message 5, expected 1")])
def test_bad_index_ends_replication(fake_pair: tuple[FakePrimary, EvClient], index: int,
                                    text: str) -> None:
    fp, s = fake_pair
    fp.conn.sendall(wire.message(index))
    s.wait_event("COLO_EXIT", {"mode": "secondary", "reason": "error"})
    assert text in s.jobs()[0]["error"]
    assert s.ok("query-colo-status") == {"mode": "secondary", "last-mode": "none",
                                         "reason": "none"}
    assert s.ok("query-migrate")["status"] == "colo"
