"""A small blocking NBD client for tests: it sends what a test asks, byte for byte, and
returns what the server sent, parsed but not judged, so that QEMU's and qmpjobd's answers can
be compared (the real clients, nbdinfo, qemu-img and nbdcopy, are tested separately)."""

from __future__ import annotations

import socket
import struct
from typing import Any

IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE, STRUCTURED = 0x67446698, 0x668E33EF
OPT = {"export-name": 1, "abort": 2, "list": 3, "starttls": 5, "info": 6, "go": 7,
       "structured-reply": 8, "list-meta": 9, "set-meta": 10}
CMD = {"read": 0, "write": 1, "disc": 2, "flush": 3, "trim": 4, "cache": 5,
       "write-zeroes": 6, "block-status": 7}


class NbdClient:
    def __init__(self, path: str, timeout: float = 10.0, flags: int = 3) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.greeting = self.recv(18)
        self.sock.sendall(struct.pack(">I", flags))
        self.handle = 0

    def close(self) -> None:
        self.sock.close()

    def recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return buf

    def eof(self) -> bool:
        """True once the server closed the connection."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    # -- handshake -----------------------------------------------------------------------------

    def option(self, opt: int | str, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Send one option; the replies up to the last (ACK or an error), as (type, data)."""
        code = OPT[opt] if isinstance(opt, str) else opt
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, code, len(data)) + data)
        replies = []
        while True:
            magic, got, rtype, length = struct.unpack(">QIII", self.recv(20))
            assert magic == OPT_REPLY_MAGIC and got == code, (hex(magic), got, code)
            replies.append((rtype, self.recv(length)))
            if rtype == 1 or rtype & (1 << 31):
                return replies

    def go(self, name: str, *info: int, opt: str = "go") -> list[tuple[int, bytes]]:
        raw = name.encode()
        return self.option(opt, struct.pack(">I", len(raw)) + raw
                           + struct.pack(">H", len(info))
                           + b"".join(struct.pack(">H", i) for i in info))

    def meta(self, opt: str, name: str, *queries: str) -> list[tuple[int, bytes]]:
        raw = name.encode()
        body = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries))
        for q in queries:
            body += struct.pack(">I", len(q.encode())) + q.encode()
        return self.option(opt, body)

    # -- transmission --------------------------------------------------------------------------

    def send_request(self, cmd: str, offset: int = 0, length: int = 0, flags: int = 0,
                     payload: bytes = b"") -> int:
        self.handle += 1
        self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, CMD[cmd], self.handle,
                                      offset, length) + payload)
        return self.handle

    def reply(self, read_length: int = 0) -> dict[str, Any]:
        """One reply: simple (with ``read_length`` data bytes if it succeeded) or one
        structured chunk, as a dict."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE:
            error, handle = struct.unpack(">IQ", self.recv(12))
            data = self.recv(read_length) if read_length and not error else b""
            return {"simple": True, "error": error, "handle": handle, "data": data}
        assert magic == STRUCTURED, hex(magic)
        flags, rtype, handle, length = struct.unpack(">HHQI", self.recv(16))
        return {"simple": False, "flags": flags, "type": rtype, "handle": handle,
                "payload": self.recv(length)}

    def chunks(self) -> list[dict[str, Any]]:
        """Structured chunks until the one flagged done."""
        out = []
        while True:
            chunk = self.reply()
            out.append(chunk)
            if chunk["simple"] or chunk["flags"] & 1:
                return out

    def request(self, cmd: str, offset: int = 0, length: int = 0, flags: int = 0,
                payload: bytes = b"", structured: bool = False) -> list[dict[str, Any]]:
        self.send_request(cmd, offset, length, flags, payload)
        if structured:
            return self.chunks()
        return [self.reply(length if cmd == "read" else 0)]


def connect_go(path: str, name: str, structured: bool = True,
               contexts: tuple[str, ...] = ()) -> NbdClient:
    """A client in transmission on export ``name``."""
    c = NbdClient(path)
    if structured:
        assert c.option("structured-reply")[-1][0] == 1
    if contexts:
        assert c.meta("set-meta", name, *contexts)[-1][0] == 1
    assert c.go(name)[-1][0] == 1
    return c


def parse_status(payload: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(context id, [(length, flags)]) of an NBD_REPLY_TYPE_BLOCK_STATUS chunk."""
    cid = struct.unpack(">I", payload[:4])[0]
    body = payload[4:]
    return cid, [struct.unpack(">II", body[i:i + 8]) for i in range(0, len(body), 8)]
