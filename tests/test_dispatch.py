"""Request checks, negotiation, argument validation and introspection, without sockets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from qmpjobd.machine import Machine
from qmpjobd.protocol.request import BadRequest, parse_request, qdict_order, tdb_hash
from qmpjobd.protocol.session import Session
from qmpjobd.schema import Registry, build_schema
from qmpjobd.schema.introspect import command_list, qmp_schema
from qmpjobd.server.dispatch import Dispatcher
from qmpjobd.vm import Vm


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def emit(self, name: str, data: Any = None, capability: str | None = None) -> None:
        self.events.append((name, data))


@pytest.fixture
def setup() -> tuple[Dispatcher, Recorder, Machine]:
    reg = Registry(build_schema())
    rec = Recorder()
    machine = Machine(rec, (7, 2, 0), "qmpjobd test")
    machine.register(reg)
    reg.register("query-qmp-schema", lambda a, s: qmp_schema(reg.schema))
    reg.register("query-commands", lambda a, s: command_list(reg.schema))
    return Dispatcher(reg), rec, machine


def run(d: Dispatcher, session: Session, msg: Any) -> Any:
    out = d.dispatch(msg, session)
    assert isinstance(out, bytes) and out.endswith(b"\r\n") and out.count(b"\n") == 1
    return orjson.loads(out)


def negotiated(*caps: str) -> Session:
    s = Session()
    s.negotiate(list(caps))
    return s


def test_buckets_match_qemu() -> None:
    expected = {"seconds": 5, "timestamp": 26, "QMP": 99, "version": 184, "class": 211,
                "capabilities": 216, "micro": 225, "minor": 225, "qemu": 232, "package": 326,
                "event": 361, "microseconds": 374, "desc": 377, "return": 401, "major": 481,
                "id": 486, "error": 489, "data": 505, "execute": 299, "foo": 490,
                "arguments": 447, "bogus": 136}
    assert {k: tdb_hash(k) % 512 for k in expected} == expected


def test_qdict_order_reorders_client_objects() -> None:
    # qmp-protocol.md §1.5: {"b":1,"a":2,"id":3,"return":4,"error":5} echoes in this order
    assert qdict_order(["b", "a", "id", "return", "error"]) == ["a", "b", "return", "id", "error"]
    assert qdict_order(["micro", "minor"]) == ["minor", "micro"]  # same bucket: newest first


@pytest.mark.parametrize(("msg", "oob", "desc", "has_id"), [
    ([1, 2], False, "QMP input must be a JSON object", False),
    ("s", False, "QMP input must be a JSON object", False),
    (None, False, "QMP input must be a JSON object", False),
    ({}, False, "QMP input lacks member 'execute'", False),
    ({"id": "err-2"}, False, "QMP input lacks member 'execute'", True),
    ({"execute": 1, "id": 1}, False, "QMP input member 'execute' must be a string", True),
    ({"execute": "x", "arguments": None}, False, "QMP input member 'arguments' must be an object",
     False),
    ({"execute": "x", "arguments": []}, False, "QMP input member 'arguments' must be an object",
     False),
    ({"execute": "x", "foo": 1}, False, "QMP input member 'foo' is unexpected", False),
    ({"foo": 2, "execute": 1}, False, "QMP input member 'execute' must be a string", False),
    ({"arguments": [], "bogus": 1}, False, "QMP input member 'bogus' is unexpected", False),
    ({"exec-oob": "x", "id": 1}, False, "QMP input member 'exec-oob' is unexpected", True),
    ({"execute": "a", "exec-oob": "b"}, True, "QMP input member 'execute' clashes with 'exec-oob'",
     False),
    ({"exec-oob": "b", "execute": "a"}, True, "QMP input member 'execute' clashes with 'exec-oob'",
     False),
    ({"exec-oob": 1}, True, "QMP input member 'exec-oob' must be a string", False),
])
def test_request_checks(msg: Any, oob: bool, desc: str, has_id: bool) -> None:
    with pytest.raises(BadRequest) as e:
        parse_request(msg, oob)
    assert e.value.desc == desc
    assert e.value.has_id == has_id


def test_request_ok() -> None:
    r = parse_request({"execute": "a", "arguments": {"x": 1}, "id": [1]}, False)
    assert (r.command, r.arguments, r.id, r.has_id, r.oob) == ("a", {"x": 1}, [1], True, False)
    r = parse_request({"exec-oob": "b"}, True)
    assert (r.command, r.arguments, r.has_id, r.oob) == ("b", {}, False, True)


def test_negotiation_mode(setup: Any) -> None:
    d, _rec, _ = setup
    s = Session()
    assert run(d, s, {"execute": "query-status", "id": 7}) == {"id": 7, "error": {
        "class": "CommandNotFound",
        "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
    assert run(d, s, {"execute": "nope"})["error"]["class"] == "CommandNotFound"
    assert run(d, s, {"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}}) == {
        "error": {"class": "GenericError",
                  "desc": "Parameter 'null' does not accept value 'bogus'"}}
    assert run(d, s, {"execute": "qmp_capabilities", "arguments": {"enable": [1]}}) == {
        "error": {"class": "GenericError",
                  "desc": "Invalid parameter type for 'enable[0]', expected: string"}}
    assert run(d, s, {"execute": "qmp_capabilities", "arguments": {"enable": "oob"}}) == {
        "error": {"class": "GenericError",
                  "desc": "Invalid parameter type for 'enable', expected: array"}}
    assert not s.negotiated
    assert run(d, s, {"execute": "qmp_capabilities",
                      "arguments": {"enable": ["oob", "oob"]}}) == {"return": {}}
    assert s.negotiated and s.oob
    assert run(d, s, {"execute": "qmp_capabilities", "id": "again"}) == {"id": "again", "error": {
        "class": "CommandNotFound",
        "desc": "Capabilities negotiation is already complete, command ignored"}}


def test_capability_not_offered() -> None:
    s = Session(offered=())
    with pytest.raises(Exception, match="Capability oob not available"):
        s.negotiate(["oob"])


def test_command_mode(setup: Any) -> None:
    d, _rec, _ = setup
    s = negotiated()
    assert run(d, s, {"execute": "nonexistent-cmd", "id": "a"}) == {"id": "a", "error": {
        "class": "CommandNotFound", "desc": "The command nonexistent-cmd has not been found"}}
    assert run(d, s, {"execute": "query-events"})["error"]["desc"] == \
        "The command query-events has not been found"
    assert run(d, s, {"execute": "query-version", "arguments": {"a": 1}}) == {
        "error": {"class": "GenericError", "desc": "Parameter 'a' is unexpected"}}
    assert run(d, s, {"execute": "query-name", "id": None}) == {"return": {}, "id": None}
    assert run(d, s, {"execute": "query-status"}) == {
        "return": {"status": "running", "singlestep": False, "running": True}}


def test_oob_rules(setup: Any) -> None:
    d, _rec, _ = setup
    s = negotiated("oob")
    assert run(d, s, {"exec-oob": "query-name", "id": 2}) == {"id": 2, "error": {
        "class": "GenericError", "desc": "The command query-name does not support OOB"}}
    assert run(d, s, {"exec-oob": "qmp_capabilities"})["error"]["desc"] == \
        "The command qmp_capabilities does not support OOB"
    assert run(d, s, {"exec-oob": "nope"})["error"] == {
        "class": "CommandNotFound", "desc": "The command nope has not been found"}
    assert run(d, s, {"exec-oob": "query-yank", "id": 1}) == {"return": [], "id": 1}


def test_stop_cont_events(setup: Any) -> None:
    d, rec, _machine = setup
    s = negotiated()
    run(d, s, {"execute": "stop"})
    run(d, s, {"execute": "stop"})
    assert rec.events == [("STOP", None)]
    assert run(d, s, {"execute": "query-status"})["return"] == {
        "status": "paused", "singlestep": False, "running": False}
    run(d, s, {"execute": "cont"})
    run(d, s, {"execute": "cont"})
    assert rec.events == [("STOP", None), ("RESUME", None)]


def test_yank(setup: Any) -> None:
    d, _, _ = setup
    s = negotiated()
    assert run(d, s, {"execute": "yank", "arguments": {"instances": []}}) == {"return": {}}
    assert run(d, s, {"execute": "yank", "arguments": {"instances": [{"type": "migration"}]}}) == {
        "error": {"class": "DeviceNotFound", "desc": "Instance not found"}}
    assert run(d, s, {"execute": "yank", "arguments": {"instances": [{"type": "chardev"}]}}) == {
        "error": {"class": "GenericError", "desc": "Parameter 'instances[0].id' is missing"}}
    assert run(d, s, {"execute": "yank",
                      "arguments": {"instances": [{"type": "chardev", "id": "x", "z": 1}]}}) == {
        "error": {"class": "GenericError", "desc": "Parameter 'instances[0].z' is unexpected"}}
    assert run(d, s, {"execute": "yank", "arguments": {"instances": [{"type": "x"}]}}) == {
        "error": {"class": "GenericError", "desc": "Parameter 'type' does not accept value 'x'"}}
    assert run(d, s, {"execute": "yank", "arguments": {}}) == {
        "error": {"class": "GenericError", "desc": "Parameter 'instances' is missing"}}


def test_argument_visitor_texts() -> None:
    schema = build_schema()
    schema.enum("E", ["a"])
    schema.struct("Inner", {"s": "str", "*u": "uint64", "*u8": "uint8", "*i32": "int32",
                            "*n": "number", "*b": "bool", "*e": "E", "*any": "any"})
    schema.command("x-test", {"inner": ["Inner"], "*i": "int"})
    cmd = schema.commands["x-test"]

    def check(args: dict[str, Any]) -> str:
        try:
            schema.check_arguments(cmd, args)
        except Exception as e:  # QMPError
            return str(e)
        return "ok"

    assert check({}) == "Parameter 'inner' is missing"
    assert check({"inner": [], "zzz": 1}) == "Parameter 'zzz' is unexpected"
    assert check({"inner": [{}]}) == "Parameter 'inner[0].s' is missing"
    assert check({"inner": [{"s": 1}]}) == \
        "Invalid parameter type for 'inner[0].s', expected: string"
    assert check({"inner": [{"s": "", "x": 1}]}) == "Parameter 'inner[0].x' is unexpected"
    assert check({"inner": [{"s": "", "u": 1.5}]}) == "Parameter 'inner[0].u' expects uint64"
    assert check({"inner": [{"s": "", "u": "1"}]}) == "Parameter 'inner[0].u' expects uint64"
    assert check({"inner": [{"s": "", "u": -1}]}) == "ok"  # QEMU accepts negative uint64
    assert check({"inner": [{"s": "", "u8": 256}]}) == "Parameter 'u8' expects uint8_t"
    assert check({"inner": [{"s": "", "i32": 1 << 31}]}) == "Parameter 'i32' expects int32_t"
    assert check({"inner": [{"s": "", "i32": 1.0}]}) == \
        "Invalid parameter type for 'inner[0].i32', expected: integer"
    assert check({"inner": [{"s": "", "n": True}]}) == \
        "Invalid parameter type for 'inner[0].n', expected: number"
    assert check({"inner": [{"s": "", "b": 0}]}) == \
        "Invalid parameter type for 'inner[0].b', expected: boolean"
    assert check({"inner": [{"s": "", "e": "z"}]}) == "Parameter 'e' does not accept value 'z'"
    assert check({"inner": {}}) == "Invalid parameter type for 'inner', expected: array"
    assert check({"inner": [1]}) == "Invalid parameter type for 'inner[0]', expected: object"
    assert check({"inner": [], "i": 1 << 63}) == "Invalid parameter type for 'i', expected: integer"
    assert check({"inner": [{"s": "", "any": [None]}], "i": -5}) == "ok"


def test_every_command_has_a_handler_and_every_handler_is_declared() -> None:
    vm = Vm()
    assert vm.registry.missing() == []
    assert set(vm.registry.handlers) == set(vm.schema.commands)
    with pytest.raises(KeyError):
        vm.registry.register("not-declared", lambda a, s: None)


def test_introspection_is_consistent() -> None:
    schema = build_schema()
    info = qmp_schema(schema)
    names = {e["name"] for e in info}
    assert len(names) == len(info)
    assert info[0] == {"name": "query-status", "meta-type": "command", "arg-type": "0",
                       "ret-type": "1"}
    assert {"name": "0", "meta-type": "object", "members": []} in info
    for e in info:
        mt = e["meta-type"]
        refs: list[str] = []
        if mt in ("command", "event"):
            refs = [e["arg-type"]] + ([e["ret-type"]] if mt == "command" else [])
        elif mt == "object":
            refs = [m["type"] for m in e["members"]] + [v["type"] for v in e.get("variants", [])]
        elif mt == "array":
            refs = [e["element-type"]]
        for r in refs:
            assert r in names, (e, r)
        if mt not in ("command", "event", "builtin"):
            assert e["name"].isdigit() or e["name"].startswith("["), e
    cmds = {e["name"] for e in info if e["meta-type"] == "command"}
    assert cmds == set(schema.commands)
    assert [e["name"] for e in info if e.get("allow-oob")] == ["yank", "query-yank"]
    assert {e["name"] for e in info if e["meta-type"] == "event"} == set(schema.events)
    assert {"SHUTDOWN", "STOP", "RESUME", "JOB_STATUS_CHANGE"} <= set(schema.events)
    assert command_list(schema)[-1] == {"name": "query-status"}
    # the reply type of query-qmp-schema validates its own output
    q = schema.commands["query-qmp-schema"]
    elem = schema.resolve(q.returns)  # type: ignore[arg-type]
    elem.visit(schema, info, None, "")
