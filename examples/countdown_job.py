"""A plug-in job type for qmpjobd: counts down, one step per ``interval`` seconds.

Load it with ``qmpjobd --plugin examples/countdown_job.py`` and start it over QMP:

    {"execute": "x-countdown", "arguments": {"job-id": "c1", "steps": 5}}

It behaves like any QEMU job: query-jobs shows its progress, job-pause / job-resume /
job-cancel work at every step, and ``"fail-at": N`` makes it fail at step N (for drills).
"""

from __future__ import annotations

from typing import Any

from qmpjobd.jobs import Job, JobError, add_job_command


class Countdown(Job):
    """Counts ``steps`` down to zero."""

    job_type = "x-countdown"

    def __init__(self, job_id: str, steps: int, interval: float, fail_at: int | None) -> None:
        super().__init__(job_id)
        self.steps = steps
        self.interval = interval
        self.fail_at = fail_at

    async def run(self) -> None:
        self.set_progress(0, self.steps)
        for step in range(1, self.steps + 1):
            await self.sleep(self.interval)  # a pause point: pause and cancel act here
            if step == self.fail_at:
                raise JobError(f"countdown failed at step {step}")
            self.set_progress(step)


def register(vm: Any) -> None:
    """Called by ``qmpjobd --plugin``: declare the start command and its job type."""
    add_job_command(
        vm.registry, vm.jobs, "x-countdown", Countdown.job_type,
        {"steps": "int", "*interval": "number", "*fail-at": "int"},
        lambda a: Countdown(a["job-id"], a["steps"], a.get("interval", 0.01), a.get("fail-at")))
