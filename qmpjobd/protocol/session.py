"""Per-connection QMP state that is independent of I/O: negotiation and capabilities."""

from __future__ import annotations

from typing import Any

from . import encode
from .errors import QMPError

CAPABILITIES: tuple[str, ...] = ("oob", "x-job-events")
"""Capabilities offered in the greeting: QEMU 7.2's ``oob``, and qmpjobd's ``x-job-events``
(the generic JOB_COMPLETED / JOB_CANCELLED / JOB_ERROR / JOB_READY events)."""


class Session:
    """One client's view of the monitor: negotiation mode or command mode, OOB on or off."""

    __slots__ = ("enabled", "name", "negotiated", "offered", "oob")

    def __init__(self, offered: tuple[str, ...] = CAPABILITIES, name: str = "") -> None:
        self.offered = offered
        self.negotiated = False
        self.oob = False
        self.enabled: frozenset[str] = frozenset()
        self.name = name

    def greeting(self, version: Any) -> bytes:
        """The greeting line for this session."""
        return encode.greeting(version, list(self.offered))

    def negotiate(self, enable: list[str]) -> None:
        """qmp_capabilities: QEMU's checks, in its order, then switch to command mode."""
        if self.negotiated:
            raise QMPError("Capabilities negotiation is already complete, command ignored",
                           "CommandNotFound")
        missing = [c for c in enable if c not in self.offered]
        if missing:
            raise QMPError(f"Capability {', '.join(missing)} not available")
        self.enabled = frozenset(enable)
        self.oob = "oob" in self.enabled
        self.negotiated = True
