"""The HMP commands qmpjobd implements, each over the QMP commands its QEMU 7.2 counterpart
calls (hmp-cmds.c, block/monitor/block-hmp-cmds.c, hw/core/machine-hmp-cmds.c), with the same
output texts."""

from __future__ import annotations

import math
from typing import Any

from .monitor import Hmp, Monitor, Run


def register(hmp: Hmp) -> None:
    """Implement the commands below in ``hmp``'s tables."""
    hmp.implement("help", "name:S?", lambda mon, a: hmp.help(mon, a.get("name")))
    hmp.implement("info", "item:s?", lambda mon, a: hmp.help(mon, "info"))
    hmp.implement("info status", "", info_status)
    hmp.implement("info version", "", info_version)
    hmp.implement("info name", "", info_name)
    hmp.implement("info uuid", "", lambda mon, a: mon.printf(f"{mon.qmp('query-uuid')['UUID']}\n"))
    hmp.implement("info kvm", "", info_kvm)
    hmp.implement("info cpus", "", info_cpus)
    hmp.implement("info hotpluggable-cpus", "", info_hotpluggable_cpus)
    hmp.implement("info chardev", "", info_chardev)
    hmp.implement("info iothreads", "", info_iothreads)
    hmp.implement("info block", "nodes:-n,verbose:-v,device:B?", info_block)
    hmp.implement("info block-jobs", "", info_block_jobs)
    hmp.implement("stop", "", lambda mon, a: mon.qmp("stop"))
    hmp.implement("cont", "", lambda mon, a: mon.qmp_or_error("cont"))
    hmp.implement("system_reset", "", lambda mon, a: mon.qmp("system_reset"))
    hmp.implement("system_powerdown", "", lambda mon, a: mon.qmp("system_powerdown"))
    hmp.implement("quit", "", lambda mon, a: mon.qmp("quit"))
    hmp.implement("block_job_cancel", "force:-f,device:B", lambda mon, a: mon.qmp_or_error(
        "block-job-cancel", {"device": a["device"], "force": a.get("force", False)}))
    for verb in ("complete", "pause", "resume"):
        hmp.implement(f"block_job_{verb}", "device:B", _block_job(f"block-job-{verb}"))
    hmp.implement("x_colo_lost_heartbeat", "",
                  lambda mon, a: mon.qmp_or_error("x-colo-lost-heartbeat"))


def _block_job(qmp_name: str) -> Run:
    """hmp_block_job_complete/pause/resume: the QMP command of the same verb."""
    return lambda mon, a: mon.qmp_or_error(qmp_name, {"device": a["device"]})


# -- machine -----------------------------------------------------------------------------------

def info_status(mon: Monitor, args: dict[str, Any]) -> None:
    """hmp_info_status(): ``paused`` names any other stopped state in parentheses."""
    info = mon.qmp("query-status")
    text = "VM status: " + ("running" if info["running"] else "paused")
    if info["singlestep"]:
        text += " (single step mode)"
    if not info["running"] and info["status"] != "paused":
        text += f" ({info['status']})"
    mon.printf(text + "\n")


def info_version(mon: Monitor, args: dict[str, Any]) -> None:
    """hmp_info_version(): the triple, then the package string with no space between."""
    info = mon.qmp("query-version")
    v = info["qemu"]
    mon.printf(f"{v['major']}.{v['minor']}.{v['micro']}{info['package']}\n")


def info_name(mon: Monitor, args: dict[str, Any]) -> None:
    """hmp_info_name(): nothing at all for a VM without a name."""
    info = mon.qmp("query-name")
    if "name" in info:
        mon.printf(f"{info['name']}\n")


def info_kvm(mon: Monitor, args: dict[str, Any]) -> None:
    """hmp_info_kvm().  Without query-kvm the answer is QEMU 7.2's under ``-accel tcg``
    (KVM built in, not in use), which is what qmpjobd stands for."""
    info = mon.qmp("query-kvm") if "query-kvm" in mon.hmp.registry.handlers \
        else {"enabled": False, "present": True}
    state = ("enabled" if info["enabled"] else "disabled") if info["present"] \
        else "not compiled"
    mon.printf(f"kvm support: {state}\n")


def info_cpus(mon: Monitor, args: dict[str, Any]) -> None:
    """hmp_info_cpus(): the monitor's current CPU is starred."""
    for cpu in mon.qmp("query-cpus-fast"):
        active = "*" if cpu["cpu-index"] == mon.cpu_index else " "
        mon.printf(f"{active} CPU #{cpu['cpu-index']}: thread_id={cpu['thread-id']}\n")


_CPU_PROPS = ("node-id", "socket-id", "die-id", "cluster-id", "core-id", "thread-id")
"""What 7.2's hmp_hotpluggable_cpus() prints of CpuInstanceProperties, in its order."""


def info_hotpluggable_cpus(mon: Monitor, args: dict[str, Any]) -> None:
    """hmp_hotpluggable_cpus()."""
    mon.printf("Hotpluggable CPUs:\n")
    for cpu in mon.qmp("query-hotpluggable-cpus"):
        mon.printf(f'  type: "{cpu["type"]}"\n')
        mon.printf(f'  vcpus_count: "{cpu["vcpus-count"]}"\n')
        if "qom-path" in cpu:
            mon.printf(f'  qom_path: "{cpu["qom-path"]}"\n')
        mon.printf("  CPUInstance Properties:\n")
        for prop in _CPU_PROPS:
            if prop in cpu["props"]:
                mon.printf(f'    {prop}: "{cpu["props"][prop]}"\n')


def info_chardev(mon: Monitor, args: dict[str, Any]) -> None:
    """hmp_info_chardev()."""
    for dev in mon.qmp("query-chardev"):
        mon.printf(f"{dev['label']}: filename={dev['filename']}\n")


def info_iothreads(mon: Monitor, args: dict[str, Any]) -> None:
    """hmp_info_iothreads()."""
    for t in mon.qmp("query-iothreads"):
        mon.printf(f"{t['id']}:\n  thread_id={t['thread-id']}\n"
                   f"  poll-max-ns={t['poll-max-ns']}\n  poll-grow={t['poll-grow']}\n"
                   f"  poll-shrink={t['poll-shrink']}\n"
                   f"  aio-max-batch={t['aio-max-batch']}\n")


# -- block ---------------------------------------------------------------------------------------

def info_block(mon: Monitor, args: dict[str, Any]) -> None:
    """hmp_info_block(): the devices (query-block); with ``-n``, or a name no device has, the
    named nodes (query-named-block-nodes).  A blank line separates entries, and comes before
    any entry that is not the first of its list, even when those before it were skipped."""
    device = args.get("device")
    verbose = args.get("verbose", False)
    nodes = args.get("nodes", False)
    printed = False
    for i, info in enumerate([] if nodes else mon.qmp("query-block")):
        if device is not None and device != info["device"]:
            continue
        if i:
            mon.printf("\n")
        _print_block_info(mon, info, info.get("inserted"), verbose)
        printed = True
    if (device is None and not nodes) or printed:
        return
    for i, node in enumerate(mon.qmp("query-named-block-nodes")):
        if device is not None and device != node["node-name"]:
            continue
        if i:
            mon.printf("\n")
        _print_block_info(mon, None, node, verbose)


def _print_block_info(mon: Monitor, info: dict[str, Any] | None,
                      inserted: dict[str, Any] | None, verbose: bool) -> None:
    """print_block_info()."""
    if info is not None and info["device"]:
        mon.printf(info["device"])
        if inserted is not None and "node-name" in inserted:
            mon.printf(f" ({inserted['node-name']})")
    elif inserted is not None and "node-name" in inserted:
        mon.printf(inserted["node-name"])
    else:
        mon.printf(info["qdev"] if info is not None and "qdev" in info else "<anonymous>")
    if inserted is not None:
        mon.printf(f": {inserted['file']} ({inserted['drv']}"
                   f"{', read-only' if inserted['ro'] else ''}"
                   f"{', encrypted' if inserted['encrypted'] else ''})\n")
    else:
        mon.printf(": [not inserted]\n")
    if info is not None:
        if "qdev" in info:
            mon.printf(f"    Attached to:      {info['qdev']}\n")
        if info.get("io-status", "ok") != "ok":
            mon.printf(f"    I/O status:       {info['io-status']}\n")
        if info["removable"]:
            mon.printf(f"    Removable device: {'' if info['locked'] else 'not '}locked, "
                       f"tray {'open' if info.get('tray_open') else 'closed'}\n")
    if inserted is None:
        return
    cache = inserted["cache"]
    mon.printf(f"    Cache mode:       {'writeback' if cache['writeback'] else 'writethrough'}"
               f"{', direct' if cache['direct'] else ''}"
               f"{', ignore flushes' if cache['no-flush'] else ''}\n")
    if "backing_file" in inserted:
        mon.printf(f"    Backing file:     {inserted['backing_file']} "
                   f"(chain depth: {inserted['backing_file_depth']})\n")
    if inserted["detect_zeroes"] != "off":
        mon.printf(f"    Detect zeroes:    {inserted['detect_zeroes']}\n")
    if any(inserted.get(k, 0) for k in ("bps", "bps_rd", "bps_wr", "iops", "iops_rd",
                                         "iops_wr")):
        values = " ".join(f"{k}={inserted.get(k, 0)}" for k in (
            "bps", "bps_rd", "bps_wr", "bps_max", "bps_rd_max", "bps_wr_max", "iops",
            "iops_rd", "iops_wr", "iops_max", "iops_rd_max", "iops_wr_max", "iops_size"))
        mon.printf(f"    I/O throttling:   {values} group={inserted.get('group', '')}\n")
    if verbose and "image" in inserted:
        mon.printf("\nImages:\n")
        image: dict[str, Any] | None = inserted["image"]
        while image is not None:
            _image_info_dump(mon, image)
            image = image.get("backing-image")


def _image_info_dump(mon: Monitor, image: dict[str, Any]) -> None:
    """bdrv_image_info_dump(), for what qmpjobd's nodes report (no snapshots, no
    format-specific data)."""
    disk = size_to_str(image["actual-size"]) if "actual-size" in image else "unavailable"
    mon.printf(f"image: {image['filename']}\nfile format: {image['format']}\n"
               f"virtual size: {size_to_str(image['virtual-size'])} "
               f"({image['virtual-size']} bytes)\ndisk size: {disk}\n")
    if image.get("encrypted"):
        mon.printf("encrypted: yes\n")
    if "cluster-size" in image:
        mon.printf(f"cluster_size: {image['cluster-size']}\n")
    if image.get("dirty-flag"):
        mon.printf("cleanly shut down: no\n")
    if "backing-filename" in image:
        text = f"backing file: {image['backing-filename']}"
        full = image.get("full-backing-filename")
        if full is None:
            text += " (cannot determine actual path)"
        elif full != image["backing-filename"]:
            text += f" (actual path: {full})"
        mon.printf(text + "\n")
        if "backing-filename-format" in image:
            mon.printf(f"backing file format: {image['backing-filename-format']}\n")


_SUFFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")


def size_to_str(val: int) -> str:
    """QEMU's size_to_str(): three significant digits of a binary unit, switching to the
    next unit from 1000 of the current one."""
    exp = math.frexp(val / (1000.0 / 1024.0))[1]
    i = int((exp - 1) / 10)  # C's division truncates toward zero (0 bytes: i = 0)
    return f"{val / (1 << (i * 10)):0.3g} {_SUFFIXES[i]}B"  # C's %0.3g


def info_block_jobs(mon: Monitor, args: dict[str, Any]) -> None:
    """hmp_info_block_jobs()."""
    jobs = mon.qmp("query-block-jobs")
    if not jobs:
        mon.printf("No active jobs\n")
        return
    for j in jobs:
        progress = (f"Completed {j['offset']} of {j['len']} bytes, "
                    f"speed limit {j['speed']} bytes/s\n")
        if j["type"] == "stream":
            mon.printf(f"Streaming device {j['device']}: {progress}")
        else:
            mon.printf(f"Type {j['type']}, device {j['device']}: {progress}")

