"""QEMU 7.2's identity answers (libvirt's capability probe) from qmpjobd, against the
recording and, where QEMU is installed, against the live QEMU.

QEMU's texts and classes for the cases qmpjobd computes, seen on QEMU 7.2.22 and checked
again below wherever QEMU runs:

- device-list-properties of an unknown type: DeviceNotFound ``Device 'X' not found``; of an
  abstract, non-device or interface type: GenericError ``Parameter 'typename' expects a
  non-abstract device type``.
- qom-list-properties of an unknown type: DeviceNotFound ``Class 'X' not found``; of an
  interface: GenericError ``Parameter 'typename' expects a QOM type``.
- query-cpu-model-expansion of an unknown model: GenericError ``CPU model 'X' not found``;
  ``props`` that is not an object is ignored.
- query-command-line-options of an unknown option: GenericError ``invalid option name: X``.
- qom-list-types implementing an unknown type: ``[]``.
- query-sev-capabilities under TCG: GenericError ``KVM not enabled``; query-sgx-capabilities:
  GenericError ``SGX is not enabled in KVM``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from qmptest import NO_QEMU_REASON, QEMU, Client, Daemon

from qmpjobd.qemu import identity, record

RECORDING: dict[str, Any] = json.loads(record.DATA.read_text())
REQUESTS: list[dict[str, Any]] = RECORDING["requests"]


@pytest.fixture
def qemu_tcg(tmp_path: Path) -> Iterator[Daemon]:
    """QEMU 7.2 started as the recorder starts it (libvirt's TCG probe)."""
    if QEMU is None:
        pytest.skip(NO_QEMU_REASON)
    path = os.path.join(tmp_path, "qemu.sock")
    d = Daemon([QEMU, *record.QEMU_ARGS, "-qmp", f"unix:{path},server=on,wait=off"], path,
               single_client=True)
    yield d
    d.stop()


def _request(n: int, command: str, args: Any = None) -> bytes:
    req: dict[str, Any] = {"execute": command, "id": n}
    if args is not None:
        req["arguments"] = args
    return orjson.dumps(req) + b"\n"


def ask(path: str, requests: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Send every request (after qom-list-types, which makes QEMU load all its modules) in one
    pipelined write; the replies without their ids, in order."""
    with Client(path, timeout=60) as c:
        c.negotiate()
        c.send(_request(0, "qom-list-types")
               + b"".join(_request(n, cmd, args) for n, (cmd, args) in enumerate(requests, 1)))
        replies = [c.recv_reply() for _ in range(len(requests) + 1)]
    assert [r.pop("id") for r in replies] == list(range(len(requests) + 1))
    return replies[1:]


def expected(req: dict[str, Any]) -> dict[str, Any]:
    """The reply qmpjobd owes a recorded request."""
    if req["execute"] == "query-kvm":
        return {"return": identity.KVM}
    return {"error": req["error"]} if "error" in req else {"return": req["return"]}


# -- (a) the recording, replayed --------------------------------------------------------------

def test_the_recording_covers_libvirts_probe() -> None:
    recorded = {identity.key(r["execute"], r.get("arguments")) for r in REQUESTS}
    probe = [identity.key(cmd, args) for cmd, args in record.PROBE]
    assert [k for k in probe if k not in recorded] == []
    assert record.DATA.stat().st_size < 2 << 20  # plain JSON, diffable: no need for gzip


def test_every_recorded_request_gets_the_recorded_reply(daemon: Daemon) -> None:
    replies = ask(daemon.path, [(r["execute"], r.get("arguments")) for r in REQUESTS])
    for req, reply in zip(REQUESTS, replies, strict=True):
        # byte for byte, so QEMU's key order is kept too
        assert orjson.dumps(reply) == orjson.dumps(expected(req)), req


def test_query_kvm_says_tcg_with_kvm_compiled_in(daemon: Daemon) -> None:
    """As QEMU 7.2 under -accel tcg, with or without /dev/kvm on the host."""
    assert ask(daemon.path, [("query-kvm", None)]) == [
        {"return": {"enabled": False, "present": True}}]


def test_the_recorded_errors_are_qemus_under_tcg() -> None:
    errors = {r["execute"]: r["error"] for r in REQUESTS if "error" in r
              and r["execute"] in ("query-sev-capabilities", "query-sgx-capabilities")}
    assert errors == {
        "query-sev-capabilities": {"class": "GenericError", "desc": "KVM not enabled"},
        "query-sgx-capabilities": {"class": "GenericError",
                                   "desc": "SGX is not enabled in KVM"}}


# -- (b) the recording is what the installed QEMU says ------------------------------------------

def test_the_recording_is_what_the_installed_qemu_answers() -> None:
    if QEMU is None:
        pytest.skip(NO_QEMU_REASON)
    fresh = record.record(QEMU)
    assert fresh["qemu"] == RECORDING["qemu"], "another QEMU build: record again"
    assert fresh["argv"] == RECORDING["argv"]
    old, new = REQUESTS, fresh["requests"]
    for was, now in zip(old, new, strict=False):
        assert orjson.dumps(now) == orjson.dumps(was), f"stale: {was['execute']} " \
            f"{was.get('arguments')}: run python3 -m qmpjobd.qemu.record"
    assert len(new) == len(old)
    assert record.dumps({**fresh, "requests": new}) == \
        record.dumps({**RECORDING, "requests": old})


# -- (c) computed answers, against the live QEMU ------------------------------------------------

COMPUTED: list[tuple[str, Any]] = [
    *[("device-list-properties", {"typename": t}) for t in (
        "no-such-device", "", "device", "pci-device", "virtio-pci", "memory-backend-file",
        "hotplug-handler", "interface", "none-machine", "tls-creds-x509")],
    *[("qom-list-properties", {"typename": t}) for t in (
        "no-such-class", "", "hotplug-handler", "interface", "user-creatable")],
    *[("query-cpu-model-expansion", {"type": kind, "model": {"name": name}}) for kind, name in (
        ("static", "no-such-model"), ("full", ""), ("full", "x86_64-cpu"))],
    ("query-cpu-model-expansion", {"type": "full", "model": {"name": "max", "props": 5}}),
    ("query-cpu-model-expansion",
     {"type": "static", "model": {"name": "host", "props": [{"migratable": False}]}}),
    *[("query-command-line-options", {"option": o}) for o in (
        "machine", "drive", "object", "chardev", "no-such-option", "")],
    ("qom-list-types", {}),
    ("qom-list-types", {"abstract": False}),
    *[("qom-list-types", {"implements": t, "abstract": a}) for t in (
        "device", "pci-device", "hotplug-handler", "user-creatable", "interface", "object",
        "x86_64-cpu", "memory-backend", "machine", "no-such-type", "") for a in (True, False)],
    ("qom-list-types", {"implements": "conventional-pci-device"}),
]


def test_computed_answers_equal_qemus(daemon: Daemon, qemu_tcg: Daemon) -> None:
    ours = ask(daemon.path, COMPUTED)
    theirs = ask(qemu_tcg.path, COMPUTED)
    for req, mine, qemu in zip(COMPUTED, ours, theirs, strict=True):
        assert orjson.dumps(mine) == orjson.dumps(qemu), req


def test_unknown_types_are_not_found_as_in_qemu(daemon: Daemon) -> None:
    """libvirt 9.0 takes DeviceNotFound to mean "no such type": only unknown types get it."""
    assert ask(daemon.path, [("device-list-properties", {"typename": "nope"}),
                             ("qom-list-properties", {"typename": "nope"})]) == [
        {"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}},
        {"error": {"class": "DeviceNotFound", "desc": "Class 'nope' not found"}}]


def test_existing_types_nobody_recorded_are_refused_without_device_not_found(
        daemon: Daemon) -> None:
    types = {t["name"] for t in identity.recording().types}
    assert {"virtio-rng-pci", "memory-backend-ram", "pc-i440fx-7.1-machine"} <= types
    replies = ask(daemon.path, [("device-list-properties", {"typename": "virtio-rng-pci"}),
                                ("qom-list-properties", {"typename": "memory-backend-ram"}),
                                ("qom-list-properties", {"typename": "pc-i440fx-7.1-machine"}),
                                ("query-cpu-model-expansion",
                                 {"type": "full", "model": {"name": "qemu64"}})])
    for reply in replies:
        assert reply["error"]["class"] == "GenericError", reply
        assert "no recording" in reply["error"]["desc"]


# -- (d) bad arguments, against the live QEMU --------------------------------------------------

BAD: list[tuple[str, Any]] = [
    *[(cmd, args) for cmd in ("device-list-properties", "qom-list-properties") for args in (
        None, {}, {"typename": 1}, {"typename": None}, {"typename": ["VGA"]},
        {"typename": "VGA", "x": 1}, {"type": "VGA"})],
    ("qom-list-types", {"abstract": "yes"}),
    ("qom-list-types", {"implements": 5}),
    ("qom-list-types", {"implements": "device", "parent": "x"}),
    ("query-cpu-model-expansion", None),
    ("query-cpu-model-expansion", {"type": "static"}),
    ("query-cpu-model-expansion", {"model": {"name": "max"}}),
    ("query-cpu-model-expansion", {"type": "bad", "model": {"name": "max"}}),
    ("query-cpu-model-expansion", {"type": 1, "model": {"name": "max"}}),
    ("query-cpu-model-expansion", {"type": "static", "model": {}}),
    ("query-cpu-model-expansion", {"type": "static", "model": "max"}),
    ("query-cpu-model-expansion", {"type": "static", "model": {"name": 1}}),
    ("query-cpu-model-expansion", {"type": "static", "model": {"name": "max", "x": 1}}),
    ("query-command-line-options", {"option": 1}),
    ("query-command-line-options", {"opt": "machine"}),
    *[(cmd, {"x": 1}) for cmd in ("query-target", "query-kvm", "query-machines",
                                  "query-cpu-definitions", "query-tpm-models",
                                  "query-tpm-types", "query-sev-capabilities",
                                  "query-sgx-capabilities")],
    ("query-machines", {"compat-props": True}),
]


def test_bad_arguments_get_qemus_errors(daemon: Daemon, qemu_tcg: Daemon) -> None:
    ours = ask(daemon.path, BAD)
    theirs = ask(qemu_tcg.path, BAD)
    for req, mine, qemu in zip(BAD, ours, theirs, strict=True):
        assert "error" in qemu, req
        assert mine == qemu, req


# -- the schema libvirt reads before it asks --------------------------------------------------

IDENTITY_COMMANDS = ["query-target", "query-kvm", "qom-list-types", "device-list-properties",
                     "qom-list-properties", "query-machines", "query-cpu-definitions",
                     "query-tpm-models", "query-tpm-types", "query-command-line-options",
                     "query-sev-capabilities", "query-sgx-capabilities",
                     "query-cpu-model-expansion"]


def _shape(schema: list[dict[str, Any]], name: str) -> Any:
    """A schema entry with every masked type name replaced by what it stands for."""
    by_name = {e["name"]: e for e in schema}

    def expand(ref: str) -> Any:
        e = by_name[ref]
        meta = e["meta-type"]
        if meta == "builtin":
            return ref
        if meta == "enum":
            return {"enum": e["values"]}
        if meta == "array":
            return [expand(e["element-type"])]
        if meta == "object":
            return {"members": [{**m, "type": expand(m["type"])} for m in e["members"]],
                    **{k: v for k, v in e.items() if k in ("tag", "features")},
                    "variants": [{**v, "type": expand(v["type"])}
                                 for v in e.get("variants", [])]}
        return {"alternate": [expand(m["type"]) for m in e["members"]]}

    cmd = by_name[name]
    return {"arg-type": expand(cmd["arg-type"]), "ret-type": expand(cmd["ret-type"]),
            **{k: v for k, v in cmd.items() if k in ("features", "allow-oob")}}


def test_the_schema_of_these_commands_is_qemus(daemon: Daemon, qemu_tcg: Daemon) -> None:
    ours, theirs = (ask(d.path, [("query-qmp-schema", None)])[0]["return"]
                    for d in (daemon, qemu_tcg))
    for name in IDENTITY_COMMANDS:
        assert _shape(ours, name) == _shape(theirs, name), name
