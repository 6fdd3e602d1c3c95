"""Every example in examples/ runs against a real daemon and does what its header says
(the COLO drill is in test_colo.py, the plug-in in test_jobs.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from qmptest import Daemon, wait_for_socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_socat_session(daemon: Daemon) -> None:
    out = run("sh", os.path.join(EXAMPLES, "socat-session.sh"), daemon.path)
    assert out.returncode == 0, out.stderr
    msgs = [orjson.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert "QMP" in msgs[0]
    replies = {m["id"]: m for m in msgs if "id" in m}
    assert replies[1]["return"]["status"] == "running"
    events = [m["event"] for m in msgs if "event" in m]
    assert events == ["STOP", "RESUME"]
    assert msgs.index(next(m for m in msgs if m.get("event") == "STOP")) < \
        msgs.index(replies[2])


@pytest.mark.skipif(shutil.which("qmp-shell") is None, reason="qmp-shell is not installed")
def test_qmp_shell_session(daemon: Daemon) -> None:
    out = run("sh", os.path.join(EXAMPLES, "qmp-shell-session.sh"), daemon.path)
    assert out.returncode == 0, out.stderr
    assert "Connected to QEMU 7.2.0" in out.stdout
    assert '"status": "paused"' in out.stdout and '"status": "running"' in out.stdout
    assert '{"return": []}' in out.stdout  # query-jobs


def test_qemu_qmp_client(daemon: Daemon) -> None:
    pytest.importorskip("qemu.qmp", reason="the example uses qemu.qmp")
    out = run(sys.executable, os.path.join(EXAMPLES, "client.py"), daemon.path)
    assert out.returncode == 0, out.stderr
    assert "event: STOP" in out.stdout and "event: RESUME" in out.stdout
    assert "'status': 'paused'" in out.stdout


def test_backup_follow(daemon: Daemon) -> None:
    pytest.importorskip("qemu.qmp", reason="the example uses qemu.qmp")
    out = run(sys.executable, os.path.join(EXAMPLES, "backup_follow.py"), daemon.path, "8")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("bk: created")
    assert any(x.startswith("bk: pending") for x in lines)
    assert "completed: {'device': 'bk', 'len': 8388608, 'offset': 8388608" in out.stdout
    assert lines[-1] == "target equals source"


def test_default_socket_module_imports_no_daemon_code() -> None:
    code = ("import sys, qmpjobd.paths as p; print(p.default_socket()); "
            "print(sorted(m for m in sys.modules if m.startswith('qmpjobd')))")
    out = run(sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == "['qmpjobd', 'qmpjobd.paths']"


def test_examples_and_daemon_share_one_default_socket(tmp_path: Path) -> None:
    """No socket argument anywhere: the daemon and every client example meet at
    qmpjobd.paths.default_socket() (here steered by $QMPJOBD_SOCKET)."""
    path = str(tmp_path / "default.sock")
    env = {**os.environ, "QMPJOBD_SOCKET": path}
    shown = subprocess.run([sys.executable, "-m", "qmpjobd.paths"], env=env,
                           capture_output=True, text=True, check=True)
    assert shown.stdout == path + "\n"
    argv = [sys.executable, "-m", "qmpjobd", "--log-level", "warning"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_socket(path, proc)
        for example in ("client.py", "backup_follow.py"):
            out = subprocess.run([sys.executable, os.path.join(EXAMPLES, example)], env=env,
                                 capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert out.returncode == 0, (example, out.stdout + out.stderr)
        if shutil.which("socat"):
            out = subprocess.run(["sh", os.path.join(EXAMPLES, "socat-session.sh")], env=env,
                                 capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert out.returncode == 0 and '"event":"STOP"' in out.stdout, out.stderr
        if shutil.which("qmp-shell"):
            out = subprocess.run(["sh", os.path.join(EXAMPLES, "qmp-shell-session.sh")],
                                 env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert out.returncode == 0 and "Connected to QEMU" in out.stdout, out.stderr
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0


def readme_block(after: str) -> str:
    """The first fenced code block of README.md after the line starting with ``after``."""
    text = (Path(ROOT) / "README.md").read_text()
    rest = text[text.index("\n" + after):]
    start = rest.index("```sh\n") + len("```sh\n")
    return rest[start:rest.index("```", start)]


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_readme_backup_drill_runs_as_written(tmp_path: Path) -> None:
    """The README's drill, byte for byte, against a daemon on the default socket."""
    script = readme_block("A backup drill with socat")
    assert "/var/tmp/src.img" in script
    path = str(tmp_path / "drill.sock")
    env = {**os.environ, "QMPJOBD_SOCKET": path}
    proc = subprocess.Popen([sys.executable, "-m", "qmpjobd", "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_socket(path, proc)
        out = subprocess.run(["bash", "-euc", script], env=env, capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
    finally:
        proc.terminate()
        proc.wait(10)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"error"' not in out.stdout and out.stderr == "", out.stdout + out.stderr
    assert '"status":"concluded"' in out.stdout
    assert '"data":{"status":"null","id":"bk"}' in out.stdout  # dismissed
    assert out.stdout.rstrip().endswith("the copy equals the source")
    assert not os.path.exists("/var/tmp/src.img") and not os.path.exists("/var/tmp/dst.img")


def test_readme_greeting_is_the_daemons(daemon: Daemon) -> None:
    """Every greeting shown in README.md is byte for byte what the daemon sends today."""
    shown = {line for line in (Path(ROOT) / "README.md").read_text().splitlines()
             if line.startswith('{"QMP":')}
    assert shown
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(daemon.path)
        greeting = b""
        while not greeting.endswith(b"\r\n"):
            greeting += s.recv(4096)
    assert shown == {greeting.decode().rstrip("\r\n")}


def test_help_lists_watch_and_plugin() -> None:
    out = run(sys.executable, "-m", "qmpjobd", "--help")
    assert out.returncode == 0, out.stderr
    assert "--plugin MODULE_OR_FILE" in out.stdout
    assert "qmpjobd watch [SOCKET]" in out.stdout
