"""The container pieces: the health check (qmpjobd.health) against real daemons and against
misbehaving listeners, the Dockerfile (read statically, its HEALTHCHECK command run for real),
and examples/compose-colo.yml (its commands started, its QMP recipe replayed)."""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import inspect
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from colotest import EvClient, free_port
from qmptest import Client, Daemon, start_qmpjobd, wait_for_socket

from qmpjobd import health

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "examples" / "compose-colo.yml"
IMAGE_SOCKET_DIR = "/run/qmpjobd"


def run_env() -> dict[str, str]:
    """Run this tree's qmpjobd, and let a bare ``python3`` be the interpreter running the tests
    (in the image, python3 is the one qmpjobd is installed in)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def run(argv: list[str], limit: float = 30.0) -> tuple[int, str, float]:
    """Run a command; exit status, stdout and wall time."""
    start = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, env=run_env(), cwd=REPO,
                       timeout=limit, check=False)
    return p.returncode, p.stdout, time.monotonic() - start


def health_cli(*args: str) -> tuple[int, str]:
    rc, out, _ = run([sys.executable, "-m", "qmpjobd.health", *args])
    return rc, out


# -- the health check against real daemons -------------------------------------------------

def test_healthy_daemon(daemon: Daemon) -> None:
    assert health_cli(daemon.path) == (0, "ok: running\n")


def test_reports_the_run_state(tmp_path: Path) -> None:
    d = start_qmpjobd(str(tmp_path), "-S")
    assert health_cli(d.path) == (0, "ok: prelaunch\n")


def test_over_tcp(tmp_path: Path) -> None:
    port = free_port()
    start_qmpjobd(str(tmp_path), "--tcp", f"127.0.0.1:{port}")
    assert health_cli("--tcp", f"127.0.0.1:{port}") == (0, "ok: running\n")


def test_no_socket(tmp_path: Path) -> None:
    rc, out = health_cli(str(tmp_path / "missing.sock"))
    assert rc == 1
    assert out.startswith("unhealthy: no socket at ") and out.count("\n") == 1


def test_daemon_stopped_with_sigterm(tmp_path: Path) -> None:
    d = start_qmpjobd(str(tmp_path))
    assert health_cli(d.path)[0] == 0
    assert d.stop(signal.SIGTERM) == 0
    rc, out = health_cli(d.path)
    assert rc == 1 and out.startswith("unhealthy: no socket at "), out


def test_daemon_killed_leaves_a_dead_socket(tmp_path: Path) -> None:
    d = start_qmpjobd(str(tmp_path))
    d.stop(signal.SIGKILL)
    assert os.path.exists(d.path)  # nobody removed it
    rc, out = health_cli(d.path)
    assert rc == 1 and out.startswith("unhealthy: connection refused"), out


def test_tcp_refused() -> None:
    rc, out = health_cli("--tcp", f"127.0.0.1:{free_port()}")
    assert rc == 1 and out.startswith("unhealthy: connection refused"), out


@pytest.mark.parametrize("args", [["--timeout", "0"], ["--timeout", "soon"], ["--bogus"],
                                  ["a.sock", "--tcp", "127.0.0.1:1"], ["--tcp", "nohost"]])
def test_bad_arguments_exit_1_not_2(args: list[str]) -> None:
    """Docker reserves exit status 2 of a health check: usage errors are unhealthy too."""
    rc, out = health_cli(*args)
    assert rc == 1 and out.startswith("unhealthy: bad arguments: "), out


def test_default_socket_is_the_daemons(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from qmpjobd.cli import default_socket
    seen: list[Any] = []

    def fake_check(target: Any, timeout: float) -> str:
        seen.append((target, timeout))
        return "running"

    monkeypatch.setattr(health, "check", fake_check)
    assert health.main([]) == 0
    assert seen == [(default_socket(), health.DEFAULT_TIMEOUT)]
    assert capsys.readouterr().out == "ok: running\n"


# -- the health check against listeners that misbehave -------------------------------------

Script = Callable[[socket.socket], None]


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[Callable[[Script], str]]:
    """``start(script)``: a Unix listener (listening before this returns) whose one
    connection is handled by ``script(conn)`` in a thread; returns the socket path."""
    threads: list[threading.Thread] = []
    done = threading.Event()
    listeners: list[socket.socket] = []

    def start(script: Script) -> str:
        path = str(tmp_path / f"fake{len(listeners)}.sock")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(1)
        listeners.append(srv)

        def serve() -> None:
            try:
                conn, _ = srv.accept()
            except OSError:  # shut down by the teardown: no client came
                return
            with conn:
                script(conn)
                # keep the connection open until the test ends or the client hangs up
                conn.settimeout(30)
                while not done.is_set():
                    try:
                        if not conn.recv(4096):
                            return
                    except OSError:
                        return

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        threads.append(t)
        return path

    yield start
    done.set()
    for srv in listeners:
        with contextlib.suppress(OSError):
            srv.shutdown(socket.SHUT_RDWR)  # wakes an accept() still waiting
        srv.close()
    for t in threads:
        t.join(timeout=30)


GREETING = b'{"QMP":{"version":{"qemu":{"micro":0,"minor":2,"major":7},"package":""},' \
           b'"capabilities":["oob"]}}\r\n'


def lines(conn: socket.socket) -> Iterator[dict[str, Any]]:
    """The JSON requests a client sends, one per line."""
    buf = b""
    conn.settimeout(30)
    while True:
        while b"\n" not in buf:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        yield json.loads(line)


def qmp_script(answers: dict[str, list[bytes]]) -> Script:
    """Greet, then answer each command with its canned lines (each ending in CRLF)."""
    def script(conn: socket.socket) -> None:
        conn.sendall(GREETING)
        for req in lines(conn):
            for out in answers[req["execute"]]:
                conn.sendall(out.replace(b"$ID", json.dumps(req.get("id")).encode()) + b"\r\n")
    return script


def check_in_process(path: str, timeout: float,
                     capsys: pytest.CaptureFixture[str]) -> tuple[int, str, float]:
    start = time.monotonic()
    rc = health.main([path, "--timeout", str(timeout)])
    return rc, capsys.readouterr().out, time.monotonic() - start


def test_garbage_greeting(fake_server: Callable[[Script], str],
                          capsys: pytest.CaptureFixture[str]) -> None:
    path = fake_server(lambda c: c.sendall(b"SSH-2.0-OpenSSH_9.2\r\n"))
    rc, out, took = check_in_process(path, 3, capsys)
    assert (rc, out) == (1, "unhealthy: garbage instead of the greeting: 'SSH-2.0-OpenSSH_9.2'\n")
    assert took < 3


def test_json_that_is_not_a_qmp_greeting(fake_server: Callable[[Script], str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = fake_server(lambda c: c.sendall(b'{"QMP":{"capabilities":[]}}\r\n'))
    rc, out, _ = check_in_process(path, 3, capsys)
    assert rc == 1 and out.startswith("unhealthy: not a QMP greeting: "), out


def test_closed_before_greeting(fake_server: Callable[[Script], str],
                                capsys: pytest.CaptureFixture[str]) -> None:
    path = fake_server(lambda c: c.shutdown(socket.SHUT_RDWR))
    rc, out, _ = check_in_process(path, 3, capsys)
    assert (rc, out) == (1, "unhealthy: connection closed before the greeting\n")


@pytest.mark.parametrize("script", [
    lambda c: None,                                   # accepts, never greets
    lambda c: c.sendall(b'{"QMP":{"version":{'),      # half a greeting, then silence
    qmp_script({"qmp_capabilities": []}),             # greets, never answers
    qmp_script({"qmp_capabilities": [b'{"return":{}}'], "query-status": []}),
], ids=["no-greeting", "half-greeting", "no-negotiation-reply", "no-status-reply"])
def test_silent_server_times_out(fake_server: Callable[[Script], str], script: Script,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = fake_server(script)
    rc, out, took = check_in_process(path, 0.5, capsys)
    assert rc == 1 and out.startswith("unhealthy: timed out after 0.5s waiting for "), out
    assert 0.45 <= took < 2.0, took  # one deadline for the whole conversation


def test_silent_server_times_out_from_the_command_line(
        fake_server: Callable[[Script], str]) -> None:
    path = fake_server(lambda c: None)
    rc, out, took = run([sys.executable, "-m", "qmpjobd.health", path, "--timeout", "1"])
    assert (rc, out) == (1, "unhealthy: timed out after 1s waiting for the greeting\n")
    assert took < 1 + 5, took  # the deadline plus interpreter start-up


@pytest.mark.parametrize(("answers", "expect"), [
    ({"qmp_capabilities": [b'{"error":{"class":"CommandNotFound","desc":"nope"}}']},
     "unhealthy: qmp_capabilities failed: CommandNotFound: nope\n"),
    ({"qmp_capabilities": [b'{"return":{"x":1}}']},
     "unhealthy: unexpected reply to qmp_capabilities: '{\"return\": {\"x\": 1}}'\n"),
    ({"qmp_capabilities": [b'{"return":{}}'],
      "query-status": [b'{"error":{"class":"GenericError","desc":"broken"},"id":$ID}']},
     "unhealthy: query-status failed: GenericError: broken\n"),
    ({"qmp_capabilities": [b'{"return":{}}'], "query-status": [b'{"return":{},"id":$ID}']},
     "unhealthy: unexpected reply to query-status: "
     "'{\"return\": {}, \"id\": \"qmpjobd-health\"}'\n"),
    ({"qmp_capabilities": [b'{"return":{}}'], "query-status": [b"not json"]},
     "unhealthy: garbage instead of the reply to query-status: 'not json'\n"),
], ids=["negotiation-error", "negotiation-odd", "status-error", "status-odd", "status-garbage"])
def test_error_replies(fake_server: Callable[[Script], str], answers: dict[str, list[bytes]],
                       expect: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = fake_server(qmp_script(answers))
    rc, out, _ = check_in_process(path, 3, capsys)
    assert (rc, out) == (1, expect)


def test_events_before_the_reply_are_skipped(fake_server: Callable[[Script], str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    event = b'{"timestamp":{"seconds":1,"microseconds":2},"event":"STOP"}'
    path = fake_server(qmp_script({
        "qmp_capabilities": [b'{"return":{}}'],
        "query-status": [event, event.replace(b"STOP", b"RESUME"),
                         b'{"return":{"status":"colo","singlestep":false,"running":false},'
                         b'"id":$ID}']}))
    assert check_in_process(path, 3, capsys)[:2] == (0, "ok: colo\n")


# -- the Dockerfile ---------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comment lines dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        current = ""
    return out


def command_argv(rest: str) -> list[str]:
    """The argv of an exec-form (JSON) or shell-form command."""
    if rest.startswith("["):
        argv = json.loads(rest)
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
        return argv
    return ["/bin/sh", "-c", rest]


class Dockerfile:
    def __init__(self, path: Path) -> None:
        self.instructions = dockerfile_instructions(path.read_text())

    def all(self, name: str) -> list[str]:
        return [rest for word, rest in self.instructions if word == name]

    def last(self, name: str) -> str:
        found = self.all(name)
        assert found, f"no {name} in the Dockerfile"
        return found[-1]

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """The last HEALTHCHECK's options and its command's argv."""
        options: dict[str, str] = {}
        rest = self.last("HEALTHCHECK")
        while rest.startswith("--"):
            opt, _, rest = rest.partition(" ")
            key, _, value = opt[2:].partition("=")
            options[key] = value
            rest = rest.strip()
        kind, _, rest = rest.partition(" ")
        assert kind.upper() == "CMD", f"HEALTHCHECK {kind}: expected a CMD"
        return options, command_argv(rest.strip())

    def entry_argv(self) -> list[str]:
        return command_argv(self.last("ENTRYPOINT")) + command_argv(self.last("CMD"))


def duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(num) * units[unit]
    return total


def socket_of(argv: list[str]) -> str:
    assert "--socket" in argv, argv
    return argv[argv.index("--socket") + 1]


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile(DOCKERFILE)


def test_dockerfile_runs_as_a_fixed_non_root_user(dockerfile: Dockerfile) -> None:
    user = dockerfile.last("USER").split(":")[0]
    assert user not in ("root", "0", ""), user
    setup = " ".join(dockerfile.all("RUN"))
    uid = re.search(rf"useradd\b[^&;]*--uid (\d+)[^&;]*\b{re.escape(user)}\b", setup) \
        if not user.isdigit() else None
    assert user.isdigit() or (uid and int(uid.group(1)) >= 1000), "user without a fixed uid"
    # the user comes after the install, so pip ran as root and the daemon does not
    order = [w for w, _ in dockerfile.instructions]
    assert order.index("USER") > max(i for i, w in enumerate(order) if w == "RUN")


def test_dockerfile_socket_volume_entrypoint_and_signal(dockerfile: Dockerfile) -> None:
    volumes = [v for rest in dockerfile.all("VOLUME")
               for v in (json.loads(rest) if rest.startswith("[") else rest.split())]
    assert IMAGE_SOCKET_DIR in volumes
    argv = dockerfile.entry_argv()
    assert argv[0] == "qmpjobd"
    assert socket_of(argv) == f"{IMAGE_SOCKET_DIR}/qmpjobd.sock"
    assert dockerfile.last("STOPSIGNAL") in ("SIGTERM", "15")
    assert re.match(r"python:3\.1[1-9]-slim\b", dockerfile.last("FROM").split()[0])
    assert any(re.search(r"pip install --no-cache-dir \.(\s|$)", r)
               for r in dockerfile.all("RUN"))


def test_dockerfile_healthcheck_matches_the_daemon(dockerfile: Dockerfile) -> None:
    options, argv = dockerfile.healthcheck()
    assert argv[:3] == ["python3", "-m", "qmpjobd.health"], argv
    # same socket as the daemon's command line: the health module takes it as SOCKET
    assert argv[3:] == [socket_of(dockerfile.entry_argv())]
    # the check's own deadline is shorter than Docker's, so Docker records its reason
    assert duration(options["timeout"]) > health.DEFAULT_TIMEOUT
    assert duration(options["interval"]) >= duration(options["timeout"])
    assert int(options["retries"]) >= 1


def test_dockerfile_healthcheck_command_runs(dockerfile: Dockerfile, tmp_path: Path) -> None:
    """The HEALTHCHECK line as written, with the test's socket in place of the image's."""
    _, argv = dockerfile.healthcheck()
    image_socket = socket_of(dockerfile.entry_argv())
    d = start_qmpjobd(str(tmp_path))
    cmd = [d.path if a == image_socket else a for a in argv]
    assert cmd != argv
    rc, out, _ = run(cmd)
    assert (rc, out) == (0, "ok: running\n")
    d.stop(signal.SIGTERM)
    rc, out, _ = run(cmd)
    assert rc == 1 and out.startswith("unhealthy: "), out


def test_dockerignore_keeps_the_build_inputs(dockerfile: Dockerfile) -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert ".git" in patterns

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(fnmatch.fnmatch(pre, pat.removeprefix("**/")) or fnmatch.fnmatch(pre, pat)
                   for pat in patterns if not pat.startswith("!") for pre in prefixes)

    sources = [s for rest in dockerfile.all("COPY") for s in shlex.split(rest)[:-1]
               if not s.startswith("--")]
    assert sources, "nothing copied into the image"
    for src in [*sources, "qmpjobd/health.py", "qmpjobd/cli.py"]:
        assert not ignored(src), f".dockerignore drops {src}, which the build needs"
    assert ignored(".git/config") and ignored("tests/test_container.py")


# -- examples/compose-colo.yml ------------------------------------------------------------

def daemon_flags() -> set[str]:
    rc, out, _ = run([sys.executable, "-m", "qmpjobd", "--help"])
    assert rc == 0
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", out))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: "
                                              "examples/compose-colo.yml not parsed")
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def service_argv(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    entry = service.get("entrypoint", ["qmpjobd"])
    entry = shlex.split(entry) if isinstance(entry, str) else list(entry)
    if argv[:1] == ["qmpjobd"]:
        argv = argv[1:]
    assert entry == ["qmpjobd"], entry
    return argv


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return list(test[1:]) if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]


def test_compose_file_describes_the_pair(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"primary", "secondary"}
    flags = daemon_flags()
    for name in ("primary", "secondary"):
        svc = services[name]
        argv = service_argv(svc)
        used = {a.split("=")[0] for a in argv if a.startswith("-")}
        assert used <= flags, f"{name}: flags the daemon does not have: {used - flags}"
        assert socket_of(argv) == f"{IMAGE_SOCKET_DIR}/{name}.sock"
        assert healthcheck_argv(svc) == ["python3", "-m", "qmpjobd.health", socket_of(argv)]
        # one named volume at /run/qmpjobd in both services
        mounts = [v.split(":") if isinstance(v, str) else [v["source"], v["target"]]
                  for v in svc["volumes"]]
        assert [m[:2] for m in mounts if m[1] == IMAGE_SOCKET_DIR] == [["qmpjobd-run",
                                                                        IMAGE_SOCKET_DIR]]
    assert "qmpjobd-run" in compose["volumes"]
    sec = service_argv(services["secondary"])
    assert sec[sec.index("--incoming") + 1] == "tcp:0.0.0.0:9998"
    assert "--incoming" not in service_argv(services["primary"])
    assert services["primary"]["depends_on"]["secondary"]["condition"] == "service_healthy"


def compose_recipe() -> list[tuple[str, list[dict[str, Any]]]]:
    """The QMP steps in the compose file's comments, in order: (target, requests) where target
    is "primary" or "secondary" (a socat session), or ("kill-primary", [])."""
    steps: list[tuple[str, list[dict[str, Any]]]] = []
    pending: list[dict[str, Any]] = []
    for line in COMPOSE.read_text().splitlines():
        if not line.startswith("#"):
            continue
        for payload in re.findall(r"'(\{\"execute\".*?\})'", line):
            pending.append(json.loads(payload))
        if "| $QMP_PRI" in line or "| $QMP_SEC" in line:
            steps.append(("primary" if "$QMP_PRI" in line else "secondary", pending))
            pending = []
        elif re.search(r"\bkill -s (SIG)?KILL primary\b", line):
            steps.append(("kill-primary", []))
    assert not pending, f"requests not piped to a daemon: {pending}"
    return steps


def test_compose_recipe_is_valid_qmp(daemon: Daemon) -> None:
    steps = compose_recipe()
    names = {r["execute"] for _, reqs in steps for r in reqs}
    assert {"migrate-set-capabilities", "migrate-set-parameters", "migrate",
            "x-colo-lost-heartbeat"} <= names
    c = EvClient(daemon.path)
    try:
        known = {e["name"] for e in c.ok("query-commands")}
    finally:
        c.close()
    assert names <= known, names - known
    assert [t for t, _ in steps] == ["secondary", "primary", "secondary", "kill-primary",
                                     "secondary"]
    for target, reqs in steps:
        if target != "kill-primary":  # each socat session negotiates first
            assert reqs[0] == {"execute": "qmp_capabilities"}, reqs


def test_compose_pair_replicates_and_fails_over(compose: dict[str, Any], tmp_path: Path) -> None:
    """Start both services' commands as local processes (the volume is tmp_path, the
    secondary's address a free loopback port), run their healthchecks, then replay the QMP
    recipe of the comments: replication, then the failover drill."""
    port = free_port()

    def local(arg: str) -> str:
        arg = arg.replace(f"{IMAGE_SOCKET_DIR}/", f"{tmp_path}/")
        return arg.replace("tcp:0.0.0.0:9998", f"tcp:127.0.0.1:{port}")

    daemons: dict[str, Daemon] = {}
    for name in ("secondary", "primary"):  # the order depends_on gives
        svc = compose["services"][name]
        argv = [local(a) for a in service_argv(svc)]
        daemons[name] = Daemon([sys.executable, "-m", "qmpjobd", *argv, "--guest-ram", "4M",
                                "--log-level", "warning"], socket_of(argv))
        rc, out, _ = run([local(a) for a in healthcheck_argv(svc)])
        assert (rc, out) == (0, "ok: inmigrate\n" if name == "secondary" else "ok: running\n")

    watch = {name: EvClient(d.path) for name, d in daemons.items()}
    try:
        for target, reqs in compose_recipe():
            if target == "kill-primary":
                daemons["primary"].stop(signal.SIGKILL)
                continue
            with EvClient(daemons[target].path) as c:  # EvClient negotiates: skip reqs[0]
                for req in reqs[1:]:
                    uri = req.get("arguments", {}).get("uri")
                    if uri is not None:
                        assert uri == "tcp:secondary:9998"
                        req = {**req, "arguments": {**req["arguments"],
                                                    "uri": f"tcp:127.0.0.1:{port}"}}
                    reply = c.cmd(req["execute"], req.get("arguments"))
                    assert "return" in reply, (target, req, reply)
                    if req["execute"] == "migrate":  # COLO is up at the first RESUME
                        watch["primary"].wait_event("RESUME")
                        watch["secondary"].wait_event("RESUME")
                    if req["execute"] == "x-colo-lost-heartbeat" and target == "secondary":
                        # the survivor: MIGRATION completed (only at a failover), then RESUME
                        s = watch["secondary"]
                        done = s.wait_event("MIGRATION", {"status": "completed"})
                        s.wait_event("RESUME", since=s.events.index(done) + 1)
        assert daemons["primary"].proc.poll() is not None, "the drill did not kill the primary"
        status = watch["secondary"].ok("query-colo-status")
        assert (status["mode"], status["last-mode"]) == ("none", "secondary")
        rc, out, _ = run([local(a) for a in healthcheck_argv(compose["services"]["secondary"])])
        assert (rc, out) == (0, "ok: running\n")
    finally:
        for c in watch.values():
            c.close()


def test_colo_pair_helper_is_valid_sh() -> None:
    helper = REPO / "examples" / "colo-pair.sh"
    if not helper.exists():
        pytest.skip("examples/colo-pair.sh is optional")
    assert subprocess.run(["sh", "-n", str(helper)], check=False).returncode == 0
    assert "compose-colo.yml" in helper.read_text()


# -- the image, built from the Dockerfile and run for real (rootful podman) ------------------
#
# No registry is reachable here but Debian's and PyPI, so the Dockerfile's base image
# (python:3.11-slim) is stood in for by a Debian root of the release whose python3 has the
# same version, made with debootstrap and imported under the FROM name. It is built once per
# machine and reused (its label records the recipe). A real python:3.11-slim already in the
# local store is used as it is.

PODMAN = shutil.which("podman")
IMAGE = "localhost/qmpjobd:test"
IMAGE_UID = 10001
STANDIN_LABEL = "qmpjobd.test.stand-in"
STANDIN_PACKAGES = "python3,python3-pip,python3-venv,ca-certificates"
DEBIAN_FOR_PYTHON = {"3.11": "bookworm", "3.13": "trixie"}  # Debian's python3 in each release
HOST_EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
LOCK = Path("/var/tmp/qmpjobd-test-podman.lock")
NO_PODMAN_HINT = "apt-get install podman runc debootstrap (as .ci/run does)"


class Podman:
    """Rootful podman with a containers.conf for machines without systemd: runc, cgroupfs,
    events in a file, and ulimits this machine's hard limits allow."""

    def __init__(self, exe: str, conf_dir: Path) -> None:
        self.exe = exe
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        nproc = 32768 if nproc == resource.RLIM_INFINITY else min(nproc, 32768)
        if nofile == resource.RLIM_INFINITY:
            nofile = 1 << 20
        conf = conf_dir / "containers.conf"
        conf.write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def __call__(self, *args: str, limit: float = 120.0, check: bool = True,
                 stdin: Any = None) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([self.exe, *args], capture_output=True, text=True, env=self.env,
                           stdin=stdin, timeout=limit, check=False)
        if check and p.returncode != 0:
            pytest.fail(f"podman {' '.join(args)[:200]}: exit {p.returncode}\n"
                        f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        return p

    def inspect(self, *args: str) -> Any:
        """``podman [image] inspect --format {{json FIELD}}``, decoded."""
        *cmd, field, ref = args
        return json.loads(self(*cmd, "inspect", "--format", f"{{{{json {field}}}}}", ref).stdout)


def cannot_run(reason: str) -> None:
    """Skip where podman cannot run; in CI (which installs it) that is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    if PODMAN is None:
        cannot_run(f"podman is not installed ({NO_PODMAN_HINT})")
    assert PODMAN is not None
    if os.geteuid() != 0:
        cannot_run("needs root: the image is run with rootful podman, so that the socket's "
                   "owner on the host is the image's uid")
    pm = Podman(PODMAN, tmp_path_factory.mktemp("podman"))
    info = pm("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, limit=60)
    if info.returncode != 0:
        cannot_run(f"podman cannot run here: {info.stderr.strip()[-500:]}")
    return pm


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """One test process at a time builds images in this machine's podman store."""
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def debian_mirror(apt: Path = Path("/etc/apt")) -> str:
    """The Debian archive this host's apt uses (QMPJOBD_DEBIAN_MIRROR overrides it)."""
    if os.environ.get("QMPJOBD_DEBIAN_MIRROR"):
        return os.environ["QMPJOBD_DEBIAN_MIRROR"]
    entries: list[tuple[str, list[str]]] = []  # (URI, suites) of each "deb" source
    for f in sorted(apt.glob("sources.list.d/*.sources")):
        for para in re.split(r"\n\s*\n", f.read_text()):
            fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", para, re.M))
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled") != "no":
                entries += [(uri, fields.get("Suites", "").split())
                            for uri in fields.get("URIs", "").split()]
    for f in [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]:
        if f.exists():
            for line in f.read_text().splitlines():
                m = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m:
                    entries.append((m.group(1), [m.group(2)]))
    for uri, suites in entries:  # the main archive: a release's own suite, not -security
        if any(re.fullmatch(r"[a-z]+", s) for s in suites):
            return uri
    return "http://deb.debian.org/debian"


@pytest.mark.parametrize(("files", "expect"), [
    ({"sources.list.d/debian.sources":
      "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\n"
      "Components: main\n\n"
      "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
      "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
      "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n"
      "Suites: bookworm bookworm-updates\nComponents: main\n"}, "http://mirror.example/debian"),
    ({"sources.list": "# deb http://old.example/debian bookworm main\n"
                      "deb [arch=amd64] http://one.example/debian/ bookworm main\n"},
     "http://one.example/debian/"),
    ({}, "http://deb.debian.org/debian"),
], ids=["deb822", "one-line", "none"])
def test_debian_mirror_is_the_hosts(files: dict[str, str], expect: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QMPJOBD_DEBIAN_MIRROR", raising=False)
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert debian_mirror(tmp_path) == expect


def mounts_below(root: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return [p for p in points if p.startswith(f"{root}/")]


def build_standin(pm: Podman, ref: str, python: str, recipe: str) -> None:
    """debootstrap a Debian whose python3 is ``python``, shaped like python:X.Y-slim (pip
    installs into the system python3), and import it as ``ref``."""
    suite = DEBIAN_FOR_PYTHON[python]
    work = Path(tempfile.mkdtemp(prefix="qmpjobd-stand-in-", dir="/var/tmp"))
    root = work / "root"
    try:
        p = subprocess.run(["debootstrap", "--variant=minbase", f"--include={STANDIN_PACKAGES}",
                            suite, str(root), debian_mirror()],
                           capture_output=True, text=True, timeout=900, check=False)
        assert p.returncode == 0, f"debootstrap failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        version = subprocess.run(
            ["chroot", str(root), "python3", "-c",
             "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=60, check=True).stdout.strip()
        assert version == python, f"Debian {suite}'s python3 is {version}, not {python}"
        for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        (root / "usr/local/bin/python").symlink_to("/usr/bin/python3")
        for junk in [*root.glob("var/cache/apt/archives/*.deb"),
                     *root.glob("var/cache/apt/*.bin"), *root.glob("var/lib/apt/lists/*_*")]:
            junk.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "--one-file-system", "--numeric-owner",
                                "-cf", "-", "."], stdout=subprocess.PIPE)
        try:
            pm("import",
               "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "--change", "ENV LANG=C.UTF-8",
               "--change", 'CMD ["python3"]',
               "--change", f"LABEL {STANDIN_LABEL}={recipe}",
               "-", ref, stdin=tar.stdout, limit=600)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            assert tar.wait(60) == 0, "tar of the stand-in root failed"
    finally:
        for point in reversed(mounts_below(root)):  # left by an interrupted debootstrap
            subprocess.run(["umount", "-l", point], check=False)
        if not mounts_below(root):  # never delete through a mount into the host
            shutil.rmtree(work, ignore_errors=True)


def base_image(pm: Podman) -> str:
    """The Dockerfile's FROM image in the local store: present already, or the stand-in."""
    name = Dockerfile(DOCKERFILE).last("FROM").split()[0]
    m = re.fullmatch(r"python:(3\.\d+)-slim", name)
    assert m, f"FROM {name}: the test knows how to stand in for python:X.Y-slim only"
    python = m.group(1)
    ref = f"docker.io/library/{name}"
    recipe = hashlib.sha256(f"{STANDIN_PACKAGES} {DEBIAN_FOR_PYTHON.get(python)} "
                            f"{inspect.getsource(build_standin)}".encode()).hexdigest()[:16]
    present = pm("image", "exists", ref, check=False).returncode == 0
    if present:
        labels = pm.inspect("image", ".Labels", ref) or {}
        if labels.get(STANDIN_LABEL, recipe) == recipe:  # the real image, or a current stand-in
            return ref
    assert python in DEBIAN_FOR_PYTHON, f"no Debian release with python {python} is known"
    if shutil.which("debootstrap") is None:
        cannot_run(f"no {name} image here (podman pull {name}) and no debootstrap to build "
                   f"its stand-in ({NO_PODMAN_HINT})")
    build_standin(pm, ref, python, recipe)
    return ref


def host_extra_ca() -> str:
    """The CA certificates this host adds to Debian's (for a proxy that re-signs TLS)."""
    certs = sorted(HOST_EXTRA_CA_DIR.rglob("*.crt")) if HOST_EXTRA_CA_DIR.is_dir() else []
    return "".join(c.read_text().rstrip("\n") + "\n" for c in certs)


def host_pip_index() -> str | None:
    """The index pip uses on this host, when it is not PyPI's default."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    p = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                       text=True, timeout=60, check=False)
    m = re.search(r"^(?:global|install)\.index-url='([^']+)'$", p.stdout, re.M)
    return m.group(1) if m else None


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    """The Dockerfile built as Docker would (HEALTHCHECK kept), pip reaching PyPI the way
    this host does: its network, its pip index, its extra CA certificates."""
    with machine_lock():
        base_image(podman)
        args = ["build", "--format", "docker", "--network", "host", "-t", IMAGE]
        if host_extra_ca():
            args += ["--build-arg", f"EXTRA_CA_CERT={host_extra_ca()}"]
        index = host_pip_index()
        if index:
            args += ["--build-arg", f"PIP_INDEX_URL={index}"]
        podman(*args, str(REPO), limit=600)
    return IMAGE


def test_image_keeps_the_healthcheck_and_no_build_ca(podman: Podman, image: str,
                                                     dockerfile: Dockerfile) -> None:
    check = podman.inspect("image", ".HealthCheck", image)
    assert check["Test"] == ["CMD", *dockerfile.healthcheck()[1]], check
    top = podman("image", "mount", image).stdout.strip()
    try:
        assert not os.path.exists(f"{top}/tmp/build-ca.pem")
        bundle = Path(f"{top}/etc/ssl/certs/ca-certificates.crt").read_text()
        for cert in re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
                               host_extra_ca(), re.S):
            assert cert not in bundle, "a build-only CA certificate was left in the image"
    finally:
        podman("image", "unmount", image)


def read_until_closed(c: Client) -> list[dict[str, Any]]:
    out = []
    with contextlib.suppress(EOFError):
        while True:
            out.append(c.recv())
    return out


def test_image_serves_qmp_through_the_socket_volume(podman: Podman, image: str,
                                                    tmp_path: Path) -> None:
    """The container as a user runs it: socket volume bind-mounted from the host, the
    healthcheck, a QMP session from the host, then ``podman stop`` shuts it down cleanly."""
    vol = tmp_path / "run"
    vol.mkdir()
    os.chown(vol, IMAGE_UID, IMAGE_UID)  # the daemon creates its socket here
    sock = vol / "qmpjobd.sock"
    name = f"qmpjobd-test-{os.getpid()}"
    with open(tmp_path / "podman-run.log", "wb") as log:
        proc = subprocess.Popen([podman.exe, "run", "--name", name, "--network", "none",
                                 "-v", f"{vol}:{IMAGE_SOCKET_DIR}", image],
                                stdout=log, stderr=subprocess.STDOUT, env=podman.env)
    try:
        wait_for_socket(str(sock), proc, timeout=60)
        podman("healthcheck", "run", name)
        state = podman.inspect(".State", name)
        assert state["Health"]["Status"] == "healthy", state["Health"]
        assert state["Health"]["Log"][-1]["Output"].strip() == "ok: running"

        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
        assert (st.st_uid, st.st_gid) == (IMAGE_UID, IMAGE_UID)
        with open(f"/proc/{state['Pid']}/status") as f:
            ids = dict(line.split(":", 1) for line in f if line.startswith(("Uid:", "Gid:")))
        assert ids["Uid"].split() == [str(IMAGE_UID)] * 4, ids
        assert ids["Gid"].split() == [str(IMAGE_UID)] * 4, ids

        with Client(str(sock), timeout=30) as c:  # as root on the host, through the volume
            assert c.greeting["QMP"]["version"]["qemu"] == {"micro": 0, "minor": 2, "major": 7}
            assert c.cmd("qmp_capabilities") == {"return": {}}
            version = c.cmd("query-version")["return"]
            assert version["qemu"] == {"micro": 0, "minor": 2, "major": 7}
            assert version["package"].startswith("qmpjobd ")
            podman("stop", "--time", "20", name, limit=60)
            events = read_until_closed(c)
        assert [e["event"] for e in events] == ["SHUTDOWN"], events
        assert events[0]["data"] == {"guest": False, "reason": "host-signal"}
        assert proc.wait(60) == 0
        assert podman.inspect(".State.ExitCode", name) == 0
        assert not sock.exists(), "the daemon left its socket behind"
    finally:
        podman("rm", "--force", name, check=False)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
