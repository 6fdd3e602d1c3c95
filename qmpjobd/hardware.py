"""The machine's hardware as QEMU's QMP shows it: vCPUs, devices, character devices.

There is no guest to run, but libvirt moves each vCPU thread into a cgroup and looks devices up
by their QOM paths, so each vCPU is a real (idle) thread with its own tid, named as QEMU names
it with ``debug-threads=on``, and each ``-device`` that names a ``drive`` is the front end of
that block node in ``query-block`` and ``query-blockstats``.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

from .block.graph import BlockGraph
from .block.nodes import BlockNode
from .libc import libc
from .protocol.errors import QMPError
from .protocol.session import Session
from .qemu import data
from .schema import Registry

_VIRTIO_BLK = frozenset(("virtio-blk-pci", "virtio-blk-device", "virtio-blk-ccw"))
_BLOCK_PROXIES = frozenset(("virtio-blk-pci", "virtio-blk-ccw"))
"""Devices whose id names a proxy: the backend belongs to the virtio device inside."""


def _flag(value: Any) -> bool:
    """A qdev bool property as JSON or QemuOpts gives it (true, "on", "yes"...)."""
    return value is True or (isinstance(value, str) and value in ("on", "yes", "true", "y"))


@dataclass
class Device:
    """A ``-device``: its id, driver and (for a disk) the node it is attached to."""

    id: str
    driver: str
    drive: str | None = None
    props: dict[str, Any] = field(default_factory=dict)

    anon: int = -1
    """For a device without an id, its index among those (QOM's peripheral-anon)."""

    @property
    def qom_path(self) -> str:
        """Where QOM puts the device: by id, or under peripheral-anon without one."""
        if not self.id:
            return f"/machine/peripheral-anon/device[{self.anon}]"
        return f"/machine/peripheral/{self.id}"

    @property
    def block_qdev(self) -> str:
        """What query-block reports as the device (blk_get_attached_dev_id): its id, or its
        QOM path without one; virtio-blk's backend is the inner device, which has no id."""
        if self.driver in _VIRTIO_BLK:
            return f"{self.qom_path}/virtio-backend"
        return self.id or self.qom_path


@dataclass
class Chardev:
    """A character device as query-chardev lists it."""

    label: str
    filename: str
    frontend_open: bool = False


class _Vcpu:
    """One idle thread standing for a vCPU: it exists so its tid can be placed in a cgroup."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.tid = 0
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, accel: str) -> None:
        self._thread.name = f"CPU {self.index}/{accel}"
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        self.tid = threading.get_native_id()
        _set_thread_name(self._thread.name)
        self._ready.set()
        self._stop.wait()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


def _set_thread_name(name: str) -> None:
    """prctl(PR_SET_NAME): the name ps and /proc show, as QEMU's debug-threads gives it."""
    with contextlib.suppress(AttributeError, OSError):
        libc().prctl(15, name.encode()[:15], 0, 0, 0)


class Hardware:
    """vCPUs, devices and chardevs, with the QMP commands that show them."""

    def __init__(self, block: BlockGraph, *, cpus: int = 0, cpu_model: str = "qemu64",
                 uuid: str = "00000000-0000-0000-0000-000000000000", max_cpus: int = 0,
                 topology: tuple[int, int, int] = (0, 0, 0), ram: int = 0) -> None:
        self.block = block
        self.ram = ram
        self.max_cpus = max(cpus, max_cpus)
        _, cores, threads = topology
        self.threads = threads or 1
        self.cores = cores or 1
        self.cpu_model = cpu_model
        self.uuid = uuid
        self.devices: dict[str, Device] = {}
        self.chardevs: list[Chardev] = []
        self.accel = "TCG"
        """The accelerator's name in the vCPU threads' names (QEMU's debug-threads)."""
        self._vcpus = [_Vcpu(i) for i in range(cpus)]
        self._started = False
        block.on_replace.append(self._node_replaced)

    def add_device(self, dev: Device) -> None:
        """Attach a device; its drive must name an existing node (QEMU's texts otherwise)."""
        if not dev.id:
            dev.anon = sum(1 for d in self.devices.values() if not d.id)
        elif dev.id in self.devices:
            raise QMPError(f"Duplicate device ID '{dev.id}'")
        if dev.drive is not None:
            node = self.block.lookup(dev.drive)
            if any(d.drive == node.node_name for d in self.devices.values()):
                raise QMPError(f"Property '{dev.driver}.drive' can't take value "
                               f"'{dev.drive}': Node '{dev.drive}' is already in use")
        self.devices[dev.id or dev.qom_path] = dev
        if dev.drive is not None:
            self.block.nodes[dev.drive].devices.add(dev.id or dev.qom_path)

    def _node_replaced(self, old: BlockNode, new: BlockNode) -> None:
        """A mirror pivoted: the devices on ``old`` now have ``new`` inserted."""
        for key, dev in self.devices.items():
            if dev.drive == old.node_name:
                dev.drive = new.node_name
                old.devices.discard(key)
                new.devices.add(key)

    # -- qemu-io targets (HMP) ---------------------------------------------------------------

    def io_target(self, name: str, qdev: bool) -> tuple[BlockNode, Device | None]:
        """hmp_qemu_io()'s lookup: with ``qdev`` a device id (its own backend), else a node
        name (under a new anonymous backend); QEMU's texts when there is none."""
        if qdev:
            dev = self.devices.get(name)
            if dev is None:
                raise QMPError(f"Device '{name}' not found", "DeviceNotFound")
            if dev.drive is None or dev.driver in _BLOCK_PROXIES or \
                    dev.drive not in self.block.nodes:
                raise QMPError("Device does not have a block device backend")
            return self.block.nodes[dev.drive], dev
        node = self.block.nodes.get(name)
        if node is None:
            raise QMPError(f"Cannot find device='' nor node-name='{name}'")
        return node, None

    def drive_node(self, device: str) -> BlockNode:
        """The node a device's drive is now (after any pivot), for the disk workload."""
        dev = self.devices.get(device)
        if dev is None:
            raise QMPError(f"Device '{device}' not found", "DeviceNotFound")
        if dev.drive is None or dev.drive not in self.block.nodes:
            raise QMPError(f"Device '{device}' has no drive")
        return self.block.nodes[dev.drive]

    def write_refusal(self, node: BlockNode, dev: Device | None) -> str | None:
        """Why a qemu-io write on ``node`` is refused, as QEMU's permission check says it: a
        device (without share-rw) or a format node above it that does not share writes,
        or a read-only node.  ``dev``: the write goes through that device's own backend."""
        if dev is None:
            blocker = self._write_blocker(node)
            if blocker is not None:
                n = node.node_name
                return (f"Permission conflict on node '{n}': permissions 'write' are both "
                        f"required by an unnamed block device (uses node '{n}' as 'root' "
                        f"child) and unshared by {blocker}.")
        if node.read_only:
            return "Block node is read-only"
        return None

    def _write_blocker(self, node: BlockNode) -> str | None:
        """The first user of ``node`` that does not share write permission, in QEMU's words."""
        if node.filters:
            return f"node '{node.filters[-1]}' (uses node '{node.node_name}' as 'file' child)"
        for dev in self.devices.values():
            if dev.drive == node.node_name and not _flag(dev.props.get("share-rw", False)):
                return (f"block device '{dev.block_qdev}' (uses node '{node.node_name}' as "
                        "'root' child)")
        for parent in node.parents:
            if self._write_blocker(parent) is not None:
                role = "image" if parent.driver == "blkdebug" else "file"
                return (f"node '{parent.node_name}' (uses node '{node.node_name}' as "
                        f"'{role}' child)")
        return None

    def start(self) -> None:
        """Start the vCPU threads (needs no event loop)."""
        if not self._started:
            self._started = True
            for v in self._vcpus:
                v.start(self.accel)

    def close(self) -> None:
        """Stop the vCPU threads."""
        for v in self._vcpus:
            v.stop()

    def register(self, registry: Registry) -> None:
        """Attach the command handlers."""
        registry.register("query-cpus-fast", self.query_cpus_fast)
        registry.register("query-hotpluggable-cpus", self.query_hotpluggable_cpus)
        registry.register("query-chardev", lambda args, session: [
            {"frontend-open": c.frontend_open, "filename": c.filename, "label": c.label}
            for c in self.chardevs])
        registry.register("query-iothreads", lambda args, session: [])
        registry.register("query-uuid", lambda args, session: {"UUID": self.uuid})
        registry.register("query-block", self.query_block)
        registry.register("query-blockstats", self.query_blockstats)
        registry.register("qom-list", self.qom_list)
        registry.register("qom-get", self.qom_get)
        registry.register("balloon", self.balloon)
        registry.register("query-balloon", self.query_balloon)

    # -- CPUs ------------------------------------------------------------------------------

    def _cpu_props(self, index: int) -> dict[str, int]:
        """Socket, core and thread of vCPU ``index`` (x86's topology ids)."""
        return {"core-id": index // self.threads % self.cores,
                "thread-id": index % self.threads,
                "socket-id": index // (self.threads * self.cores)}

    @staticmethod
    def _cpu_path(index: int) -> str:
        """QOM path of a vCPU: the pc machine creates one more unattached device after the
        first vCPU, so the others follow from device[2] (as QEMU 7.2 shows them)."""
        return f"/machine/unattached/device[{index + 1 if index else 0}]"

    def query_cpus_fast(self, args: dict[str, Any], session: Session) -> Any:
        """query-cpus-fast: each vCPU with the tid of its thread."""
        return [{"thread-id": v.tid, "props": self._cpu_props(v.index),
                 "qom-path": self._cpu_path(v.index), "cpu-index": v.index,
                 "target": "x86_64"} for v in self._vcpus]

    def query_hotpluggable_cpus(self, args: dict[str, Any], session: Session) -> Any:
        """query-hotpluggable-cpus: every slot up to maxcpus, last first; a present vCPU
        has its QOM path."""
        out = []
        for index in reversed(range(self.max_cpus)):
            entry: dict[str, Any] = {"props": self._cpu_props(index), "vcpus-count": 1}
            if index < len(self._vcpus):
                entry["qom-path"] = self._cpu_path(index)
            entry["type"] = f"{self.cpu_model}-x86_64-cpu"
            out.append(entry)
        return out

    # -- block devices -----------------------------------------------------------------------

    def _disks(self) -> list[tuple[Device, BlockNode]]:
        return [(dev, self.block.nodes[dev.drive]) for dev in self.devices.values()
                if dev.drive is not None and dev.drive in self.block.nodes]

    def query_block(self, args: dict[str, Any], session: Session) -> Any:
        """query-block: one entry per device with a drive (its node inserted)."""
        return [{"io-status": "ok", "device": "", "locked": False, "removable": False,
                 "inserted": node.info(), "qdev": dev.block_qdev, "type": "unknown"}
                for dev, node in self._disks()]

    def query_blockstats(self, args: dict[str, Any], session: Session) -> Any:
        """query-blockstats: the devices' nodes (or, with query-nodes, every named node);
        no guest I/O is emulated yet, so the counters stay at zero."""
        if args.get("query-nodes", False):  # every named node, oldest first, no device key
            return [_stats_entry(n, None) for n in self.block.nodes.values()]
        return [_stats_entry(node, dev) for dev, node in self._disks()]

    # -- memory balloon ------------------------------------------------------------------------

    def _balloon_device(self) -> None:
        if not any(d.driver.startswith("virtio-balloon") for d in self.devices.values()):
            raise QMPError("No balloon device has been activated", "DeviceNotActive")

    def balloon(self, args: dict[str, Any], session: Session) -> Any:
        """balloon: the target is taken; no guest driver answers, so the size stays."""
        self._balloon_device()
        if args["value"] <= 0:
            raise QMPError("Parameter 'target' expects a size")

    def query_balloon(self, args: dict[str, Any], session: Session) -> Any:
        """query-balloon: all of RAM (the emulated guest never gives any back)."""
        self._balloon_device()
        return {"actual": self.ram}

    # -- QOM -----------------------------------------------------------------------------------

    def qom_list(self, args: dict[str, Any], session: Session) -> Any:
        """qom-list of the containers and vCPUs libvirt reads."""
        path = args["path"]
        if path == "/machine/peripheral":
            return [{"name": "type", "type": "string"}] + [
                {"name": d.id, "type": f"child<{d.driver}>"} for d in self.devices.values()
                if d.id]
        if self._vcpu_at(path) is not None:
            return self._cpu_qom()["qom-list"]
        raise QMPError(f"Device '{path}' not found", "DeviceNotFound")

    def qom_get(self, args: dict[str, Any], session: Session) -> Any:
        """qom-get of a vCPU property: QEMU 7.2's recorded value for the model, with this
        vCPU's own topology ids."""
        path, prop = args["path"], args["property"]
        index = self._vcpu_at(path)
        if index is None:
            raise QMPError(f"Device '{path}' not found", "DeviceNotFound")
        own = self._cpu_props(index)
        if prop in own:
            return own[prop]
        if prop == "apic-id":
            return self._apic_id(index)
        reply = self._cpu_qom()["qom-get"].get(prop)
        if reply is None:
            raise QMPError(f"Property '{self.cpu_model}-x86_64-cpu.{prop}' not found")
        if "error" in reply:
            raise QMPError(reply["error"]["desc"], reply["error"]["class"])
        value = reply["return"]
        first = self._cpu_path(0) + "/"
        if isinstance(value, str) and value.startswith(first):  # a child of this vCPU
            return path + "/" + value[len(first):]
        return value

    def _vcpu_at(self, path: str) -> int | None:
        for v in self._vcpus:
            if self._cpu_path(v.index) == path:
                return v.index
        return None

    def _apic_id(self, index: int) -> int:
        """x86's APIC id: thread, core and socket in bit fields sized to the topology."""
        thread_bits = (self.threads - 1).bit_length()
        core_bits = (self.cores - 1).bit_length()
        props = self._cpu_props(index)
        return (props["socket-id"] << (core_bits + thread_bits)) \
            | (props["core-id"] << thread_bits) | props["thread-id"]

    def _cpu_qom(self) -> Any:
        models = data.load("qemu72-x86_64-cpu.json")
        return models.get(self.cpu_model, models["qemu64"])


_ZERO_STATS: dict[str, Any] = {
    "unmap_operations": 0, "unmap_merged": 0, "flush_total_time_ns": 0,
    "wr_highest_offset": 0, "wr_total_time_ns": 0, "failed_wr_operations": 0,
    "failed_rd_operations": 0, "wr_merged": 0, "wr_bytes": 0, "timed_stats": [],
    "failed_unmap_operations": 0, "failed_flush_operations": 0, "account_invalid": False,
    "rd_total_time_ns": 0, "invalid_unmap_operations": 0, "flush_operations": 0,
    "wr_operations": 0, "unmap_bytes": 0, "rd_merged": 0, "rd_bytes": 0,
    "unmap_total_time_ns": 0, "invalid_flush_operations": 0, "account_failed": False,
    "rd_operations": 0, "invalid_wr_operations": 0, "invalid_rd_operations": 0}


def _file_specific(node: BlockNode) -> dict[str, Any]:
    return {"discard-bytes-ok": 0, "discard-nb-ok": 0, "driver": "file",
            "discard-nb-failed": 0}


def _stats_entry(node: BlockNode, dev: Device | None) -> dict[str, Any]:
    """One BlockStats: a node's counters, its file child's under ``parent`` (QEMU's shape)."""
    entry: dict[str, Any] = {"device": ""} if dev is not None else {}
    if node.children:
        child = node.children[0]
        parent: dict[str, Any] = {"stats": dict(_ZERO_STATS), "node-name": child.node_name}
        if child.driver == "file":
            parent["driver-specific"] = _file_specific(child)
        entry["parent"] = parent
    entry["stats"] = dict(_ZERO_STATS, account_invalid=dev is not None,
                          account_failed=dev is not None)
    entry["node-name"] = node.node_name
    if node.driver == "file":
        entry["driver-specific"] = _file_specific(node)
    if dev is not None:
        entry["qdev"] = dev.block_qdev
    return entry
