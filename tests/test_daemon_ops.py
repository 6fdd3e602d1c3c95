"""Running qmpjobd like a real daemon (issue 5): the TOML config, systemd socket activation
and sd_notify, socket permissions, peer credentials, TLS, message limits and --trace."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from colotest import EvClient, free_port, wait_checkpoints
from qmptest import Client, Daemon, start_qmpjobd, wait_for_socket

from qmpjobd.cli import build_parser
from qmpjobd.paths import default_socket
from qmpjobd.server.trace import Tracer

QMPJOBD = [sys.executable, "-m", "qmpjobd"]


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QMPJOBD, *args], capture_output=True, text=True, timeout=timeout)


# -- configuration ---------------------------------------------------------------------------

def test_config_file_sets_options_and_flags_override(tmp_path: Any) -> None:
    cfg = tmp_path / "q.toml"
    cfg.write_text('name = "from-file"\nqemu-version = "8.0.1"\nworkload-rate = 0\n'
                   f'socket = "{tmp_path}/ignored.sock"\n')
    d = start_qmpjobd(str(tmp_path), "--config", str(cfg), "--qemu-version", "7.2.5")
    with Client(d.path) as c:
        c.negotiate()
        assert c.cmd("query-name") == {"return": {"name": "from-file"}}
        assert c.cmd("query-version")["return"]["qemu"] == {"micro": 5, "minor": 2,
                                                            "major": 7}
    assert not os.path.exists(f"{tmp_path}/ignored.sock")  # --socket on the command line won


@pytest.mark.parametrize("text,message", [
    ("bogus = 1\n", "unknown key 'bogus'"),
    ('log-level = "loud"\n', "key 'log-level': 'loud' is not one of debug, info, warning, error"),
    ("paused = 1\n", "key 'paused' expects true or false"),
    ('tcp = "127.0.0.1:1"\n', "key 'tcp' expects a list"),
    ('guest-ram = "3K"\n', "key 'guest-ram': expected a positive multiple of 4K"),
    ("name = [\n", "not valid TOML"),
    ("socket-mode = 0o660\n", "key 'socket-mode' expects a string such as \"0660\""),
    ("max-message = 0\n", "key 'max-message': expected a positive whole number"),
])
def test_config_errors_are_clear(tmp_path: Any, text: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    out = run("--config", str(cfg), "--print-config")
    assert out.returncode == 2
    assert message in out.stderr and str(cfg) in out.stderr, out.stderr


@pytest.mark.parametrize("text,message", [
    ("socket-mode = 660\n", "key 'socket-mode' expects a string such as \"0660\""),
    ("socket-mode = 0o660\n", "key 'socket-mode' expects a string such as \"0660\""),
    ("socket-mode = 0660\n", "not valid TOML"),  # TOML has no leading zeros
])
def test_socket_mode_must_be_a_quoted_string(tmp_path: Any, text: str, message: str) -> None:
    """What the README's note says: an integer socket-mode is refused, never misread."""
    cfg = tmp_path / "mode.toml"
    cfg.write_text(text)
    out = run("--config", str(cfg), "--print-config")
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_quoted_socket_mode_is_octal(tmp_path: Any) -> None:
    cfg = tmp_path / "mode.toml"
    cfg.write_text('socket-mode = "0640"\n')
    d = start_qmpjobd(str(tmp_path), "--config", str(cfg))
    assert stat.S_IMODE(os.stat(d.path).st_mode) == 0o640


def test_sample_config_runs_as_it_is(tmp_path: Any) -> None:
    """examples/qmpjobd.toml on this machine, from the repository root, as its header says."""
    root = Path(__file__).resolve().parent.parent
    path = str(tmp_path / "sample.sock")
    env = {**os.environ, "QMPJOBD_SOCKET": path}  # the default socket, moved out of the way
    proc = subprocess.Popen([*QMPJOBD, "--config", "examples/qmpjobd.toml"], cwd=root,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_socket(path, proc)
        with Client(path) as c:
            c.negotiate()
            assert c.cmd("query-name") == {"return": {"name": "sample"}}
            reply = c.cmd("x-countdown", {"job-id": "c", "steps": 1})  # the plug-in is loaded
            assert reply == {"return": {}}, reply
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0


def test_print_config_shows_every_option_with_its_default(tmp_path: Any) -> None:
    out = run("--print-config")
    assert out.returncode == 0, out.stderr
    keys = {line.lstrip("# ").split(" = ")[0] for line in out.stdout.splitlines()[1:]}
    parser = build_parser()
    longs = {o[2:] for a in parser._actions for o in a.option_strings[:2] if o.startswith("--")}
    assert keys == longs - {"help", "version", "config", "print-config"}
    assert "guest-ram = 67108864" in out.stdout and 'log-level = "info"' in out.stdout
    assert f'# socket = "{default_socket()}"' in out.stdout
    cfg = tmp_path / "defaults.toml"
    cfg.write_text(out.stdout)
    assert run("--config", str(cfg), "--print-config").stdout == out.stdout


def test_print_config_round_trips(tmp_path: Any) -> None:
    first = run("--name", "n1", "--tcp", "127.0.0.1:4444", "--socket-mode", "0660", "-S",
                "--guest-ram", "8M", "--print-config")
    assert first.returncode == 0, first.stderr
    assert 'name = "n1"' in first.stdout and 'tcp = ["127.0.0.1:4444"]' in first.stdout
    assert 'socket-mode = "0660"' in first.stdout and "paused = true" in first.stdout
    cfg = tmp_path / "eff.toml"
    cfg.write_text(first.stdout)
    again = run("--config", str(cfg), "--print-config")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout


# -- systemd ---------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed")
def test_socket_activation(tmp_path: Any) -> None:
    path = f"{tmp_path}/act.sock"
    d = Daemon(["systemd-socket-activate", "-l", path, *QMPJOBD, "--log-level", "warning"],
               path)
    with Client(path) as c:  # the first connection makes systemd-socket-activate exec us
        assert "QMP" in c.greeting
        c.negotiate()
        assert c.cmd("query-status")["return"]["status"] == "running"
    assert d.stop() == 0


def test_sd_notify_ready_and_stopping(tmp_path: Any) -> None:
    note = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    note.bind(f"{tmp_path}/notify")
    note.settimeout(10)
    path = f"{tmp_path}/n.sock"
    env = {**os.environ, "NOTIFY_SOCKET": f"{tmp_path}/notify"}
    proc = subprocess.Popen([*QMPJOBD, "--socket", path, "--log-level", "warning"], env=env,
                            stderr=subprocess.PIPE)
    try:
        assert note.recv(100) == b"READY=1"
        assert os.path.exists(path)  # ready means listening
        proc.terminate()
        assert note.recv(100) == b"STOPPING=1"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_systemd_unit_files_use_real_options() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    service = Path(root, "examples", "systemd", "qmpjobd.service").read_text()
    sock = Path(root, "examples", "systemd", "qmpjobd.socket").read_text()
    assert "Type=notify" in service and "ListenStream=/run/qmpjobd/qmpjobd.sock" in sock
    exec_line = next(x for x in service.splitlines() if x.startswith("ExecStart="))
    flags = [w for w in exec_line.split() if w.startswith("--")]
    help_text = run("--help").stdout
    assert flags and all(f.split("=")[0] in help_text for f in flags), flags


# -- permissions and peer credentials ---------------------------------------------------------

def test_socket_mode_and_group(tmp_path: Any) -> None:
    d = start_qmpjobd(str(tmp_path), "--socket-mode", "0660", "--socket-group",
                      str(os.getgid()))
    st = os.stat(d.path)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()


def _connect_as(path: str, uid: int) -> bytes:
    """Connect from a child process running as ``uid``; returns the first bytes it got."""
    code = ("import os,socket,sys; os.setgid(65534); os.setuid(int(sys.argv[2]));"
            "s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1]);"
            "sys.stdout.buffer.write(s.recv(100))")
    out = subprocess.run([sys.executable, "-c", code, path, str(uid)], capture_output=True,
                         timeout=20)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def open_dir() -> Iterator[str]:
    """A directory other users can reach (pytest's tmp_path is private to root)."""
    d = tempfile.mkdtemp(prefix="qmpjobd-peer-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_peer_credentials_refuse_other_users(open_dir: str) -> None:
    tmp_path = open_dir
    d = start_qmpjobd(str(tmp_path), "--socket-mode", "0666", "--allow-uid", "12345")
    assert _connect_as(d.path, 65534) == b""  # closed at once, no greeting
    with Client(d.path) as c:  # root always may
        assert "QMP" in c.greeting
    d2 = start_qmpjobd(str(tmp_path), "--socket-mode", "0666", "--allow-uid", "65534",
                       name="ok.sock")
    assert _connect_as(d2.path, 65534).startswith(b'{"QMP"')


# -- TLS ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


def make_pki(where: str) -> dict[str, str]:
    """A test CA with a server and a client certificate (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = Path(where)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
         "ca.pem", "-days", "2", "-subj", "/CN=qmpjobd test CA")
    for name in ("server", "client"):
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", f"/CN={name}")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2")
    return {k: str(d / k) for k in ("ca.pem", "server.pem", "server.key", "client.pem",
                                    "client.key")}


def test_non_loopback_tcp_needs_tls(tmp_path: Any) -> None:
    out = run("--socket", f"{tmp_path}/a.sock", "--tcp", "0.0.0.0:0")
    assert out.returncode == 1
    assert "refusing to listen on non-loopback address 0.0.0.0 without TLS" in out.stderr


def _tls_client(port: int, ctx: ssl.SSLContext) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="server") as s:
        return s.recv(200)


def test_tls_listener_with_client_certificates(tmp_path: Any, pki: dict[str, str]) -> None:
    port = free_port()
    start_qmpjobd(str(tmp_path), "--tcp", f"0.0.0.0:{port}", "--tcp-tls",
                  "--tls-cert", pki["server.pem"],
                  "--tls-key", pki["server.key"], "--tls-ca", pki["ca.pem"])
    ctx = ssl.create_default_context(cafile=pki["ca.pem"])
    ctx.check_hostname = False
    try:  # without a client certificate: the handshake or the first read fails
        greeting = _tls_client(port, ctx)
    except (ssl.SSLError, OSError):
        greeting = b""
    assert greeting == b""
    ctx.load_cert_chain(pki["client.pem"], pki["client.key"])
    assert _tls_client(port, ctx).startswith(b'{"QMP"')
    plain = socket.create_connection(("127.0.0.1", port), timeout=5)
    plain.sendall(b'{"execute":"qmp_capabilities"}\r\n')
    assert not plain.recv(100).startswith(b'{"QMP"')  # no QMP without TLS


def test_colo_over_tls(tmp_path: Any, pki: dict[str, str]) -> None:
    tls = ["--colo-tls", "--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"],
           "--tls-ca", pki["ca.pem"]]
    port = free_port()
    uri = f"tcp:127.0.0.1:{port}"
    start_qmpjobd(str(tmp_path), "--incoming", uri, "--guest-ram", "4M", *tls, name="s.sock")
    start_qmpjobd(str(tmp_path), "--guest-ram", "4M", *tls, name="p.sock")
    s, p = EvClient(f"{tmp_path}/s.sock"), EvClient(f"{tmp_path}/p.sock")
    p.ok("migrate-set-capabilities", {"capabilities": [{"capability": "x-colo",
                                                        "state": True}]})
    p.ok("migrate-set-parameters", {"x-checkpoint-delay": 100})
    p.ok("migrate", {"uri": uri})
    wait_checkpoints(s, 3)
    ps, ss = p.ok("x-query-guest-state"), s.ok("x-query-guest-state")
    common = {h["checkpoint"]: h["digest"] for h in ps["history"]}
    assert any(common.get(h["checkpoint"]) == h["digest"] for h in ss["history"])


def test_colo_tls_refuses_a_plain_peer(tmp_path: Any, pki: dict[str, str]) -> None:
    port = free_port()
    uri = f"tcp:127.0.0.1:{port}"
    start_qmpjobd(str(tmp_path), "--incoming", uri, "--guest-ram", "4M", "--colo-tls",
                  "--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"],
                  "--tls-ca", pki["ca.pem"], name="s.sock")
    start_qmpjobd(str(tmp_path), "--guest-ram", "4M", name="p.sock")
    s, p = EvClient(f"{tmp_path}/s.sock"), EvClient(f"{tmp_path}/p.sock")
    for c in (s, p):
        c.ok("migrate-set-capabilities", {"capabilities": [{"capability": "events",
                                                            "state": True}]})
    p.ok("migrate", {"uri": uri})
    s.wait_event("MIGRATION", {"status": "failed"})
    assert s.ok("query-migrate")["status"] == "failed"
    assert s.ok("query-colo-status")["mode"] == "none"


def test_colo_tls_needs_all_three_files(tmp_path: Any) -> None:
    out = run("--socket", f"{tmp_path}/a.sock", "--colo-tls")
    assert out.returncode == 1 and "--colo-tls needs --tls-cert, --tls-key and --tls-ca" \
        in out.stderr


# -- limits and tracing --------------------------------------------------------------------------

def test_max_message_is_configurable(tmp_path: Any) -> None:
    d = start_qmpjobd(str(tmp_path), "--max-message", "1000")
    with Client(d.path) as c:
        c.negotiate()
        big = b'{"execute":"query-name","id":"' + b"x" * 2000 + b'"}\n'
        msgs = c.exchange(big)
        assert msgs[0] == {"error": {"class": "GenericError",
                                     "desc": "JSON token size limit exceeded"}}
        assert all(m["error"]["class"] == "GenericError" for m in msgs)
        assert c.cmd("query-status")["return"]["status"] == "running"


def test_trace_records_every_message(tmp_path: Any) -> None:
    trace = f"{tmp_path}/trace.jsonl"
    d = start_qmpjobd(str(tmp_path), "--trace", trace)
    with Client(d.path) as c:
        c.negotiate()
        c.cmd("stop")
        c.send(b"{bad json}\n")
        c.recv_reply()
    assert d.stop() == 0
    lines = [orjson.loads(x) for x in Path(trace).read_bytes().splitlines()]
    assert all(set(x) == {"time", "connection", "direction", "message"} for x in lines)
    ours = next(x["connection"] for x in lines if x["message"] == {"execute": "stop"})
    flow = [(x["direction"], x["message"]) for x in lines if x["connection"] == ours]
    assert flow[0][0] == "connect"
    assert flow[1][0] == "out" and "QMP" in flow[1][1]
    assert ("in", {"execute": "qmp_capabilities"}) in flow
    assert ("in", {"execute": "stop"}) in flow
    assert ("out", {"return": {}}) in flow
    assert any(d == "out" and isinstance(m, dict) and m.get("event") == "STOP"
               for d, m in flow)
    assert any(d == "in" and isinstance(m, dict) and "parse-error" in m for d, m in flow)
    assert flow[-1][0] == "disconnect"



def test_config_non_utf8_is_a_clear_error(tmp_path: Any) -> None:
    cfg = tmp_path / "bin.toml"
    cfg.write_bytes(b'name = "\xff"\n')
    out = run("--config", str(cfg), "--print-config")
    assert out.returncode == 2 and "not valid TOML" in out.stderr, out.stderr


def test_command_line_lists_replace_the_files(tmp_path: Any) -> None:
    cfg = tmp_path / "l.toml"
    cfg.write_text('tcp = ["127.0.0.1:4444"]\nname = "a\\nb"\n')
    out = run("--config", str(cfg), "--tcp", "127.0.0.1:5555", "--print-config")
    assert 'tcp = ["127.0.0.1:5555"]' in out.stdout, out.stdout
    assert 'name = "a\\nb"' in out.stdout  # control characters escaped: valid TOML
    again = tmp_path / "again.toml"
    again.write_text(out.stdout)
    assert run("--config", str(again), "--print-config").stdout == out.stdout
    assert 'tcp = ["127.0.0.1:4444"]' in run("--config", str(cfg), "--print-config").stdout


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed")
def test_socket_activation_with_the_same_path_in_the_config(tmp_path: Any) -> None:
    path = f"{tmp_path}/act.sock"
    cfg = tmp_path / "sd.toml"
    cfg.write_text(f'socket = "{path}"\n')  # as the README's example config does
    d = Daemon(["systemd-socket-activate", "-l", path, *QMPJOBD, "--config", str(cfg),
                "--log-level", "warning"], path)
    with Client(path) as c:
        c.negotiate()
        assert c.cmd("query-status")["return"]["status"] == "running"
    assert d.stop() == 0


def test_colo_tls_leaves_a_loopback_qmp_listener_plain(tmp_path: Any,
                                                       pki: dict[str, str]) -> None:
    port = free_port()
    start_qmpjobd(str(tmp_path), "--tcp", f"127.0.0.1:{port}", "--colo-tls",
                  "--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"],
                  "--tls-ca", pki["ca.pem"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert s.recv(100).startswith(b'{"QMP"')


def test_a_failing_trace_file_loses_records_not_the_daemon(tmp_path: Any) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    d = start_qmpjobd(str(tmp_path), "--trace", "/dev/full")
    with Client(d.path) as c:
        c.negotiate()
        for _ in range(50):
            assert c.cmd("query-status")["return"]["running"] is True
    assert d.stop() == 0
    err = d.stderr()
    assert "records are lost until a write succeeds" in err, err
    assert "lost (write errors)" in err, err


def _drain(fd: int, into: list[bytes]) -> threading.Thread:
    """Read ``fd`` to its end in a thread (the far side of a trace FIFO)."""
    def read() -> None:
        os.set_blocking(fd, True)
        while chunk := os.read(fd, 1 << 20):
            into.append(chunk)
    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def test_trace_queue_is_bounded_in_bytes(tmp_path: Any,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """A trace file that does not keep up (a FIFO nobody reads) costs at most max_bytes of
    queued records; the rest are dropped, counted and logged, and the rest get written."""
    fifo = str(tmp_path / "trace.fifo")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    limit = 256 << 10
    tracer = Tracer(fifo, max_bytes=limit)
    record = b'{"return":{},"id":"' + b"x" * (16 << 10) + b'"}\r\n'
    for _ in range(200):  # 3.2 MB, against a 64 KiB pipe and a 256 KiB queue
        tracer.record_raw(1, "out", record)
        assert tracer.queued_bytes <= limit
    assert tracer.dropped > 0
    assert "the file cannot keep up; dropping records" in caplog.text
    chunks: list[bytes] = []
    drained = _drain(reader, chunks)
    tracer.close()
    drained.join(10)
    os.close(reader)
    lines = b"".join(chunks).splitlines()
    assert len(lines) == 200 - tracer.dropped
    assert all(orjson.loads(x)["message"]["return"] == {} for x in lines)
    assert f"{tracer.dropped} records dropped" in caplog.text


def test_trace_writer_survives_any_error(tmp_path: Any,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """An unencodable record is described, not fatal; an exception in the writer loses
    that batch only: later records are written."""
    path = tmp_path / "t.jsonl"
    tracer = Tracer(str(path))
    failed = threading.Event()
    write_batch = tracer._write_batch

    def broken_once(batch: list[Any]) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("injected")
        write_batch(batch)

    tracer._write_batch = broken_once  # type: ignore[method-assign]
    tracer.record(1, "in", {"lost": True})
    assert failed.wait(10)
    tracer.record(1, "in", {1, 2})               # a set: JSON has none
    tracer.record(1, "in", {"id": "\ud800"})     # a lone surrogate
    tracer.record(1, "in", {"id": 2 ** 70})       # past orjson's 64 bits
    tracer.close()
    got = [json.loads(x)["message"] for x in path.read_bytes().splitlines()]
    assert got == [{"unencodable": "set"}, {"id": "\ud800"}, {"id": 2 ** 70}]
    assert tracer.lost == 1 and "cannot write 1 records" in caplog.text


def test_daemon_traces_hostile_values_and_keeps_serving(tmp_path: Any) -> None:
    trace = tmp_path / "trace.jsonl"
    d = start_qmpjobd(str(tmp_path), "--trace", str(trace))
    deep = b"[" * 300 + b"]" * 300
    with Client(d.path) as c:
        c.negotiate()
        c.send(b'{"execute":"query-name","id":' + deep + b'}\n')
        assert "return" in c.recv_reply()
        assert c.cmd("query-status")["return"]["running"] is True
    assert d.stop() == 0
    ins = [orjson.loads(x)["message"] for x in trace.read_bytes().splitlines()
           if b'"direction":"in"' in x]
    assert {"execute": "query-name", "id": orjson.loads(deep)} in ins
    assert {"execute": "query-status"} in ins


# -- plug-ins ------------------------------------------------------------------------------------

EXAMPLE_PLUGIN = str(Path(__file__).parent.parent / "examples" / "countdown_job.py")


def start_status(tmp_path: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the daemon with ``args``; for a start that must fail (no socket is waited on)."""
    return run("--socket", str(tmp_path / "never.sock"), "--log-level", "warning", *args)


@pytest.mark.parametrize("text,message", [
    ("def register(server:\n", "syntax error at line 1: '(' was never closed"),
    ("import json\nimport no_such_module_xyz\n",
     "import failed (line 2): ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    ("x = 1\n", "no register(vm) function"),
    ("def register(server):\n    raise RuntimeError('broken')\n",
     "register() failed (line 2): RuntimeError: broken"),
    ("raise OSError('at import')\n", "failed while loading (line 1): OSError: at import"),
])
def test_a_broken_plugin_names_its_file(tmp_path: Any, text: str, message: str) -> None:
    bad = tmp_path / "bad_plugin.py"
    bad.write_text(text)
    out = start_status(tmp_path, "--plugin", str(bad))
    assert out.returncode == 1, out.stderr
    assert f"plug-in {bad}: {message}" in out.stderr, out.stderr


def test_a_missing_plugin_file_or_module_is_named(tmp_path: Any) -> None:
    out = start_status(tmp_path, "--plugin", str(tmp_path / "nowhere.py"))
    assert out.returncode == 1 and f"plug-in {tmp_path}/nowhere.py: no such file" in out.stderr
    out = start_status(tmp_path, "--plugin", "no_such_plugin_module")
    assert out.returncode == 1
    assert "plug-in no_such_plugin_module: no module of that name" in out.stderr, out.stderr


def test_the_same_plugin_twice_is_refused_clearly(tmp_path: Any) -> None:
    out = start_status(tmp_path, "--plugin", EXAMPLE_PLUGIN, "--plugin", EXAMPLE_PLUGIN)
    assert out.returncode == 1
    assert f"plug-in {EXAMPLE_PLUGIN} is given twice" in out.stderr, out.stderr
    copy = tmp_path / "countdown_copy.py"  # another file declaring the same job type
    copy.write_text(Path(EXAMPLE_PLUGIN).read_text())
    out = start_status(tmp_path, "--plugin", EXAMPLE_PLUGIN, "--plugin", str(copy))
    assert out.returncode == 1
    assert f"plug-in {copy}: register() failed" in out.stderr, out.stderr
    assert "job type 'x-countdown' is already registered (its command is 'x-countdown')" \
        in out.stderr
    assert not (tmp_path / "never.sock").exists()
