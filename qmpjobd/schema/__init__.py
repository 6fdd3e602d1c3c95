"""The one schema of qmpjobd: every command, event and type, declared once.

Validation, ``query-commands`` and ``query-qmp-schema`` are all derived from it.
"""

from __future__ import annotations

from . import block, core, hardware, jobs, migration, qemu
from .model import Command, Event, Schema
from .registry import EventSink, Handler, Registry

__all__ = ["Command", "Event", "EventSink", "Handler", "Registry", "Schema",
           "build_schema"]


def build_schema() -> Schema:
    """Assemble the full schema from every declaring module."""
    s = Schema()
    core.declare(s)
    jobs.declare(s)
    block.declare(s)
    migration.declare(s)
    hardware.declare(s)
    qemu.declare(s)
    s.check_all_refs()
    return s
