"""The job core: QEMU 7.2's transition and verb matrices cell by cell, and the lifecycles.

The expected matrices are typed in again here from QEMU 7.2's job.c (JobSTT,
JobVerbTable), so a slip in
qmpjobd/jobs/tables.py cannot agree with itself.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from qmptest import Client, start_qmpjobd, until_status

from qmpjobd.jobs import Job, JobError, JobRegistry, Txn
from qmpjobd.jobs.commands import block_job_info, job_info
from qmpjobd.jobs.tables import STATUSES, VERBS
from qmpjobd.protocol.errors import QMPError

ALLOWED_TRANSITIONS = {
    "undefined": {"created"},
    "created": {"running", "aborting", "null"},
    "running": {"paused", "ready", "waiting", "aborting"},
    "paused": {"running"},
    "ready": {"standby", "waiting", "aborting"},
    "standby": {"ready"},
    "waiting": {"pending", "aborting"},
    "pending": {"aborting", "concluded"},
    "aborting": {"aborting", "concluded"},
    "concluded": {"null"},
    "null": set(),
}
ALLOWED_VERBS = {
    "cancel": {"created", "running", "paused", "ready", "standby", "waiting", "pending"},
    "pause": {"created", "running", "paused", "ready", "standby"},
    "resume": {"created", "running", "paused", "ready", "standby"},
    "set-speed": {"created", "running", "paused", "ready", "standby"},
    "complete": {"ready", "standby"},
    "finalize": {"pending"},
    "dismiss": {"concluded"},
}


class Recorder:
    """An event sink that records events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []  # what a client without x-job-events sees
        self.extra: list[tuple[str, Any]] = []  # events gated on x-job-events
        self._changed = asyncio.Event()

    def emit(self, name: str, data: Any = None, capability: str | None = None) -> None:
        if capability is None:
            self.events.append((name, data))
        else:
            assert capability == "x-job-events"
            self.extra.append((name, data))
        self._changed.set()

    def statuses(self, job_id: str) -> list[str]:
        return [d["status"] for n, d in self.events
                if n == "JOB_STATUS_CHANGE" and d["id"] == job_id]

    def names(self) -> list[str]:
        return [n if n != "JOB_STATUS_CHANGE" else d["status"] for n, d in self.events]

    async def until(self, name: str, data: dict[str, Any], timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not any(n == name and all(d.get(k) == v for k, v in data.items())
                          for n, d in self.events if d is not None):
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(wait(), timeout)

    async def status(self, job_id: str, status: str) -> None:
        await self.until("JOB_STATUS_CHANGE", {"id": job_id, "status": status})


class Steps(Job):
    """A generic job of ``steps`` short sleeps; fails at ``fail_at`` if given."""

    job_type = "create"

    def __init__(self, job_id: str, steps: int = 3, interval: float = 0.001,
                 fail_at: int | None = None, **kw: Any) -> None:
        super().__init__(job_id, **kw)
        self.steps, self.interval, self.fail_at = steps, interval, fail_at
        self.gate = asyncio.Event()
        self.gated = False

    async def run(self) -> None:
        self.set_progress(0, self.steps)
        for i in range(1, self.steps + 1):
            if self.gated:
                while not self.gate.is_set():
                    await self.sleep(0.001)
            await self.sleep(self.interval)
            if i == self.fail_at:
                raise JobError("Input/output error")
            self.set_progress(i)


class Backup(Steps):
    job_type = "backup"


class Mirror(Job):
    """Mirror-like: ready after copying, then keeps going until completed or cancelled."""

    job_type = "mirror"
    can_complete = True

    def __init__(self, job_id: str, **kw: Any) -> None:
        super().__init__(job_id, **kw)
        self.requested = False
        self.pivoted = False

    async def run(self) -> None:
        self.set_progress(0, 4)
        for i in range(1, 5):
            await self.sleep(0.001)
            self.set_progress(i)
        self.set_ready()
        while not (self.requested or self.cancelled):
            await self.sleep(0.001)

    def cancel_mode(self, force: bool) -> bool:
        return force or self.status not in ("ready", "standby")

    def complete(self) -> None:
        self.requested = True

    def commit(self) -> None:
        self.pivoted = self.requested


@pytest.fixture
def reg() -> tuple[JobRegistry, Recorder]:
    rec = Recorder()
    return JobRegistry(rec), rec


# -- the tables, cell by cell ------------------------------------------------------------------

@pytest.mark.parametrize("src", STATUSES)
@pytest.mark.parametrize("dst", STATUSES)
def test_transition_matrix(src: str, dst: str) -> None:
    rec = Recorder()
    reg = JobRegistry(rec)
    job = Steps("j")
    job.registry, job.status = reg, src
    if dst in ALLOWED_TRANSITIONS[src]:
        reg.transition(job, dst)
        assert job.status == dst
        expected = [] if src == dst else [("JOB_STATUS_CHANGE", {"status": dst, "id": "j"})]
        assert rec.events == expected
    else:
        with pytest.raises(AssertionError):
            reg.transition(job, dst)
        assert rec.events == [] and job.status == src


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("verb", VERBS)
def test_verb_matrix(verb: str, status: str) -> None:
    job = Steps("bk")
    job.status = status
    if status in ALLOWED_VERBS[verb]:
        JobRegistry.check_verb(job, verb)
    else:
        with pytest.raises(QMPError) as e:
            JobRegistry.check_verb(job, verb)
        assert e.value.desc == (f"Job 'bk' in state '{status}' cannot accept command verb "
                                f"'{verb}'")
        assert e.value.error_class == "GenericError"


# -- creation and lookup -----------------------------------------------------------------------

def test_job_ids(reg: Any) -> None:
    jobs, _rec = reg
    for bad in ("1bad", "bad id", "", "é"):
        with pytest.raises(QMPError, match=f"^Invalid job ID '{bad}'$"):
            jobs.create(Steps(bad))
    job = Steps("a-b.c_9")
    jobs.create(job)
    with pytest.raises(QMPError, match=r"^Job ID 'a-b.c_9' already in use$"):
        jobs.create(Steps("a-b.c_9"))
    with pytest.raises(QMPError) as e:
        jobs.get("nope")
    assert (e.value.desc, e.value.error_class) == ("Job not found", "GenericError")
    with pytest.raises(QMPError) as e:
        jobs.get_block("a-b.c_9")  # exists, but not a block job
    assert (e.value.desc, e.value.error_class) == ("Block job 'a-b.c_9' not found",
                                                   "DeviceNotActive")


def test_negative_speed_at_creation(reg: Any) -> None:
    jobs, rec = reg
    with pytest.raises(QMPError, match=r"^Parameter 'speed' expects a non-negative value$"):
        jobs.create(Backup("bk", speed=-1))
    assert rec.statuses("bk") == ["created", "null"]
    assert jobs.find("bk") is None


# -- lifecycles --------------------------------------------------------------------------------

async def test_default_success_sequence(reg: Any) -> None:
    jobs, rec = reg
    job = Backup("bk")
    jobs.create(job)
    jobs.start(job)
    assert rec.statuses("bk") == ["created", "running"]  # before the start command's reply
    await rec.status("bk", "null")
    assert rec.names() == ["created", "running", "waiting", "pending", "BLOCK_JOB_COMPLETED",
                           "concluded", "null"]
    assert rec.events[4][1] == {"device": "bk", "len": 3, "offset": 3, "speed": 0,
                                "type": "backup"}
    assert jobs.jobs == []


async def test_manual_finalize_and_dismiss(reg: Any) -> None:
    jobs, rec = reg
    job = Backup("bk", auto_finalize=False, auto_dismiss=False)
    jobs.create(job)
    jobs.start(job)
    await rec.until("BLOCK_JOB_PENDING", {"id": "bk"})
    assert rec.names()[-2:] == ["pending", "BLOCK_JOB_PENDING"]
    assert rec.events[-1][1] == {"type": "backup", "id": "bk"}
    assert job_info(job) == {"current-progress": 3, "status": "pending", "total-progress": 3,
                             "type": "backup", "id": "bk"}
    with pytest.raises(QMPError, match="cannot accept command verb 'dismiss'"):
        jobs.user_dismiss(job)
    jobs.user_finalize(job)
    assert rec.names()[-2:] == ["BLOCK_JOB_COMPLETED", "concluded"]
    assert jobs.get("bk") is job  # a concluded job keeps its id
    with pytest.raises(QMPError, match="already in use"):
        jobs.create(Backup("bk"))
    jobs.user_dismiss(job)
    assert rec.names()[-1] == "null"
    with pytest.raises(QMPError, match=r"^Job not found$"):
        jobs.get("bk")


async def test_generic_job_has_no_block_events(reg: Any) -> None:
    jobs, rec = reg
    job = Steps("c", auto_finalize=False)
    jobs.create(job)
    jobs.start(job)
    await rec.status("c", "pending")
    jobs.user_finalize(job)
    assert rec.names() == ["created", "running", "waiting", "pending", "concluded", "null"]


async def test_pause_resume_and_refusals(reg: Any) -> None:
    jobs, rec = reg
    job = Backup("bk", steps=1000, auto_dismiss=False)
    jobs.create(job)
    with pytest.raises(QMPError, match=r"^Can't resume a job that was not paused$"):
        jobs.user_resume(job)
    jobs.start(job)
    jobs.user_pause(job)
    with pytest.raises(QMPError, match=r"^Job is already paused$"):
        jobs.user_pause(job)
    await rec.status("bk", "paused")
    info = block_job_info(job)
    assert info["paused"] is True and info["status"] == "paused" and info["ready"] is False
    progress = job.current_progress
    jobs.user_resume(job)
    with pytest.raises(QMPError, match=r"^Can't resume a job that was not paused$"):
        jobs.user_resume(job)
    await rec.until("JOB_STATUS_CHANGE", {"id": "bk", "status": "running"})
    assert rec.statuses("bk")[-2:] == ["paused", "running"]
    assert job.current_progress >= progress
    jobs.user_pause(job)
    await rec.status("bk", "paused")
    # cancel of a user-paused job: back to running first, then the abort sequence
    jobs.user_cancel(job, True)
    await rec.status("bk", "concluded")
    assert rec.names()[-4:] == ["running", "aborting", "BLOCK_JOB_CANCELLED", "concluded"]
    assert job_info(job)["error"] == "Operation canceled"
    with pytest.raises(QMPError, match="in state 'concluded' cannot accept command verb 'cancel'"):
        jobs.user_cancel(job, True)
    with pytest.raises(QMPError, match=r"^Can't resume a job that was not paused$"):
        jobs.user_resume(job)


async def test_failure_reports_error(reg: Any) -> None:
    jobs, rec = reg
    job = Backup("bk", steps=5, fail_at=2, auto_finalize=False, auto_dismiss=False)
    jobs.create(job)
    jobs.start(job)
    await rec.status("bk", "concluded")
    # a failing job never passes through waiting/pending, even with auto-finalize=false
    assert rec.names() == ["created", "running", "aborting", "BLOCK_JOB_COMPLETED", "concluded"]
    assert rec.events[3][1]["error"] == "Input/output error"
    assert job_info(job)["error"] == "Input/output error"
    assert block_job_info(job)["error"] == "Input/output error"


async def test_mirror_ready_complete(reg: Any) -> None:
    jobs, rec = reg
    job = Mirror("m")
    jobs.create(job)
    with pytest.raises(QMPError, match="in state 'created' cannot accept command verb 'complete'"):
        jobs.user_complete(job)
    jobs.start(job)
    await rec.until("BLOCK_JOB_READY", {"device": "m"})
    assert block_job_info(job)["ready"] is True
    jobs.user_pause(job)
    await rec.status("m", "standby")
    assert block_job_info(job)["ready"] is True
    jobs.user_complete(job)  # accepted in standby; completes after resume
    jobs.user_resume(job)
    await rec.status("m", "null")
    assert rec.names() == ["created", "running", "ready", "BLOCK_JOB_READY", "standby", "ready",
                           "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"]
    assert job.pivoted


async def test_mirror_soft_and_forced_cancel(reg: Any) -> None:
    jobs, rec = reg
    soft = Mirror("soft", auto_dismiss=False)
    hard = Mirror("hard", auto_dismiss=False)
    for j in (soft, hard):
        jobs.create(j)
        jobs.start(j)
        await rec.until("BLOCK_JOB_READY", {"device": j.id})
    jobs.user_cancel(soft, False)  # block-job-cancel without force in READY
    with pytest.raises(QMPError, match=r"^The active block job 'soft' cannot be completed$"):
        jobs.user_complete(soft)
    jobs.user_cancel(hard, True)
    await rec.status("soft", "concluded")
    await rec.status("hard", "concluded")
    assert rec.statuses("soft")[-4:] == ["ready", "waiting", "pending", "concluded"]
    assert "error" not in job_info(soft) and not soft.pivoted
    assert rec.statuses("hard")[-3:] == ["ready", "aborting", "concluded"]
    assert job_info(hard)["error"] == "Operation canceled"
    assert ("BLOCK_JOB_CANCELLED", hard.block_event_data()) in rec.events


async def test_cancel_in_pending(reg: Any) -> None:
    jobs, rec = reg
    job = Backup("bk", auto_finalize=False, auto_dismiss=False)
    jobs.create(job)
    jobs.start(job)
    await rec.status("bk", "pending")
    jobs.user_cancel(job, True)  # synchronous: the work is already done
    assert rec.names()[-3:] == ["aborting", "BLOCK_JOB_CANCELLED", "concluded"]
    assert job_info(job)["error"] == "Operation canceled"


async def test_cancel_before_start(reg: Any) -> None:
    jobs, rec = reg
    job = Backup("bk")
    jobs.create(job)
    jobs.cancel(job, True)
    assert rec.statuses("bk") == ["created", "aborting", "concluded", "null"]
    assert not any(n.startswith("BLOCK_JOB") for n, _ in rec.events)


async def test_grouped_transaction(reg: Any) -> None:
    jobs, rec = reg
    txn = Txn()
    a = Backup("a", steps=1, auto_finalize=False)
    b = Backup("b", steps=2)
    b.gated = True
    for j in (a, b):
        jobs.create(j, txn)
    for j in (a, b):
        jobs.start(j)
    await rec.status("a", "waiting")
    with pytest.raises(QMPError, match=r"^Job 'a' in state 'waiting' cannot accept command verb "
                                       "'finalize'$"):
        jobs.user_finalize(a)
    b.gate.set()
    await rec.status("b", "pending")
    # newest member first; BLOCK_JOB_PENDING only for the manual-finalize member
    pend = [(n, d.get("id")) for n, d in rec.events if n in ("JOB_STATUS_CHANGE",
                                                               "BLOCK_JOB_PENDING")
            and (n == "BLOCK_JOB_PENDING" or d["status"] == "pending")]
    assert pend == [("JOB_STATUS_CHANGE", "b"), ("JOB_STATUS_CHANGE", "a"),
                    ("BLOCK_JOB_PENDING", "a")]
    jobs.user_finalize(b)  # finalizes every member
    assert rec.statuses("a")[-2:] == ["concluded", "null"]
    assert rec.statuses("b")[-2:] == ["concluded", "null"]
    done = [d["device"] for n, d in rec.events if n == "BLOCK_JOB_COMPLETED"]
    assert done == ["b", "a"]


async def test_grouped_transaction_failure_cancels_the_rest(reg: Any) -> None:
    jobs, rec = reg
    txn = Txn()
    ok = Backup("ok", steps=1000, auto_dismiss=False)
    bad = Backup("bad", steps=5, fail_at=2, auto_dismiss=False)
    for j in (ok, bad):
        jobs.create(j, txn)
        jobs.start(j)
    await rec.status("ok", "concluded")
    await rec.status("bad", "concluded")
    assert job_info(bad)["error"] == "Input/output error"
    assert job_info(ok)["error"] == "Operation canceled"
    ends = [(n, d["device"]) for n, d in rec.events if n.startswith("BLOCK_JOB_")]
    assert ("BLOCK_JOB_CANCELLED", "ok") in ends and ("BLOCK_JOB_COMPLETED", "bad") in ends


async def test_set_speed(reg: Any) -> None:
    jobs, rec = reg
    job = Backup("bk", steps=1000, auto_dismiss=False)
    jobs.create(job)
    jobs.start(job)
    with pytest.raises(QMPError, match=r"^Parameter 'speed' expects a non-negative value$"):
        jobs.set_speed(job, -1)
    jobs.set_speed(job, 1 << 20)
    assert block_job_info(job)["speed"] == 1 << 20
    jobs.user_cancel(job, True)
    await rec.status("bk", "concluded")
    assert block_job_info(job)["speed"] == 1 << 20
    with pytest.raises(QMPError, match="in state 'concluded' cannot accept command verb "
                                       "'set-speed'"):
        jobs.set_speed(job, 0)


async def test_listing_is_newest_first(reg: Any) -> None:
    jobs, _ = reg
    for name in ("first", "second", "third"):
        jobs.create(Steps(name))
    assert [j.id for j in jobs.jobs] == ["third", "second", "first"]


# -- over QMP, with the example plug-in --------------------------------------------------------

EXAMPLE = str(Path(__file__).parent.parent / "examples" / "countdown_job.py")


_until_event = until_status


def test_libvirt_style_flow_with_plugin_job(tmp_path: Path) -> None:
    d = start_qmpjobd(str(tmp_path), "--plugin", EXAMPLE)
    with Client(d.path) as c:
        c.negotiate()
        names = {x["name"] for x in c.cmd("query-commands")["return"]}
        assert {"x-countdown", "query-jobs", "job-dismiss", "block-job-cancel"} <= names
        schema = c.cmd("query-qmp-schema")["return"]
        assert any(e.get("name") == "x-countdown" for e in schema)
        assert any("x-countdown" in e.get("values", []) for e in schema)  # JobType extended
        c.send(b'{"execute":"x-countdown","arguments":{"job-id":"cd-1","steps":3,'
               b'"auto-dismiss":false},"id":"libvirt-5"}\n')
        first = [c.recv() for _ in range(3)]
        assert [m.get("data", {}).get("status") for m in first[:2]] == ["created", "running"]
        assert first[2] == {"return": {}, "id": "libvirt-5"}
        seen = _until_event(c, "concluded", "cd-1")
        assert [m["data"]["status"] for m in seen] == ["waiting", "pending", "concluded"]
        jobs = c.cmd("query-jobs", id="libvirt-6")
        assert jobs == {"return": [{"current-progress": 3, "status": "concluded",
                                    "total-progress": 3, "type": "x-countdown",
                                    "id": "cd-1"}], "id": "libvirt-6"}
        assert c.cmd("block-job-dismiss", {"id": "cd-1"})["error"] == {
            "class": "DeviceNotActive", "desc": "Block job 'cd-1' not found"}
        c.send(b'{"execute":"job-dismiss","arguments":{"id":"cd-1"},"id":"libvirt-7"}\n')
        assert c.recv()["data"] == {"status": "null", "id": "cd-1"}
        assert c.recv() == {"return": {}, "id": "libvirt-7"}
        assert c.cmd("query-jobs") == {"return": []}
        # a failing job keeps its error until dismissed
        c.cmd("x-countdown", {"job-id": "cd-2", "steps": 3, "fail-at": 2,
                              "auto-dismiss": False})
        _until_event(c, "concluded", "cd-2")
        assert c.cmd("query-jobs")["return"][0]["error"] == "countdown failed at step 2"
        assert c.cmd("job-cancel", {"id": "nope"}, id=1) == {
            "id": 1, "error": {"class": "GenericError", "desc": "Job not found"}}
    d.stop()


def test_bad_plugin_fails_startup(tmp_path: Path) -> None:
    import subprocess
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('broken')\n")
    r = subprocess.run([sys.executable, "-m", "qmpjobd", "--socket", str(tmp_path / "s.sock"),
                        "--plugin", str(bad)], capture_output=True, timeout=20)
    assert r.returncode == 1 and b"broken" in r.stderr


def test_quit_cancels_live_jobs_before_replying(tmp_path: Path) -> None:
    d = start_qmpjobd(str(tmp_path), "--plugin", EXAMPLE)
    with Client(d.path) as c:
        c.negotiate()
        c.cmd("x-countdown", {"job-id": "done", "steps": 1, "auto-dismiss": False})
        _until_event(c, "concluded", "done")
        c.cmd("x-countdown", {"job-id": "live", "steps": 100000, "interval": 0.01})
        c.send(b'{"execute":"quit","id":"q"}\n')
        msgs = []
        while True:
            m = c.recv()
            msgs.append(m)
            if "return" in m:
                break
        seen = [m.get("event") if m.get("event") != "JOB_STATUS_CHANGE" else
                (m["data"]["id"], m["data"]["status"]) for m in msgs]
        # SHUTDOWN first; newest job first: the live one is aborted, the concluded one
        # dismissed; the reply last
        assert seen == ["SHUTDOWN", ("live", "aborting"), ("live", "concluded"),
                        ("live", "null"), ("done", "null"), None]
        assert msgs[-1] == {"return": {}, "id": "q"}
    assert d.proc.wait(10) == 0


def test_sigterm_cancels_live_jobs(tmp_path: Path) -> None:
    import signal
    d = start_qmpjobd(str(tmp_path), "--plugin", EXAMPLE)
    with Client(d.path) as c:
        c.negotiate()
        c.cmd("x-countdown", {"job-id": "live", "steps": 100000, "interval": 0.01})
        d.proc.send_signal(signal.SIGTERM)
        msgs = [c.recv() for _ in range(4)]  # cmd() has consumed created/running
        assert msgs[0]["event"] == "SHUTDOWN"
        assert msgs[0]["data"] == {"guest": False, "reason": "host-signal"}
        assert [m["data"]["status"] for m in msgs[1:]] == ["aborting", "concluded", "null"]
    assert d.proc.wait(10) == 0


async def test_generic_job_events_are_gated(reg: Any) -> None:
    jobs, rec = reg
    ok, bad, gone, mirror = (Backup("ok"), Steps("bad", fail_at=1), Backup("gone", steps=1000),
                             Mirror("m"))
    for j in (ok, bad, gone, mirror):
        jobs.create(j)
        jobs.start(j)
    await rec.until("BLOCK_JOB_READY", {"device": "m"})
    jobs.user_cancel(gone, True)
    jobs.user_complete(mirror)
    for j in ("ok", "bad", "gone", "m"):
        await rec.status(j, "null")
    assert sorted(rec.extra, key=lambda e: (e[1]["id"], e[0])) == [
        ("JOB_ERROR", {"id": "bad", "type": "create", "error": "Input/output error"}),
        ("JOB_CANCELLED", {"id": "gone", "type": "backup", "error": "Operation canceled"}),
        ("JOB_COMPLETED", {"id": "m", "type": "mirror"}),
        ("JOB_READY", {"id": "m", "type": "mirror"}),
        ("JOB_COMPLETED", {"id": "ok", "type": "backup"}),
    ]
    assert not any(n.startswith("JOB_") and n != "JOB_STATUS_CHANGE" for n, _ in rec.events)


def test_x_job_events_only_for_clients_that_ask(tmp_path: Path) -> None:
    d = start_qmpjobd(str(tmp_path), "--plugin", EXAMPLE)
    with Client(d.path) as plain, Client(d.path) as asks:
        assert plain.greeting["QMP"]["capabilities"] == ["oob", "x-job-events"]
        plain.negotiate()
        asks.negotiate("x-job-events")
        plain.cmd("x-countdown", {"job-id": "j", "steps": 1})
        def names(msgs: list[Any]) -> list[str]:
            return [m["data"]["status"] if m["event"] == "JOB_STATUS_CHANGE" else m["event"]
                    for m in msgs]
        # plain.cmd() has consumed created/running on that connection
        assert names(_until_event(plain, "null", "j")) == ["waiting", "pending", "concluded",
                                                           "null"]
        assert names(_until_event(asks, "null", "j")) == [
            "created", "running", "waiting", "pending", "JOB_COMPLETED", "concluded", "null"]
    d.stop()


def test_rate_limit_is_qemus_ratelimit() -> None:
    """include/qemu/ratelimit.h: once a 100 ms slice's quota is used up, the delay stretches
    the slice by the excess as a fraction of slices (no rounding down to whole slices)."""
    from qmpjobd.jobs.core import RateLimit
    mib = 1 << 20
    limit = RateLimit()
    assert limit.account(mib, 0.0) == 0.0  # no speed: no limit
    limit.set_speed(int(10.5 * mib))  # quota 1.05 MiB per slice
    assert limit.account(mib, 0.0) == 0.0
    assert limit.account(0, 0.0) == 0.0
    assert limit.account(mib, 0.0) == pytest.approx(2 / 1.05 * 0.1)  # 2 MiB in 190.5 ms
    assert limit.account(0, 0.19) == pytest.approx(2 / 1.05 * 0.1 - 0.19)  # still waiting
    assert limit.account(0, 0.191) == 0.0  # the stretched slice is over: a new one
    limit.set_speed(16 * mib)  # a higher speed gives a shorter delay for the same bytes
    limit.account(2 * mib, 0.191)
    assert limit.account(0, 0.191) == pytest.approx(0.125)
    limit.set_speed(1)
    assert limit.quota == 1.0  # at least one byte per slice


def test_shutdown_grace_option_and_config_key(tmp_path: Path) -> None:
    from qmpjobd import cli, config
    assert cli.parse_args([])[1].shutdown_grace <= 5
    conf = tmp_path / "q.toml"
    conf.write_text("shutdown-grace = 2.5\n")
    parser, args = cli.parse_args(["--config", str(conf)])
    assert args.shutdown_grace == 2.5
    assert "shutdown-grace = 2.5\n" in config.render(parser, args)
    assert cli.parse_args(["--config", str(conf), "--shutdown-grace", "1"])[1].shutdown_grace \
        == 1.0
    conf.write_text("shutdown-grace = -1\n")
    with pytest.raises(config.ConfigError, match="shutdown-grace"):
        config.load(parser, str(conf))
    with pytest.raises(SystemExit):
        cli.parse_args(["--shutdown-grace", "soon"])
