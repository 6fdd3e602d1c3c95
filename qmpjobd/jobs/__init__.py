"""Jobs with QEMU 7.2's semantics, and the public API for new job types.

A job type is a :class:`Job` subclass with an async ``run``; :func:`add_job_command` gives it
a QMP command that starts it.  See ``examples/countdown_job.py``.
"""

from .commands import add_job_command, block_job_info, job_info
from .core import Job, JobCancelled, JobError, JobRegistry, Txn

__all__ = ["Job", "JobCancelled", "JobError", "JobRegistry", "Txn", "add_job_command",
           "block_job_info", "job_info"]
