"""Declarations of the block commands qmpjobd implements (qapi/block-core.json, 7.2 subset).

Only the drivers qmpjobd really has are in BlockdevDriver (file, raw, null-co, blkdebug), so
query-qmp-schema tells a probing client exactly what it can use.
"""

from __future__ import annotations

from .model import Schema

BLKDEBUG_EVENTS = [
    "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
    "l2_load", "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write",
    "read_aio", "read_backing_aio", "read_compressed", "write_aio", "write_compressed",
    "vmstate_load", "vmstate_save", "cow_read", "cow_write", "reftable_load", "reftable_grow",
    "reftable_update", "refblock_load", "refblock_update", "refblock_update_part",
    "refblock_alloc", "refblock_alloc_hookup", "refblock_alloc_write",
    "refblock_alloc_write_blocks", "refblock_alloc_write_table", "refblock_alloc_switch_table",
    "cluster_alloc", "cluster_alloc_bytes", "cluster_free", "flush_to_os", "flush_to_disk",
    "pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail",
    "pwritev", "pwritev_zero", "pwritev_done", "empty_image_prepare", "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters", "cor_write", "cluster_alloc_space", "none"]


def declare(s: Schema) -> None:
    """Add blockdev-add/-del, query-named-block-nodes and the backup commands."""
    s.enum("BlockdevDriver", ["blkdebug", "file", "null-co", "qcow2", "raw"])
    s.enum("BlkdebugEvent", BLKDEBUG_EVENTS)
    s.enum("BlkdebugIOType", ["read", "write", "write-zeroes", "discard", "flush",
                              "block-status"])
    s.struct("BlkdebugInjectErrorOptions", {
        "event": "BlkdebugEvent", "*state": "int", "*iotype": "BlkdebugIOType",
        "*errno": "int", "*sector": "int", "*once": "bool", "*immediately": "bool"})
    s.enum("OnOffAuto", ["auto", "on", "off"])
    s.enum("BlockdevAioOptions", ["threads", "native", "io_uring"])
    s.enum("BlockdevDiscardOptions", ["ignore", "unmap"])
    s.struct("BlockdevCacheOptions", {"*direct": "bool", "*no-flush": "bool"})
    s.struct("BlockdevOptionsFile", {"filename": "str", "*pr-manager": "str",
                                     "*locking": "OnOffAuto", "*aio": "BlockdevAioOptions",
                                     "*aio-max-batch": "int", "*drop-cache": "bool",
                                     "*x-check-cache-dropped": "bool"})
    s.struct("BlockdevOptionsNull", {"*size": "int", "*latency-ns": "uint64",
                                     "*read-zeroes": "bool"})
    s.struct("BlockdevOptionsRaw", {"file": "BlockdevRef", "*offset": "int", "*size": "int"})
    s.struct("BlockdevOptionsBlkdebug", {"image": "BlockdevRef",
                                         "*inject-error": ["BlkdebugInjectErrorOptions"]})
    s.union("BlockdevOptions", {"driver": "BlockdevDriver", "*node-name": "str",
                                "*discard": "BlockdevDiscardOptions",
                                "*cache": "BlockdevCacheOptions", "*read-only": "bool",
                                "*auto-read-only": "bool", "*force-share": "bool",
                                "*detect-zeroes": "BlockdevDetectZeroesOptions"}, "driver",
            {"blkdebug": "BlockdevOptionsBlkdebug", "file": "BlockdevOptionsFile",
             "null-co": "BlockdevOptionsNull", "qcow2": "BlockdevOptionsQcow2",
             "raw": "BlockdevOptionsRaw"})
    s.alternate("BlockdevRef", ["BlockdevOptions", "str"])
    s.alternate("BlockdevRefOrNull", ["BlockdevOptions", "str", "null"])
    s.struct("BlockdevOptionsQcow2", {"file": "BlockdevRef", "*backing": "BlockdevRefOrNull",
                                      "*lazy-refcounts": "bool",
                                      "*pass-discard-request": "bool",
                                      "*pass-discard-snapshot": "bool",
                                      "*pass-discard-other": "bool", "*cache-size": "int",
                                      "*l2-cache-size": "int", "*l2-cache-entry-size": "int",
                                      "*refcount-cache-size": "int",
                                      "*cache-clean-interval": "int"})
    s.command("blockdev-add", "BlockdevOptions")
    s.enum("PreallocMode", ["off", "metadata", "falloc", "full"])
    s.struct("BlockdevCreateOptionsFile", {"filename": "str", "size": "size",
                                           "*preallocation": "PreallocMode", "*nocow": "bool",
                                           "*extent-size-hint": "size"})
    s.enum("BlockdevQcow2Version", ["v2", "v3"])
    s.enum("Qcow2CompressionType", ["zlib", "zstd"])
    s.struct("BlockdevCreateOptionsQcow2", {
        "file": "BlockdevRef", "*data-file": "BlockdevRef", "*data-file-raw": "bool",
        "*extended-l2": "bool", "size": "size", "*version": "BlockdevQcow2Version",
        "*backing-file": "str", "*backing-fmt": "BlockdevDriver", "*cluster-size": "size",
        "*preallocation": "PreallocMode", "*lazy-refcounts": "bool", "*refcount-bits": "int",
        "*compression-type": "Qcow2CompressionType"})
    s.union("BlockdevCreateOptions", {"driver": "BlockdevDriver"}, "driver",
            {"file": "BlockdevCreateOptionsFile", "qcow2": "BlockdevCreateOptionsQcow2"})
    s.command("blockdev-create", {"job-id": "str", "options": "BlockdevCreateOptions"})
    s.command("blockdev-del", {"node-name": "str"})
    s.struct("ImageInfo", {"filename": "str", "format": "str", "*dirty-flag": "bool",
                           "*actual-size": "int", "virtual-size": "int",
                           "*backing-image": "ImageInfo"})
    s.struct("BlockdevCacheInfo", {"writeback": "bool", "direct": "bool", "no-flush": "bool"})
    s.enum("BlockdevDetectZeroesOptions", ["off", "on", "unmap"])
    s.struct("BlockDeviceInfo", {
        "file": "str", "*node-name": "str", "ro": "bool", "drv": "str",
        "backing_file_depth": "int", "encrypted": "bool",
        "detect_zeroes": "BlockdevDetectZeroesOptions", "bps": "int", "bps_rd": "int",
        "bps_wr": "int", "iops": "int", "iops_rd": "int", "iops_wr": "int",
        "image": "ImageInfo", "cache": "BlockdevCacheInfo", "write_threshold": "int",
        "*dirty-bitmaps": ["BlockDirtyInfo"]})
    s.struct("BlockDirtyInfo", {"*name": "str", "recording": "bool", "busy": "bool",
                                "granularity": "uint32", "count": "int", "persistent": "bool",
                                "*inconsistent": "bool"})
    s.struct("BlockDirtyBitmap", {"node": "str", "name": "str"})
    s.struct("BlockDirtyBitmapAdd", {"node": "str", "name": "str", "*granularity": "uint32",
                                     "*persistent": "bool", "*disabled": "bool"})
    s.alternate("BlockDirtyBitmapOrStr", ["str", "BlockDirtyBitmap"])
    s.struct("BlockDirtyBitmapMerge", {"node": "str", "target": "str",
                                       "bitmaps": ["BlockDirtyBitmapOrStr"]})
    s.struct("BlockDirtyBitmapSha256", {"sha256": "str"})
    s.command("block-dirty-bitmap-add", "BlockDirtyBitmapAdd")
    for verb in ("remove", "clear", "enable", "disable"):
        s.command(f"block-dirty-bitmap-{verb}", "BlockDirtyBitmap")
    s.command("block-dirty-bitmap-merge", "BlockDirtyBitmapMerge")
    s.command("x-debug-block-dirty-bitmap-sha256", "BlockDirtyBitmap",
              returns="BlockDirtyBitmapSha256")
    s.command("query-named-block-nodes", {"*flat": "bool"}, returns=["BlockDeviceInfo"])

    # the NBD server and block exports (block/nbd.py)
    s.command("nbd-server-start", {"addr": "SocketAddressLegacy", "*tls-creds": "str",
                                   "*tls-authz": "str", "*max-connections": "uint32"})
    s.command("nbd-server-add", {"*name": "str", "*description": "str", "device": "str",
                                 "*writable": "bool", "*bitmap": "str"})
    s.enum("BlockExportRemoveMode", ["safe", "hard"])
    s.command("nbd-server-remove", {"name": "str", "*mode": "BlockExportRemoveMode"})
    s.command("nbd-server-stop")
    s.enum("BlockExportType", ["nbd", "vhost-user-blk", "fuse", "vduse-blk"])
    s.union("BlockExportOptions", {
        "type": "BlockExportType", "id": "str", "*fixed-iothread": "bool", "*iothread": "str",
        "node-name": "str", "*writable": "bool", "*writethrough": "bool"}, "type",
        {"nbd": "BlockExportOptionsNbd", "vhost-user-blk": "BlockExportOptionsVhostUserBlk",
         "fuse": "BlockExportOptionsFuse", "vduse-blk": "BlockExportOptionsVduseBlk"})
    s.struct("BlockExportOptionsNbd", {"*name": "str", "*description": "str",
                                       "*bitmaps": ["BlockDirtyBitmapOrStr"],
                                       "*allocation-depth": "bool"})
    s.struct("BlockExportOptionsVhostUserBlk", {"addr": "SocketAddress",
                                                "*logical-block-size": "size",
                                                "*num-queues": "uint16"})
    s.enum("FuseExportAllowOther", ["off", "on", "auto"])
    s.struct("BlockExportOptionsFuse", {"mountpoint": "str", "*growable": "bool",
                                        "*allow-other": "FuseExportAllowOther"})
    s.struct("BlockExportOptionsVduseBlk", {"name": "str", "*num-queues": "uint16",
                                            "*queue-size": "uint16",
                                            "*logical-block-size": "size", "*serial": "str"})
    s.command("block-export-add", "BlockExportOptions")
    s.command("block-export-del", {"id": "str", "*mode": "BlockExportRemoveMode"})
    s.struct("BlockExportInfo", {"id": "str", "type": "BlockExportType", "node-name": "str",
                                 "shutting-down": "bool"})
    s.command("query-block-exports", returns=["BlockExportInfo"])
    s.event("BLOCK_EXPORT_DELETED", {"id": "str"})

    s.enum("MirrorSyncMode", ["top", "full", "none", "incremental", "bitmap"])
    s.enum("BlockdevOnError", ["report", "ignore", "enospc", "stop", "auto"])
    s.enum("NewImageMode", ["existing", "absolute-paths"])
    common = {"*job-id": "str", "device": "str", "sync": "MirrorSyncMode", "*speed": "int",
              "*on-source-error": "BlockdevOnError", "*on-target-error": "BlockdevOnError",
              "*auto-finalize": "bool", "*auto-dismiss": "bool"}
    s.enum("BitmapSyncMode", ["on-success", "never", "always"])
    backup = {**common, "*bitmap": "str", "*bitmap-mode": "BitmapSyncMode"}
    s.struct("BlockdevBackup", {**backup, "target": "str"})
    s.struct("DriveBackup", {**backup, "target": "str", "*format": "str",
                             "*mode": "NewImageMode"})
    s.command("blockdev-backup", "BlockdevBackup")
    s.command("drive-backup", "DriveBackup")
    bitmap_actions = {f"block-dirty-bitmap-{verb}": wrapper for verb, wrapper in (
        ("add", "BlockDirtyBitmapAddWrapper"), ("remove", "BlockDirtyBitmapWrapper"),
        ("clear", "BlockDirtyBitmapWrapper"), ("enable", "BlockDirtyBitmapWrapper"),
        ("disable", "BlockDirtyBitmapWrapper"), ("merge", "BlockDirtyBitmapMergeWrapper"))}
    s.enum("TransactionActionKind", ["abort", *bitmap_actions, "blockdev-backup",
                                     "drive-backup"])
    s.struct("Abort", {})
    s.struct("AbortWrapper", {"data": "Abort"})
    s.struct("BlockDirtyBitmapAddWrapper", {"data": "BlockDirtyBitmapAdd"})
    s.struct("BlockDirtyBitmapWrapper", {"data": "BlockDirtyBitmap"})
    s.struct("BlockDirtyBitmapMergeWrapper", {"data": "BlockDirtyBitmapMerge"})
    s.struct("BlockdevBackupWrapper", {"data": "BlockdevBackup"})
    s.struct("DriveBackupWrapper", {"data": "DriveBackup"})
    s.union("TransactionAction", {"type": "TransactionActionKind"}, "type",
            {"abort": "AbortWrapper", **bitmap_actions,
             "blockdev-backup": "BlockdevBackupWrapper", "drive-backup": "DriveBackupWrapper"})
    s.enum("ActionCompletionMode", ["individual", "grouped"])
    s.struct("TransactionProperties", {"*completion-mode": "ActionCompletionMode"})
    s.command("transaction", {"actions": ["TransactionAction"],
                              "*properties": "TransactionProperties"})
    s.enum("MirrorCopyMode", ["background", "write-blocking"])
    mirror = {**common, "*replaces": "str", "*granularity": "uint32", "*buf-size": "int",
              "*copy-mode": "MirrorCopyMode"}
    s.command("blockdev-mirror", {**mirror, "target": "str"})
    s.command("drive-mirror", {**mirror, "target": "str", "*format": "str",
                               "*mode": "NewImageMode"})
