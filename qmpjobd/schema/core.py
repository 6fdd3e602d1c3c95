"""Declarations of the core QMP commands, events and types, in QAPI notation (QEMU 7.2)."""

from __future__ import annotations

from ..protocol.session import QMPCapability
from .model import Schema


def declare(s: Schema) -> None:
    """Add the monitor, run-state, version and introspection parts of the schema."""
    # run state (qapi/run-state.json)
    s.enum("RunState", ["debug", "inmigrate", "internal-error", "io-error", "paused",
                        "postmigrate", "prelaunch", "finish-migrate", "restore-vm", "running",
                        "save-vm", "shutdown", "suspended", "watchdog", "guest-panicked",
                        "colo"])
    s.enum("ShutdownCause", ["none", "host-error", "host-qmp-quit", "host-qmp-system-reset",
                             "host-signal", "host-ui", "guest-shutdown", "guest-reset",
                             "guest-panic", "subsystem-reset", "snapshot-load"])
    s.struct("StatusInfo", {"running": "bool", "singlestep": "bool", "status": "RunState"})
    s.command("query-status", returns="StatusInfo")
    s.event("SHUTDOWN", {"guest": "bool", "reason": "ShutdownCause"})
    s.event("STOP")
    s.event("RESUME")
    s.command("stop")
    s.command("getfd", {"fdname": "str"})
    s.command("closefd", {"fdname": "str"})
    s.command("cont")
    s.command("quit")

    # misc (qapi/misc.json, qapi/control.json)
    s.struct("NameInfo", {"*name": "str"})
    s.command("query-name", returns="NameInfo")
    s.struct("VersionTriple", {"major": "int", "minor": "int", "micro": "int"})
    s.struct("VersionInfo", {"qemu": "VersionTriple", "package": "str"})
    s.command("query-version", returns="VersionInfo")
    s.struct("CommandInfo", {"name": "str"})
    s.command("query-commands", returns=["CommandInfo"])
    # the human monitor (qmpjobd/hmp/); 7.2 also lists feature savevm-monitor-nodes
    s.command("human-monitor-command", {"command-line": "str", "*cpu-index": "int"},
              returns="str")
    s.enum("QMPCapability", QMPCapability)
    s.command("qmp_capabilities", {"*enable": ["QMPCapability"]})

    # yank (qapi/yank.json): the out-of-band commands
    s.enum("YankInstanceType", ["block-node", "chardev", "migration"])
    s.struct("YankInstanceBlockNode", {"node-name": "str"})
    s.struct("YankInstanceChardev", {"id": "str"})
    s.union("YankInstance", {"type": "YankInstanceType"}, "type",
            {"block-node": "YankInstanceBlockNode", "chardev": "YankInstanceChardev"})
    s.command("yank", {"instances": ["YankInstance"]}, allow_oob=True)
    s.command("query-yank", returns=["YankInstance"], allow_oob=True)

    # introspection (qapi/introspect.json)
    s.enum("SchemaMetaType", ["builtin", "enum", "array", "object", "alternate", "command",
                              "event"])
    s.enum("JSONType", ["string", "number", "int", "boolean", "null", "object", "array",
                        "value"])
    s.struct("SchemaInfoBuiltin", {"json-type": "JSONType"})
    s.struct("SchemaInfoEnumMember", {"name": "str", "*features": ["str"]})
    s.struct("SchemaInfoEnum", {"members": ["SchemaInfoEnumMember"], "values": ["str"]})
    s.struct("SchemaInfoArray", {"element-type": "str"})
    s.struct("SchemaInfoObjectMember", {"name": "str", "type": "str", "*default": "any",
                                        "*features": ["str"]})
    s.struct("SchemaInfoObjectVariant", {"case": "str", "type": "str"})
    s.struct("SchemaInfoObject", {"members": ["SchemaInfoObjectMember"], "*tag": "str",
                                  "*variants": ["SchemaInfoObjectVariant"]})
    s.struct("SchemaInfoAlternateMember", {"type": "str"})
    s.struct("SchemaInfoAlternate", {"members": ["SchemaInfoAlternateMember"]})
    s.struct("SchemaInfoCommand", {"arg-type": "str", "ret-type": "str", "*allow-oob": "bool"})
    s.struct("SchemaInfoEvent", {"arg-type": "str"})
    s.union("SchemaInfo", {"name": "str", "meta-type": "SchemaMetaType", "*features": ["str"]},
            "meta-type",
            {"builtin": "SchemaInfoBuiltin", "enum": "SchemaInfoEnum",
             "array": "SchemaInfoArray", "object": "SchemaInfoObject",
             "alternate": "SchemaInfoAlternate", "command": "SchemaInfoCommand",
             "event": "SchemaInfoEvent"})
    s.command("query-qmp-schema", returns=["SchemaInfo"])
