"""The floor: the cheapest QMP-shaped Unix-socket server, to show what the event loop and the
socket system calls cost before any parsing or dispatch.

It greets, answers every input line with ``{"return": {}}`` (no parsing, no ids), and for a
line holding ``"stop"`` or ``"cont"`` first sends STOP or RESUME to every client, as QEMU orders
them, so the fan-out mode works.

    python3 benchmarks/floor.py SOCKET
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

GREETING = (b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 0}, '
            b'"package": "floor"}, "capabilities": []}}\r\n')
REPLY = b'{"return": {}}\r\n'
EVENTS = {b'"stop"': b'{"timestamp": {"seconds": 0, "microseconds": 0}, "event": "STOP"}\r\n',
          b'"cont"': b'{"timestamp": {"seconds": 0, "microseconds": 0}, "event": "RESUME"}\r\n'}
clients: set[asyncio.Transport] = set()


class Floor(asyncio.Protocol):
    """One client: count newlines, answer each."""

    def connection_made(self, transport: Any) -> None:
        self.t: asyncio.Transport = transport
        clients.add(transport)
        transport.write(GREETING)

    def connection_lost(self, exc: Exception | None) -> None:
        clients.discard(self.t)

    def data_received(self, data: bytes) -> None:
        n = data.count(b"\n")
        if not n:
            return
        if b'"stop"' not in data and b'"cont"' not in data:
            self.t.write(REPLY * n)
            return
        for line in data.split(b"\n")[:n]:
            for pattern, event in EVENTS.items():
                if pattern in line:
                    for t in list(clients):  # a write may end a connection
                        t.write(event)
            self.t.write(REPLY)


async def main(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = await asyncio.get_running_loop().create_unix_server(Floor, path)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(sys.argv[1]))
    else:
        uvloop.run(main(sys.argv[1]))
