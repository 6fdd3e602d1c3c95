"""QEMU 7.2's migration constants, as a running QEMU 7.2.22 reports them (colo.md §1).

The parameter order is the order query-migrate-parameters shows (QEMU's QDict order).
"""

from __future__ import annotations

from typing import Any, Final

CAPABILITIES: Final = ("xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress",
                       "events", "postcopy-ram", "x-colo", "release-ram", "block",
                       "return-path", "pause-before-switchover", "multifd", "dirty-bitmaps",
                       "postcopy-blocktime", "late-block-activate", "x-ignore-shared",
                       "validate-uuid", "background-snapshot", "zero-copy-send",
                       "postcopy-preempt")
"""MigrationCapability, in enum order (query-migrate-capabilities lists them so)."""

DEFAULT_PARAMETERS: Final[dict[str, Any]] = {
    "cpu-throttle-tailslow": False, "xbzrle-cache-size": 67108864, "cpu-throttle-initial": 20,
    "announce-max": 550, "decompress-threads": 2, "compress-threads": 8, "compress-level": 1,
    "multifd-channels": 2, "multifd-zstd-level": 1, "announce-initial": 50,
    "block-incremental": False, "compress-wait-thread": True, "downtime-limit": 300,
    "tls-authz": "", "multifd-compression": "none", "announce-rounds": 5,
    "announce-step": 100, "tls-creds": "", "multifd-zlib-level": 1, "max-cpu-throttle": 99,
    "max-postcopy-bandwidth": 0, "tls-hostname": "", "throttle-trigger-threshold": 50,
    "max-bandwidth": 134217728, "x-checkpoint-delay": 20000, "cpu-throttle-increment": 10,
}
"""query-migrate-parameters of a fresh QEMU 7.2."""

MIGRATION_STATUSES: Final = ("none", "setup", "cancelling", "cancelled", "active",
                             "postcopy-active", "postcopy-paused", "postcopy-recover",
                             "completed", "failed", "colo", "pre-switchover", "device",
                             "wait-unplug")
"""MigrationStatus, in enum order."""
