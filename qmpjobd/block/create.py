"""blockdev-create: a job of type ``create`` that makes an image (QEMU 7.2's block/create.c
and file-posix's raw_co_create), for the ``file`` driver, and a qcow2 image on an existing
node (what libvirt makes for scratch and copy targets).

As in QEMU, the file is opened (created) when the job starts, before the command replies, so
a path that cannot be created fails the job at once (its ``aborting`` and ``concluded`` come
before the reply); clearing it, sizing it and preallocating it run in a worker thread.  A
create job finalizes by itself and stays ``concluded`` until ``job-dismiss``; a cancel does
not stop the preallocation (QEMU's does not either).
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import Any

from ..errors import QmpjobdError
from ..jobs import Job, JobError, JobRegistry
from ..protocol.errors import QMPError
from ..protocol.session import Session
from ..schema import Registry
from . import qcow2
from .graph import BlockGraph
from .nodes import BlockNode

FIRST_BLOCK = 4096
"""allocate_first_block(): zeros written at the start of a new file, so that alignment
probing finds allocated data (QEMU's file shows 4 KiB used after creation)."""

_FULL_STEP = 65536
"""preallocation=full writes zeros this many bytes at a time, as QEMU does."""

_OFF_T_MAX = (1 << 63) - 1


class CreateError(QmpjobdError):
    """Creating the image failed; the text is QEMU's."""


class CreateJob(Job):
    """One blockdev-create of a ``file`` image."""

    job_type = "create"

    def __init__(self, job_id: str, options: dict[str, Any]) -> None:
        super().__init__(job_id, auto_finalize=True, auto_dismiss=False)
        self.filename: str = options["filename"]
        self.size: int = options["size"]
        self.prealloc: str = options.get("preallocation", "off")
        self.extent_hint: int | None = options.get("extent-size-hint")
        self.fd = -1
        self.total_progress = 1

    def open(self) -> str | None:
        """raw_co_create() up to its first wait: check the extent size hint, create (or
        open) the file.  Returns the error text, or None."""
        if self.extent_hint is not None and self.extent_hint > 0xFFFFFFFF:
            return "Extent size hint is too large"
        try:
            self.fd = os.open(self.filename, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC |
                              os.O_NONBLOCK, 0o644)
        except OSError as e:
            return f"Could not create '{self.filename}': {os.strerror(e.errno or errno.EIO)}"
        os.set_blocking(self.fd, True)
        return None

    async def run(self) -> None:
        try:  # not Job.io(): like QEMU's, a cancelled create still finishes its work
            await asyncio.to_thread(self._create)
        except CreateError as e:
            raise JobError(str(e)) from None
        finally:
            self._close()
            self.set_progress(1)  # done, failed or not (QEMU updates it either way)

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def clean(self) -> None:
        self._close()

    def _create(self) -> None:
        """Clear the file, then size it with the preallocation asked for."""
        fd = self.fd
        _truncate(fd, 0)
        current = 0
        size, mode = self.size, self.prealloc
        if mode == "off":
            _truncate(fd, size)
            if size > 0:
                os.pwrite(fd, bytes(min(FIRST_BLOCK, size)), 0)
        elif mode == "falloc":
            if size != current:
                try:
                    os.posix_fallocate(fd, current, size - current)
                except (OSError, OverflowError) as e:
                    raise CreateError("Could not preallocate new data: "
                                      f"{_strerror(e, errno.EINVAL)}") from None
                os.pwrite(fd, bytes(min(FIRST_BLOCK, size)), 0)
        elif mode == "full":
            _truncate(fd, size)
            zeros = bytes(_FULL_STEP)
            offset = current
            while offset < size:
                try:
                    offset += os.pwrite(fd, zeros[:min(_FULL_STEP, size - offset)], offset)
                except InterruptedError:
                    continue
                except OSError as e:
                    raise CreateError("Could not write zeros for preallocation: "
                                      f"{_strerror(e, errno.EIO)}") from None
            try:
                os.fsync(fd)
            except OSError as e:
                raise CreateError(f"Could not flush file to disk: {_strerror(e, errno.EIO)}") \
                    from None
        else:
            raise CreateError(f"Unsupported preallocation mode: {mode}")


def _strerror(e: BaseException, default: int) -> str:
    return os.strerror(e.errno or default) if isinstance(e, OSError) else os.strerror(default)


def _truncate(fd: int, size: int) -> None:
    """ftruncate() as C calls it: a size past off_t's range is a negative length."""
    try:
        if size > _OFF_T_MAX:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        os.ftruncate(fd, size)
    except OSError as e:
        raise CreateError(f"Could not resize file: {_strerror(e, errno.EIO)}") from None


class Qcow2CreateJob(Job):
    """One blockdev-create of a qcow2 image on an existing node (qcow2_co_create)."""

    job_type = "create"

    def __init__(self, job_id: str, options: dict[str, Any]) -> None:
        super().__init__(job_id, auto_finalize=True, auto_dismiss=False)
        self.node: BlockNode | None = None
        """Set once the options are checked; the job ends before running without it."""
        self.options = options
        self.total_progress = 1

    async def run(self) -> None:
        node = self.node
        assert node is not None
        files = node.files()
        for f in files:  # a blockdev-del meanwhile closes them only once this is done
            f.hold()
        node.users.add(self.id)
        try:
            await asyncio.to_thread(self._write, node)
        except qcow2.Qcow2Error as e:
            raise JobError(str(e)) from None
        except OSError as e:
            raise JobError(f"Could not write qcow2 header: {_strerror(e, errno.EIO)}") \
                from None
        finally:
            node.users.discard(self.id)
            for f in files:
                f.release()
            self.set_progress(1)

    def _write(self, node: BlockNode) -> None:
        o = self.options
        image = qcow2.create_image(o["size"], o.get("cluster-size", 65536),
                                   o.get("backing-file"), o.get("backing-fmt"))
        file = node.plain_file()
        if file is not None:
            _truncate(file.fd, 0)
        node.pwrite(0, image)
        node.flush()


def _qcow2_checks(graph: BlockGraph, options: dict[str, Any]) -> BlockNode:
    """qcow2_co_create()'s refusals, in its order, for what this driver can make; returns
    the node to write the image on."""
    ref = options["file"]
    if not isinstance(ref, str):
        raise QMPError("qmpjobd creates qcow2 images on an existing node only (give 'file' "
                       "as a node name)")
    node = graph.lookup(ref)
    if node.parents or node.exports or node.devices or node.users:
        raise QMPError(f"Node '{ref}' is in use: qmpjobd creates an image only on a node "
                       "nothing else uses")
    size, cluster = options["size"], options.get("cluster-size", 65536)
    if options.get("version", "v3") != "v3":
        raise QMPError("qmpjobd creates qcow2 version 3 images only")
    if cluster < 512 or cluster > (2 << 20) or cluster & (cluster - 1):
        raise QMPError("Cluster size must be a power of two between 512 and 2048k")
    if options.get("refcount-bits", 16) != 16:
        raise QMPError("qmpjobd creates qcow2 images with 16-bit refcounts only")
    if size % 512:
        raise QMPError("Image size must be a multiple of 512 bytes")
    if "backing-fmt" in options and "backing-file" not in options:
        raise QMPError("Backing format cannot be used without backing file")
    for key in ("data-file", "encrypt", "extended-l2"):
        if options.get(key):
            raise QMPError(f"qmpjobd's qcow2 driver does not support '{key}'")
    if options.get("preallocation", "off") != "off":
        raise QMPError("qmpjobd creates qcow2 images without preallocation only")
    if options.get("compression-type", "zlib") != "zlib":
        raise QMPError("qmpjobd creates qcow2 images with zlib compression type only")
    return node


def register(registry: Registry, graph: BlockGraph, jobs: JobRegistry) -> None:
    """Attach blockdev-create."""

    def blockdev_create(args: dict[str, Any], session: Session) -> None:
        options = args["options"]
        if options["driver"] == "qcow2":
            jobs.check_accepting()
            qjob = Qcow2CreateJob(args["job-id"], options)
            jobs.create(qjob)
            jobs.start(qjob)
            try:
                qjob.node = _qcow2_checks(graph, options)
            except QMPError as e:  # as in QEMU, the job fails before the reply
                qjob.ret, qjob.error = -1, str(e)
                qjob.set_progress(1)
                jobs.end_now(qjob)
            return
        if options["driver"] != "file":
            raise QMPError("Driver does not support blockdev-create")
        jobs.check_accepting()
        job = CreateJob(args["job-id"], options)
        jobs.create(job)
        jobs.start(job)
        error = job.open()
        if error is not None:  # failed before its first wait: over before the reply
            job.ret, job.error = -1, error
            job.set_progress(1)
            jobs.end_now(job)

    registry.register("blockdev-create", blockdev_create)
