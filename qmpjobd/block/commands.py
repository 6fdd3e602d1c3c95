"""blockdev-add/-del, query-named-block-nodes, blockdev-backup and drive-backup."""

from __future__ import annotations

import os
from typing import Any

from ..jobs import JobRegistry
from ..protocol.errors import QMPError
from ..protocol.session import Session
from ..schema import Registry
from .backup import BackupJob
from .graph import BlockGraph
from .mirror import MirrorJob
from .nodes import FileNode


def register(registry: Registry, graph: BlockGraph, jobs: JobRegistry) -> None:
    """Attach the block command handlers."""

    def blockdev_add(args: dict[str, Any], session: Session) -> None:
        graph.add(args)

    def blockdev_del(args: dict[str, Any], session: Session) -> None:
        graph.delete(args["node-name"])

    def query_nodes(args: dict[str, Any], session: Session) -> Any:
        return [n.info() for n in reversed(graph.nodes.values())]

    def start_copy(args: dict[str, Any], target_node: Any, cls: type[BackupJob]) -> None:
        source = graph.lookup(args["device"])
        if source is target_node:
            raise QMPError("Source and target cannot be the same")
        sync = args["sync"]
        if sync not in ("full", "top"):
            raise QMPError(f"sync mode '{sync}' is not supported by qmpjobd")
        if target_node.length < source.length:
            raise QMPError("Source and target image have different sizes")
        job = cls(args.get("job-id", ""), source, target_node,
                        on_source_error=args.get("on-source-error", "report"),
                        on_target_error=args.get("on-target-error", "report"),
                        auto_finalize=args.get("auto-finalize", True),
                        auto_dismiss=args.get("auto-dismiss", True),
                        speed=args.get("speed", 0))
        jobs.create(job)
        job.attach()
        jobs.start(job)
        if cls is BackupJob:  # backup drains the block layer; mirror does not
            jobs.drain()

    def blockdev_copy(cls: type[BackupJob]) -> Any:
        def handler(args: dict[str, Any], session: Session) -> None:
            graph.lookup(args["device"])
            start_copy(args, graph.lookup(args["target"]), cls)
        return handler

    def drive_copy(cls: type[BackupJob]) -> Any:
        return lambda args, session: drive_copy_start(args, cls)

    def drive_copy_start(args: dict[str, Any], cls: type[BackupJob]) -> None:
        source = graph.lookup(args["device"])
        fmt = args.get("format", "raw")
        if fmt != "raw":
            raise QMPError(f"Unknown driver '{fmt}'")
        path = args["target"]
        if args.get("mode", "absolute-paths") == "absolute-paths":
            try:
                with open(path, "wb") as f:
                    f.truncate(source.length)
            except OSError as e:
                raise QMPError(f"Could not create '{path}': {os.strerror(e.errno or 5)}") from e
        try:
            target = FileNode(f"#backup-target-{args.get('job-id', '')}", path)
        except OSError as e:
            raise QMPError(str(e.strerror)) from e
        try:
            start_copy(args, target, cls)
        except QMPError:
            target.close()
            raise
        job = jobs.find(args.get("job-id", ""))
        if isinstance(job, BackupJob):
            job.owns_target = True
        else:
            target.close()

    registry.register("blockdev-add", blockdev_add)
    registry.register("blockdev-del", blockdev_del)
    registry.register("query-named-block-nodes", query_nodes)
    registry.register("blockdev-backup", blockdev_copy(BackupJob))
    registry.register("drive-backup", drive_copy(BackupJob))
    registry.register("blockdev-mirror", blockdev_copy(MirrorJob))
    registry.register("drive-mirror", drive_copy(MirrorJob))
