"""Declarations of the machine's hardware and life-cycle commands (QEMU 7.2's
qapi/machine.json, qapi/char.json, qapi/block-core.json, qapi/qom.json, qapi/run-state.json)."""

from __future__ import annotations

from .model import Schema


def declare(s: Schema) -> None:
    """Add vCPU, chardev, iothread, uuid, query-block/-blockstats, qom-list/-get and reset and
    powerdown (ObjectPropertyInfo and SysEmuTarget come from schema/qemu.py)."""
    s.struct("CpuInstanceProperties", {
        "*node-id": "int", "*socket-id": "int", "*die-id": "int", "*cluster-id": "int",
        "*core-id": "int", "*thread-id": "int"})
    s.struct("CpuInfoFast", {"cpu-index": "int", "qom-path": "str", "thread-id": "int",
                             "*props": "CpuInstanceProperties",
                             "target": "SysEmuTarget"})
    s.command("query-cpus-fast", returns=["CpuInfoFast"])
    s.struct("HotpluggableCPU", {"type": "str", "vcpus-count": "int",
                                 "props": "CpuInstanceProperties", "*qom-path": "str"})
    s.command("query-hotpluggable-cpus", returns=["HotpluggableCPU"])
    s.struct("ChardevInfo", {"label": "str", "filename": "str", "frontend-open": "bool"})
    s.command("query-chardev", returns=["ChardevInfo"])
    s.struct("IOThreadInfo", {"id": "str", "thread-id": "int", "poll-max-ns": "int",
                              "poll-grow": "int", "poll-shrink": "int",
                              "aio-max-batch": "int"})
    s.command("query-iothreads", returns=["IOThreadInfo"])
    s.struct("UuidInfo", {"UUID": "str"})
    s.command("query-uuid", returns="UuidInfo")

    s.struct("BlockInfo", {"device": "str", "*qdev": "str", "type": "str", "removable": "bool",
                           "locked": "bool", "*inserted": "BlockDeviceInfo",
                           "*tray_open": "bool", "*io-status": "BlockDeviceIoStatus"})
    s.command("query-block", returns=["BlockInfo"])
    s.struct("BlockStats", {"*device": "str", "*qdev": "str", "*node-name": "str",
                            "stats": "any", "*driver-specific": "any",
                            "*parent": "BlockStats", "*backing": "BlockStats"})
    s.command("query-blockstats", {"*query-nodes": "bool"}, returns=["BlockStats"])

    s.command("qom-list", {"path": "str"}, returns=["ObjectPropertyInfo"])
    s.command("qom-get", {"path": "str", "property": "str"}, returns="any")

    s.command("balloon", {"value": "int"})
    s.struct("BalloonInfo", {"actual": "int"})
    s.command("query-balloon", returns="BalloonInfo")
    s.event("BALLOON_CHANGE", {"actual": "int"})

    s.command("system_reset")
    s.command("system_powerdown")
    s.event("RESET", {"guest": "bool", "reason": "ShutdownCause"})
    s.event("POWERDOWN")
