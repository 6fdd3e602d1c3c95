"""The human monitor (HMP) behind ``human-monitor-command``: QEMU 7.2's command tables and
parser (``monitor.py``, ``table.py``) and the commands qmpjobd implements (``commands.py``)."""

from __future__ import annotations

from ..schema import Registry
from . import commands
from .monitor import Hmp, Monitor

__all__ = ["Hmp", "Monitor", "build"]


def build(registry: Registry) -> Hmp:
    """An Hmp over ``registry``'s QMP handlers, with every command qmpjobd implements."""
    hmp = Hmp(registry)
    commands.register(hmp)
    return hmp
