"""Process set-up shared by both command lines (``qmpjobd`` and ``qmpjobd-system-x86_64``):
malloc tuning and the event loop choice; it imports nothing heavy, so neither pays for the
other's options."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .libc import libc


def tune_malloc() -> None:
    """Serve big buffers from mmap so memory goes back to the OS once a huge message is done.

    glibc otherwise raises its mmap threshold after the first large free (up to 32 MiB), and
    later multi-megabyte messages then stay in the heap; RSS would not come back down.
    """
    try:
        mallopt = libc().mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 256 * 1024)
    mallopt(m_trim_threshold, 1024 * 1024)


def loop_factory(kind: str) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """The event loop constructor to use, and its name for the log."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                msg = "qmpjobd: --loop uvloop given but uvloop is not installed"
                raise SystemExit(msg) from None
        else:
            return uvloop.new_event_loop, "uvloop"
    return asyncio.new_event_loop, "asyncio"
