"""QMP handlers of migration, COLO and the x-daemon COLO extensions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..protocol.errors import QMPError
from ..schema import Registry
from .faults import SIDE_PHASES
from .heartbeat import Heartbeat
from .migration import Migration


def register(registry: Registry, mig: Migration, heartbeat: Heartbeat) -> None:
    """Attach every migration and COLO command to ``registry``."""
    job_types = registry.schema.types["JobType"]
    values = getattr(job_types, "values", None)
    if values is not None and "colo" not in values:
        values.append("colo")

    def on(name: str, fn: Callable[[dict[str, Any]], Any]) -> None:
        registry.register(name, lambda args, session: fn(args))

    on("migrate-set-capabilities", lambda a: mig.set_capabilities(a["capabilities"]))
    on("query-migrate-capabilities", lambda a: mig.query_capabilities())
    on("migrate-set-parameters", mig.set_parameters)
    on("query-migrate-parameters", lambda a: dict(mig.params))
    on("query-migrate", lambda a: mig.query_migrate())
    registry.register("migrate", lambda a, session: mig.migrate(
        a["uri"], a.get("blk", False), a.get("inc", False), session.fds))
    registry.register("migrate-incoming", lambda a, session: mig.migrate_incoming(
        a["uri"], session.fds))
    on("migrate_cancel", lambda a: mig.migrate_cancel())

    def migrate_continue(args: dict[str, Any]) -> None:
        # qmpjobd never pauses before switchover, so the state never matches (as QEMU 7.2
        # answers when it is not paused there)
        raise QMPError(f"Migration not in expected state: {mig.out_status}")
    on("migrate-continue", migrate_continue)
    on("x-colo-lost-heartbeat", lambda a: mig.lost_heartbeat())
    on("query-colo-status", lambda a: mig.query_colo_status())
    on("x-daemon-colo-checkpoint", lambda a: mig.kick())
    on("x-query-guest-state", lambda a: mig.query_guest_state())
    on("x-query-colo-metrics", lambda a: {**mig.metrics.as_dict(),
                                          **({"heartbeat": heartbeat.info()}
                                             if heartbeat.enabled else {})})

    def colo_set(args: dict[str, Any]) -> None:
        if "verify" in args:
            mig.verify = args["verify"]
    on("x-daemon-colo-set", colo_set)

    def inject(args: dict[str, Any]) -> Any:
        side = mig.fault_side()
        if args["phase"] not in SIDE_PHASES[side]:
            raise QMPError(f"Fault phase '{args['phase']}' does not exist on the {side}")
        fault = mig.faults.arm(args["phase"], args["action"],
                               args.get("delay-ms", 0) / 1000.0)
        if fault is None or not args.get("wait", False):
            return None

        async def fired() -> None:
            try:
                await fault.fired
            except asyncio.CancelledError:
                raise QMPError(f"fault at '{fault.phase}' was cleared before it fired") \
                    from None
        return fired()
    on("x-daemon-colo-inject", inject)

    def workload(args: dict[str, Any]) -> None:
        w = mig.guest.workload
        if "rate" in args:
            w.rate = args["rate"]
        if "pattern" in args:
            w.pattern = args["pattern"]
        if "hot-pages" in args:
            w.hot_pages = args["hot-pages"]
    on("x-daemon-workload", workload)
    on("x-daemon-heartbeat", heartbeat.configure)


