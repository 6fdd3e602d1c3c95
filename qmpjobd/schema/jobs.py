"""Declarations of the job commands, events and types (qapi/job.json, block-core.json; 7.2)."""

from __future__ import annotations

from .enums import JobStatus, JobType, JobVerb
from .model import Schema


def declare(s: Schema) -> None:
    """Add query-jobs, job-*, query-block-jobs, block-job-* and their events."""
    s.enum("JobType", JobType)
    s.enum("JobStatus", JobStatus)
    s.enum("JobVerb", JobVerb)
    s.event("JOB_STATUS_CHANGE", {"id": "str", "status": "JobStatus"})
    for verb in ("pause", "resume", "cancel", "complete", "dismiss", "finalize"):
        s.command(f"job-{verb}", {"id": "str"})
    s.struct("JobInfo", {"id": "str", "type": "JobType", "status": "JobStatus",
                         "current-progress": "int", "total-progress": "int", "*error": "str"})
    s.command("query-jobs", returns=["JobInfo"])

    s.enum("BlockDeviceIoStatus", ["ok", "failed", "nospace"])
    s.enum("IoOperationType", ["read", "write"])
    s.enum("BlockErrorAction", ["ignore", "report", "stop"])
    s.struct("BlockJobInfo", {"type": "str", "device": "str", "len": "int", "offset": "int",
                              "busy": "bool", "paused": "bool", "speed": "int",
                              "io-status": "BlockDeviceIoStatus", "ready": "bool",
                              "status": "JobStatus", "auto-finalize": "bool",
                              "auto-dismiss": "bool", "*error": "str"})
    s.command("query-block-jobs", returns=["BlockJobInfo"])
    s.command("block-job-set-speed", {"device": "str", "speed": "int"})
    s.command("block-job-cancel", {"device": "str", "*force": "bool"})
    s.command("block-job-pause", {"device": "str"})
    s.command("block-job-resume", {"device": "str"})
    s.command("block-job-complete", {"device": "str"})
    s.command("block-job-dismiss", {"id": "str"})
    s.command("block-job-finalize", {"id": "str"})
    s.event("BLOCK_JOB_COMPLETED", {"type": "JobType", "device": "str", "len": "int",
                                    "offset": "int", "speed": "int", "*error": "str"})
    s.event("BLOCK_JOB_CANCELLED", {"type": "JobType", "device": "str", "len": "int",
                                    "offset": "int", "speed": "int"})
    s.event("BLOCK_JOB_ERROR", {"device": "str", "operation": "IoOperationType",
                                "action": "BlockErrorAction"})
    s.event("BLOCK_JOB_READY", {"type": "JobType", "device": "str", "len": "int",
                                "offset": "int", "speed": "int"})
    s.event("BLOCK_JOB_PENDING", {"type": "JobType", "id": "str"})
    # qmpjobd's generic job events, only for clients that enable x-job-events
    s.event("JOB_READY", {"id": "str", "type": "JobType"})
    s.event("JOB_COMPLETED", {"id": "str", "type": "JobType"})
    s.event("JOB_CANCELLED", {"id": "str", "type": "JobType", "error": "str"})
    s.event("JOB_ERROR", {"id": "str", "type": "JobType", "error": "str"})
