"""The job commands (query-jobs, job-*, query-block-jobs, block-job-*) and the plug-in API."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from ..protocol.errors import QMPError
from ..protocol.session import Session
from ..schema import Registry
from ..schema.model import TypeRef
from .core import JOB_EVENTS, Job, JobRegistry


def job_info(job: Job) -> dict[str, Any]:
    """JobInfo, keys in QEMU's output order."""
    out: dict[str, Any] = {"current-progress": job.current_progress, "status": job.status,
                           "total-progress": job.total_progress, "type": job.job_type,
                           "id": job.id}
    if job.ret:
        out["error"] = job.error
    return out


def block_job_info(job: Job) -> dict[str, Any]:
    """BlockJobInfo, keys in QEMU's output order."""
    out: dict[str, Any] = {"auto-finalize": job.auto_finalize, "io-status": job.io_status,
                           "device": job.id, "auto-dismiss": job.auto_dismiss,
                           "busy": job.busy, "len": job.total_progress,
                           "offset": job.current_progress, "status": job.status,
                           "paused": job.pause_count > 0, "speed": job.speed,
                           "ready": job.status in ("ready", "standby"), "type": job.job_type}
    if job.ret:
        out["error"] = job.error
    return out


def register(registry: Registry, jobs: JobRegistry) -> None:
    """Attach the job command handlers."""
    def on(name: str, fn: Callable[[dict[str, Any]], Any]) -> None:
        registry.register(name, lambda args, session: fn(args))

    # jobs QEMU does not have (COLO) are listed only to clients that enabled x-job-events
    registry.register("query-jobs", lambda args, session: [
        job_info(j) for j in jobs.jobs if j.qemu_visible or JOB_EVENTS in session.enabled])
    on("job-pause", lambda a: jobs.user_pause(jobs.get(a["id"])))
    on("job-resume", lambda a: jobs.user_resume(jobs.get(a["id"])))
    on("job-cancel", lambda a: jobs.user_cancel(jobs.get(a["id"]), True))
    on("job-complete", lambda a: jobs.user_complete(jobs.get(a["id"])))
    on("job-finalize", lambda a: jobs.user_finalize(jobs.get(a["id"])))
    on("job-dismiss", lambda a: jobs.user_dismiss(jobs.get(a["id"])))

    on("query-block-jobs", lambda a: [block_job_info(j) for j in jobs.jobs if j.is_block_job])
    on("block-job-pause", lambda a: jobs.user_pause(jobs.get_block(a["device"])))
    on("block-job-resume", lambda a: jobs.user_resume(jobs.get_block(a["device"])))
    on("block-job-complete", lambda a: jobs.user_complete(jobs.get_block(a["device"])))
    on("block-job-finalize", lambda a: jobs.user_finalize(jobs.get_block(a["id"])))
    on("block-job-dismiss", lambda a: jobs.user_dismiss(jobs.get_block(a["id"])))
    on("block-job-set-speed",
       lambda a: jobs.set_speed(jobs.get_block(a["device"]), a["speed"]))

    def block_job_cancel(args: dict[str, Any]) -> None:
        job = jobs.get_block(args["device"])
        force = args.get("force", False)
        if job.user_paused and not force:
            raise QMPError(f"The block job for device '{job.id}' is currently paused")
        jobs.user_cancel(job, force)

    on("block-job-cancel", block_job_cancel)


_STARTERS: weakref.WeakKeyDictionary[Registry, dict[str, str]] = weakref.WeakKeyDictionary()
"""Per registry: plug-in job type -> the command that starts it (one command per type)."""

JobFactory = Callable[[dict[str, Any]], Job]
"""Builds a job from the validated arguments of its start command."""


def add_job_command(registry: Registry, jobs: JobRegistry, name: str, job_type: str,
                    data: dict[str, TypeRef], factory: JobFactory) -> None:
    """Declare and implement a QMP command that starts a plug-in job.

    The command takes ``job-id`` (required), optional ``auto-finalize`` and ``auto-dismiss``,
    plus ``data``; ``factory`` receives all validated arguments and returns the Job, which is
    created and started before the reply (so ``created`` and ``running`` precede it).
    ``job_type`` is added to the JobType enum if QEMU 7.2 does not have it.
    """
    schema = registry.schema
    starters = _STARTERS.setdefault(registry, {})
    if job_type in starters:
        raise ValueError(f"job type '{job_type}' is already registered (its command is "
                         f"'{starters[job_type]}'); a plug-in loaded twice?")
    if name in schema.commands:
        raise ValueError(f"command '{name}' already exists")
    starters[job_type] = name
    schema.extend_enum("JobType", job_type)
    schema.command(name, {"job-id": "str", "*auto-finalize": "bool", "*auto-dismiss": "bool",
                          **data})

    def start(args: dict[str, Any], session: Session) -> None:
        job = factory(args)
        job.auto_finalize = args.get("auto-finalize", True)
        job.auto_dismiss = args.get("auto-dismiss", True)
        jobs.create(job)
        jobs.start(job)

    registry.register(name, start)
