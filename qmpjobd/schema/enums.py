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


class MigrationStatus(StrEnum):
    """QAPI MigrationStatus of QEMU 7.2."""

    NONE = "none"
    SETUP = "setup"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    ACTIVE = "active"
    POSTCOPY_ACTIVE = "postcopy-active"
    POSTCOPY_PAUSED = "postcopy-paused"
    POSTCOPY_RECOVER = "postcopy-recover"
    COMPLETED = "completed"
    FAILED = "failed"
    COLO = "colo"
    PRE_SWITCHOVER = "pre-switchover"
    DEVICE = "device"
    WAIT_UNPLUG = "wait-unplug"


class COLOMessage(StrEnum):
    """QAPI COLOMessage; a member's position is its index on the wire (colo/wire.py)."""

    CHECKPOINT_READY = "checkpoint-ready"
    CHECKPOINT_REQUEST = "checkpoint-request"
    CHECKPOINT_REPLY = "checkpoint-reply"
    VMSTATE_SEND = "vmstate-send"
    VMSTATE_SIZE = "vmstate-size"
    VMSTATE_RECEIVED = "vmstate-received"
    VMSTATE_LOADED = "vmstate-loaded"


class COLOMode(StrEnum):
    """QAPI COLOMode."""

    NONE = "none"
    PRIMARY = "primary"
    SECONDARY = "secondary"


class FailoverStatus(StrEnum):
    """QAPI FailoverStatus (QEMU's colo-failover.c)."""

    NONE = "none"
    REQUIRE = "require"
    ACTIVE = "active"
    COMPLETED = "completed"
    RELAUNCH = "relaunch"


class COLOExitReason(StrEnum):
    """QAPI COLOExitReason."""

    NONE = "none"
    REQUEST = "request"
    ERROR = "error"
    PROCESSING = "processing"


class XColoFaultPhase(StrEnum):
    """Checkpoint phases where a fault can be injected, in protocol order (``ram`` and
    ``blob`` are mid-transfer)."""

    REQUEST = "request"
    REPLY = "reply"
    VMSTATE_SEND = "vmstate-send"
    RAM = "ram"
    VMSTATE_SIZE = "vmstate-size"
    BLOB = "blob"
    RECEIVED = "received"
    APPLY = "apply"
    LOADED = "loaded"


class XColoFaultAction(StrEnum):
    """cut: shut the link down; hold: stop until cleared; delay: sleep; corrupt: send an
    invalid message index; misorder: send a valid but unexpected message; none: clear."""

    CUT = "cut"
    HOLD = "hold"
    DELAY = "delay"
    CORRUPT = "corrupt"
    MISORDER = "misorder"
    NONE = "none"
