"""QEMU 7.2's job state machine as literal tables (job.c ``JobSTT`` and ``JobVerbTable``).

Rows and columns follow the JobStatus enum order; ``1`` means allowed.  The statuses, verbs and
types are the schema's own (schema/enums.py).
"""

from __future__ import annotations

from typing import Final

from ..schema.enums import JobStatus, JobType, JobVerb

STATUSES: Final = tuple(JobStatus)
"""JobStatus, in enum order (the rows and columns below)."""

VERBS: Final = (JobVerb.CANCEL, JobVerb.PAUSE, JobVerb.RESUME, JobVerb.SET_SPEED,
                JobVerb.COMPLETE, JobVerb.FINALIZE, JobVerb.DISMISS)
"""JobVerb, in the order of the rows of the verb table below (job.c's JobVerbTable)."""

JOB_TYPES: Final = tuple(JobType)
"""JobType in QEMU 7.2; plug-in job types are added to the schema's enum at run time."""

BLOCK_JOB_TYPES: Final = frozenset((JobType.COMMIT, JobType.STREAM, JobType.MIRROR,
                                    JobType.BACKUP))
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
    """Each row's name -> the statuses whose column holds a 1."""
    return {name: frozenset(s for s, bit in zip(STATUSES, row.split(), strict=True) if bit == "1")
            for name, row in zip(names, rows, strict=True)}


TRANSITIONS: Final = _parse(_STT, STATUSES)
"""status -> the statuses it may move to."""

VERB_ALLOWED: Final = _parse(_VERB_TABLE, VERBS)
"""verb -> the statuses in which it is accepted."""

COMPLETED_STATUSES: Final = frozenset((JobStatus.WAITING, JobStatus.PENDING, JobStatus.ABORTING,
                                       JobStatus.CONCLUDED, JobStatus.NULL))
"""job_is_completed(): the job's own work is over."""
