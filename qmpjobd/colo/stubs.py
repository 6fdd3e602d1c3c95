"""The block and net commands of docs/COLO-FT.txt, accepted as recorded no-ops.

qmpjobd has no NBD server, replication driver, netfilters or chardevs; these commands keep the
ids they are given so that later removals behave as in QEMU 7.2, and they answer with QEMU's
texts when something named does not exist.  The COLO-FT sequence therefore replays unchanged.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from ..block.graph import BlockGraph
from ..protocol.errors import QMPError
from ..protocol.session import Session
from ..schema import Handler, Registry
from .migration import Migration


class Recorded:
    """What the no-op commands were asked to create."""

    def __init__(self) -> None:
        self.nbd_running = False
        self.exports: set[str] = set()
        self.objects: dict[str, str] = {}
        self.chardevs: set[str] = set()
        self.drives: set[str] = set()
        self.log: list[tuple[str, dict[str, Any]]] = []


def register(registry: Registry, block: BlockGraph, mig: Migration) -> Recorded:
    """Attach the no-op commands; returns the record they keep."""
    rec = Recorded()

    def known(name: str) -> bool:
        if name in rec.drives:
            return True
        try:
            block.lookup(name)
        except QMPError:
            return False
        return True

    def nbd_start(args: dict[str, Any]) -> None:
        if rec.nbd_running:
            raise QMPError("NBD server already running")
        rec.nbd_running = True

    def nbd_add(args: dict[str, Any]) -> None:
        if not rec.nbd_running:
            raise QMPError("NBD server not running")
        name = args["device"]
        if not known(name):
            raise QMPError(f"Cannot find device='{name}' nor node-name='{name}'")
        rec.exports.add(args.get("name", name))

    def nbd_stop(args: dict[str, Any]) -> None:
        if not rec.nbd_running:
            raise QMPError("NBD server not running")
        rec.nbd_running = False
        rec.exports.clear()

    def hmp(args: dict[str, Any]) -> str:
        line = args["command-line"].strip()
        words = line.split(None, 1)
        cmd = words[0] if words else ""
        rest = words[1] if len(words) > 1 else ""
        if cmd == "info" and rest.strip() == "status":
            status = mig.machine.status
            state = "running" if mig.machine.running else \
                "paused" if status == "paused" else f"paused ({status})"
            return f"VM status: {state}\r\n"
        if cmd == "drive_add":
            node = _option(rest, "node-name") or _option(rest, "id")
            if node:
                rec.drives.add(node)
            return "OK\r\n"
        if cmd == "drive_del":
            name = rest.strip()
            if name in rec.drives:
                rec.drives.discard(name)
                return ""
            return f"Device '{name}' not found\r\n"
        if cmd == "x_colo_lost_heartbeat":
            try:
                mig.lost_heartbeat()
            except QMPError as e:
                return f"Error: {e.desc}\r\n"
            return ""
        if not cmd:
            return ""
        return f"unknown command: '{cmd}'\r\n"

    def blockdev_change(args: dict[str, Any]) -> None:
        parent = args["parent"]
        if not known(parent):
            raise QMPError(f"Cannot find device='{parent}' nor node-name='{parent}'")
        if "child" in args and "node" in args:
            raise QMPError("The parameters child and node are in conflict")
        rec.log.append(("x-blockdev-change", args))

    def object_add(args: dict[str, Any]) -> None:
        oid = args["id"]
        if oid in rec.objects:
            raise QMPError(f"attempt to add duplicate property '{oid}' to object "
                           "(type 'container')")
        rec.objects[oid] = args["qom-type"]

    def object_del(args: dict[str, Any]) -> None:
        oid = args["id"]
        if oid not in rec.objects:
            raise QMPError(f"object '{oid}' not found")
        del rec.objects[oid]

    def chardev_add(args: dict[str, Any]) -> dict[str, Any]:
        cid = args["id"]
        if cid in rec.chardevs:
            raise QMPError(f"attempt to add duplicate property '{cid}' to object "
                           "(type 'container')")
        rec.chardevs.add(cid)
        return {}

    def chardev_remove(args: dict[str, Any]) -> None:
        cid = args["id"]
        if cid not in rec.chardevs:
            raise QMPError(f"Chardev '{cid}' not found")
        rec.chardevs.discard(cid)

    def xen_set_replication(args: dict[str, Any]) -> None:
        if args["enable"] and args.get("failover", False):
            raise QMPError("Parameter 'failover' is only for stopping replication")

    handlers: dict[str, Any] = {
        "nbd-server-start": nbd_start, "nbd-server-add": nbd_add, "nbd-server-stop": nbd_stop,
        "human-monitor-command": hmp, "x-blockdev-change": blockdev_change,
        "object-add": object_add, "object-del": object_del, "chardev-add": chardev_add,
        "chardev-remove": chardev_remove, "xen-set-replication": xen_set_replication,
        "query-xen-replication-status": lambda args: {"error": False},
        "xen-colo-do-checkpoint": lambda args: None,
    }
    for name, fn in handlers.items():
        registry.register(name, _recorder(rec, name, fn))
    return rec


def _recorder(rec: Recorded, name: str, fn: Callable[[dict[str, Any]], Any]) -> Handler:
    def handler(args: dict[str, Any], session: Session) -> Any:
        rec.log.append((name, args))
        del rec.log[:-1000]
        return fn(args)
    return handler


def _option(text: str, key: str) -> str | None:
    try:
        parts = shlex.split(text.replace(",", " "))
    except ValueError:  # an unbalanced quote: no such option
        return None
    for part in parts:
        if part.startswith(key + "="):
            return part[len(key) + 1:]
    return None
