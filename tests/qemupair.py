"""The same machine on QEMU 7.2 and on qmpjobd-system-x86_64, side by side, for differential
tests: each side is a process started with the same QEMU command line (its own files) and a
negotiated monitor client."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from qmptest import QEMU, Client, strip_volatile, wait_for_socket
from test_qemu_cmdline import LAUNCH


class Side:
    """One process: ``name`` is ``qemu`` or ``ours``; ``argv`` its QEMU options."""

    def __init__(self, name: str, tmp: Path, argv: list[str]) -> None:
        assert QEMU is not None
        self.name, self.tmp = name, tmp
        sock = str(tmp / f"{name}.sock")
        cmd = [QEMU] if name == "qemu" else LAUNCH
        self.proc = subprocess.Popen([*cmd, *argv, "-qmp", f"unix:{sock},server=on,wait=off"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # QEMU's one monitor slot must not be taken by a probe connection
        wait_for_socket(sock, self.proc, single_client=name == "qemu")
        self.c = Client(sock, timeout=20)
        self.c.negotiate()

    def run(self, name: str, args: dict[str, Any] | None = None) -> list[Any]:
        """Every message up to the reply (events included), timestamps dropped, this side's
        file names (``tmp/NAME-...``) as ``<tmp>/<side>-...``."""
        request: dict[str, Any] = {"execute": name}
        if args is not None:
            request["arguments"] = self.paths(args)
        return self.normalise(strip_volatile(self.c.exchange(orjson.dumps(request))))

    def paths(self, value: Any) -> Any:
        """``<tmp>`` and ``<side>`` in the request's strings become this test's directory
        and this side's name."""
        text = orjson.dumps(value).replace(b"<tmp>", str(self.tmp).encode())
        return orjson.loads(text.replace(b"<side>", self.name.encode()))

    def normalise(self, msgs: list[Any]) -> list[Any]:
        text = orjson.dumps(msgs).replace(str(self.tmp).encode(), b"<tmp>")
        text = text.replace(f"<tmp>/{self.name}-".encode(), b"<tmp>/<side>-")
        return orjson.loads(re.sub(rb"#block\d+", b"#block<n>", text))  # QEMU's are random

    def hmp(self, line: str) -> list[Any]:
        return self.run("human-monitor-command", {"command-line": line})

    def until_event(self, name: str, got: list[Any] | None = None,
                    check: Callable[[Any], bool] = lambda msg: True) -> list[Any]:
        """Messages up to and including event ``name`` (that ``check`` accepts); none if it
        is in ``got`` already (it came before the reply of the last command)."""
        if got is not None and any(m.get("event") == name and check(m) for m in got):
            return []
        seen = []
        while True:
            msg = self.c.recv()
            seen.append(msg)
            if msg.get("event") == name and check(msg):
                return self.normalise(strip_volatile(seen))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@contextmanager
def pair(tmp: Path, argv: Callable[[str], list[str]]) -> Iterator[tuple[Side, Side]]:
    """QEMU 7.2 and qmpjobd, each with ``argv(name)``; both are killed at the end."""
    sides: list[Side] = []
    try:
        for name in ("qemu", "ours"):
            sides.append(Side(name, tmp, argv(name)))
        yield sides[0], sides[1]
    finally:
        for side in sides:
            side.stop()
