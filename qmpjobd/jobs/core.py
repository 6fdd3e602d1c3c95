"""Jobs with QEMU 7.2's semantics: the Job base class, transactions and the registry.

The model follows QEMU 7.2's job.c and blockjob.c: a pause counter plus a user-paused flag, soft
and forced cancel, deferred completion, transactions processed newest member first,
auto-finalize and auto-dismiss.  Every status change goes through
:meth:`JobRegistry.transition`, which checks the transition table and emits
JOB_STATUS_CHANGE.  Each job's work runs as an asyncio task and reacts to pause and cancel at
its pause points; its blocking I/O runs through :meth:`Job.io` in worker threads that a
forced cancel abandons (a stuck write never holds a job or the daemon).  Commands that only
signal a job (pause, resume, cancel, complete, set-speed) reply first, and the job's
reaction follows as events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from ..errors import QmpjobdError
from ..protocol.errors import QMPError
from ..schema import EventSink
from .tables import BLOCK_JOB_TYPES, COMPLETED_STATUSES, TRANSITIONS, VERB_ALLOWED
from .workers import WORKERS

T = TypeVar("T")

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"[A-Za-z][A-Za-z0-9._-]*\Z")
CANCELED = "Operation canceled"
SHUTTING_DOWN = "qmpjobd is shutting down: no new jobs are accepted"
DEFAULT_SHUTDOWN_GRACE = 5.0
JOB_EVENTS = "x-job-events"
"""The capability that turns on the generic JOB_* events."""


class Holdable(Protocol):
    """Something a worker thread uses that must not be released under it (a file)."""

    def hold(self) -> None: ...

    def release(self) -> None: ...


def _holding(fn: Callable[..., T], args: tuple[Any, ...],
             hold: Sequence[Holdable]) -> Callable[[], T]:
    """``fn(*args)`` with each of ``hold`` held from now until the call returns."""
    for h in hold:
        h.hold()

    def call() -> T:
        try:
            return fn(*args)
        finally:
            for h in hold:
                h.release()
    return call


class JobError(QmpjobdError):
    """Raised by a job's ``run`` to fail it; the message becomes the job's ``error``."""


class JobCancelled(QmpjobdError):
    """Raised inside ``run`` at a pause point once the job has been force-cancelled."""


class Txn:
    """A job transaction: members listed newest first, as QEMU's JobTxn."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.aborting = False


class RateLimit:
    """QEMU's RateLimit (include/qemu/ratelimit.h): 100 ms slices with a quota of
    ``speed`` x 0.1 s; once a slice's quota is used up, the delay stretches the slice by the
    excess as a fraction of slices, so the average rate is ``speed`` for any chunk size."""

    SLICE = 0.1
    """BLOCK_JOB_SLICE_TIME, in seconds."""

    def __init__(self) -> None:
        self.quota = 0.0
        self.slice_start = 0.0
        self.slice_end = 0.0
        self.dispatched = 0.0

    def set_speed(self, speed: int) -> None:
        """ratelimit_set_speed(): 0 turns throttling off."""
        self.quota = max(speed * self.SLICE, 1.0) if speed > 0 else 0.0

    def account(self, n: int, now: float) -> float:
        """ratelimit_calculate_delay(): add ``n`` bytes; seconds to wait (0: go on)."""
        if not self.quota:
            return 0.0
        if self.slice_end < now:  # the (possibly stretched) slice is over: a new one
            self.slice_start, self.slice_end, self.dispatched = now, now + self.SLICE, 0.0
        self.dispatched += n
        if self.dispatched < self.quota:
            return 0.0
        self.slice_end = self.slice_start + self.dispatched / self.quota * self.SLICE
        return self.slice_end - now


class Job:
    """Base class of every job type.  Subclass it and implement :meth:`run`.

    In ``run``: call :meth:`pause_point` (or :meth:`sleep`, :meth:`rate_limit`) often, so that
    pause and cancel take effect; report progress with :meth:`set_progress`; raise
    :class:`JobError` to fail.  A job that keeps working until told to finish (like a mirror)
    calls :meth:`set_ready` and overrides :meth:`complete`.
    """

    job_type: ClassVar[str] = "create"
    """The JobType reported in query-jobs and events."""

    def __init__(self, job_id: str, *, auto_finalize: bool = True, auto_dismiss: bool = True,
                 speed: int = 0) -> None:
        self.id = job_id
        self.auto_finalize = auto_finalize
        self.auto_dismiss = auto_dismiss
        self.limit = RateLimit()
        self._speed = 0
        self.speed = speed
        self.status = "undefined"
        self.current_progress = 0
        self.total_progress = 0
        self.pause_count = 1  # created paused; start() drops it to 0
        self.user_paused = False
        self.cancelled = False
        self.force_cancel = False
        self.deferred = False
        self.started = False
        self.busy = False
        self.ret = 0
        self.error: str | None = None
        self.io_status = "ok"
        self.txn = Txn()
        self.registry: JobRegistry | None = None
        self._wake = asyncio.Event()
        """Set by wake(); created here so that a wake-up sent before the job waits is kept."""
        self._task: asyncio.Task[None] | None = None
        self._ready_sent = False
        self.idle_until_cancel = False
        """Set by a job that only waits to be cancelled, with nothing in flight (backup sync
        none, QEMU's job_yield loop): a cancel ends it before the command replies, as QEMU
        re-enters such a job at once."""

    # -- what a job type implements --------------------------------------------------------

    async def run(self) -> None:
        """Do the job's work.  Return normally on success."""
        raise NotImplementedError

    def cancel_mode(self, force: bool) -> bool:
        """Decide whether a cancel request is forced (QEMU's driver ``cancel`` hook)."""
        return True

    def complete(self) -> None:
        """job-complete on a ready job; raise QMPError to refuse.  Default: not completable."""
        raise QMPError(f"The active block job '{self.id}' cannot be completed")

    qemu_visible: ClassVar[bool] = True
    """False for job types QEMU does not have as jobs (COLO): their JOB_STATUS_CHANGE goes
    only to clients that enabled x-job-events, so a QEMU client sees no difference."""

    can_complete: ClassVar[bool] = False
    """Whether the type implements completion (mirror-like jobs)."""

    def prepare(self) -> None:
        """First finalization step (may raise JobError to abort the transaction)."""

    def commit(self) -> None:
        """Apply the job's result (success)."""

    def abort(self) -> None:
        """Undo the job's effects (failure or cancel)."""

    def clean(self) -> None:
        """Release resources, after commit or abort."""

    # -- helpers for run() -----------------------------------------------------------------

    @property
    def is_block_job(self) -> bool:
        """Block jobs appear in query-block-jobs and emit BLOCK_JOB_* events."""
        return self.job_type in BLOCK_JOB_TYPES

    @property
    def is_cancelled(self) -> bool:
        """Force-cancelled: the job should stop (job_is_cancelled)."""
        return self.cancelled and self.force_cancel

    @property
    def should_pause(self) -> bool:
        """A pause has been requested and not yet released."""
        return self.pause_count > 0

    def set_progress(self, current: int, total: int | None = None) -> None:
        """Report progress (arbitrary units; only the ratio matters)."""
        self.current_progress = current
        if total is not None:
            self.total_progress = total

    def set_ready(self) -> None:
        """Enter ``ready`` (source and target in sync); BLOCK_JOB_READY is sent once."""
        reg = self._reg()
        reg.transition(self, "ready")
        if not self._ready_sent:
            self._ready_sent = True
            if self.is_block_job:
                reg.events.emit("BLOCK_JOB_READY", self.block_event_data())
            reg.events.emit("JOB_READY", {"id": self.id, "type": self.job_type}, JOB_EVENTS)

    async def pause_point(self) -> None:
        """Pause here while a pause is requested; raise JobCancelled once force-cancelled."""
        if self.should_pause and not self.is_cancelled:
            reg = self._reg()
            before = self.status
            reg.transition(self, "standby" if before == "ready" else "paused")
            self.busy = False
            while self.should_pause and not self.is_cancelled:
                await self._wait()
            self.busy = True
            reg.transition(self, before)
        if self.is_cancelled:
            raise JobCancelled

    async def sleep(self, seconds: float) -> None:
        """Sleep, waking early for cancel, pause or a speed change; then a pause point."""
        if not self.is_cancelled and not self.should_pause:
            self.busy = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait(), seconds)
            self.busy = True
        await self.pause_point()

    async def rate_limit(self, nbytes: int) -> None:
        """``nbytes`` of work done: account for them under ``speed`` and sleep as long as the
        limit says (block_job_ratelimit_processed_bytes + block_job_ratelimit_sleep)."""
        self.limit.account(nbytes, time.monotonic())
        while True:  # the delay is recomputed after every (possibly interrupted) sleep
            delay = self.limit.account(0, time.monotonic())
            await self.sleep(delay)
            if not delay or self.is_cancelled:
                return

    async def throttle(self) -> None:
        """Before issuing more work: wait while the current slice's quota is used up (the
        check block-copy makes before each chunk); a pause point."""
        while (delay := self.limit.account(0, time.monotonic())) > 0:
            await self.sleep(delay)
        await self.pause_point()

    def dispatched(self, nbytes: int) -> None:
        """Account for ``nbytes`` about to be issued (block-copy charges a chunk up front)."""
        self.limit.account(nbytes, time.monotonic())

    @property
    def speed(self) -> int:
        """The rate limit in bytes per second (0: none)."""
        return self._speed

    @speed.setter
    def speed(self, value: int) -> None:
        self._speed = value
        self.limit.set_speed(value)

    async def io(self, fn: Callable[..., T], *args: Any, hold: Sequence[Holdable] = ()) -> T:
        """Run blocking ``fn(*args)`` in a worker thread and return its result.

        A forced cancel ends the wait at once (JobCancelled), even when the call is stuck
        (a frozen file system): the thread is abandoned and its result ignored.  Each of
        ``hold`` is held until the call really returns, so that what it uses (a file
        descriptor) is not closed under it.
        """
        fut = WORKERS.submit(_holding(fn, args, hold))
        loop = asyncio.get_running_loop()
        while True:
            if self.is_cancelled:
                fut.cancel()
                raise JobCancelled
            waiter = loop.create_task(self._wait())
            try:
                await asyncio.wait((fut, waiter), return_when=asyncio.FIRST_COMPLETED)
            except BaseException:  # the task itself is cancelled: drop the call's result
                fut.cancel()
                raise
            finally:
                waiter.cancel()
            if fut.done():
                return fut.result()

    def io_background(self, fn: Callable[..., Any], *args: Any,
                      hold: Sequence[Holdable] = ()) -> None:
        """Start blocking ``fn(*args)`` in a worker thread without waiting for it (a
        failure is logged); ``hold`` as for :meth:`io`."""
        fut = WORKERS.submit(_holding(fn, args, hold))

        def done(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.warning("job %s: background I/O failed: %s", self.id, f.exception())
        fut.add_done_callback(done)

    def drain_rank(self) -> int:
        """Where the job comes in a drain of the whole block layer (its nodes' age)."""
        return sys.maxsize

    def block_event_data(self) -> dict[str, Any]:
        """``device, len, offset, speed, type`` as in BLOCK_JOB_* events."""
        return {"device": self.id, "len": self.total_progress, "offset": self.current_progress,
                "speed": self.speed, "type": self.job_type}

    def wake(self) -> None:
        """Wake the job if it waits at a pause point or sleeps."""
        self._wake.set()

    async def _wait(self) -> None:
        await self._wake.wait()
        self._wake.clear()

    def _reg(self) -> JobRegistry:
        assert self.registry is not None, "job is not registered"
        return self.registry


class JobRegistry:
    """All jobs with an id, newest first; the one place that changes a job's status."""

    def __init__(self, events: EventSink) -> None:
        self.events = events
        self.jobs: list[Job] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._aborts: set[asyncio.Task[None]] = set()
        self.shutting_down = False
        self.shutdown_grace = DEFAULT_SHUTDOWN_GRACE
        """Seconds all jobs together get to end at quit or SIGTERM (--shutdown-grace)."""

    # -- lookup and creation ---------------------------------------------------------------

    def find(self, job_id: str) -> Job | None:
        """The job with this id, concluded ones included."""
        for job in self.jobs:
            if job.id == job_id:
                return job
        return None

    def get(self, job_id: str) -> Job:
        """job-* lookup: GenericError ``Job not found``."""
        job = self.find(job_id)
        if job is None:
            raise QMPError("Job not found")
        return job

    def get_block(self, job_id: str) -> Job:
        """block-job-* lookup: DeviceNotActive ``Block job '<id>' not found``."""
        job = self.find(job_id)
        if job is None or not job.is_block_job:
            raise QMPError(f"Block job '{job_id}' not found", "DeviceNotActive")
        return job

    def create(self, job: Job, txn: Txn | None = None) -> None:
        """Register a new job in ``created`` (job_create)."""
        self.check_accepting()
        if not _JOB_ID.match(job.id):
            raise QMPError(f"Invalid job ID '{job.id}'")
        if self.find(job.id) is not None:
            raise QMPError(f"Job ID '{job.id}' already in use")
        job.registry = self
        if txn is not None:
            job.txn = txn
        job.txn.jobs.insert(0, job)
        self.jobs.insert(0, job)
        self.transition(job, "created")
        if job.speed < 0:
            self.dismiss_now(job)
            raise QMPError("Parameter 'speed' expects a non-negative value")

    def start(self, job: Job) -> None:
        """Start a created job: ``running``, and its work as a task (job_start)."""
        job.started = True
        job.busy = True
        job.pause_count -= 1
        self.transition(job, "running")
        task = asyncio.get_running_loop().create_task(self._drive(job), name=f"job {job.id}")
        job._task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the state machine -----------------------------------------------------------------

    def transition(self, job: Job, status: str) -> None:
        """Apply a transition from the table; JOB_STATUS_CHANGE only on a real change."""
        if status not in TRANSITIONS[job.status]:
            raise AssertionError(f"job {job.id}: illegal transition {job.status} -> {status}")
        if status == job.status:
            return
        job.status = status
        self.events.emit("JOB_STATUS_CHANGE", {"status": status, "id": job.id},
                         None if job.qemu_visible else JOB_EVENTS)

    @staticmethod
    def check_verb(job: Job, verb: str) -> None:
        """Refuse a verb the verb table does not allow in the job's status."""
        if job.status not in VERB_ALLOWED[verb]:
            raise QMPError(f"Job '{job.id}' in state '{job.status}' cannot accept command "
                           f"verb '{verb}'")

    # -- verbs -----------------------------------------------------------------------------

    def user_pause(self, job: Job) -> None:
        """job-pause / block-job-pause."""
        self.check_verb(job, "pause")
        if job.user_paused:
            raise QMPError("Job is already paused")
        job.user_paused = True
        self.pause(job)

    def user_resume(self, job: Job) -> None:
        """job-resume / block-job-resume (the 'not paused' check comes before the verb)."""
        if not job.user_paused or job.pause_count <= 0:
            raise QMPError("Can't resume a job that was not paused")
        self.check_verb(job, "resume")
        job.io_status = "ok"
        job.user_paused = False
        self.resume(job)

    def pause(self, job: Job) -> None:
        """An internal pause (counted, no user flag)."""
        job.pause_count += 1
        job.wake()

    def resume(self, job: Job) -> None:
        """Release one pause; the job continues when none is left."""
        job.pause_count -= 1
        if job.pause_count == 0:
            job.wake()

    def user_cancel(self, job: Job, force: bool) -> None:
        """job-cancel (always forced) / block-job-cancel."""
        self.check_verb(job, "cancel")
        self.cancel(job, force)

    def cancel(self, job: Job, force: bool) -> None:
        """job_cancel(): ask the job to stop, or abort its transaction if its work is done."""
        if job.status == "concluded":
            self.dismiss_now(job)
            return
        self._cancel_async(job, force)
        if not job.started:
            self._completed(job)
        elif job.idle_until_cancel and job.is_cancelled and not job.deferred:
            self.end_now(job)
        elif job.deferred:
            if job.is_cancelled:
                self._txn_abort(job)
        else:
            job.wake()

    def end_now(self, job: Job) -> None:
        """Complete a started job now, before the command at hand replies: its work is over
        before its coroutine would run again (it failed at once, or it only waited to be
        cancelled), as QEMU runs such a job to its end synchronously."""
        if job._task is not None:
            job._task.cancel()  # its _drive ends without completing the job again
        job.busy = False
        job.deferred = True
        self._completed(job)

    def _cancel_async(self, job: Job, force: bool) -> None:
        force = job.cancel_mode(force)
        if job.user_paused:
            job.user_paused = False
            job.io_status = "ok"
            job.pause_count -= 1
        if force or not job.deferred:  # a soft cancel of a finished job is ignored
            job.cancelled = True
            job.force_cancel |= force

    def user_complete(self, job: Job) -> None:
        """job-complete / block-job-complete."""
        self.check_verb(job, "complete")
        if job.cancelled or not job.can_complete:
            raise QMPError(f"The active block job '{job.id}' cannot be completed")
        job.complete()
        job.wake()

    def set_speed(self, job: Job, speed: int) -> None:
        """block-job-set-speed."""
        self.check_verb(job, "set-speed")
        if speed < 0:
            raise QMPError("Parameter 'speed' expects a non-negative value")
        job.speed = speed
        job.wake()

    def user_finalize(self, job: Job) -> None:
        """job-finalize / block-job-finalize: finalize the whole transaction."""
        self.check_verb(job, "finalize")
        self._do_finalize(job)

    def user_dismiss(self, job: Job) -> None:
        """job-dismiss / block-job-dismiss."""
        self.check_verb(job, "dismiss")
        self.dismiss_now(job)

    def dismiss_now(self, job: Job) -> None:
        """job_do_dismiss(): ``null`` and gone."""
        job.busy = False
        job.deferred = True
        if job in job.txn.jobs:
            job.txn.jobs.remove(job)
        self.transition(job, "null")
        if job in self.jobs:
            self.jobs.remove(job)

    def quiesce(self, only: Any = None, oldest_first: bool = False,
                key: Callable[[Job], int] | None = None) -> list[Job]:
        """What a block-layer drain shows: running block jobs (all, or those ``only``
        accepts) go ``paused`` (READY: ``standby``), newest first unless ``oldest_first``
        (or in ``key`` order); user-paused jobs do not change.  Returns the jobs to
        :meth:`release` afterwards."""
        held = [j for j in (reversed(self.jobs) if oldest_first else self.jobs)
                if j.is_block_job and j.started and j.pause_count == 0
                and j.status in ("running", "ready") and (only is None or only(j))]
        if key is not None:
            held.sort(key=key)
        for job in held:
            self.transition(job, "standby" if job.status == "ready" else "paused")
        return held

    def release(self, held: list[Job]) -> None:
        """End a drain: the held jobs go back to ``running`` (or ``ready``), in order."""
        for job in held:
            self.transition(job, "ready" if job.status == "standby" else "running")

    def drain(self) -> None:
        """A complete drain (blockdev-backup): every running block job flickers, in the
        order bdrv_drain_all reaches them (their nodes' age, :meth:`Job.drain_rank`).  In
        QEMU a job busy with I/O at that moment pauses only after it, which qmpjobd, whose
        jobs pause at once, does not reproduce."""
        self.release(self.quiesce(key=lambda j: j.drain_rank()))

    # -- completion ------------------------------------------------------------------------

    async def _drive(self, job: Job) -> None:
        try:
            await job.run()
        except JobCancelled:
            pass
        except JobError as e:
            job.ret, job.error = -1, str(e) or "Input/output error"
        except Exception as e:  # a bug in a job type must not take the daemon down
            log.exception("job %s failed", job.id)
            job.ret, job.error = -1, f"{type(e).__name__}: {e}"
        job.busy = False
        job.deferred = True
        self._completed(job)

    def _update_rc(self, job: Job) -> None:
        if not job.ret and job.is_cancelled:
            job.ret = -1
            job.error = job.error or CANCELED
        if job.ret:
            job.error = job.error or "Input/output error"
            self.transition(job, "aborting")

    def _completed(self, job: Job) -> None:
        self._update_rc(job)
        if job.ret:
            self._txn_abort(job)
        else:
            self._txn_success(job)

    def _txn_success(self, job: Job) -> None:
        self.transition(job, "waiting")
        txn = job.txn
        if any(j.status not in COMPLETED_STATUSES for j in txn.jobs):
            return
        for j in list(txn.jobs):
            self.transition(j, "pending")
            if not j.auto_finalize and j.is_block_job:
                self.events.emit("BLOCK_JOB_PENDING", {"type": j.job_type, "id": j.id})
        if all(j.auto_finalize for j in txn.jobs):
            self._do_finalize(job)

    def _do_finalize(self, job: Job) -> None:
        txn = job.txn
        for j in list(txn.jobs):
            if j.ret == 0:
                try:
                    j.prepare()
                except JobError as e:
                    j.ret, j.error = -1, str(e)
                    self._update_rc(j)
                    self._txn_abort(job)
                    return
        for j in list(txn.jobs):
            self._finalize_single(j)

    def _finalize_single(self, job: Job) -> None:
        self._update_rc(job)
        try:
            if job.ret == 0:
                job.commit()
            else:
                job.abort()
            job.clean()
        except Exception:
            log.exception("job %s: finalization hook failed", job.id)
        if job.started and job.is_block_job:
            data = job.block_event_data()
            if job.is_cancelled:
                self.events.emit("BLOCK_JOB_CANCELLED", data)
            else:
                if job.ret:
                    data["error"] = job.error
                self.events.emit("BLOCK_JOB_COMPLETED", data)
        if job.started:
            ident = {"id": job.id, "type": job.job_type}
            if job.is_cancelled:
                self.events.emit("JOB_CANCELLED", {**ident, "error": job.error}, JOB_EVENTS)
            elif job.ret:
                self.events.emit("JOB_ERROR", {**ident, "error": job.error}, JOB_EVENTS)
            else:
                self.events.emit("JOB_COMPLETED", ident, JOB_EVENTS)
        if job in job.txn.jobs:
            job.txn.jobs.remove(job)
        self.transition(job, "concluded")
        if job.auto_dismiss or not job.started:
            self.dismiss_now(job)

    def _txn_abort(self, job: Job) -> None:
        """job_completed_txn_abort(): every other member is cancelled (forced); then members
        newest first are finalized, each still running one after it has been woken and has
        ended.  Members are only woken in their turn, so the order of the events does not
        depend on what the other jobs are doing at that moment (as in QEMU 7.2)."""
        txn = job.txn
        if txn.aborting:
            return
        txn.aborting = True
        for other in list(txn.jobs):
            if other is not job:
                self._cancel_async(other, True)
        while txn.jobs:
            other = txn.jobs[0]
            if self._still_running(other):
                task = asyncio.get_running_loop().create_task(self._abort_async(txn))
                for pool in (self._tasks, self._aborts):
                    pool.add(task)
                    task.add_done_callback(pool.discard)
                return
            self._abort_one(other)

    @staticmethod
    def _still_running(job: Job) -> bool:
        return (job.started and job.status not in COMPLETED_STATUSES and job._task is not None
                and not job._task.done())

    async def _abort_async(self, txn: Txn) -> None:
        """The rest of :meth:`_txn_abort` from the first member still running: each such
        member is woken and driven to its end (it then shows ``aborting``) before it is
        finalized (job_finish_sync)."""
        while txn.jobs:
            other = txn.jobs[0]
            if self._still_running(other) and other._task is not None:
                other.wake()
                await asyncio.wait([other._task])
            if txn.jobs and txn.jobs[0] is other:
                self._abort_one(other)

    def _abort_one(self, job: Job) -> None:
        if job.status not in COMPLETED_STATUSES:
            job.deferred = True
            self._update_rc(job)
        self._finalize_single(job)

    def shutdown(self) -> None:
        """The daemon is going away (SHUTDOWN was sent): no new job from now on."""
        self.shutting_down = True

    def check_accepting(self) -> None:
        """Refuse to start a job once shutting down (QEMU reads no command after quit)."""
        if self.shutting_down:
            raise QMPError(SHUTTING_DOWN)

    async def cancel_all(self, grace: float | None = None) -> None:
        """quit / SIGTERM: force-cancel every job, newest first, and dismiss them all.

        As job_cancel_sync_all(): each job is cancelled and waited for in turn; a concluded
        job is dismissed (a bare ``null``).  A forced cancel does not wait for I/O stuck in
        the kernel (see :meth:`Job.io`); all jobs together get ``grace`` seconds (default
        :attr:`shutdown_grace`), and those still running then (a plug-in that ignores
        cancellation) are dropped with a log line rather than holding the daemon up.
        """
        self.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.shutdown_grace if grace is None else grace)
        # qemu_cleanup(): bdrv_drain_all_begin() pauses the running block jobs (in the order
        # of the nodes they write to) and never ends; cancelling a job resumes it
        held = self.quiesce(key=lambda j: j.drain_rank())
        while self.jobs:
            job = self.jobs[0]
            if job.status == "concluded":
                self.dismiss_now(job)
                continue
            if job in held and job.status in ("paused", "standby"):
                self.release([job])
            if job.status != "aborting":
                self.cancel(job, True)
            try:
                await asyncio.wait_for(self._settled(job), max(0.0, deadline - loop.time()))
            except TimeoutError:
                log.error("job %s still running at the end of the %.1f s shutdown grace; "
                          "dropping it", job.id, self.shutdown_grace if grace is None
                          else grace)
                if job._task is not None:
                    job._task.cancel()
                if job in self.jobs:
                    self.jobs.remove(job)

    async def _settled(self, job: Job) -> None:
        """Wait until ``job``'s work and any transaction abort it started are over."""
        if job._task is not None and not job._task.done():
            await asyncio.wait([job._task])
        while self._aborts:
            await asyncio.gather(*list(self._aborts), return_exceptions=True)
