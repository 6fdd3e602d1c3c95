"""QEMU 7.2's job state machine as literal tables (job.c ``JobSTT`` and ``JobVerbTable``).

Rows and columns follow the JobStatus enum order; ``1`` means allowed.  jobs.md §2-§3.
"""

from __future__ import annotations

from typing import Final

STATUSES: Final = ("undefined", "created", "running", "paused", "ready", "standby", "waiting",
                   "pending", "aborting", "concluded", "null")
"""JobStatus, in enum order."""

VERBS: Final = ("cancel", "pause", "resume", "set-speed", "complete", "finalize", "dismiss")
"""JobVerb in QEMU 7.2 (``change`` came in 8.2 and is not exposed)."""

JOB_TYPES: Final = ("commit", "stream", "mirror", "backup", "create", "amend", "snapshot-load",
                    "snapshot-save", "snapshot-delete")
"""JobType in QEMU 7.2; plug-in job types are appended to it at run time."""

BLOCK_JOB_TYPES: Final = frozenset(("commit", "stream", "mirror", "backup"))
"""The job types that are block jobs (query-block-jobs, block-job-*, BLOCK_JOB_* events)."""

#                  U  C  R  P  Y  S  W  D  X  E  N
_STT: Final = (
    "0 1 0 0 0 0 0 0 0 0 0",  # undefined
    "0 0 1 0 0 0 0 0 1 0 1",  # created
    "0 0 0 1 1 0 1 0 1 0 0",  # running
    "0 0 1 0 0 0 0 0 0 0 0",  # paused
    "0 0 0 0 0 1 1 0 1 0 0",  # ready
    "0 0 0 0 1 0 0 0 0 0 0",  # standby
    "0 0 0 0 0 0 0 1 1 0 0",  # waiting
    "0 0 0 0 0 0 0 0 1 1 0",  # pending
    "0 0 0 0 0 0 0 0 1 1 0",  # aborting
    "0 0 0 0 0 0 0 0 0 0 1",  # concluded
    "0 0 0 0 0 0 0 0 0 0 0",  # null
)

#                  U  C  R  P  Y  S  W  D  X  E  N
_VERB_TABLE: Final = (
    "0 1 1 1 1 1 1 1 0 0 0",  # cancel
    "0 1 1 1 1 1 0 0 0 0 0",  # pause
    "0 1 1 1 1 1 0 0 0 0 0",  # resume
    "0 1 1 1 1 1 0 0 0 0 0",  # set-speed
    "0 0 0 0 1 1 0 0 0 0 0",  # complete
    "0 0 0 0 0 0 0 1 0 0 0",  # finalize
    "0 0 0 0 0 0 0 0 0 1 0",  # dismiss
)


def _parse(rows: tuple[str, ...], names: tuple[str, ...]) -> dict[str, frozenset[str]]:
    return {name: frozenset(s for s, bit in zip(STATUSES, row.split(), strict=True) if bit == "1")
            for name, row in zip(names, rows, strict=True)}


TRANSITIONS: Final = _parse(_STT, STATUSES)
"""status -> the statuses it may move to."""

VERB_ALLOWED: Final = _parse(_VERB_TABLE, VERBS)
"""verb -> the statuses in which it is accepted."""

COMPLETED_STATUSES: Final = frozenset(("waiting", "pending", "aborting", "concluded", "null"))
"""job_is_completed(): the job's own work is over."""
