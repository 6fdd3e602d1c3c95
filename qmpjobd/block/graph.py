"""The block graph: named nodes built from blockdev-add options, and their lookup rules."""

from __future__ import annotations

import errno as errnos
import re
from collections.abc import Callable
from typing import Any

from ..protocol.errors import QMPError
from .nodes import BlkdebugNode, BlockNode, FileNode, InjectRule, NullNode, RawNode
from .qcow2 import Qcow2Error, Qcow2Node

_NODE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]*\Z")
_ABSENT = object()
MAX_DEPTH = 64
"""Deepest chain of nodes accepted (QEMU has no fixed limit; Python's recursion does)."""


class BlockGraph:
    """All block nodes, by node name, in creation order."""

    def __init__(self) -> None:
        self.nodes: dict[str, BlockNode] = {}
        self.on_replace: list[Callable[[BlockNode, BlockNode], None]] = []
        """Told when a node takes another's place (a mirror's pivot): devices follow."""
        self._auto = 0
        self._reserved: set[str] = set()

    def lookup(self, name: str) -> BlockNode:
        """A node by name, with QEMU's text for a missing one (bdrv_lookup_bs)."""
        node = self.nodes.get(name)
        if node is None:
            raise QMPError(f"Cannot find device='{name}' nor node-name='{name}'")
        return node

    def add(self, opts: dict[str, Any]) -> BlockNode:
        """blockdev-add: build a node and its inline children, all or nothing."""
        created: list[BlockNode] = []
        self._reserved = set()
        try:
            node = self._build(opts, True, created, 0)
        except BaseException:
            for n in created:
                n.close()
            raise
        finally:
            self._reserved = set()
        for n in created:
            for child in n.children:
                child.parents.append(n)
            self.nodes[n.node_name] = n
        return node

    def replace(self, old: BlockNode, new: BlockNode) -> None:
        """``new`` takes ``old``'s place for whoever uses it from outside the graph."""
        for listener in list(self.on_replace):
            listener(old, new)

    def auto_name(self) -> str:
        """A name for a node nobody named (an inline child, a job's filter): ``#blockNNN``."""
        while True:
            self._auto += 1
            name = f"#block{self._auto:03d}"
            if name not in self.nodes:
                return name

    def _name(self, opts: dict[str, Any], top: bool, created: list[BlockNode]) -> str:
        name = opts.get("node-name")
        if name is None:
            if top:
                raise QMPError("'node-name' must be specified for the root node")
            return self.auto_name()
        if not _NODE_NAME.match(name):
            raise QMPError(f"Invalid node-name: '{name}'")
        if len(name) > 31:
            raise QMPError("Node name too long")
        if name in self.nodes or name in self._reserved:
            raise QMPError(f"Duplicate nodes with node-name='{name}'")
        self._reserved.add(name)
        return str(name)

    def _build(self, opts: dict[str, Any], top: bool, created: list[BlockNode],
               depth: int) -> BlockNode:
        if depth > MAX_DEPTH:
            raise QMPError(f"Block graph too deep (more than {MAX_DEPTH} levels)")
        name = self._name(opts, top, created)
        driver = opts["driver"]
        read_only = opts.get("read-only", False)
        node: BlockNode
        if driver == "file":
            try:
                node = FileNode(name, opts["filename"], read_only)
            except PermissionError as e:
                if read_only or not opts.get("auto-read-only", False):
                    raise QMPError(str(e.strerror)) from e
                try:  # auto-read-only: a file we may not write is opened read-only
                    node = FileNode(name, opts["filename"], True)
                except OSError as e2:
                    raise QMPError(str(e2.strerror)) from e2
            except OSError as e:
                raise QMPError(str(e.strerror)) from e
        elif driver == "null-co":
            node = NullNode(name, max(0, opts.get("size", 1 << 30)),
                            opts.get("read-zeroes", False),
                            {k: v for k, v in opts.items() if k not in ("driver", "node-name")})
            node.read_only = read_only
        elif driver == "raw":
            child = self._child(opts["file"], created, depth)
            offset, size = opts.get("offset", 0), opts.get("size")
            for key, value in (("offset", offset), ("size", size)):
                if value is not None and value < 0:
                    raise QMPError(f"Parameter '{key}' expects a non-negative number "
                                   "below 2^64")
            if size is not None and offset + size > child.length:
                raise QMPError(f"The sum of offset ({offset}) and size ({size}) has to be "
                               "smaller or equal to the actual size of the containing file "
                               f"({child.length})")
            node = RawNode(name, child, offset, size, read_only or child.read_only)
        elif driver == "qcow2":
            file = self._child(opts["file"], created, depth)
            ref = opts.get("backing", _ABSENT)
            backing = None if ref is None or ref is _ABSENT else \
                self._child(ref, created, depth)
            try:
                node = Qcow2Node(name, file, backing, read_only or file.read_only)
            except (Qcow2Error, OSError) as e:
                raise QMPError(str(e)) from e
            if ref is _ABSENT and node.backing_file:
                raise QMPError(f"qmpjobd opens a qcow2 image's backing file only as a node "
                               f"given in 'backing' (this image names "
                               f"'{node.backing_file}')")
        else:  # blkdebug
            child = self._child(opts["image"], created, depth)
            rules = [InjectRule(r["event"], r.get("errno", errnos.EIO), r.get("sector"),
                                r.get("once", False)) for r in opts.get("inject-error", [])]
            node = BlkdebugNode(name, child, rules, opts.get("inject-error", []))
            node.read_only = read_only or child.read_only
        cache = opts.get("cache", {})
        node.cache = {"no-flush": cache.get("no-flush", False),
                      "direct": cache.get("direct", False), "writeback": True}
        node.detect_zeroes = opts.get("detect-zeroes", "off")
        node.unmap = opts.get("discard", "ignore") == "unmap"
        node.monitor_owned = top
        node.depth = 1 + max((c.depth for c in node.children), default=0)
        if node.depth > MAX_DEPTH:
            raise QMPError(f"Block graph too deep (more than {MAX_DEPTH} levels)")
        created.append(node)
        return node

    def _child(self, ref: Any, created: list[BlockNode], depth: int) -> BlockNode:
        if isinstance(ref, str):
            return self.lookup(ref)
        return self._build(ref, False, created, depth + 1)

    def delete(self, name: str) -> None:
        """blockdev-del: only an unused top node goes, with its implicit children."""
        node = self.nodes.get(name)
        if node is None:
            raise QMPError(f"Failed to find node with node-name='{name}'")
        if node.devices or node.exports:
            raise QMPError(f"Node {name} is in use")
        if not node.monitor_owned:
            raise QMPError(f"Node {name} is not owned by the monitor")
        if node.job_targets:
            kinds = ", ".join(sorted(node.job_targets))
            raise QMPError(f"Node '{name}' is busy: block device is in use by block job: "
                           f"{kinds}")
        for parent in node.parents:
            if isinstance(parent, Qcow2Node) and parent.backing is node:
                raise QMPError(f"Node '{name}' is busy: node is used as backing hd of "
                               f"'{parent.node_name}'")
        if node.parents or node.users:
            raise QMPError(f"Block device {name} is in use")
        self._drop(node)

    def _drop(self, node: BlockNode) -> None:
        del self.nodes[node.node_name]
        node.close()
        for child in node.children:
            child.parents.remove(node)
        self.collect()

    def collect(self) -> None:
        """Close inline children that lost their parent once no job uses them any more
        (a job keeps the node it copies to or from alive, as QEMU's reference does)."""
        while True:
            orphans = [n for n in self.nodes.values() if not n.monitor_owned and not n.parents
                       and not n.users and not n.job_targets]
            if not orphans:
                return
            for n in orphans:
                del self.nodes[n.node_name]
                n.close()
                for child in n.children:
                    child.parents.remove(n)

    def close(self) -> None:
        """Close every node (daemon exit)."""
        for node in list(self.nodes.values()):
            node.close()
        self.nodes.clear()
