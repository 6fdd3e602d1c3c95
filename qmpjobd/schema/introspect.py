"""query-qmp-schema and query-commands, derived from the schema as QEMU's introspect.py does.

Commands and events come first in declaration order; then every type they use, in order of
first use.  Type names other than builtins are masked as decimal strings; all integer types
show as ``int``; arrays are named ``[element]``.
"""

from __future__ import annotations

from typing import Any

from .model import Alternate, Array, Builtin, Command, Enum, Member, Object, Schema, Type, TypeRef


class _Introspector:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.names: dict[str, str] = {}
        self.used: list[tuple[str, Type]] = []  # (masked name, type), in first-use order
        self.seen: set[str] = set()
        self.arrays: dict[str, str] = {}

    def use(self, ref: TypeRef | None) -> str:
        typ = self.schema.resolve(ref if ref is not None else "q_empty")
        if isinstance(typ, Builtin):
            name = typ.intro_name
            key = "builtin:" + name
            if key not in self.seen:
                self.seen.add(key)
                self.used.append((name, typ))
            return name
        if isinstance(typ, Array):
            elem = self.schema.resolve(typ.element)
            key = elem.intro_name if isinstance(elem, Builtin) else repr(typ.element)
            if key in self.arrays:
                return self.arrays[key]
            slot = len(self.used)
            self.used.append(("", typ))
            name = "[" + self.use(typ.element) + "]"
            self.used[slot] = (name, typ)
            self.arrays[key] = name
            return name
        if typ.name not in self.names:
            self.names[typ.name] = str(len(self.names))
            self.used.append((self.names[typ.name], typ))
        return self.names[typ.name]

    def entity(self, ent: Any) -> dict[str, Any]:
        if isinstance(ent, Command):
            out: dict[str, Any] = {"name": ent.name, "meta-type": "command",
                                   "arg-type": self.use(ent.args),
                                   "ret-type": self.use(ent.returns)}
            if ent.allow_oob:
                out["allow-oob"] = True
            return out
        return {"name": ent.name, "meta-type": "event", "arg-type": self.use(ent.data)}

    def type_info(self, name: str, typ: Type) -> dict[str, Any]:
        if isinstance(typ, Builtin):
            return {"name": name, "meta-type": "builtin", "json-type": typ.json_type}
        if isinstance(typ, Enum):
            return {"name": name, "meta-type": "enum", "values": list(typ.values),
                    "members": [{"name": v} for v in typ.values]}
        if isinstance(typ, Array):
            return {"name": name, "meta-type": "array", "element-type": self.use(typ.element)}
        if isinstance(typ, Alternate):
            return {"name": name, "meta-type": "alternate",
                    "members": [{"type": self.use(c)} for c in typ.choices]}
        assert isinstance(typ, Object)
        members = list(typ.members)
        out: dict[str, Any] = {"name": name, "meta-type": "object",
                               "members": [self._member(m) for m in members]}
        if typ.tag is not None:
            out["tag"] = typ.tag
            out["variants"] = [{"case": case, "type": self.use(v)}
                               for case, v in typ.variants.items()]
        return out

    def _member(self, m: Member) -> dict[str, Any]:
        out: dict[str, Any] = {"name": m.name, "type": self.use(m.type)}
        if m.optional:
            out["default"] = None
        if m.features:
            out["features"] = list(m.features)
        return out


def qmp_schema(schema: Schema) -> list[dict[str, Any]]:
    """The SchemaInfo list that query-qmp-schema returns."""
    intro = _Introspector(schema)
    out = [intro.entity(ent) for ent in schema.entities]
    i = 0
    while i < len(intro.used):
        name, typ = intro.used[i]
        out.append(intro.type_info(name, typ))
        i += 1
    return out


def command_list(schema: Schema) -> list[dict[str, str]]:
    """query-commands: every command, newest registration first as in QEMU."""
    return [{"name": name} for name in reversed(schema.commands)]
