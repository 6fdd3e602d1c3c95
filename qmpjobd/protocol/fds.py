"""File descriptors a client passed with its messages (SCM_RIGHTS), as a QEMU monitor keeps
them: the descriptors of the latest message that carried any wait for ``getfd``, which names
one; ``closefd`` and the end of the connection close them."""

from __future__ import annotations

import contextlib
import os

from .errors import QMPError


class PassedFds:
    """One client's descriptors: received and not yet taken, and named."""

    __slots__ = ("named", "received")

    def __init__(self) -> None:
        self.received: list[int] = []
        """From the latest read that carried descriptors (older ones were closed)."""
        self.named: dict[str, int] = {}

    def receive(self, fds: list[int]) -> None:
        """A read brought ``fds``: they replace (and close) any not taken yet."""
        _close(self.received)
        self.received = list(fds)

    def getfd(self, name: str) -> None:
        """QEMU's qmp_getfd(): the first received descriptor takes ``name`` (the others are
        closed); a descriptor already so named is closed."""
        if not self.received:
            raise QMPError("No file descriptor supplied via SCM_RIGHTS")
        fd, rest = self.received[0], self.received[1:]
        self.received = []
        _close(rest)
        if name[:1].isdigit():
            _close([fd])
            raise QMPError("Parameter 'fdname' expects a name not starting with a digit")
        old = self.named.pop(name, None)
        self.named[name] = fd
        if old is not None:
            _close([old])

    def closefd(self, name: str) -> None:
        fd = self.named.pop(name, None)
        if fd is None:
            raise QMPError(f"File descriptor named '{name}' not found")
        _close([fd])

    def take(self, name: str) -> int | None:
        """Hand the descriptor named ``name`` over to its user (a migration), or None."""
        return self.named.pop(name, None)

    def close_all(self) -> None:
        _close(self.received)
        _close(list(self.named.values()))
        self.received, self.named = [], {}


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
