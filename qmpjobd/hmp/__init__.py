"""The human monitor (HMP) behind ``human-monitor-command``: QEMU 7.2's command tables and
parser (``monitor.py``, ``table.py``)."""

from __future__ import annotations

from .monitor import Hmp, Monitor

__all__ = ["Hmp", "Monitor"]
