"""Where the daemon listens by default: the one place that decides it, for the daemon, its
tools (watch, health) and the examples.  Standard library only, so a client can import it
without loading any daemon code.

    python3 -m qmpjobd.paths      # prints the default socket (for shell scripts)
"""

from __future__ import annotations

import os

ENV = "QMPJOBD_SOCKET"
"""An environment variable that, when set and not empty, overrides the built-in default."""


def default_socket() -> str:
    """The default QMP Unix socket.

    ``$QMPJOBD_SOCKET`` when set; else ``/run/qmpjobd/qmpjobd.sock`` for root (the systemd
    units' and the container's path); else ``$XDG_RUNTIME_DIR/qmpjobd.sock``; else
    ``/tmp/qmpjobd-$UID.sock``.
    """
    override = os.environ.get(ENV)
    if override:
        return override
    if os.geteuid() == 0:
        return "/run/qmpjobd/qmpjobd.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "qmpjobd.sock")
    return f"/tmp/qmpjobd-{os.geteuid()}.sock"


if __name__ == "__main__":
    print(default_socket())
