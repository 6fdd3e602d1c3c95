"""The QMP client of qmpjobd's own tools (``watch``, ``health``) and tests.

One sans-I/O core, :class:`Protocol` (bytes in -> greeting, replies matched by id, events;
requests -> bytes), and two drivers for it: :class:`AsyncClient` on asyncio streams, and
:class:`Client`, a blocking socket with one deadline for a whole conversation (what a health
check needs).  It speaks to QEMU as well as to qmpjobd.  It imports no daemon code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import deque
from typing import Any

from .address import Address, parse_address
from .errors import QmpjobdError

MAX_LINE = 64 << 20
"""Longest message accepted from the server."""

GREETING = "the greeting"


class ClientError(QmpjobdError):
    """Why a conversation with a QMP server failed; the message says what happened."""


class ConnectionClosed(ClientError):
    """The server closed the connection (or it broke) before the awaited message."""


class ProtocolViolation(ClientError):
    """The server sent something that is not a QMP message where one was expected."""


class CommandFailed(ClientError):
    """A command's reply was an error; ``error_class`` and ``desc`` are QEMU's."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command} failed: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


def short(data: bytes | str, limit: int = 60) -> str:
    """A one-line, bounded rendering of something the peer sent."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


class Protocol:
    """The client side of QMP without I/O: parses lines, keeps the greeting, hands out
    replies by id and queues events."""

    def __init__(self, id_prefix: str = "c", newline: bytes = b"\n") -> None:
        self.greeting: dict[str, Any] | None = None
        self.events: deque[dict[str, Any]] = deque()
        self.replies: dict[Any, dict[str, Any]] = {}
        self.unmatched: deque[dict[str, Any]] = deque()
        """Replies without an id (or with one nobody asked for), in order."""
        self.newline = newline
        """What ends a line: ``\n`` (QEMU sends CRLF; the CR is stripped), or ``\r\n``
        exactly, for a reader that wants to see a bare LF inside a line."""
        self._buf = bytearray()
        self._scan = 0
        self._prefix = id_prefix
        self._next_id = 0

    def request(self, command: str, arguments: dict[str, Any] | None = None, *,
                oob: bool = False, msg_id: Any = None,
                with_id: bool = True) -> tuple[Any, bytes]:
        """An id (made up unless given; None without ``with_id``) and the request's bytes."""
        req: dict[str, Any] = {"exec-oob" if oob else "execute": command}
        if with_id:
            if msg_id is None:
                self._next_id += 1
                msg_id = f"{self._prefix}{self._next_id}"
            req["id"] = msg_id
        if arguments is not None:
            req["arguments"] = arguments
        return msg_id, json.dumps(req, separators=(",", ":")).encode() + b"\n"

    def feed(self, data: bytes) -> None:
        """Bytes from the server, to be taken line by line with :meth:`next_line`."""
        self._buf += data

    def next_line(self) -> bytes | None:
        """The next complete line without its line end, or None (linear in what arrives)."""
        buf = self._buf
        i = buf.find(self.newline, self._scan)
        if i < 0:
            if len(buf) > MAX_LINE:
                raise ProtocolViolation(f"no end of line after {MAX_LINE} bytes")
            self._scan = max(0, len(buf) - len(self.newline) + 1)
            return None
        line = bytes(buf[:i])
        del buf[:i + len(self.newline)]
        self._scan = 0
        return line[:-1] if line.endswith(b"\r") else line

    def parse(self, line: bytes, what: str = "a message") -> dict[str, Any]:
        """One line as a QMP message, filed as the greeting, an event or a reply."""
        try:
            msg = json.loads(line)
        except ValueError:
            raise ProtocolViolation(f"garbage instead of {what}: {short(line)}") from None
        if not isinstance(msg, dict):
            raise ProtocolViolation(f"not a QMP message: {short(line)}")
        self._file(msg)
        return msg

    def receive_data(self, data: bytes, what: str = "a message") -> list[dict[str, Any]]:
        """Feed bytes; returns the messages completed by them (also filed by kind)."""
        self.feed(data)
        out = []
        while (line := self.next_line()) is not None:
            if line.strip():
                out.append(self.parse(line, what))
        return out

    def _file(self, msg: dict[str, Any]) -> None:
        if self.greeting is None:
            qmp = msg.get("QMP")
            if not isinstance(qmp, dict) or not isinstance(qmp.get("version"), dict):
                raise ProtocolViolation(f"not a QMP greeting: {short(json.dumps(msg))}")
            self.greeting = qmp
        elif "event" in msg:
            self.events.append(msg)
        elif "id" in msg and _hashable(msg["id"]):
            self.replies[msg["id"]] = msg
        else:
            self.unmatched.append(msg)

    def buffered(self) -> bytes:
        """Bytes received after the last complete line."""
        return bytes(self._buf)


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def reply_value(command: str, reply: dict[str, Any]) -> Any:
    """The ``return`` of a reply, or :class:`CommandFailed` for an error."""
    if "error" in reply:
        err = reply["error"] if isinstance(reply["error"], dict) else {}
        raise CommandFailed(command, str(err.get("class", "?")), str(err.get("desc", "")))
    return reply.get("return")


def offered_capabilities(greeting: dict[str, Any] | None) -> list[str]:
    caps = (greeting or {}).get("capabilities") or []
    return [c for c in caps if isinstance(c, str)]


# -- blocking ------------------------------------------------------------------------------------

class Client:
    """A blocking QMP client; with ``deadline`` every wait shares that one point in time.

    ``connect()`` reads the greeting; ``negotiate()`` sends qmp_capabilities; ``execute()``
    returns the raw reply, ``command()`` its value (or raises :class:`CommandFailed`).
    """

    def __init__(self, address: Address | str, *, timeout: float = 10.0,
                 deadline: float | None = None, connect: bool = True) -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        self.timeout = timeout
        self.deadline = deadline
        self.proto = Protocol()
        self.sock: socket.socket | None = None
        if connect:
            self.connect()

    def connect(self) -> dict[str, Any]:
        """Open the connection and read the greeting."""
        self.sock = self.address.connect(self._remaining("the connection"))
        while self.proto.greeting is None:
            self.receive(GREETING)
        return self.proto.greeting

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _remaining(self, what: str) -> float:
        if self.deadline is None:
            return self.timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(what)
        return left

    def receive(self, what: str) -> None:
        """Read once from the socket and file what arrived."""
        assert self.sock is not None
        self.sock.settimeout(self._remaining(what))
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            raise TimeoutError(what) from None
        except OSError as e:
            raise ConnectionClosed(f"connection lost waiting for {what}: "
                                   f"{e.strerror or e}") from None
        if not chunk:
            rest = self.proto.buffered()
            extra = f" (got {short(rest)})" if rest.strip() else ""
            raise ConnectionClosed(f"connection closed before {what}{extra}")
        self.proto.receive_data(chunk, what)

    def send(self, data: bytes, what: str = "a request") -> None:
        """Write raw bytes."""
        assert self.sock is not None
        self.sock.settimeout(self._remaining(what))
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise TimeoutError(what) from None
        except OSError as e:
            raise ConnectionClosed(f"connection lost sending {what}: {e.strerror or e}") from None

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                oob: bool = False, msg_id: Any = None, with_id: bool = True) -> dict[str, Any]:
        """Send one command and wait for its reply (events meanwhile are queued); without
        ``with_id`` the reply is the next one that carries no id."""
        msg_id, data = self.proto.request(command, arguments, oob=oob, msg_id=msg_id,
                                          with_id=with_id)
        self.send(data, command)
        return self.reply(f"the reply to {command}", msg_id)

    def reply(self, what: str, msg_id: Any = None) -> dict[str, Any]:
        """The reply with ``msg_id``, or (None) the next reply without a known id."""
        proto = self.proto
        while True:
            if msg_id is None:
                if proto.unmatched:
                    return proto.unmatched.popleft()
            elif msg_id in proto.replies:
                return proto.replies.pop(msg_id)
            self.receive(what)

    def command(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a command; its return value, or CommandFailed."""
        return reply_value(command, self.execute(command, arguments))

    def negotiate(self, capabilities: list[str] | None = None) -> None:
        """qmp_capabilities, enabling ``capabilities`` (only those the greeting offers)."""
        args = {"enable": capabilities} if capabilities else None
        self.command("qmp_capabilities", args)

    def event(self, name: str | None = None) -> dict[str, Any]:
        """The next event (named ``name`` if given; others before it are dropped)."""
        while True:
            while not self.proto.events:
                self.receive(f"the event {name}" if name else "an event")
            ev = self.proto.events.popleft()
            if name is None or ev.get("event") == name:
                return ev


# -- asyncio -------------------------------------------------------------------------------------

class AsyncClient:
    """An asyncio QMP client: pipelined commands matched by id, events in a queue."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 proto: Protocol) -> None:
        self.reader = reader
        self.writer = writer
        self.proto = proto
        self.closed = asyncio.Event()
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, address: Address | str, *, timeout: float = 10.0,
                      negotiate: bool = True, capabilities: list[str] | None = None,
                      id_prefix: str = "c") -> AsyncClient:
        """Connect, read the greeting and (by default) negotiate ``capabilities``, of which
        only those the greeting offers are asked for."""
        addr = parse_address(address) if isinstance(address, str) else address
        reader, writer = await addr.open_connection()
        client = cls(reader, writer, Protocol(id_prefix))
        try:
            while client.proto.greeting is None:
                data = await asyncio.wait_for(reader.read(65536), timeout)
                if not data:
                    raise ConnectionClosed(f"connection closed before {GREETING}")
                client._dispatch(client.proto.receive_data(data, GREETING))
            client._task = asyncio.get_running_loop().create_task(client._read_loop())
            if negotiate:
                offered = offered_capabilities(client.proto.greeting)
                wanted = [c for c in capabilities or [] if c in offered]
                reply = await asyncio.wait_for(
                    client.execute("qmp_capabilities", {"enable": wanted} if wanted else None),
                    timeout)
                reply_value("qmp_capabilities", reply)
        except TimeoutError:
            await client.close()
            raise ClientError(f"timed out after {timeout:g}s in the QMP handshake") from None
        except BaseException:
            await client.close()
            raise
        return client

    @property
    def greeting(self) -> dict[str, Any]:
        return self.proto.greeting or {}

    def _dispatch(self, msgs: list[dict[str, Any]]) -> None:
        proto = self.proto
        while proto.events:
            self.events.put_nowait(proto.events.popleft())
        for msg_id in list(proto.replies):
            fut = self._pending.pop(msg_id, None)
            reply = proto.replies.pop(msg_id)
            if fut is not None and not fut.done():
                fut.set_result(reply)
        proto.unmatched.clear()

    async def _read_loop(self) -> None:
        try:
            while data := await self.reader.read(1 << 20):
                self._dispatch(self.proto.receive_data(data))
        except (OSError, ClientError):
            pass
        finally:
            self.closed.set()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionClosed("connection closed"))
            self._pending.clear()

    def send(self, command: str, arguments: dict[str, Any] | None = None, *,
             oob: bool = False) -> asyncio.Future[dict[str, Any]]:
        """Write one command now; the future gets its reply (``return`` or ``error``)."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.closed.is_set() or self.writer.is_closing():
            fut.set_exception(ConnectionClosed("connection closed"))
            return fut
        msg_id, data = self.proto.request(command, arguments, oob=oob)
        self._pending[msg_id] = fut
        try:
            self.writer.write(data)
        except (OSError, RuntimeError) as e:
            self._pending.pop(msg_id, None)
            fut.set_exception(ConnectionClosed(str(e)))
        return fut

    async def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                      oob: bool = False) -> dict[str, Any]:
        """Send one command and wait for its raw reply."""
        if self._task is None:  # still in the handshake: read inline
            fut = self.send(command, arguments, oob=oob)
            while not fut.done():
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionClosed(f"connection closed before the reply to {command}")
                self._dispatch(self.proto.receive_data(data))
            return fut.result()
        return await self.send(command, arguments, oob=oob)

    async def command(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a command; its return value, or CommandFailed."""
        return reply_value(command, await self.execute(command, arguments))

    async def close(self) -> None:
        """Close the connection and stop reading."""
        self.writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self.writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
