"""The emulated machine: run state (query-status, stop, cont), identity and quit.

There is no guest CPU here; the run state is what a QMP client observes, with QEMU's events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .protocol.errors import QMPError
from .protocol.session import Session
from .schema import EventSink, Registry

_NEEDS_RESET = frozenset(("internal-error", "shutdown", "guest-panicked"))


class Machine:
    """Run state and identity of the daemon as a QMP client sees them."""

    def __init__(self, events: EventSink, version: tuple[int, int, int], package: str,
                 name: str | None = None, on_quit: Callable[[], Any] | None = None) -> None:
        self.events = events
        self.status = "running"
        self.name = name
        major, minor, micro = version
        self.version = {"qemu": {"micro": micro, "minor": minor, "major": major},
                        "package": package}
        self.on_quit = on_quit
        self.autostart = True
        """Whether a finished incoming migration resumes the guest (no ``-S``)."""
        self.yankables: dict[str, Callable[[], None]] = {}
        """Yank instances by type (``migration``) and what yanking them does."""
        self.guest_acpi = False
        """Whether an emulated guest answers system_powerdown by powering off (a machine with
        a guest, as libvirt starts; ``-M none`` has none and only reports POWERDOWN)."""
        self.no_shutdown = False
        """``-no-shutdown``: a guest that powers off stops (runstate shutdown) instead of
        ending the process."""
        self.on_poweroff: Callable[[], None] | None = None
        """Ends the process when the guest powers off without ``-no-shutdown``."""
        self.ending = False
        """quit or a signal has begun ending the process: the guest no longer powers off."""

    def register(self, registry: Registry) -> None:
        """Attach this machine's command handlers."""
        registry.register("query-status", self.query_status)
        registry.register("stop", self.stop)
        registry.register("cont", self.cont)
        registry.register("query-name", self.query_name)
        registry.register("query-version", self.query_version)
        registry.register("quit", self.quit)
        registry.register("query-yank", lambda args, session: [
            {"type": kind} for kind in self.yankables])
        registry.register("yank", self.yank)
        registry.register("system_reset", self.system_reset)
        registry.register("system_powerdown", self.system_powerdown)
        registry.register("getfd", lambda args, session: session.fds.getfd(args["fdname"]))
        registry.register("closefd", lambda args, session: session.fds.closefd(args["fdname"]))

    @property
    def running(self) -> bool:
        """True while the (emulated) guest runs."""
        return self.status == "running"

    def set_status(self, status: str) -> None:
        """Change the run state, emitting STOP or RESUME as QEMU does."""
        was_running = self.running
        self.status = status
        if was_running and status != "running":
            self.events.emit("STOP")
        elif not was_running and status == "running":
            self.events.emit("RESUME")

    def query_status(self, args: dict[str, Any], session: Session) -> Any:
        """query-status."""
        return {"status": self.status, "singlestep": False, "running": self.running}

    def stop(self, args: dict[str, Any], session: Session) -> Any:
        """stop: pause a running guest (no event when already stopped); while an incoming
        migration is awaited it only cancels the resume at its end, as QEMU's qmp_stop."""
        if self.status == "inmigrate":
            self.autostart = False
            return
        if self.running:
            self.set_status("paused")

    def cont(self, args: dict[str, Any], session: Session) -> Any:
        """cont: resume, with QEMU's refusals."""
        if self.status in _NEEDS_RESET:
            raise QMPError("Resetting the Virtual Machine is required")
        if self.status == "suspended":
            return
        if self.status == "finish-migrate":
            raise QMPError("Migration is not finalized yet")
        if self.status == "inmigrate":
            self.autostart = True
            return
        if not self.running:
            self.set_status("running")

    def system_reset(self, args: dict[str, Any], session: Session) -> Any:
        """system_reset: RESET; a guest that was not running is left in prelaunch, as QEMU's
        main loop does after a reset."""
        self.events.emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        if self.status not in ("running", "inmigrate", "finish-migrate"):
            self.status = "prelaunch"

    def system_powerdown(self, args: dict[str, Any], session: Session) -> Any:
        """system_powerdown: POWERDOWN; then, after the reply, an emulated guest powers off."""
        self.events.emit("POWERDOWN")
        if self.guest_acpi and self.running:
            asyncio.get_running_loop().call_soon(self.guest_poweroff)

    def guest_poweroff(self) -> None:
        """The guest shut itself down: SHUTDOWN, then STOP with ``-no-shutdown``, else exit."""
        if self.status == "shutdown" or self.ending:
            return
        self.events.emit("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
        if self.no_shutdown:
            self.set_status("shutdown")
        elif self.on_poweroff is not None:
            self.on_poweroff()

    def query_name(self, args: dict[str, Any], session: Session) -> Any:
        """query-name: ``{}`` unless the daemon was given a name."""
        return {"name": self.name} if self.name is not None else {}

    def query_version(self, args: dict[str, Any], session: Session) -> Any:
        """query-version: the configured QEMU-style triple and our package string."""
        return self.version

    def quit(self, args: dict[str, Any], session: Session) -> Any:
        """quit: SHUTDOWN to everyone, then the reply, then the daemon exits."""
        self.ending = True
        self.events.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        if self.on_quit is not None:
            return self.on_quit()  # may be awaitable: the reply waits for it
        return None

    def yank(self, args: dict[str, Any], session: Session) -> Any:
        """yank: every named instance must exist (only ``migration`` can), then all go."""
        instances = args["instances"]
        for inst in instances:
            if inst["type"] != "migration" or "migration" not in self.yankables:
                raise QMPError("Instance not found", "DeviceNotFound")
        for inst in instances:
            action = self.yankables.get(inst["type"])
            if action is not None:
                action()
