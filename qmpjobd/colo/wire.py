"""The replication stream: QEMU's COLO control messages and a simplified RAM section format.

No I/O here: encoders return bytes and decoders take bytes, so the framing can be tested alone.
Control messages are QEMU's (a be32 COLOMessage index; ``vmstate-size`` is followed by a be64
byte count and then exactly that many device-state bytes).  The RAM stream borrows QEMU's
record header (be64 ``page_address | flags``) but carries runs of pages (a be32 count follows
the header) so that a contiguous dirty range travels as one record.  In a checkpoint the device
blob is followed by a check (:func:`checkpoint_check`): the RAM section's length and CRC-32C and
the blob's SHA-256, so that the secondary applies nothing of a damaged checkpoint.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

from ..errors import QmpjobdError
from ..schema.enums import COLOMessage

MESSAGES: Final = tuple(COLOMessage)
"""COLOMessage, in index order (the index is what goes on the wire)."""
CHECKPOINT_READY: Final = MESSAGES.index(COLOMessage.CHECKPOINT_READY)  # 0
CHECKPOINT_REQUEST: Final = MESSAGES.index(COLOMessage.CHECKPOINT_REQUEST)  # 1
CHECKPOINT_REPLY: Final = MESSAGES.index(COLOMessage.CHECKPOINT_REPLY)  # 2
VMSTATE_SEND: Final = MESSAGES.index(COLOMessage.VMSTATE_SEND)  # 3
VMSTATE_SIZE: Final = MESSAGES.index(COLOMessage.VMSTATE_SIZE)  # 4
VMSTATE_RECEIVED: Final = MESSAGES.index(COLOMessage.VMSTATE_RECEIVED)  # 5
VMSTATE_LOADED: Final = MESSAGES.index(COLOMessage.VMSTATE_LOADED)  # 6

MAGIC: Final = b"QJCO"
VERSION: Final = 1
FLAG_ENABLE_COLO: Final = 1
"""Header flag: the analogue of QEMU 7.2's MIG_CMD_ENABLE_COLO stream command."""

REC_ZERO: Final = 0x02
REC_PAGE: Final = 0x08
REC_EOS: Final = 0x10
_PAGE_SHIFT: Final = 12

_HEADER = struct.Struct(">4sIIQI")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_REC = struct.Struct(">QI")
_CHECK = struct.Struct(">QI32s")

HEADER_SIZE: Final = _HEADER.size
RECORD_SIZE: Final = _REC.size
EOS_SIZE: Final = _U64.size
CHECK_SIZE: Final = _CHECK.size
MAX_DEVICE_STATE: Final = 64 << 20
"""Largest device blob a receiver accepts (a corrupt size must not allocate unbounded memory)."""


class ProtocolError(QmpjobdError):
    """The peer sent something the protocol does not allow; replication must end."""


def message(index: int) -> bytes:
    """One control message."""
    return _U32.pack(index)


def parse_message(data: bytes) -> int:
    """Decode a control message; an index beyond ``vmstate-loaded`` is invalid (as QEMU)."""
    index = int(_U32.unpack(data)[0])
    if index >= len(MESSAGES):
        raise ProtocolError("colo_receive_message: Invalid message")
    return index


def expect(got: int, want: int) -> None:
    """QEMU's check for the next message of a checkpoint."""
    if got != want:
        raise ProtocolError(f"Unexpected COLO message {got}, expected {want}")


def vmstate_size(size: int) -> bytes:
    """``vmstate-size`` and its be64 byte count."""
    return _U32.pack(VMSTATE_SIZE) + _U64.pack(size)


def parse_u64(data: bytes) -> int:
    """A be64 value."""
    return int(_U64.unpack(data)[0])


def header(page_size: int, pages: int, colo: bool, side: int = 0) -> bytes:
    """The start of a migration stream: magic, version, page size, page count, flags (with
    the sender's workload side in bits 8-15, so the receiver can pick a different one)."""
    flags = (FLAG_ENABLE_COLO if colo else 0) | (side & 0xFF) << 8
    return _HEADER.pack(MAGIC, VERSION, page_size, pages, flags)


def parse_header(data: bytes) -> tuple[int, int, bool, int]:
    """Decode the stream header into (page size, page count, enable-colo, sender side)."""
    magic, version, page_size, pages, flags = _HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError("not a qmpjobd migration stream (bad magic)")
    if version != VERSION:
        raise ProtocolError(f"unsupported migration stream version {version}")
    return page_size, pages, bool(flags & FLAG_ENABLE_COLO), (flags >> 8) & 0xFF


def record(first: int, count: int, flag: int) -> bytes:
    """A RAM record header for ``count`` pages from ``first`` (data follows for REC_PAGE)."""
    return _REC.pack((first << _PAGE_SHIFT) | flag, count)


def eos() -> bytes:
    """The end of a RAM section."""
    return _U64.pack(REC_EOS)


def parse_record_head(data: bytes) -> tuple[int, int]:
    """The first 8 bytes of a record: (first page, flags)."""
    (word,) = _U64.unpack(data)
    return word >> _PAGE_SHIFT, word & ((1 << _PAGE_SHIFT) - 1)


def check_run(first: int, count: int, flags: int, pages: int) -> None:
    """Refuse a record that is not a known kind or lies outside guest RAM."""
    if flags not in (REC_ZERO, REC_PAGE):
        raise ProtocolError(f"Unknown combination of migration flags: {flags:#x}")
    if count == 0 or first + count > pages:
        raise ProtocolError(f"RAM record out of range: pages {first}+{count} of {pages}")


def runs(pages: list[int]) -> list[tuple[int, int]]:
    """Sorted page numbers grouped into (first, count) runs of consecutive pages."""
    out: list[tuple[int, int]] = []
    start = prev = -2
    for p in pages:
        if p == prev + 1:
            prev = p
            continue
        if start >= 0:
            out.append((start, prev - start + 1))
        start = prev = p
    if start >= 0:
        out.append((start, prev - start + 1))
    return out


def checkpoint_check(ram_bytes: int, ram_crc: int, blob: bytes) -> bytes:
    """What follows a checkpoint's device blob: the length and CRC-32C of its RAM section (every
    byte from the first record through EOS) and the SHA-256 of the blob, so the secondary can
    refuse a damaged or misordered checkpoint before anything of it is applied."""
    return _CHECK.pack(ram_bytes, ram_crc, hashlib.sha256(blob).digest())


def verify_checkpoint(data: bytes, ram_bytes: int, ram_crc: int, blob: bytes) -> None:
    """Compare what arrived with what the primary says it sent; ProtocolError if not equal."""
    want_bytes, want_crc, want_sha = _CHECK.unpack(data)
    if want_bytes != ram_bytes:
        raise ProtocolError(f"COLO: checkpoint RAM is {ram_bytes} bytes, the primary sent "
                            f"{want_bytes}")
    if want_crc != ram_crc:
        raise ProtocolError("COLO: checkpoint RAM does not match the primary's checksum")
    if want_sha != hashlib.sha256(blob).digest():
        raise ProtocolError("COLO: device state does not match the primary's digest")
