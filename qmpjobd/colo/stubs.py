"""The block and net commands of docs/COLO-FT.txt, accepted as recorded no-ops.

qmpjobd has no replication driver, netfilters or chardevs (its NBD server, block/nbd.py, is
real); these commands keep the ids they are given so that later removals behave as in QEMU 7.2,
and they answer with QEMU's texts when something named does not exist.  The COLO-FT sequence
therefore replays unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..block.graph import BlockGraph
from ..protocol.errors import QMPError
from ..protocol.session import Session
from ..schema import Handler, Registry

if TYPE_CHECKING:
    from ..hmp import Hmp, Monitor


class Recorded:
    """What the no-op commands were asked to create."""

    def __init__(self) -> None:
        self.objects: dict[str, str] = {}
        self.chardevs: set[str] = set()
        self.drives: set[str] = set()
        self.log: list[tuple[str, dict[str, Any]]] = []


def register(registry: Registry, block: BlockGraph, hmp: Hmp) -> Recorded:
    """Attach the no-op commands (QMP, and HMP's drive_add -n and drive_del); returns the
    record they keep."""
    rec = Recorded()

    def known(name: str) -> bool:
        if name in rec.drives:
            return True
        try:
            block.lookup(name)
        except QMPError:
            return False
        return True

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
        "x-blockdev-change": blockdev_change,
        "object-add": object_add, "object-del": object_del, "chardev-add": chardev_add,
        "chardev-remove": chardev_remove, "xen-set-replication": xen_set_replication,
        "query-xen-replication-status": lambda args: {"error": False},
        "xen-colo-do-checkpoint": lambda args: None,
    }
    for name, fn in handlers.items():
        registry.register(name, _recorder(rec, name, fn))

    def drive_add(mon: Monitor, args: dict[str, Any]) -> None:
        """hmp_drive_add(): with -n a node from QemuOpts that must have a node-name (QEMU
        then opens it; here it is recorded); without, a drive QEMU answers OK for."""
        opts, warnings = _qemu_opts(args["opts"])
        for text in warnings:
            mon.printf(text)
        rec.log.append(("drive_add", args))
        if args.get("node", False):
            if "node-name" not in opts:
                mon.printf("'node-name' needs to be specified\n")
                return
            rec.drives.add(opts["node-name"])
            return
        if "id" in opts:
            rec.drives.add(opts["id"])
        mon.printf("OK\n")

    def drive_del(mon: Monitor, args: dict[str, Any]) -> None:
        """hmp_drive_del() of a drive drive_add recorded; QEMU's text for any other."""
        rec.log.append(("drive_del", args))
        if args["id"] not in rec.drives:
            mon.printf(f"Device '{args['id']}' not found\n")
            return
        rec.drives.discard(args["id"])

    hmp.implement("drive_add", "node:-n,pci_addr:s,opts:s", drive_add)
    hmp.implement("drive_del", "id:B", drive_del)
    return rec


def _recorder(rec: Recorded, name: str, fn: Callable[[dict[str, Any]], Any]) -> Handler:
    def handler(args: dict[str, Any], session: Session) -> Any:
        rec.log.append((name, args))
        del rec.log[:-1000]
        return fn(args)
    return handler


def _qemu_opts(text: str) -> tuple[dict[str, str], list[str]]:
    """QemuOpts' ``key=value,...`` (``,,`` is a comma in a value); a bare ``key`` is
    ``key=on`` (``nokey``: ``key=off``) with 7.2's deprecation warning."""
    opts: dict[str, str] = {}
    warnings: list[str] = []
    p = 0
    while p < len(text):
        end = p
        while end < len(text) and text[end] not in "=,":
            end += 1
        name = text[p:end]
        if end == len(text) or text[end] == ",":
            prefix, value = ("no", "off") if name.startswith("no") else ("", "on")
            name = name[len(prefix):]
            if name not in ("help", "?"):
                warnings.append(f"warning: short-form boolean option '{prefix}{name}' "
                                "deprecated\n")
                warnings.append(f"Please use {name}={value} instead\n")
            p = end + 1
        else:
            chars: list[str] = []
            p = end + 1
            while p < len(text):
                if text[p] == ",":
                    if text[p + 1:p + 2] != ",":
                        break
                    p += 1
                chars.append(text[p])
                p += 1
            value = "".join(chars)
            p += 1
        opts[name] = value
    return opts, warnings
