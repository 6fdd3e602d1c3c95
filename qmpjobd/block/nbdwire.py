"""The NBD protocol's bytes (fixed newstyle, as QEMU 7.2's server speaks it), with no I/O.

Encoders for the server's side of the handshake and of transmission, and decoders for what a
client sends; the asyncio server in nbd.py moves these bytes.  Names follow the NBD spec
(https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md).
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from ..errors import QmpjobdError

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# handshake flags (server) and client flags
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2

# options
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 6, 7, 8
OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 9, 10

# option replies
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR = 1 << 31
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID = REP_ERR | 1, REP_ERR | 2, REP_ERR | 3
REP_ERR_PLATFORM, REP_ERR_TLS_REQD, REP_ERR_UNKNOWN = REP_ERR | 4, REP_ERR | 5, REP_ERR | 6
REP_ERR_SHUTDOWN, REP_ERR_BLOCK_SIZE_REQD = REP_ERR | 7, REP_ERR | 8

# NBD_OPT_INFO / NBD_OPT_GO information types
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

# transmission flags
TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_FLUSH, TF_SEND_FUA = 1, 2, 4, 8
TF_ROTATIONAL, TF_SEND_TRIM, TF_SEND_WRITE_ZEROES, TF_SEND_DF = 16, 32, 64, 128
TF_CAN_MULTI_CONN, TF_SEND_RESIZE, TF_SEND_CACHE, TF_SEND_FAST_ZERO = 256, 512, 1024, 2048

# commands and their flags
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM = 0, 1, 2, 3, 4
CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 5, 6, 7
CMDF_FUA, CMDF_NO_HOLE, CMDF_DF, CMDF_REQ_ONE, CMDF_FAST_ZERO = 1, 2, 4, 8, 16

# structured reply chunks
REPLY_FLAG_DONE = 1
REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE = 0, 1, 2
REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR = 5, (1 << 15) | 1

# block status flags: base:allocation, qemu:dirty-bitmap
STATE_HOLE, STATE_ZERO, STATE_DIRTY = 1, 2, 1

# meta context ids, as QEMU numbers them
META_ID_BASE_ALLOCATION, META_ID_ALLOCATION_DEPTH, META_ID_DIRTY_BITMAP = 0, 1, 2

MAX_STRING = 4096
"""Longest export name, description or context query (NBD_MAX_STRING_SIZE)."""
MAX_BUFFER = 32 << 20
"""Largest read or write payload (NBD_MAX_BUFFER_SIZE)."""
MAX_OPTION = 64 << 10
"""Longest option payload read; a longer one ends the session (QEMU's limit is similar:
it reads options whole and refuses oversized ones)."""

# NBD's errno values on the wire (Linux's)
EPERM, EIO, ENOMEM, EINVAL = 1, 5, 12, 22
ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN = 28, 75, 95, 108

_WIRE_ERRNO = {errno.EPERM: EPERM, errno.EROFS: EPERM, errno.EIO: EIO, errno.ENOMEM: ENOMEM,
               errno.EINVAL: EINVAL, errno.EFBIG: ENOSPC, errno.ENOSPC: ENOSPC,
               errno.EDQUOT: ENOSPC, errno.EOVERFLOW: EOVERFLOW,
               errno.EOPNOTSUPP: ENOTSUP, errno.ESHUTDOWN: ESHUTDOWN}

_HEADER = struct.Struct(">IHHQQI")
REQUEST_SIZE = _HEADER.size


def wire_errno(err: int | None) -> int:
    """An errno as NBD sends it (system_errno_to_nbd_errno: anything unknown is EINVAL)."""
    return _WIRE_ERRNO.get(err or errno.EIO, EINVAL)


def greeting() -> bytes:
    """The server's first bytes: NBDMAGIC, IHAVEOPT, handshake flags."""
    return NBDMAGIC + struct.pack(">QH", IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)


def option_header(data: bytes) -> tuple[int, int, int]:
    """(magic, option, length) from the 16 bytes that start each option."""
    magic, opt, length = struct.unpack(">QII", data)
    return magic, opt, length


def option_reply(opt: int, rtype: int, data: bytes = b"") -> bytes:
    return struct.pack(">QIII", OPT_REPLY_MAGIC, opt, rtype, len(data)) + data


def option_error(opt: int, rtype: int, message: str) -> bytes:
    return option_reply(opt, rtype, message.encode())


def server_entry(name: str, description: str) -> bytes:
    """An NBD_REP_SERVER payload: the export's name, then its description."""
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw + description.encode()


def info_export(size: int, flags: int) -> bytes:
    return struct.pack(">HQH", INFO_EXPORT, size, flags)


def info_name(name: str) -> bytes:
    return struct.pack(">H", INFO_NAME) + name.encode()


def info_description(text: str) -> bytes:
    return struct.pack(">H", INFO_DESCRIPTION) + text.encode()


def info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    return struct.pack(">HIII", INFO_BLOCK_SIZE, minimum, preferred, maximum)


def export_name_reply(size: int, flags: int, zeroes: bool) -> bytes:
    """The answer to NBD_OPT_EXPORT_NAME: size, flags, and 124 zeros unless NO_ZEROES."""
    return struct.pack(">QH", size, flags) + (bytes(124) if zeroes else b"")


def meta_context_reply(opt: int, context_id: int, name: str) -> bytes:
    return option_reply(opt, REP_META_CONTEXT, struct.pack(">I", context_id) + name.encode())


class Malformed(QmpjobdError):
    """An option payload that does not parse: the reply is NBD_REP_ERR_INVALID."""


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise Malformed("request data too short")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def string(self, what: str) -> str:
        length = self.u32()
        if length > MAX_STRING:
            raise Malformed(f"{what} too long")
        raw = self.take(length)
        try:
            return raw.decode()
        except UnicodeDecodeError as e:
            raise Malformed(f"{what} is not UTF-8") from e

    def done(self) -> None:
        if self.pos != len(self.data):
            raise Malformed("request data has trailing bytes")


def parse_info(data: bytes) -> tuple[str, list[int]]:
    """NBD_OPT_INFO / NBD_OPT_GO: the export name and the information types asked for."""
    cur = _Cursor(data)
    name = cur.string("export name")
    count = cur.u16()
    wanted = [cur.u16() for _ in range(count)]
    cur.done()
    return name, wanted


def parse_meta(data: bytes) -> tuple[str, list[str]]:
    """NBD_OPT_LIST/SET_META_CONTEXT: the export name and the queries."""
    cur = _Cursor(data)
    name = cur.string("export name")
    count = cur.u32()
    queries = [cur.string("query") for _ in range(count)]
    cur.done()
    return name, queries


@dataclass(frozen=True)
class Request:
    """One transmission-phase request header (a write's payload follows it)."""

    magic: int
    flags: int
    type: int
    handle: int
    offset: int
    length: int


def parse_request(data: bytes) -> Request:
    return Request(*_HEADER.unpack(data))


def simple_reply(handle: int, error: int = 0) -> bytes:
    return struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, error, handle)


def chunk_header(flags: int, rtype: int, handle: int, length: int) -> bytes:
    return struct.pack(">IHHQI", STRUCTURED_REPLY_MAGIC, flags, rtype, handle, length)


def offset_data_header(handle: int, offset: int, length: int, done: bool) -> bytes:
    """The header of an NBD_REPLY_TYPE_OFFSET_DATA chunk carrying ``length`` bytes."""
    return chunk_header(REPLY_FLAG_DONE if done else 0, REPLY_TYPE_OFFSET_DATA, handle,
                        8 + length) + struct.pack(">Q", offset)


def offset_hole(handle: int, offset: int, length: int, done: bool) -> bytes:
    return chunk_header(REPLY_FLAG_DONE if done else 0, REPLY_TYPE_OFFSET_HOLE, handle,
                        12) + struct.pack(">QI", offset, length)


def block_status_chunk(handle: int, context_id: int, extents: list[tuple[int, int]],
                       done: bool) -> bytes:
    body = struct.pack(">I", context_id) + b"".join(
        struct.pack(">II", length, flags) for length, flags in extents)
    return chunk_header(REPLY_FLAG_DONE if done else 0, REPLY_TYPE_BLOCK_STATUS, handle,
                        len(body)) + body


def error_chunk(handle: int, error: int, message: str) -> bytes:
    raw = message.encode()
    body = struct.pack(">IH", error, len(raw)) + raw
    return chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, handle, len(body)) + body


def done_chunk(handle: int) -> bytes:
    return chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, handle, 0)
