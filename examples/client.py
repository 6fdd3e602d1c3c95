"""Drive a running qmpjobd with qemu.qmp: query status, stop and resume, watch the events.

    qmpjobd &
    python3 examples/client.py [SOCKET]

SOCKET defaults to the daemon's own default (``python3 -m qmpjobd.paths`` prints it).
"""

from __future__ import annotations

import asyncio
import sys

from qemu.qmp import QMPClient

from qmpjobd.paths import default_socket


async def main(path: str) -> None:
    qmp = QMPClient("example")
    await qmp.connect(path)
    print("version:", await qmp.execute("query-version"))
    with qmp.listener(("STOP", "RESUME")) as events:
        await qmp.execute("stop")
        print("event:", (await asyncio.wait_for(events.get(), 5))["event"])
        print("status:", await qmp.execute("query-status"))
        await qmp.execute("cont")
        print("event:", (await asyncio.wait_for(events.get(), 5))["event"])
    await qmp.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else default_socket()))
