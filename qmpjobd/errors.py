"""The root of qmpjobd's exceptions: every exception it raises on purpose derives from
:class:`QmpjobdError`, so a caller (a plug-in, an embedding program, a test) can catch them
all in one place.  This module imports nothing from the package."""

from __future__ import annotations


class QmpjobdError(Exception):
    """Root of every exception qmpjobd raises on purpose."""
