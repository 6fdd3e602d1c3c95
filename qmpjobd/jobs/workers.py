"""Worker threads for a job's blocking I/O, which a job may have to abandon.

``asyncio.to_thread`` uses the loop's default executor, whose threads are joined when the
loop and the interpreter shut down: one write stuck on a frozen file system would keep the
daemon alive after its socket is gone.  These workers are daemon threads, and every call gets
a thread of its own (an idle one, or a new one), so a stuck call never delays another job's
I/O and a caller that stops waiting simply leaves the thread to finish, or not, on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

IDLE_SECONDS = 30.0
"""An idle worker exits after this long without work."""

_Item = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class Workers:
    """A growable pool of daemon threads; results go back to the submitting loop."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        """One token per worker waiting for work (as ThreadPoolExecutor counts them)."""
        self._count = 0

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn()`` in a worker thread; the future resolves on the calling loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, fut, fn))
        if not self._idle.acquire(blocking=False):
            self._count += 1
            threading.Thread(target=self._work, name=f"qmpjobd-io-{self._count}",
                             daemon=True).start()
        return fut

    def _work(self) -> None:
        while True:
            try:
                loop, fut, fn = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                if self._idle.acquire(blocking=False):  # take our token back, then go
                    return
                continue  # a submit just counted on this worker: its item is coming
            try:
                result = fn()
            except BaseException as e:  # delivered to the caller (or dropped if abandoned)
                _deliver(loop, fut, None, e)
            else:
                _deliver(loop, fut, result, None)
            del loop, fut, fn
            self._idle.release()


def _deliver(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], result: Any,
             exc: BaseException | None) -> None:
    def settle() -> None:
        if fut.done():  # the caller gave up on it
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        loop.call_soon_threadsafe(settle)


WORKERS = Workers()
"""The process-wide pool used by :meth:`Job.io`."""
