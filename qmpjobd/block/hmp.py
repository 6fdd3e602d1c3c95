"""The block layer's HMP command, ``qemu-io [-d] DEVICE "COMMAND"`` (QEMU 7.2's hmp_qemu_io):
qemu-io's commands on a device's backend or a node, the deterministic guest I/O that tests
drive.  Registered into the human monitor as block/commands.py registers QMP commands.

As in QEMU, what the command prints goes to the process's standard output (usage complaints
to standard error), not into the reply; the reply carries only the monitor's errors (no such
device or node, a refused write permission).  The I/O runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any, Protocol

from ..hmp.monitor import Hmp, Monitor
from ..jobs import JobRegistry
from ..protocol.errors import QMPError
from . import qemuio
from .nodes import BlockNode


class Targets(Protocol):
    """What the machine answers for qemu-io (hardware.Hardware)."""

    def io_target(self, name: str, qdev: bool) -> tuple[BlockNode, Any]:
        """The node a device id (``qdev``) or node name reaches, and the device if any."""

    def write_refusal(self, node: BlockNode, dev: Any) -> str | None:
        """Why writing to ``node`` (through ``dev``'s backend, if given) is refused."""


def _print(stream: Any, text: str) -> None:
    """Write to a standard stream as QEMU's printf does; a closed one loses the text."""
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass


STDIO = qemuio.Output(lambda text: _print(sys.stdout, text),
                      lambda text: _print(sys.stderr, text))
"""Where qemu-io's text goes: this process's stdout and stderr, as in QEMU."""


def drained(jobs: JobRegistry, node: BlockNode) -> None:
    """A drained section of ``node``: the block jobs whose nodes are it or above it pause
    and resume (what attaching or detaching a BlockBackend does to the node in QEMU)."""
    above = {id(node)}
    todo = [node]
    while todo:
        for parent in todo.pop().parents:
            if id(parent) not in above:
                above.add(id(parent))
                todo.append(parent)
    jobs.release(jobs.quiesce(lambda j: any(
        id(n) in above for n in (getattr(j, "source", None), getattr(j, "target", None))
        if n is not None)))


def register(hmp: Hmp, targets: Targets, jobs: JobRegistry,
             output: qemuio.Output = STDIO) -> None:
    """Implement ``qemu-io`` in ``hmp`` over ``targets``; its text goes to ``output``.  By
    node name it runs under a BlockBackend of its own, attached and detached around the
    command: two drains of the node (the jobs on it flicker paused/running twice)."""

    def run(mon: Monitor, args: dict[str, Any]) -> Awaitable[None] | None:
        try:
            node, dev = targets.io_target(args["device"], bool(args.get("qdev", False)))
        except QMPError as e:
            mon.error(e)
            return None
        own_backend = dev is None
        if own_backend:
            drained(jobs, node)
        early = qemuio.Collect()
        prepared = qemuio.prepare(args["command"], early)
        if prepared is not None and prepared.cmd.write:
            refusal = targets.write_refusal(node, dev)
            if refusal is not None:
                mon.printf(refusal + "\n")
                if own_backend:
                    drained(jobs, node)
                return None
        if prepared is not None and prepared.cmd.name == "sleep":
            work = _sleep(node, prepared, early, output)
        else:
            work = asyncio.to_thread(_execute, node, prepared, early, output)
        return _then_detach(work, jobs, node) if own_backend else work

    hmp.implement("qemu-io", "qdev:-d,device:B,command:s", run)


async def _then_detach(work: Awaitable[None], jobs: JobRegistry, node: BlockNode) -> None:
    try:
        await work
    finally:
        drained(jobs, node)


async def _sleep(node: BlockNode, prepared: qemuio.Prepared, early: qemuio.Collect,
                 output: qemuio.Output) -> None:
    """qemu-io's ``sleep``: the reply waits (on the event loop, not in a worker thread)."""
    ms = qemuio.sleep_ms(prepared.argv[1], early)
    await asyncio.to_thread(_execute, node, None, early, output)
    if ms:
        await asyncio.sleep(ms / 1000)


def _execute(node: BlockNode, prepared: qemuio.Prepared | None, early: qemuio.Collect,
             output: qemuio.Output) -> None:
    """In a worker thread: print what preparing said, run the command, print as it goes."""
    for text in early.stdout:
        output.out(text)
    for text in early.stderr:
        output.err(text)
    if prepared is None:
        return
    files = node.files()
    for f in files:
        f.hold()
    try:
        qemuio.execute(node, prepared, output)
    finally:
        for f in files:
            f.release()
