"""block-dirty-bitmap-add/-remove/-clear/-enable/-disable/-merge and
x-debug-block-dirty-bitmap-sha256, with QEMU 7.2's checks in its order and its texts.

Each action is also a ``transaction`` action: :data:`ACTIONS` maps its name to a function
that applies it and returns the undo a failing transaction runs (QEMU's .abort).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..protocol.errors import QMPError
from ..protocol.session import Session
from ..schema import Registry
from .bitmaps import DEFAULT_GRANULARITY, MAX_NAME, DirtyBitmap
from .graph import BlockGraph
from .nodes import BlockNode

Undo = Callable[[], None]


def lookup(graph: BlockGraph, node: str, name: str) -> tuple[BlockNode, DirtyBitmap]:
    """block_dirty_bitmap_lookup()."""
    found = graph.nodes.get(node)
    if found is None:
        raise QMPError(f"Node '{node}' not found")
    bitmap = found.bitmaps.get(name)
    if bitmap is None:
        raise QMPError(f"Dirty bitmap '{name}' not found")
    return found, bitmap


def _check_busy(bitmap: DirtyBitmap) -> None:
    """bdrv_dirty_bitmap_check() for what a raw or file node's bitmap can be."""
    if bitmap.busy:
        raise QMPError(f"Bitmap '{bitmap.name}' is currently in use by another operation and "
                       "cannot be used")


def add(graph: BlockGraph, args: dict[str, Any]) -> Undo:
    """block_dirty_bitmap_add()."""
    name, node_name = args["name"], args["node"]
    if not name:
        raise QMPError("Bitmap name cannot be empty")
    node = graph.nodes.get(node_name)
    if node is None:
        raise QMPError(f"Cannot find device='{node_name}' nor node-name='{node_name}'")
    granularity = args.get("granularity", DEFAULT_GRANULARITY)
    if granularity < 512 or granularity & (granularity - 1):
        raise QMPError("Granularity must be power of 2 and at least 512")
    if args.get("persistent", False):
        raise QMPError(f"Can't store persistent bitmaps to {node_name}: Operation not supported")
    if name in node.bitmaps:
        raise QMPError(f"Bitmap already exists: {name}")
    if len(name.encode()) > MAX_NAME:
        raise QMPError(f"Bitmap name too long: {name}")
    bitmap = DirtyBitmap(name, granularity, node.length,
                         recording=not args.get("disabled", False))
    node.bitmaps[name] = bitmap
    return lambda: _drop(node, bitmap)


def _drop(node: BlockNode, bitmap: DirtyBitmap) -> None:
    if node.bitmaps.get(bitmap.name) is bitmap:
        del node.bitmaps[bitmap.name]


def remove(graph: BlockGraph, args: dict[str, Any]) -> Undo:
    """block_dirty_bitmap_remove(): refused while a job uses the bitmap."""
    node, bitmap = lookup(graph, args["node"], args["name"])
    _check_busy(bitmap)
    order = list(node.bitmaps)
    del node.bitmaps[bitmap.name]

    def undo() -> None:  # back in its place, so the query order is as before
        rest = dict(node.bitmaps)
        node.bitmaps.clear()
        for key in order:
            if key == bitmap.name:
                node.bitmaps[key] = bitmap
            elif key in rest:
                node.bitmaps[key] = rest.pop(key)
        node.bitmaps.update(rest)
    return undo


def clear(graph: BlockGraph, args: dict[str, Any]) -> Undo:
    """qmp_block_dirty_bitmap_clear() (a disabled bitmap may be cleared)."""
    _, bitmap = lookup(graph, args["node"], args["name"])
    _check_busy(bitmap)
    old = bitmap.clear()
    return lambda: bitmap.restore(old)


def _recording(value: bool) -> Callable[[BlockGraph, dict[str, Any]], Undo]:
    def action(graph: BlockGraph, args: dict[str, Any]) -> Undo:
        """block-dirty-bitmap-enable / -disable (twice is no error)."""
        _, bitmap = lookup(graph, args["node"], args["name"])
        _check_busy(bitmap)
        old = bitmap.recording
        bitmap.recording = value

        def undo() -> None:
            bitmap.recording = old
        return undo
    return action


def merge(graph: BlockGraph, args: dict[str, Any]) -> Undo:
    """block_dirty_bitmap_merge(): every source into an anonymous bitmap first, so the
    target is unchanged when a source is missing.  QEMU 7.2 crashes on an empty list; here
    it merges nothing."""
    node, target = lookup(graph, args["node"], args["target"])
    _check_busy(target)
    sources: list[DirtyBitmap] = []
    for ref in args["bitmaps"]:
        if isinstance(ref, str):
            src = node.bitmaps.get(ref)
            if src is None:
                raise QMPError(f"Dirty bitmap '{ref}' not found")
        else:
            _, src = lookup(graph, ref["node"], ref["name"])
        _check_busy(src)
        sources.append(src)
    old = target.snapshot()
    for src in sources:
        target.merge_from(src)
    return lambda: target.restore(old)


ACTIONS: dict[str, Callable[[BlockGraph, dict[str, Any]], Undo]] = {
    "block-dirty-bitmap-add": add,
    "block-dirty-bitmap-remove": remove,
    "block-dirty-bitmap-clear": clear,
    "block-dirty-bitmap-enable": _recording(True),
    "block-dirty-bitmap-disable": _recording(False),
    "block-dirty-bitmap-merge": merge,
}
"""The bitmap commands, which are also transaction actions (all six in QEMU 7.2)."""


def register(registry: Registry, graph: BlockGraph) -> None:
    """Attach the bitmap command handlers."""
    def command(action: Callable[[BlockGraph, dict[str, Any]], Undo]) -> Any:
        def handler(args: dict[str, Any], session: Session) -> None:
            action(graph, args)
        return handler

    for name, action in ACTIONS.items():
        registry.register(name, command(action))

    def sha256(args: dict[str, Any], session: Session) -> Any:
        _, bitmap = lookup(graph, args["node"], args["name"])
        return {"sha256": bitmap.sha256()}

    registry.register("x-debug-block-dirty-bitmap-sha256", sha256)
