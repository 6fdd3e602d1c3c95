"""QEMU's NBD server: nbd-server-start/-stop, block exports (block-export-add/-del,
nbd-server-add/-remove, query-block-exports) and BLOCK_EXPORT_DELETED.

Clients are served on the event loop; disk I/O runs in worker threads and at most
:data:`MAX_REQUESTS` requests per client are in flight, so neither a slow disk nor a slow
client holds up the monitor or the other clients.  The wire format is nbdwire.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from ..address import is_loopback
from ..errors import QmpjobdError
from ..protocol.errors import QMPError
from ..protocol.session import Session
from ..schema import EventSink, Registry
from . import nbdwire as w
from .bitmaps import DirtyBitmap
from .graph import BlockGraph
from .nodes import BlockNode

log = logging.getLogger(__name__)

MAX_REQUESTS = 16
"""Requests a client may have in flight (QEMU's MAX_NBD_REQUESTS)."""
DIRTY_PREFIX = "qemu:dirty-bitmap:"
NAMESPACES = ("base:", "qemu:", DIRTY_PREFIX)


@dataclass(eq=False)
class Export:
    """One block export of type nbd."""

    id: str
    name: str
    description: str | None
    node: BlockNode
    writable: bool
    bitmaps: list[DirtyBitmap]
    allocation_depth: bool
    size: int = 0
    """The node's size when exported: what clients are told and requests are checked
    against (QEMU's export size is fixed too)."""
    clients: set[Client] = field(default_factory=set)
    shutting_down: bool = False

    def flags(self, structured: bool, multi_conn: bool) -> int:
        """Transmission flags as QEMU 7.2 advertises them (multi-conn unless the server
        takes a single connection)."""
        flags = w.TF_HAS_FLAGS | w.TF_SEND_FLUSH | w.TF_SEND_FUA | w.TF_SEND_CACHE
        if multi_conn:
            flags |= w.TF_CAN_MULTI_CONN
        if self.writable:
            flags |= w.TF_SEND_TRIM | w.TF_SEND_WRITE_ZEROES | w.TF_SEND_FAST_ZERO
        else:
            flags |= w.TF_READ_ONLY
        if structured:
            flags |= w.TF_SEND_DF
        return flags

    def contexts(self) -> list[tuple[int, str]]:
        """Every meta context this export offers, with QEMU's ids."""
        out = [(w.META_ID_BASE_ALLOCATION, "base:allocation")]
        if self.allocation_depth:
            out.append((w.META_ID_ALLOCATION_DEPTH, "qemu:allocation-depth"))
        out += [(w.META_ID_DIRTY_BITMAP + i, DIRTY_PREFIX + b.name)
                for i, b in enumerate(self.bitmaps)]
        return out

    def match(self, query: str, listing: bool) -> list[tuple[int, str]]:
        """The contexts a query selects (nbd_negotiate_meta_query): a full name, or when
        listing, a namespace (``base:``, ``qemu:``, ``qemu:dirty-bitmap:``) for all in it."""
        found = []
        for cid, name in self.contexts():
            if query == name or (listing and query in NAMESPACES
                                 and name.startswith(query)):
                found.append((cid, name))
        return found


class Closed(QmpjobdError):
    """The client went away or broke the protocol: end its connection."""


class Client:
    """One NBD connection: the handshake, then transmission."""

    def __init__(self, server: NbdServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader, self.writer = reader, writer
        self.export: Export | None = None
        self.structured = False
        self.contexts: list[tuple[int, str]] = []
        self.contexts_for = ""
        """The export the meta contexts were set for."""
        self.no_zeroes = False
        self.slots = asyncio.Semaphore(MAX_REQUESTS)
        self.tasks: set[asyncio.Task[None]] = set()
        self.task: asyncio.Task[None] | None = None
        self.closing = False

    async def _read(self, n: int) -> bytes:
        try:
            return await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            raise Closed from e

    async def run(self) -> None:
        try:
            self.writer.write(w.greeting())
            flags = int.from_bytes(await self._read(4), "big")
            if flags & ~(w.FLAG_FIXED_NEWSTYLE | w.FLAG_NO_ZEROES):
                raise Closed("unknown client flags")
            self.no_zeroes = bool(flags & w.FLAG_NO_ZEROES)
            while self.export is None:
                await self._option()
            await self._transmission()
        except (Closed, ConnectionError):
            pass
        finally:
            await self._close()

    # -- handshake -----------------------------------------------------------------------------

    async def _option(self) -> None:
        magic, opt, length = w.option_header(await self._read(16))
        if magic != w.IHAVEOPT or length > w.MAX_OPTION:
            raise Closed("bad option")
        data = await self._read(length)
        reply = self._handle_option(opt, data)
        self.writer.write(reply)
        await self.writer.drain()
        if opt == w.OPT_ABORT:
            raise Closed("abort")
        if opt == w.OPT_EXPORT_NAME and self.export is None:
            raise Closed("no such export")

    def _handle_option(self, opt: int, data: bytes) -> bytes:
        exports = self.server.by_name()
        if opt == w.OPT_EXPORT_NAME:
            exp = exports.get(data.decode(errors="replace"))
            if exp is None:
                return b""
            self._attach(exp)
            return w.export_name_reply(exp.size, self._flags(exp),
                                       not self.no_zeroes)
        if opt == w.OPT_ABORT:
            return w.option_reply(opt, w.REP_ACK)
        if opt == w.OPT_LIST:
            if data:
                return w.option_error(opt, w.REP_ERR_INVALID,
                                      "option 'list' has unexpected length")
            return b"".join(w.option_reply(opt, w.REP_SERVER,
                                           w.server_entry(e.name, e.description or ""))
                            for e in exports.values()) + w.option_reply(opt, w.REP_ACK)
        if opt == w.OPT_STARTTLS:
            return w.option_error(opt, w.REP_ERR_POLICY, "TLS not configured")
        if opt in (w.OPT_INFO, w.OPT_GO):
            return self._info(opt, data, exports)
        if opt == w.OPT_STRUCTURED_REPLY:
            if data:
                return w.option_error(opt, w.REP_ERR_INVALID,
                                      "option 'structured reply' has unexpected length")
            if self.structured:
                return w.option_error(opt, w.REP_ERR_INVALID,
                                      "structured reply already negotiated")
            self.structured = True
            return w.option_reply(opt, w.REP_ACK)
        if opt in (w.OPT_LIST_META_CONTEXT, w.OPT_SET_META_CONTEXT):
            return self._meta(opt, data, exports)
        return w.option_error(opt, w.REP_ERR_UNSUP, f"Unsupported option {opt} "
                              f"({OPTION_NAMES.get(opt, '<unknown>')})")

    def _info(self, opt: int, data: bytes, exports: dict[str, Export]) -> bytes:
        try:
            name, wanted = w.parse_info(data)
        except w.Malformed as e:
            return w.option_error(opt, w.REP_ERR_INVALID, str(e))
        exp = exports.get(name)
        if exp is None:
            return w.option_error(opt, w.REP_ERR_UNKNOWN, f"export '{name}' not present")
        out = []
        if w.INFO_NAME in wanted:
            out.append(w.option_reply(opt, w.REP_INFO, w.info_name(name)))
        if w.INFO_DESCRIPTION in wanted and exp.description:
            out.append(w.option_reply(opt, w.REP_INFO, w.info_description(exp.description)))
        out.append(w.option_reply(opt, w.REP_INFO, w.info_block_size(1, 4096, w.MAX_BUFFER)))
        out.append(w.option_reply(opt, w.REP_INFO,
                                  w.info_export(exp.size, self._flags(exp))))
        out.append(w.option_reply(opt, w.REP_ACK))
        if opt == w.OPT_GO:
            self._attach(exp)
        return b"".join(out)

    def _meta(self, opt: int, data: bytes, exports: dict[str, Export]) -> bytes:
        if opt == w.OPT_SET_META_CONTEXT and not self.structured:
            return w.option_error(opt, w.REP_ERR_INVALID,
                                  "request option 'set meta context' when structured reply "
                                  "is not negotiated")
        try:
            name, queries = w.parse_meta(data)
        except w.Malformed as e:
            return w.option_error(opt, w.REP_ERR_INVALID, str(e))
        exp = exports.get(name)
        if exp is None:
            return w.option_error(opt, w.REP_ERR_UNKNOWN, f"export '{name}' not present")
        listing = opt == w.OPT_LIST_META_CONTEXT
        chosen: list[tuple[int, str]] = exp.contexts() if listing and not queries else []
        for query in queries:
            chosen += [c for c in exp.match(query, listing) if c not in chosen]
        chosen.sort()
        if not listing:
            self.contexts = chosen
            self.contexts_for = name
        return b"".join(w.meta_context_reply(opt, 0 if listing else cid, cname)
                        for cid, cname in chosen) + w.option_reply(opt, w.REP_ACK)

    def _flags(self, exp: Export) -> int:
        return exp.flags(self.structured, self.server.max_connections != 1)

    def _attach(self, exp: Export) -> None:
        if self.contexts and self.contexts_for != exp.name:
            self.contexts = []  # negotiated for another export (nbd_check_meta_export)
        self.export = exp
        exp.clients.add(self)

    # -- transmission --------------------------------------------------------------------------

    async def _transmission(self) -> None:
        await self.writer.drain()
        exp = self.export
        assert exp is not None
        while not self.closing:
            head = w.parse_request(await self._read(w.REQUEST_SIZE))
            if head.magic != w.REQUEST_MAGIC:
                raise Closed("bad request magic")
            payload = b""
            if head.type == w.CMD_WRITE:
                if head.length > w.MAX_BUFFER:
                    raise Closed("write too large")
                payload = await self._read(head.length)
            if head.type == w.CMD_DISC:
                break
            await self.slots.acquire()
            task = asyncio.get_running_loop().create_task(self._request(exp, head, payload))
            self.tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()

    async def _request(self, exp: Export, req: w.Request, payload: bytes) -> None:
        try:
            if req.type == w.CMD_READ:
                await self._read_cmd(exp, req)
            elif req.type == w.CMD_BLOCK_STATUS:
                await self._status_cmd(exp, req)
            else:
                await self._simple_cmd(exp, req, payload)
            await self.writer.drain()
        except (ConnectionError, Closed):
            self.writer.transport.abort()
        except _Refused as e:
            self._error(req.handle, e.errno, e.text)
        except Exception:  # a bug or a broken image: the request still gets its answer
            log.exception("NBD request %d on export %s failed", req.type, exp.name)
            self._error(req.handle, w.EIO, "Input/output error")

    def _error(self, handle: int, error: int, text: str) -> None:
        if self.structured:
            self.writer.write(w.error_chunk(handle, error, text))
        else:
            self.writer.write(w.simple_reply(handle, error))

    def _check_range(self, exp: Export, req: w.Request) -> int:
        size = exp.size
        if req.offset > size or req.length > size - req.offset:
            raise _Refused(w.EINVAL, f"operation past EOF; From: {req.offset}, "
                                     f"Len: {req.length}, Size: {size}")
        return size

    async def _read_cmd(self, exp: Export, req: w.Request) -> None:
        if req.length > w.MAX_BUFFER:
            raise _Refused(w.EINVAL, f"len ({req.length}) is larger than max len "
                                     f"({w.MAX_BUFFER})")
        self._check_range(exp, req)
        node = exp.node
        if self.structured and not req.length:
            self.writer.write(w.done_chunk(req.handle))
            return
        if not self.structured or req.flags & w.CMDF_DF:
            data = await _io(node, node.pread, req.offset, req.length)
            if self.structured:
                self.writer.write(w.offset_data_header(req.handle, req.offset, len(data),
                                                       True))
            else:
                self.writer.write(w.simple_reply(req.handle))
            self.writer.write(data)
            return
        pieces = await _io(node, _sparse_read, node, req.offset, req.length)
        for i, (pos, length, data) in enumerate(pieces):
            last = i == len(pieces) - 1
            if data is not None:
                self.writer.write(w.offset_data_header(req.handle, pos, length, last))
                self.writer.write(data)
            else:
                self.writer.write(w.offset_hole(req.handle, pos, length, last))

    async def _simple_cmd(self, exp: Export, req: w.Request, payload: bytes) -> None:
        node, kind = exp.node, req.type
        if kind == w.CMD_FLUSH:
            await _io(node, node.flush)
        elif kind == w.CMD_CACHE:
            self._check_range(exp, req)
        elif kind in (w.CMD_WRITE, w.CMD_WRITE_ZEROES, w.CMD_TRIM):
            if not exp.writable:
                raise _Refused(w.EINVAL, "Export is read-only")
            self._check_range(exp, req)
            if kind == w.CMD_WRITE:
                await _io(node, node.pwrite, req.offset, payload)
            elif kind == w.CMD_TRIM:
                await _io(node, node.discard, req.offset, req.length)
            else:
                await _io(node, node.write_zeroes, req.offset, req.length)
            if req.flags & w.CMDF_FUA:
                await _io(node, node.flush)
        else:
            raise _Refused(w.EINVAL, f"invalid request type ({kind}) received")
        self.writer.write(w.simple_reply(req.handle))

    async def _status_cmd(self, exp: Export, req: w.Request) -> None:
        if not self.contexts:
            raise _Refused(w.EINVAL, "CMD_BLOCK_STATUS not negotiated")
        if not req.length:
            raise _Refused(w.EINVAL, "need non-zero length")
        self._check_range(exp, req)
        one = bool(req.flags & w.CMDF_REQ_ONE)
        chunks = []
        for cid, _ in self.contexts:
            if cid == w.META_ID_BASE_ALLOCATION:
                runs = await _io(exp.node, exp.node.status, req.offset, req.length)
                extents = _merge([(n, 0 if data else w.STATE_HOLE | w.STATE_ZERO)
                                  for n, data in runs])
            elif cid == w.META_ID_ALLOCATION_DEPTH:
                extents = [(req.length, 1)]
            else:
                bitmap = exp.bitmaps[cid - w.META_ID_DIRTY_BITMAP]
                extents = await _io(exp.node, _bitmap_extents, bitmap, req.offset,
                                    req.length)
            if one:
                extents = extents[:1]
            chunks.append((cid, extents))
        for i, (cid, extents) in enumerate(chunks):
            self.writer.write(w.block_status_chunk(req.handle, cid, extents,
                                                   i == len(chunks) - 1))

    # -- the end -------------------------------------------------------------------------------

    def shut(self) -> None:
        """Disconnect now, unsent replies dropped (a hard export removal, the server's stop):
        a client that does not read cannot hold the connection open."""
        self.closing = True
        self.writer.transport.abort()

    async def _close(self) -> None:
        self.closing = True
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        self.server.client_gone(self)


class _Refused(QmpjobdError):
    """A request that fails with an NBD errno (the session goes on)."""

    def __init__(self, errno_: int, text: str) -> None:
        super().__init__(text)
        self.errno, self.text = errno_, text


OPTION_NAMES = {1: "export name", 2: "abort", 3: "list", 4: "peek export", 5: "starttls",
                6: "info", 7: "go", 8: "structured reply", 9: "list meta context",
                10: "set meta context"}
"""nbd_opt_lookup()'s names, which QEMU puts in its option errors."""


async def _io(node: BlockNode, fn: Any, *args: Any) -> Any:
    """Run a node's synchronous I/O in a worker thread; OSError becomes an NBD errno.  The
    node's files stay open until the call returns, even if the export is gone by then."""
    files = node.files()
    for f in files:
        f.hold()
    try:
        if any(f.closing for f in files):  # the node was deleted under a late request
            raise _Refused(w.ESHUTDOWN, "export is gone")
        return await asyncio.to_thread(fn, *args)
    except OSError as e:
        raise _Refused(w.wire_errno(e.errno), e.strerror or str(e)) from e
    finally:
        for f in files:
            f.release()


def _sparse_read(node: BlockNode, offset: int, length: int
                 ) -> list[tuple[int, int, bytes | None]]:
    """A structured read in one worker call: (offset, length, data) per run of data, None
    for a hole (sent as NBD_REPLY_TYPE_OFFSET_HOLE, as QEMU's sparse reads do)."""
    pieces: list[tuple[int, int, bytes | None]] = []
    pos = offset
    for n, is_data in node.status(offset, length):
        pieces.append((pos, n, node.pread(pos, n) if is_data else None))
        pos += n
    return pieces


def _merge(extents: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join neighbours with the same flags; split runs too long for a 32-bit length."""
    out: list[tuple[int, int]] = []
    for length, flags in extents:
        if out and out[-1][1] == flags:
            length += out.pop()[0]
        while length > 0xFFFFFFFF - 0xFFF:
            step = 0xFFFFFFFF - 0xFFF  # a multiple of 4 KiB below 4 GiB
            out.append((step, flags))
            length -= step
        if length:
            out.append((length, flags))
    return out


def _bitmap_extents(bitmap: DirtyBitmap, offset: int, length: int) -> list[tuple[int, int]]:
    """The dirty and clean runs of ``[offset, offset + length)`` (in a worker thread: it
    reads only the granules of the range)."""
    end = offset + length
    runs: list[tuple[int, int]] = []
    pos = offset
    for start, size in bitmap.dirty_ranges(offset, length):
        start, stop = max(start, pos), min(start + size, end)
        if stop <= start:
            continue
        if start > pos:
            runs.append((start - pos, 0))
        runs.append((stop - start, w.STATE_DIRTY))
        pos = stop
    if pos < end:
        runs.append((end - pos, 0))
    return _merge(runs)


class NbdServer:
    """The NBD server (one per daemon, as in QEMU) and the block exports."""

    def __init__(self, graph: BlockGraph, sink: EventSink) -> None:
        self.graph = graph
        self.sink = sink
        self.exports: dict[str, Export] = {}
        """By id, in creation order."""
        self.listener: socket.socket | None = None
        self.unix_path: str | None = None
        self.max_connections = 0
        self.any_address = False
        """Listen on any address (``--nbd-any-address``); else TCP is loopback only."""
        self.clients: set[Client] = set()
        self._accepting: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._ending: set[Export] = set()
        """Exports removed whose BLOCK_EXPORT_DELETED is still to come."""
        self._gone = asyncio.Event()
        """Set whenever an export is deleted."""

    def by_name(self) -> dict[str, Export]:
        return {e.name: e for e in self.exports.values() if not e.shutting_down}

    # -- the listener --------------------------------------------------------------------------

    def start(self, addr: dict[str, Any], tls_creds: str | None, max_connections: int) -> None:
        """nbd-server-start."""
        if self.listener is not None:
            raise QMPError("NBD server already running")
        if tls_creds is not None:
            raise QMPError(f"No TLS credentials with id '{tls_creds}'")
        kind, data = addr["type"], addr["data"]
        if kind == "unix":
            path = data["path"]
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with contextlib.suppress(FileNotFoundError):
                if os.path.exists(path) and not os.path.isdir(path):
                    os.unlink(path)
            try:
                sock.bind(path)
            except OSError as e:
                sock.close()
                raise QMPError(f"Failed to bind socket to {path}: {e.strerror}") from e
            self.unix_path = path
        elif kind == "inet":
            host, port = data["host"], data["port"]
            if not is_loopback(host) and not self.any_address:
                raise QMPError(f"qmpjobd serves NBD without TLS on loopback only, not on "
                               f"'{host}' (see --nbd-any-address)")
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as e:
                raise QMPError(f"address resolution failed for {host}:{port}: "
                               f"{e.strerror}") from e
            family, _, _, _, sockaddr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as e:
                sock.close()
                raise QMPError("Failed to find an available port: "
                               f"{e.strerror}") from e
        else:
            raise QMPError(f"qmpjobd's NBD server listens on unix and inet addresses, "
                           f"not {kind}")
        sock.listen(16)
        sock.setblocking(False)
        self.listener = sock
        self.max_connections = max_connections
        self._accepting = asyncio.get_running_loop().create_task(self._accept(sock))

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self.max_connections and len(self.clients) >= self.max_connections:
                self._room.clear()  # full: leave new connections in the backlog
                await self._room.wait()
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    await asyncio.sleep(0.1)  # out of descriptors: retry, serve the rest
                    continue
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that client is gone already
                raise
            reader, writer = await asyncio.open_connection(sock=conn, limit=1 << 20)
            client = Client(self, reader, writer)
            self.clients.add(client)
            client.task = loop.create_task(client.run())

    def client_gone(self, client: Client) -> None:
        self.clients.discard(client)
        self._room.set()
        exp = client.export
        if exp is not None:
            exp.clients.discard(client)
            if exp.shutting_down and not exp.clients:
                self._finish(exp)

    async def stop(self) -> None:
        """nbd-server-stop: every export goes (events first), then the listener."""
        if self.listener is None:
            raise QMPError("NBD server not running")
        await self._close_all()

    async def _close_all(self) -> None:
        for exp in list(self.exports.values()):
            self._shutdown(exp)
        for client in list(self.clients):
            client.shut()
        while self._ending:
            self._gone.clear()
            await self._gone.wait()
        self.close()

    # -- exports -------------------------------------------------------------------------------

    def add(self, args: dict[str, Any]) -> None:
        """block-export-add of type nbd."""
        if args["type"] != "nbd":
            raise QMPError(f"qmpjobd exports block nodes over NBD only, not "
                           f"{args['type']}")
        eid = args["id"]
        if not eid:
            raise QMPError("Invalid block export id")
        if eid in self.exports:
            raise QMPError(f"Block export id '{eid}' is already in use")
        node_name = args["node-name"]
        node = self.graph.nodes.get(node_name)
        if node is None:
            raise QMPError(f"Cannot find device='' nor node-name='{node_name}'")
        self._add(eid, node, args)

    def _add(self, eid: str, node: BlockNode, args: dict[str, Any]) -> None:
        writable = args.get("writable", False)
        if writable and node.read_only:
            raise QMPError("Cannot export read-only node as writable")
        if self.listener is None:
            raise QMPError("NBD server not running")
        name = args.get("name", node.node_name)
        if len(name.encode()) > w.MAX_STRING:
            raise QMPError(f"export name '{name}' too long")
        description = args.get("description")
        if description is not None and len(description.encode()) > w.MAX_STRING:
            raise QMPError(f"description '{description}' too long")
        if name in self.by_name():
            raise QMPError(f"NBD server already has export named '{name}'")
        bitmaps: list[DirtyBitmap] = []
        for ref in args.get("bitmaps", []):
            bitmap = self._bitmap(node, ref)
            if bitmap.busy:
                raise QMPError(f"Bitmap '{bitmap.name}' is currently in use by another "
                               "operation and cannot be used")
            # QEMU 7.2 checks this for a bitmap named alone, not for {node, name}
            if isinstance(ref, str) and not writable and bitmap.recording and \
                    not node.read_only:
                raise QMPError(f"Enabled bitmap '{bitmap.name}' incompatible with readonly "
                               "export")
            if bitmap in bitmaps:
                raise QMPError(f"Bitmap '{bitmap.name}' is currently in use by another "
                               "operation and cannot be used")
            bitmaps.append(bitmap)
        for bitmap in bitmaps:
            bitmap.busy = True
        node.exports.add(eid)
        self.exports[eid] = Export(eid, name, description, node, writable, bitmaps,
                                   args.get("allocation-depth", False), node.length)

    def _bitmap(self, node: BlockNode, ref: Any) -> DirtyBitmap:
        if isinstance(ref, str):
            bitmap = node.bitmaps.get(ref)
            if bitmap is None:
                raise QMPError(f"Bitmap '{ref}' is not found")
            return bitmap
        owner = self.graph.nodes.get(ref["node"])
        if owner is None:
            raise QMPError(f"Node '{ref['node']}' not found")
        bitmap = owner.bitmaps.get(ref["name"])
        if bitmap is None:
            raise QMPError(f"Dirty bitmap '{ref['name']}' not found")
        return bitmap

    def delete(self, eid: str, mode: str) -> None:
        """block-export-del: ends now if no client is connected, else (hard) disconnects."""
        exp = self.exports.get(eid)
        if exp is None:
            raise QMPError(f"Export '{eid}' is not found")
        if mode == "safe" and exp.clients:
            raise QMPError(f"export '{eid}' still in use")
        self._shutdown(exp)

    def _shutdown(self, exp: Export) -> None:
        """Disconnect the export's clients and delete it: at once when none is connected
        (the event comes before the reply), else right after the reply, as in QEMU."""
        exp.shutting_down = True
        del self.exports[exp.id]  # its id and name are free at once
        self._ending.add(exp)
        if not exp.clients:
            self._finish(exp)
            return
        for client in list(exp.clients):  # deleted once their requests have ended
            client.shut()

    def _finish(self, exp: Export) -> None:
        if exp not in self._ending:
            return
        self._ending.discard(exp)
        exp.node.exports.discard(exp.id)
        for bitmap in exp.bitmaps:
            bitmap.busy = False
        self.sink.emit("BLOCK_EXPORT_DELETED", {"id": exp.id})
        self._gone.set()

    def query(self) -> list[dict[str, Any]]:
        return [{"id": e.id, "type": "nbd", "node-name": e.node.node_name,
                 "shutting-down": e.shutting_down} for e in reversed(self.exports.values())]

    def close(self) -> None:
        """Daemon exit: drop the listener and every connection (no events: the process
        ends)."""
        for client in list(self.clients):
            client.shut()
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)
            self.unix_path = None

    # -- QMP -----------------------------------------------------------------------------------

    def register(self, registry: Registry) -> None:
        def server_start(args: dict[str, Any], session: Session) -> None:
            self.start(args["addr"], args.get("tls-creds"), args.get("max-connections", 0))

        def server_add(args: dict[str, Any], session: Session) -> None:
            if self.listener is None:
                raise QMPError("NBD server not running")
            device = args["device"]
            node = self.graph.lookup(device)
            name = args.get("name", device)
            # a read-only node is exported read-only, without a word (as QEMU 7.2 does)
            opts: dict[str, Any] = {"name": name, "writable": args.get("writable", False)
                                    and not node.read_only}
            if "description" in args:
                opts["description"] = args["description"]
            if "bitmap" in args:
                opts["bitmaps"] = [args["bitmap"]]
            if name in self.exports:
                raise QMPError(f"Block export id '{name}' is already in use")
            self._add(name, node, opts)

        def server_remove(args: dict[str, Any], session: Session) -> None:
            if self.listener is None:
                raise QMPError("NBD server not running")
            self.delete(args["name"], args.get("mode", "safe"))

        async def server_stop(args: dict[str, Any], session: Session) -> None:
            await self.stop()

        registry.register("nbd-server-start", server_start)
        registry.register("nbd-server-add", server_add)
        registry.register("nbd-server-remove", server_remove)
        registry.register("nbd-server-stop", server_stop)
        registry.register("block-export-add", lambda args, session: self.add(args))
        registry.register("block-export-del", lambda args, session: self.delete(
            args["id"], args.get("mode", "safe")))
        registry.register("query-block-exports", lambda args, session: self.query())
