"""Heartbeat, auto-failover and the split-brain guard (x-daemon-heartbeat; off by default).

Each daemon sends a UDP datagram to its peer every interval.  When COLO is active and the peer
has been silent for the timeout, or the replication link failed while it was silent, the
daemon runs the same path as x-colo-lost-heartbeat.  Exactly one side may become the
standalone primary: if the peer is still heard, only the primary fails over; if it is not,
an optional witness file (an exclusive flock held by the winner) decides, and the secondary
tries only after half a timeout so that a live primary wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import time
from typing import Any

from ..address import AddressError, parse_host_port
from ..protocol.errors import QMPError
from .migration import Migration

log = logging.getLogger(__name__)

_MAGIC = b"QJHB1"


def _addr(name: str, text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text, min_port=1)
    except AddressError as e:
        raise QMPError(f"Parameter '{name}': {e}") from None


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, hb: Heartbeat) -> None:
        self.hb = hb

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data.startswith(_MAGIC):
            self.hb.last_seen = time.monotonic()


class Heartbeat:
    """The heartbeat of one daemon towards its COLO peer."""

    def __init__(self, mig: Migration) -> None:
        self.mig = mig
        self.enabled = False
        self.interval = 0.1
        self.timeout = 1.0
        self.auto_failover = True
        self.witness: str | None = None
        self.peer: tuple[str, int] | None = None
        self.last_seen: float | None = None
        self.decision = "none"
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._witness_fd: int | None = None
        self._deciding = False
        self._decision: asyncio.Task[None] | None = None
        mig.on_colo_error.append(self._link_failed)

    def info(self) -> dict[str, Any]:
        """The heartbeat's view, for x-query-colo-metrics."""
        seen = self.last_seen
        return {"peer-alive": self.peer_alive(),
                "last-seen-ms": None if seen is None
                else round((time.monotonic() - seen) * 1000.0, 1),
                "auto-failover": self.auto_failover, "decision": self.decision}

    def peer_alive(self) -> bool:
        """The peer was heard within the timeout."""
        return self.last_seen is not None and time.monotonic() - self.last_seen < self.timeout

    def configure(self, args: dict[str, Any]) -> Any:
        """x-daemon-heartbeat: check everything, then (re)start with the new settings."""
        interval = args.get("interval-ms", int(self.interval * 1000)) / 1000.0
        timeout = args.get("timeout-ms", int(self.timeout * 1000)) / 1000.0
        if interval < 0.001:
            raise QMPError("Parameter 'interval-ms' must be at least 1")
        if timeout <= interval:
            raise QMPError("Parameter 'timeout-ms' must be greater than 'interval-ms'")
        listen = _addr("listen", args["listen"]) if "listen" in args else None
        peer = _addr("peer", args["peer"]) if "peer" in args else self.peer
        return self._apply(args, interval, timeout, listen, peer)

    async def _apply(self, args: dict[str, Any], interval: float, timeout: float,
                     listen: tuple[str, int] | None, peer: tuple[str, int] | None) -> None:
        loop = asyncio.get_running_loop()
        if peer is not None:  # resolve once, here, rather than on every datagram
            try:
                infos = await loop.getaddrinfo(peer[0], peer[1], type=socket.SOCK_DGRAM)
            except OSError as e:
                raise QMPError(f"cannot resolve heartbeat peer {peer[0]}: {e.strerror}") \
                    from None
            resolved = infos[0][4]
            peer = (str(resolved[0]), int(resolved[1]))
        self.interval, self.timeout, self.peer = interval, timeout, peer
        self.auto_failover = args.get("auto-failover", self.auto_failover)
        self.witness = args.get("witness", self.witness)
        if listen is not None:
            await self._start(listen)

    async def _start(self, listen: tuple[str, int]) -> None:
        self.close()
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Receiver(self), local_addr=listen)
        except OSError as e:
            raise QMPError(f"cannot listen for heartbeats on {listen[0]}:{listen[1]}: "
                           f"{e.strerror}") from None
        self._transport = transport
        self.enabled = True
        self.last_seen = None
        self._task = loop.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            try:
                if self._transport is not None and self.peer is not None:
                    self._transport.sendto(_MAGIC, self.peer)
            except (OSError, ValueError, OverflowError) as e:
                log.warning("heartbeat to %s failed: %s", self.peer, e)
            if (self.mig.mode != "none" and self.last_seen is not None
                    and not self.peer_alive()):
                self._start_decision("heartbeat lost")
            await asyncio.sleep(self.interval)

    def _link_failed(self) -> None:
        """The replication link failed (COLO_EXIT error)."""
        if self.enabled:
            self._start_decision("replication link failed")

    def _start_decision(self, why: str) -> None:
        if not self.auto_failover or self._deciding:
            return
        rep = self.mig.rep
        if rep is None or self.mig.mode == "none" or rep.failover != "none":
            return
        self._deciding = True
        self._decision = asyncio.get_running_loop().create_task(self._decide(why))

    async def _decide(self, why: str) -> None:
        try:
            role = self.mig.mode
            if role == "secondary":
                # let a live primary win; a peer heard meanwhile means only the link broke
                await asyncio.sleep(self.timeout / 2)
                if self.peer_alive():
                    self.decision = "stay: peer alive, the primary takes over"
                    log.warning("split-brain guard: %s but the primary is alive; staying", why)
                    return
            if self.witness is not None and not self._take_witness():
                self.decision = "stay: witness held by the peer"
                log.warning("split-brain guard: %s but the witness %s is held; staying",
                            why, self.witness)
                return
            if self.mig.mode == "none":
                return
            log.warning("auto-failover: %s; taking over as standalone primary", why)
            self.decision = f"failover: {why}"
            with contextlib.suppress(QMPError):
                self.mig.lost_heartbeat()
        finally:
            self._deciding = False

    def _take_witness(self) -> bool:
        if self._witness_fd is not None:
            return True
        assert self.witness is not None
        fd = os.open(self.witness, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._witness_fd = fd
        return True

    def close(self) -> None:
        """Stop sending and listening (the witness stays held until the process ends)."""
        if self._decision is not None:
            self._decision.cancel()
            self._decision = None
            self._deciding = False
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.enabled = False
