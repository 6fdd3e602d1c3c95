"""``--trace FILE``: every message of every connection as JSON lines, written by a thread so
that tracing never blocks the event loop."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import IO, Any

import orjson

_STOP = object()
MAX_QUEUED = 100_000
"""Records waiting for the writer thread at most; beyond, records are dropped and counted."""
log = logging.getLogger(__name__)


class Tracer:
    """Appends ``{"time", "connection", "direction", "message"}`` lines to a file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[bytes] = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.failed = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._write, name="qmpjobd-trace", daemon=True)
        self._thread.start()

    def record(self, conn: int, direction: str, message: Any) -> None:
        """One parsed message (``in``) or ``connect``/``disconnect`` note."""
        self._put((time.time(), conn, direction, message, None))

    def record_raw(self, conn: int, direction: str, data: bytes) -> None:
        """Encoded output (one or more CRLF-terminated messages)."""
        self._put((time.time(), conn, direction, None, data))

    def _put(self, item: Any) -> None:
        if self.failed:
            return
        if self._queue.qsize() >= MAX_QUEUED:  # the file cannot keep up: drop, and count
            self.dropped += 1
            return
        self._queue.put(item)

    def _write(self) -> None:
        try:
            self._write_all()
        except OSError as e:
            self.failed = True
            log.error("--trace %s: %s; tracing stopped", self.path, e.strerror or e)

    def _write_all(self) -> None:
        f = self._file
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            now, conn, direction, message, raw = item
            head = b'{"time":%.6f,"connection":%d,"direction":"%s","message":' % (
                now, conn, direction.encode())
            if raw is None:
                try:
                    body = orjson.dumps(message)
                except TypeError:  # nesting past orjson's 254 levels, integers past 64 bits
                    body = json.dumps(message, separators=(",", ":"),
                                      ensure_ascii=False).encode()
                f.write(head + body + b"}\n")
            else:
                for line in raw.split(b"\r\n"):
                    if line:
                        f.write(head + line + b"}\n")
            if self._queue.empty():
                f.flush()

    def close(self) -> None:
        """Write what is queued and close the file."""
        self._queue.put(_STOP)
        self._thread.join(timeout=5)
        left = self._queue.qsize()
        if self.dropped or left:
            log.warning("--trace %s: %d records dropped (the file could not keep up)",
                        self.path, self.dropped + left)
        try:
            self._file.close()
        except OSError as e:
            log.error("--trace %s: %s", self.path, e.strerror or e)
