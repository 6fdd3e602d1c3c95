"""QEMU 7.2's migration and COLO failover state machines as literal tables.

QEMU moves both with a compare-and-swap (``migrate_set_state``, ``failover_set_state``); the
moves its code makes are listed here, and every change of state in qmpjobd goes through one
function that checks it against the table (``Migration._set_out`` / ``_set_in``,
``Replication.set_failover``), as the job tables do for jobs.
"""

from __future__ import annotations

from typing import Final

from ..schema.enums import FailoverStatus as F
from ..schema.enums import MigrationStatus as M

OUTGOING: Final[dict[str, frozenset[str]]] = {
    M.NONE: frozenset({M.SETUP, M.FAILED}),
    M.SETUP: frozenset({M.ACTIVE, M.CANCELLING, M.CANCELLED, M.FAILED}),
    M.ACTIVE: frozenset({M.COMPLETED, M.COLO, M.CANCELLING, M.CANCELLED, M.FAILED}),
    M.CANCELLING: frozenset({M.CANCELLED, M.FAILED}),
    M.COLO: frozenset({M.COMPLETED, M.FAILED}),
    M.COMPLETED: frozenset({M.SETUP, M.FAILED}),
    M.FAILED: frozenset({M.SETUP, M.FAILED}),
    M.CANCELLED: frozenset({M.SETUP, M.FAILED}),
}
"""Outgoing migration: status -> the statuses it may move to.  ``failed`` from a finished
state is what a ``migrate`` with a bad URI leaves behind (7.2 does so without an event)."""

INCOMING: Final[dict[str, frozenset[str]]] = {
    M.NONE: frozenset({M.SETUP, M.FAILED}),
    M.SETUP: frozenset({M.ACTIVE, M.FAILED}),
    M.ACTIVE: frozenset({M.COMPLETED, M.COLO, M.FAILED}),
    M.COLO: frozenset({M.COMPLETED, M.FAILED}),
    M.COMPLETED: frozenset({M.SETUP, M.FAILED}),
    M.FAILED: frozenset({M.SETUP, M.FAILED}),
}
"""Incoming migration: status -> the statuses it may move to."""

FAILOVER: Final[dict[str, frozenset[str]]] = {
    F.NONE: frozenset({F.REQUIRE}),
    F.REQUIRE: frozenset({F.ACTIVE}),
    F.ACTIVE: frozenset({F.COMPLETED, F.RELAUNCH}),
    F.RELAUNCH: frozenset({F.NONE}),
    F.COMPLETED: frozenset(),
}
"""COLO failover (colo-failover.c): a request, the bottom half taking it, then completion, or
``relaunch`` when the secondary was applying a checkpoint (it starts over once that is done)."""


def check(table: dict[str, frozenset[str]], what: str, old: str, new: str) -> None:
    """Refuse a move the table does not list (a bug in qmpjobd, not a client error)."""
    if new not in table.get(old, frozenset()):
        raise AssertionError(f"{what}: illegal transition {old} -> {new}")
