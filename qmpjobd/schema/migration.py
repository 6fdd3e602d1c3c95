"""Declarations of migration and COLO (qapi/migration.json, 7.2), the no-op commands the
COLO-FT recipe uses, and qmpjobd's x-prefixed COLO extensions."""

from __future__ import annotations

from .enums import (
    COLOExitReason,
    COLOMessage,
    COLOMode,
    FailoverStatus,
    MigrationStatus,
    XColoFaultAction,
    XColoFaultPhase,
)
from .model import Schema, TypeRef

MIGRATION_CAPABILITIES = ["xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress",
                 "events", "postcopy-ram", "x-colo", "release-ram", "block", "return-path",
                 "pause-before-switchover", "multifd", "dirty-bitmaps", "postcopy-blocktime",
                 "late-block-activate", "x-ignore-shared", "validate-uuid",
                 "background-snapshot", "zero-copy-send", "postcopy-preempt"]


def _parameters(tls: str) -> dict[str, TypeRef]:
    return {"*announce-initial": "size", "*announce-max": "size", "*announce-rounds": "size",
            "*announce-step": "size", "*compress-level": "uint8", "*compress-threads": "uint8",
            "*compress-wait-thread": "bool", "*decompress-threads": "uint8",
            "*throttle-trigger-threshold": "uint8", "*cpu-throttle-initial": "uint8",
            "*cpu-throttle-increment": "uint8", "*cpu-throttle-tailslow": "bool",
            "*tls-creds": tls, "*tls-hostname": tls, "*tls-authz": tls,
            "*max-bandwidth": "size", "*downtime-limit": "uint64",
            "*x-checkpoint-delay": "uint32", "*block-incremental": "bool",
            "*multifd-channels": "uint8", "*xbzrle-cache-size": "size",
            "*max-postcopy-bandwidth": "size", "*max-cpu-throttle": "uint8",
            "*multifd-compression": "MultiFDCompression", "*multifd-zlib-level": "uint8",
            "*multifd-zstd-level": "uint8"}


def declare(s: Schema) -> None:
    """Add migration, COLO, the COLO-FT helper commands and the x- extensions."""
    s.enum("MigrationStatus", MigrationStatus)
    s.enum("MigrationCapability", MIGRATION_CAPABILITIES)
    s.struct("MigrationCapabilityStatus", {"capability": "MigrationCapability",
                                           "state": "bool"})
    s.command("migrate-set-capabilities", {"capabilities": ["MigrationCapabilityStatus"]})
    s.command("query-migrate-capabilities", returns=["MigrationCapabilityStatus"])
    s.enum("MultiFDCompression", ["none", "zlib", "zstd"])
    s.alternate("StrOrNull", ["str", "null"])
    s.command("migrate-set-parameters", _parameters("StrOrNull"))
    s.struct("MigrationParameters", _parameters("str"))
    s.command("query-migrate-parameters", returns="MigrationParameters")
    s.struct("MigrationStats", {
        "transferred": "int", "remaining": "int", "total": "int", "duplicate": "int",
        "skipped": "int", "normal": "int", "normal-bytes": "int", "dirty-pages-rate": "int",
        "mbps": "number", "dirty-sync-count": "int", "postcopy-requests": "int",
        "page-size": "int", "multifd-bytes": "uint64", "pages-per-second": "uint64",
        "precopy-bytes": "uint64", "downtime-bytes": "uint64", "postcopy-bytes": "uint64",
        "dirty-sync-missed-zero-copy": "uint64"})
    s.enum("SocketAddressType", ["inet", "unix", "vsock", "fd"])
    s.struct("InetSocketAddress", {"host": "str", "port": "str", "*numeric": "bool",
                                   "*to": "uint16", "*ipv4": "bool", "*ipv6": "bool",
                                   "*keep-alive": "bool", "*mptcp": "bool"})
    s.struct("UnixSocketAddress", {"path": "str", "*abstract": "bool", "*tight": "bool"})
    s.struct("VsockSocketAddress", {"cid": "str", "port": "str"})
    s.struct("FdSocketAddress", {"str": "str"})
    s.union("SocketAddress", {"type": "SocketAddressType"}, "type",
            {"inet": "InetSocketAddress", "unix": "UnixSocketAddress",
             "vsock": "VsockSocketAddress", "fd": "FdSocketAddress"})
    s.struct("MigrationInfo", {"*status": "MigrationStatus", "*ram": "MigrationStats",
                               "*total-time": "int", "*expected-downtime": "int",
                               "*downtime": "int", "*setup-time": "int",
                               "*error-desc": "str", "*socket-address": ["SocketAddress"]})
    s.command("query-migrate", returns="MigrationInfo")
    s.command("migrate", {"uri": "str", "*blk": "bool", "*inc": "bool", "*detach": "bool",
                          "*resume": "bool"})
    s.command("migrate-incoming", {"uri": "str"})
    s.command("migrate_cancel")
    s.command("migrate-continue", {"state": "MigrationStatus"})
    s.event("MIGRATION", {"status": "MigrationStatus"})
    s.event("MIGRATION_PASS", {"pass": "int"})

    # COLO (7.2: no 'if': CONFIG_REPLICATION gating)
    s.enum("COLOMessage", COLOMessage)
    s.enum("COLOMode", COLOMode)
    s.enum("FailoverStatus", FailoverStatus)
    s.enum("COLOExitReason", COLOExitReason)
    s.event("COLO_EXIT", {"mode": "COLOMode", "reason": "COLOExitReason"})
    s.command("x-colo-lost-heartbeat")
    s.struct("COLOStatus", {"mode": "COLOMode", "last-mode": "COLOMode",
                            "reason": "COLOExitReason"})
    s.command("query-colo-status", returns="COLOStatus")
    s.command("xen-set-replication", {"enable": "bool", "primary": "bool",
                                      "*failover": "bool"})
    s.struct("ReplicationStatus", {"error": "bool", "*desc": "str"})
    s.command("query-xen-replication-status", returns="ReplicationStatus")
    s.command("xen-colo-do-checkpoint")

    # the net pieces of docs/COLO-FT.txt, recorded as no-ops (nbd-server-*: schema/block.py)
    s.union("SocketAddressLegacy", {"type": "SocketAddressType"}, "type",
            {"inet": "InetSocketAddressWrapper", "unix": "UnixSocketAddressWrapper",
             "vsock": "VsockSocketAddressWrapper", "fd": "StringWrapper"})
    s.struct("InetSocketAddressWrapper", {"data": "InetSocketAddress"})
    s.struct("UnixSocketAddressWrapper", {"data": "UnixSocketAddress"})
    s.struct("VsockSocketAddressWrapper", {"data": "VsockSocketAddress"})
    s.struct("StringWrapper", {"data": "String"})
    s.struct("String", {"str": "str"})
    s.command("x-blockdev-change", {"parent": "str", "*child": "str", "*node": "str"})
    s.command("object-add", {"qom-type": "str", "id": "str", "*props": "any",
                             "*insert": "str", "*position": "str", "*netdev": "str",
                             "*queue": "str", "*status": "str", "*indev": "str",
                             "*outdev": "str", "*primary_in": "str", "*secondary_in": "str",
                             "*iothread": "str", "*notify_dev": "str", "*vnet_hdr_support":
                             "bool", "*compare_timeout": "uint64",
                             "*expired_scan_cycle": "uint32", "*max_queue_size": "uint32"})
    s.command("object-del", {"id": "str"})
    s.command("chardev-add", {"id": "str", "backend": "any"}, returns="ChardevReturn")
    s.struct("ChardevReturn", {"*pty": "str"})
    s.command("chardev-remove", {"id": "str"})

    # qmpjobd extensions (x-prefixed: QEMU clients never meet them)
    s.enum("XColoFaultPhase", XColoFaultPhase)
    s.enum("XColoFaultAction", XColoFaultAction)
    s.command("x-daemon-colo-inject", {"phase": "XColoFaultPhase",
                                       "action": "XColoFaultAction", "*delay-ms": "uint32",
                                       "*wait": "bool"})
    s.command("x-daemon-colo-checkpoint")
    s.command("x-daemon-colo-set", {"*verify": "bool"})
    s.command("x-daemon-heartbeat", {"*listen": "str", "*peer": "str", "*interval-ms": "uint32",
                                     "*timeout-ms": "uint32", "*auto-failover": "bool",
                                     "*witness": "str"})
    s.enum("XWorkloadPattern", ["random", "sweep", "hot-set"])
    s.command("x-daemon-workload", {"*rate": "uint32", "*pattern": "XWorkloadPattern",
                                    "*hot-pages": "uint32"})
    s.command("x-daemon-disk-workload", {"device": "str", "*rate": "uint64",
                                         "*block-size": "uint32",
                                         "*pattern": "XWorkloadPattern", "*offset": "uint64",
                                         "*length": "uint64"})
    s.struct("XDiskWorkload", {"device": "str", "rate": "int", "block-size": "int",
                               "pattern": "XWorkloadPattern", "writes": "int", "bytes": "int",
                               "running": "bool", "*error": "str"})
    s.command("x-query-disk-workload", returns=["XDiskWorkload"])
    s.struct("XGuestCheckpoint", {"checkpoint": "int", "digest": "str"})
    s.struct("XGuestState", {"digest": "str", "checkpoint": "int", "checkpoint-digest": "str",
                             "history": ["XGuestCheckpoint"], "dirty-pages": "int",
                             "ram-size": "int", "page-size": "int", "vclock": "int",
                             "runstate": "RunState"})
    s.command("x-query-guest-state", returns="XGuestState")
    s.struct("XColoMetrics", {"checkpoints": "int", "*downtime-last-ms": "number",
                              "*downtime-median-ms": "number", "*downtime-p90-ms": "number",
                              "*downtime-max-ms": "number", "*period-median-ms": "number",
                              "ram-bytes-last": "int",
                              "device-bytes-last": "int", "dirty-pages-last": "int",
                              "reverted-pages-last": "int", "*failover-ms": "number",
                              "*heartbeat": "any"})
    s.command("x-query-colo-metrics", returns="XColoMetrics")
