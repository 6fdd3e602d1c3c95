"""Enums that code branches on, declared once as typed values (QAPI's job.json for 7.2).

The schema declares its enums from these classes, and the code imports the same members, so a
value that is valid on the wire and a value the code compares against cannot drift apart.
Members are ``str`` (``StrEnum``): they compare equal to, and encode as, their QAPI names.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """QAPI JobStatus, in QEMU 7.2's order (the order of the job state tables)."""

    UNDEFINED = "undefined"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    READY = "ready"
    STANDBY = "standby"
    WAITING = "waiting"
    PENDING = "pending"
    ABORTING = "aborting"
    CONCLUDED = "concluded"
    NULL = "null"


class JobVerb(StrEnum):
    """QAPI JobVerb of QEMU 7.2 (``change`` came in 8.2 and is not exposed)."""

    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    SET_SPEED = "set-speed"
    COMPLETE = "complete"
    DISMISS = "dismiss"
    FINALIZE = "finalize"


class JobType(StrEnum):
    """QAPI JobType of QEMU 7.2; plug-in job types extend the schema's enum at run time
    (:meth:`qmpjobd.schema.model.Schema.extend_enum`), not this class."""

    COMMIT = "commit"
    STREAM = "stream"
    MIRROR = "mirror"
    BACKUP = "backup"
    CREATE = "create"
    AMEND = "amend"
    SNAPSHOT_LOAD = "snapshot-load"
    SNAPSHOT_SAVE = "snapshot-save"
    SNAPSHOT_DELETE = "snapshot-delete"
