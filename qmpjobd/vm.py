"""The composition root: one emulated QEMU built from options, with every command registered.

A :class:`Vm` wires the machine, the job registry, the block graph and migration/COLO to one
schema and one dispatcher, and is the EventSink they all emit into; whoever serves it (the
asyncio :class:`~qmpjobd.server.Server`, or a test) subscribes to its events.  It knows no
sockets: ``cli.py`` builds a Vm from qmpjobd's options, a QEMU-style command line can build the
same Vm from QEMU's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .block import commands as block_commands
from .block import hmp as block_hmp
from .block.graph import BlockGraph
from .block.nbd import NbdServer
from .block.workload import DiskWorkloads
from .colo import commands as colo_commands
from .colo import stubs as colo_stubs
from .colo.guest import Guest
from .colo.heartbeat import Heartbeat
from .colo.migration import Migration
from .hardware import Hardware
from .hmp import build as build_hmp
from .jobs import JobRegistry
from .jobs import commands as job_commands
from .machine import Machine
from .protocol import encode
from .protocol.session import CAPABILITIES
from .qemu import identity
from .schema import Registry, build_schema
from .schema.introspect import command_list, qmp_schema
from .schema.model import Enum
from .server.dispatch import Dispatcher
from .tls import TlsFiles

log = logging.getLogger(__name__)

Listener = Callable[[str, Any, "str | None"], None]
"""Receives every event: name, data, and the capability a client needs to see it."""


class Vm:
    """Machine, jobs, block graph and migration/COLO behind one QMP command registry."""

    def __init__(self, *, version: tuple[int, int, int] = (7, 2, 0), package: str = "",
                 name: str | None = None, guest: Guest | None = None,
                 incoming: str | None = None, paused: bool = False, compat: str = "7.2",
                 colo_tls: TlsFiles | None = None, cpus: int = 0, cpu_model: str = "qemu64",
                 uuid: str = "00000000-0000-0000-0000-000000000000", max_cpus: int = 0,
                 topology: tuple[int, int, int] = (0, 0, 0)) -> None:
        self._listeners: list[Listener] = []
        self.capabilities = CAPABILITIES
        self.schema = build_schema()
        self.registry = Registry(self.schema)
        self.dispatcher = Dispatcher(self.registry)
        self.machine = Machine(self, version, package, name, on_quit=self._on_quit)
        self.machine.on_poweroff = self._on_poweroff
        self.machine.register(self.registry)
        self.jobs = JobRegistry(self)
        job_commands.register(self.registry, self.jobs)
        self.block = BlockGraph()
        block_commands.register(self.registry, self.block, self.jobs)
        self.nbd = NbdServer(self.block, self)
        self.nbd.register(self.registry)
        guest = guest or Guest()
        self.hardware = Hardware(self.block, cpus=cpus, cpu_model=cpu_model, uuid=uuid,
                                 max_cpus=max_cpus, topology=topology,
                                 ram=guest.pages * guest.page_size)
        self.hardware.register(self.registry)
        self.disk_workloads = DiskWorkloads(self.hardware.drive_node)
        self.disk_workloads.register(self.registry)
        if paused:
            self.machine.status = "prelaunch"
            self.machine.autostart = False
        self.migration = Migration(self, self.machine, self.jobs, guest,
                                   incoming=incoming, compat=compat, tls=colo_tls)
        self.heartbeat = Heartbeat(self.migration)
        colo_commands.register(self.registry, self.migration, self.heartbeat)
        self.identity = identity.register(self.registry)
        self.hmp = build_hmp(self.registry)
        """human-monitor-command: QEMU 7.2's HMP over the QMP handlers registered here."""
        block_hmp.register(self.hmp, self.hardware, self.jobs)
        self.registry.register("human-monitor-command", self.hmp.human_monitor_command)
        colo_stubs.register(self.registry, self.block, self.hmp)
        self._intro: tuple[int, list[Any], list[dict[str, str]]] | None = None
        self.registry.register("query-qmp-schema", lambda args, session: self._introspect()[0])
        self.registry.register("query-commands", lambda args, session: self._introspect()[1])
        self.greeting = encode.greeting(self.machine.version, list(self.capabilities))
        self.stopped = asyncio.Event()
        """Set once the daemon should exit (quit, a signal); see :attr:`exit_reason`."""
        self.exit_reason = ""
        self._stopping: asyncio.Task[None] | None = None
        self._poweroff: asyncio.Task[None] | None = None
        self._started = False

    def _introspect(self) -> tuple[list[Any], list[dict[str, str]]]:
        """query-qmp-schema and query-commands, recomputed only when plug-ins add to the schema."""
        key = len(self.schema.entities) + sum(
            len(t.values) for t in self.schema.types.values() if isinstance(t, Enum))
        if self._intro is None or self._intro[0] != key:
            self._intro = (key, qmp_schema(self.schema), command_list(self.schema))
        return self._intro[1], self._intro[2]

    # -- events --------------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """Deliver every event emitted from now on to ``listener``."""
        self._listeners.append(listener)

    def emit(self, name: str, data: Any = None, capability: str | None = None) -> None:
        """EventSink: hand the event to every listener (a server fans it out to clients)."""
        for listener in self._listeners:
            listener(name, data, capability)

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start what runs on its own (an incoming migration listener); needs a running loop."""
        if not self._started:
            self._started = True
            self.hardware.start()
            self.migration.start()

    def _on_poweroff(self) -> None:
        """The guest powered off (no ``-no-shutdown``): end as after quit."""
        async def end() -> None:
            self._end_replication()
            await self.jobs.cancel_all()
            self.request_stop("guest-shutdown")

        self._poweroff = asyncio.get_running_loop().create_task(end())

    async def _on_quit(self) -> None:
        """After SHUTDOWN: cancel every job (with its events), then reply, then stop."""
        self._end_replication()
        await self.jobs.cancel_all()
        # The reply to quit is written when this returns; stop right after that.
        asyncio.get_running_loop().call_soon(self.request_stop, "quit")

    def request_stop(self, reason: str) -> None:
        """Ask the daemon to stop; whoever waits on :attr:`stopped` closes down."""
        if not self.stopped.is_set():
            self.exit_reason = reason
            self.stopped.set()

    def signal_stop(self, signame: str) -> None:
        """SIGTERM/SIGINT: SHUTDOWN to every client, as QEMU does, cancel the jobs, stop."""
        log.info("received %s, shutting down", signame)
        if self._stopping is not None:
            return
        self.machine.ending = True
        self.emit("SHUTDOWN", {"guest": False, "reason": "host-signal"})
        self.jobs.shutdown()  # no new job from here on, before any other request is read

        async def stop() -> None:
            self._end_replication()
            await self.jobs.cancel_all()
            self.request_stop(signame)

        self._stopping = asyncio.get_running_loop().create_task(stop())

    def _end_replication(self) -> None:
        """Leaving the process ends COLO as a killed QEMU would: no failover on this side."""
        self.heartbeat.close()
        self.migration.close()

    def close(self) -> None:
        """Release what the VM holds: replication links and block nodes."""
        self._end_replication()
        self.disk_workloads.close()
        self.nbd.close()
        self.hardware.close()
        self.block.close()
