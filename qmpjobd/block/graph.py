"""The block graph: named nodes built from blockdev-add options, and their lookup rules."""

from __future__ import annotations

import errno as errnos
from typing import Any

from ..protocol.errors import QMPError
from .nodes import BlkdebugNode, BlockNode, FileNode, InjectRule, NullNode, RawNode


class BlockGraph:
    """All block nodes, by node name, in creation order."""

    def __init__(self) -> None:
        self.nodes: dict[str, BlockNode] = {}
        self._auto = 0

    def lookup(self, name: str) -> BlockNode:
        """A node by name, with QEMU's text for a missing one (bdrv_lookup_bs)."""
        node = self.nodes.get(name)
        if node is None:
            raise QMPError(f"Cannot find device='{name}' nor node-name='{name}'")
        return node

    def add(self, opts: dict[str, Any], top: bool = True) -> BlockNode:
        """blockdev-add: build a node (and inline children) from validated options."""
        name = opts.get("node-name")
        if name is None:
            if top:
                raise QMPError("'node-name' must be specified for the root node")
            self._auto += 1
            name = f"#block{self._auto:03d}"
        elif name in self.nodes:
            raise QMPError(f"Duplicate nodes with node-name='{name}'")
        driver = opts["driver"]
        read_only = opts.get("read-only", False)
        node: BlockNode
        if driver == "file":
            try:
                node = FileNode(name, opts["filename"], read_only)
            except OSError as e:
                raise QMPError(str(e.strerror)) from e
        elif driver == "null-co":
            node = NullNode(name, opts.get("size", 1 << 30), opts.get("read-zeroes", False),
                            {k: v for k, v in opts.items() if k not in ("driver", "node-name")})
        elif driver == "raw":
            child = self._child(opts["file"])
            node = RawNode(name, child, opts.get("offset", 0), opts.get("size"), read_only)
        else:  # blkdebug
            child = self._child(opts["image"])
            rules = [InjectRule(r["event"], r.get("errno", errnos.EIO), r.get("sector"),
                                r.get("once", False)) for r in opts.get("inject-error", [])]
            node = BlkdebugNode(name, child, rules, opts.get("inject-error", []))
        for child in node.children:
            child.parents.append(node)
        node.monitor_owned = top
        self.nodes[name] = node
        return node

    def _child(self, ref: Any) -> BlockNode:
        if isinstance(ref, str):
            return self.lookup(ref)
        return self.add(ref, top=False)

    def delete(self, name: str) -> None:
        """blockdev-del: only an unused top node goes, with its implicit children."""
        node = self.nodes.get(name)
        if node is None:
            raise QMPError(f"Failed to find node with node-name='{name}'")
        if not node.monitor_owned:
            raise QMPError(f"Node {name} is not owned by the monitor")
        if node.job_targets:
            kinds = ", ".join(sorted(node.job_targets))
            raise QMPError(f"Node '{name}' is busy: block device is in use by block job: "
                           f"{kinds}")
        if node.parents or node.users:
            raise QMPError(f"Block device {name} is in use")
        self._drop(node)

    def _drop(self, node: BlockNode) -> None:
        del self.nodes[node.node_name]
        node.close()
        for child in node.children:
            child.parents.remove(node)
            if not child.monitor_owned and not child.parents:
                self._drop(child)

    def close(self) -> None:
        """Close every node (daemon exit)."""
        for node in list(self.nodes.values()):
            node.close()
        self.nodes.clear()
