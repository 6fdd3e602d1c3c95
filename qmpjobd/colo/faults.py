"""Fault injection for drills: act at a named phase of a checkpoint (x-daemon-colo-inject).

A fault fires once.  ``hold`` parks the checkpoint at the phase until the fault is cleared, so
a test can kill a process at an exact point; a caller may wait until the fault has fired.
A ``delay`` in progress ends early when its phase is cleared, on failover and on shutdown.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final

from ..schema.enums import COLOMode, XColoFaultAction, XColoFaultPhase

PHASES: Final = tuple(XColoFaultPhase)
"""Checkpoint phases, in protocol order (``ram`` and ``blob`` are mid-transfer)."""

SIDE_PHASES: Final[dict[str, frozenset[str]]] = {
    COLOMode.PRIMARY: frozenset(PHASES) - {XColoFaultPhase.APPLY},
    COLOMode.SECONDARY: frozenset(PHASES)}
"""The phases each side passes through (only the secondary applies a checkpoint)."""

ACTIONS: Final = tuple(XColoFaultAction)
"""What a fault does (see XColoFaultAction)."""


@dataclass(eq=False)
class Fault:
    """One armed fault."""

    phase: str
    action: str
    delay: float = 0.0
    fired: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop()
                                        .create_future())
    released: asyncio.Event = field(default_factory=asyncio.Event)


class Faults:
    """The armed faults of one daemon, by phase."""

    def __init__(self) -> None:
        self.armed: dict[str, Fault] = {}
        self.delaying: dict[str, Fault] = {}
        """Delays that have fired and are still sleeping, by phase."""

    def arm(self, phase: str, action: str, delay: float = 0.0) -> Fault | None:
        """Arm (or with ``none`` clear) the fault of ``phase``; a held phase or a delay in
        progress there is released."""
        old = self.armed.pop(phase, None)
        if old is not None:
            old.released.set()
            if not old.fired.done():
                old.fired.cancel()
        sleeping = self.delaying.pop(phase, None)
        if sleeping is not None:
            sleeping.released.set()
        if action == "none":
            return None
        fault = Fault(phase, action, delay)
        self.armed[phase] = fault
        return fault

    def take(self, phase: str) -> Fault | None:
        """The fault to apply at ``phase`` now, if one is armed (``hold`` stays armed until it
        is cleared, so that the phase can be released)."""
        fault = self.armed.get(phase)
        if fault is None:
            return None
        if fault.action != "hold":
            del self.armed[phase]
        if fault.action == "delay":
            self.delaying[phase] = fault
        if not fault.fired.done():
            fault.fired.set_result(None)
        return fault

    def done_delaying(self, fault: Fault) -> None:
        """A delay has ended (its time is up, or it was released)."""
        if self.delaying.get(fault.phase) is fault:
            del self.delaying[fault.phase]

    def release_delays(self) -> None:
        """End every delay in progress now (failover must not wait for a drill's sleep)."""
        for fault in self.delaying.values():
            fault.released.set()
        self.delaying.clear()

    def clear(self) -> None:
        """Release everything (end of a replication run, shutdown)."""
        for phase in list(self.armed):
            self.arm(phase, "none")
        self.release_delays()
