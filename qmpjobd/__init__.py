"""qmpjobd: a QMP daemon with QEMU 7.2's wire behaviour, many clients per socket, and jobs."""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
