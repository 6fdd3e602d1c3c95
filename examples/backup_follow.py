"""Follow a backup job to completion with qemu.qmp: add two file nodes, start blockdev-backup,
print its progress from query-jobs on each status change, and wait for BLOCK_JOB_COMPLETED.

    qmpjobd &
    python3 examples/backup_follow.py [SOCKET [SIZE_MIB]]

SOCKET defaults to the daemon's own default (``python3 -m qmpjobd.paths`` prints it).

The source and target files are created in a temporary directory and removed afterwards.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

from qemu.qmp import QMPClient

from qmpjobd.paths import default_socket


async def main(path: str, size_mib: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "src.img"), os.path.join(tmp, "dst.img")
        with open(src, "wb") as f:
            for i in range(size_mib):
                f.write(bytes([i % 251]) * (1 << 20))
        with open(dst, "wb") as f:
            f.truncate(size_mib << 20)
        qmp = QMPClient("backup-follow")
        await qmp.connect(path)
        await qmp.execute("blockdev-add", {"driver": "file", "node-name": "src",
                                           "filename": src})
        await qmp.execute("blockdev-add", {"driver": "file", "node-name": "dst",
                                           "filename": dst})
        with qmp.listener(("JOB_STATUS_CHANGE", "BLOCK_JOB_COMPLETED")) as events:
            await qmp.execute("blockdev-backup", {"job-id": "bk", "device": "src",
                                                  "target": "dst", "sync": "full",
                                                  "speed": 64 << 20})
            completed = None
            while completed is None:
                ev = await asyncio.wait_for(events.get(), 60)
                if ev["event"] == "BLOCK_JOB_COMPLETED":
                    completed = ev["data"]
                    break
                status = ev["data"]["status"]
                jobs = await qmp.execute("query-jobs")
                job = next((j for j in jobs if j["id"] == "bk"), None)
                if job is not None and job["total-progress"]:
                    pct = 100 * job["current-progress"] // job["total-progress"]
                    print(f"bk: {status:9} {pct:3}%")
                else:
                    print(f"bk: {status}")
        print("completed:", completed)
        await qmp.execute("blockdev-del", {"node-name": "dst"})
        await qmp.execute("blockdev-del", {"node-name": "src"})
        await qmp.disconnect()
        with open(src, "rb") as a, open(dst, "rb") as b:
            same = a.read() == b.read()
        print("target equals source" if same else "target DIFFERS from source")
        return 0 if same and completed is not None and "error" not in completed else 1


if __name__ == "__main__":
    sock = sys.argv[1] if len(sys.argv) > 1 else default_socket()
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    sys.exit(asyncio.run(main(sock, mib)))
