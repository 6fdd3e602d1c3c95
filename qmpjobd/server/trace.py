"""``--trace FILE``: every message of every connection as JSON lines, written by a thread so
that tracing never blocks the event loop.

The queue between the loop and the thread is bounded in bytes (``MAX_QUEUED_BYTES``): when
the file cannot keep up, records are dropped, counted, and logged once per episode.  The
writer thread outlives any error: a failed write (a full disk, ``/dev/full``) drops that
batch, logs once, and the next batch is tried again.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from typing import Any

import orjson

MAX_QUEUED_BYTES = 32 << 20
"""Bytes of records (payload plus a fixed per-record charge) waiting for the writer thread
at most; beyond, new records are dropped and counted."""
RECORD_OVERHEAD = 96
"""What one record costs besides its payload: the line's head and the queue entry."""
BATCH_BYTES = 1 << 20
"""The writer joins queued records into writes of about this size."""

_STOP = object()
log = logging.getLogger(__name__)


def _encode(message: Any) -> bytes:
    """A message as compact JSON; never raises (an unencodable value is described instead)."""
    try:
        return orjson.dumps(message)
    except TypeError:  # nesting past orjson's 254 levels, integers past 64 bits, ...
        pass
    for ascii_only in (False, True):  # True: lone surrogates become \uXXXX escapes
        try:
            return json.dumps(message, separators=(",", ":"),
                              ensure_ascii=ascii_only).encode()
        except UnicodeEncodeError:
            continue
        except (TypeError, ValueError, RecursionError):
            break
    return orjson.dumps({"unencodable": type(message).__name__})


class Tracer:
    """Appends ``{"time", "connection", "direction", "message"}`` lines to a file."""

    def __init__(self, path: str, max_bytes: int = MAX_QUEUED_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.queued_bytes = 0
        self.dropped = 0
        """Records dropped because the queue was full."""
        self.lost = 0
        """Records lost because writing them failed."""
        self._dropping = False
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="qmpjobd-trace", daemon=True)
        self._thread.start()

    def record(self, conn: int, direction: str, message: Any) -> None:
        """One parsed message (``in``) or ``connect``/``disconnect`` note."""
        self._put(time.time(), conn, direction, _encode(message), False)

    def record_raw(self, conn: int, direction: str, data: bytes) -> None:
        """Encoded output (one or more CRLF-terminated messages)."""
        self._put(time.time(), conn, direction, data, True)

    def _put(self, now: float, conn: int, direction: str, data: bytes, raw: bool) -> None:
        cost = len(data) + RECORD_OVERHEAD
        with self._lock:
            if self.queued_bytes + cost > self.max_bytes:
                self.dropped += 1
                first = not self._dropping
                self._dropping = True
            else:
                self.queued_bytes += cost
                first = False
                self._queue.put((now, conn, direction, data, raw, cost))
        if first:
            log.warning("--trace %s: %d bytes queued, the file cannot keep up; dropping "
                        "records until it does", self.path, self.max_bytes)

    def _run(self) -> None:
        """The writer thread: batches of records until close(); no exception ends it."""
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            size = item[5]
            while size < BATCH_BYTES:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._queue.put(_STOP)
                    break
                batch.append(more)
                size += more[5]
            try:
                self._write_batch(batch)
            except Exception:  # a bug must not end tracing or the daemon
                self.lost += len(batch)
                log.exception("--trace %s: cannot write %d records", self.path, len(batch))
            finally:
                self._settle(size)

    def _settle(self, size: int) -> None:
        with self._lock:
            self.queued_bytes -= size
            ended = self._dropping and self.queued_bytes == 0
            if ended:
                self._dropping = False
        if ended:
            log.warning("--trace %s: caught up; %d records dropped so far", self.path,
                        self.dropped)

    def _write_batch(self, batch: list[Any]) -> None:
        lines: list[bytes] = []
        for now, conn, direction, data, raw, _ in batch:
            head = b'{"time":%.6f,"connection":%d,"direction":"%s","message":' % (
                now, conn, direction.encode())
            if raw:
                lines.extend(head + line + b"}\n" for line in data.split(b"\r\n") if line)
            else:
                lines.append(head + data + b"}\n")
        out = memoryview(b"".join(lines))
        try:
            while out:
                out = out[os.write(self._fd, out):]
        except OSError as e:
            self.lost += len(batch)
            if not self._failing:
                self._failing = True
                log.error("--trace %s: %s; records are lost until a write succeeds",
                          self.path, e.strerror or e)
            return
        if self._failing:
            self._failing = False
            log.warning("--trace %s: writing again; %d records lost so far", self.path,
                        self.lost)

    def close(self) -> None:
        """Write what is queued and close the file."""
        self._queue.put(_STOP)
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            log.warning("--trace %s: the writer is stuck; %d bytes not written", self.path,
                        self.queued_bytes)
        if self.dropped or self.lost:
            log.warning("--trace %s: %d records dropped (the file could not keep up), %d lost "
                        "(write errors)", self.path, self.dropped, self.lost)
        try:
            os.close(self._fd)
        except OSError as e:
            log.error("--trace %s: %s", self.path, e.strerror or e)
