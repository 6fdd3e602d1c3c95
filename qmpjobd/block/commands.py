"""blockdev-add/-del, query-named-block-nodes, backup and mirror commands, transaction (with
the dirty bitmap actions of bitmap_commands.py)."""

from __future__ import annotations

from typing import Any

from ..jobs import Job, JobRegistry, Txn
from ..protocol.errors import QMPError
from ..protocol.session import Session
from ..schema import Registry
from . import bitmap_commands, create
from .backup import BackupJob
from .bitmaps import DirtyBitmap
from .graph import BlockGraph
from .mirror import MirrorJob
from .nodes import BlockNode, FileNode


def _backup_bitmap(args: dict[str, Any], source: BlockNode
                   ) -> tuple[str, DirtyBitmap | None, str]:
    """do_backup_common()'s checks of sync, bitmap and bitmap-mode, in QEMU's order; returns
    the sync mode (incremental is bitmap with on-success), the bitmap and its mode."""
    sync, name, mode = args["sync"], args.get("bitmap"), args.get("bitmap-mode")
    if sync in ("bitmap", "incremental") and name is None:
        raise QMPError(f"must provide a valid bitmap name for '{sync}' sync mode")
    if sync == "incremental":
        if mode is not None and mode != "on-success":
            raise QMPError("Bitmap sync mode must be 'on-success' when using sync mode "
                           "'incremental'")
        sync, mode = "bitmap", "on-success"
    bitmap = None
    if name is not None:
        bitmap = source.bitmaps.get(name)
        if bitmap is None:
            raise QMPError(f"Bitmap '{name}' could not be found")
        if mode is None:
            raise QMPError("Bitmap sync mode must be given when providing a bitmap")
        if bitmap.busy:
            raise QMPError(f"Bitmap '{name}' is currently in use by another operation and "
                           "cannot be used")
        if sync == "none":
            raise QMPError("sync mode 'none' does not produce meaningful bitmap outputs")
        if mode == "never" and sync != "bitmap":
            raise QMPError(f"Bitmap sync mode 'never' has no meaningful effect when combined "
                           f"with sync mode '{sync}'")
    elif mode is not None:
        raise QMPError("Cannot specify bitmap sync mode without a bitmap")
    return sync, bitmap, mode or "on-success"


def register(registry: Registry, graph: BlockGraph, jobs: JobRegistry) -> None:
    """Attach the block command handlers."""

    def blockdev_add(args: dict[str, Any], session: Session) -> None:
        graph.add(args)

    def blockdev_del(args: dict[str, Any], session: Session) -> None:
        graph.delete(args["node-name"])

    def query_nodes(args: dict[str, Any], session: Session) -> Any:
        flat = args.get("flat", False)
        return [n.info(flat) for n in reversed(graph.nodes.values())]

    def prepare_copy(args: dict[str, Any], target_node: Any, cls: type[BackupJob],
                     txn: Txn | None = None) -> BackupJob:
        """Create (but do not start) a backup or mirror job; QEMU's checks in its order."""
        source = graph.lookup(args["device"])
        sync = args["sync"]
        bitmap = None
        if cls is BackupJob:
            sync, bitmap, mode = _backup_bitmap(args, source)
        if source is target_node:
            raise QMPError("Source and target cannot be the same")
        if target_node.read_only:
            raise QMPError("Could not create node: Block node is read-only")
        if target_node.job_targets:
            kinds = ", ".join(sorted(target_node.job_targets))
            raise QMPError(f"Node '{target_node.node_name}' is busy: block device is in use by "
                           f"block job: {kinds}")
        if sync not in ("full", "top") and cls is not BackupJob:
            raise QMPError(f"sync mode '{sync}' is not supported by qmpjobd")
        if target_node.length < source.length:
            raise QMPError("Source and target image have different sizes")
        job = cls(args.get("job-id", ""), source, target_node,
                  on_source_error=args.get("on-source-error", "report"),
                  on_target_error=args.get("on-target-error", "report"),
                  auto_finalize=args.get("auto-finalize", True),
                  auto_dismiss=args.get("auto-dismiss", True),
                  speed=args.get("speed", 0))
        job.sync = sync
        if isinstance(job, MirrorJob):
            job.on_pivot = graph.replace
            job.write_blocking = args.get("copy-mode") == "write-blocking"
        if bitmap is not None:
            job.sync_bitmap, job.bitmap_mode = bitmap, mode
        if job.cbw:
            job.filter_name = graph.auto_name()
        jobs.create(job, txn)
        job.attach()
        job.on_clean = graph.collect
        return job

    def target_for(args: dict[str, Any], drive: bool) -> tuple[Any, bool]:
        """The target node: a named node, or (drive-*) a file opened, created if asked."""
        if not drive:
            graph.lookup(args["device"])
            return graph.lookup(args["target"]), False
        source = graph.lookup(args["device"])
        fmt = args.get("format", "raw")
        if fmt != "raw":
            raise QMPError(f"Unknown driver '{fmt}'")
        path = args["target"]
        create = source.length if args.get("mode", "absolute-paths") == "absolute-paths" \
            else None
        try:
            return FileNode(f"#target-{args.get('job-id', '')}", path,
                            create_size=create), True
        except OSError as e:
            raise QMPError(str(e.strerror)) from e

    def prepare(args: dict[str, Any], cls: type[BackupJob], drive: bool,
                txn: Txn | None = None) -> BackupJob:
        target, owned = target_for(args, drive)
        try:
            job = prepare_copy(args, target, cls, txn)
        except QMPError:
            if owned:
                target.close()
            raise
        job.owns_target = owned
        return job

    def copy_command(cls: type[BackupJob], drive: bool) -> Any:
        def handler(args: dict[str, Any], session: Session) -> None:
            jobs.check_accepting()
            if cls is not BackupJob:  # mirror does not drain
                jobs.start(prepare(args, cls, drive))
                return
            # backup runs as a one-action transaction, as in QEMU 7.2: a full drain first,
            # then the source stays drained while the job is created and started
            jobs.drain()
            source = graph.nodes.get(args["device"])
            held = jobs.quiesce(lambda j: isinstance(j, BackupJob)
                                and source in (j.source, j.target))
            try:
                job = prepare(args, cls, drive)
                jobs.start(job)
                held = jobs.quiesce(lambda j: j is job) + held  # it resumes first
            finally:
                jobs.release(held)
        return handler

    def transaction(args: dict[str, Any], session: Session) -> None:
        jobs.check_accepting()
        actions = args["actions"]
        grouped = args.get("properties", {}).get("completion-mode") == "grouped"
        txn = Txn() if grouped else None
        created: list[BackupJob] = []
        undo: list[bitmap_commands.Undo] = []
        try:
            for action in actions:
                kind = action["type"]
                if grouped and (kind == "abort" or kind in bitmap_commands.ACTIONS):
                    raise QMPError(f"Action '{kind}' does not support Transaction property "
                                   "completion-mode = grouped")
                if kind == "abort":
                    raise QMPError("Transaction aborted using Abort action")
                if kind in bitmap_commands.ACTIONS:
                    undo.append(bitmap_commands.ACTIONS[kind](graph, action["data"]))
                    continue
                created.append(prepare(action["data"], BackupJob, kind == "drive-backup", txn))
        except QMPError:
            for job in created:  # never started: created -> aborting -> concluded -> null
                if job.status == "created":  # a grouped abort may have taken the rest
                    jobs.cancel(job, True)
            for step in reversed(undo):
                step()
            raise
        # commit under a drain: each job starts and pauses at once, all resume at the end
        others = jobs.quiesce()
        held: list[Job] = []
        for job in created:
            jobs.start(job)
            held += jobs.quiesce(lambda j, job=job: j is job)
        jobs.release(held + others)

    registry.register("blockdev-add", blockdev_add)
    registry.register("blockdev-del", blockdev_del)
    registry.register("query-named-block-nodes", query_nodes)
    registry.register("blockdev-backup", copy_command(BackupJob, drive=False))
    registry.register("drive-backup", copy_command(BackupJob, drive=True))
    registry.register("blockdev-mirror", copy_command(MirrorJob, drive=False))
    registry.register("drive-mirror", copy_command(MirrorJob, drive=True))
    registry.register("transaction", transaction)
    bitmap_commands.register(registry, graph)
    create.register(registry, graph, jobs)
