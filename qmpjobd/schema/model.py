"""A small QAPI: the types, commands and events qmpjobd declares, and their input validation.

Declarations use QAPI's own notation (``'*name'`` for optional members, ``['T']`` for arrays,
type names as strings resolved when first used), so a declaration reads like QEMU's
``qapi/*.json``.  Validation reproduces QEMU's QObject input visitor, including its error
texts and which name (full path or bare member name) each text uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from ..protocol.errors import QMPError

TypeRef = str | list[str]
"""A type as written in a declaration: a name, or ``[name]`` for an array."""


class MemberSpec(TypedDict):
    """A member with features, in QAPI's long form: ``{'type': 'int', 'features': [...]}``."""

    type: TypeRef
    features: list[str]


Members = Mapping[str, TypeRef | MemberSpec]
"""Members as declared: ``'*name'`` marks an optional one; a value is a TypeRef or a
MemberSpec."""

# builtin name -> (json-type for introspection, introspection name, qtype)
_BUILTINS: dict[str, tuple[str, str, str]] = {
    "str": ("string", "str", "string"),
    "number": ("number", "number", "num"),
    "bool": ("boolean", "bool", "bool"),
    "any": ("value", "any", "any"),
    "null": ("null", "null", "null"),
}
_INT_RANGES: dict[str, tuple[int, int]] = {
    "int": (-(1 << 63), (1 << 63) - 1), "int64": (-(1 << 63), (1 << 63) - 1),
    "int8": (-(1 << 7), (1 << 7) - 1), "int16": (-(1 << 15), (1 << 15) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint8": (0, (1 << 8) - 1), "uint16": (0, (1 << 16) - 1), "uint32": (0, (1 << 32) - 1),
    "uint64": (0, (1 << 64) - 1), "size": (0, (1 << 64) - 1),
}
for _n in _INT_RANGES:
    _BUILTINS[_n] = ("int", "int", "num")
_U64 = (1 << 64) - 1


class Type:
    """Base of every schema type."""

    name: str
    qtype: str = "dict"

    def visit(self, schema: Schema, value: Any, name: str | None, path: str) -> Any:
        raise NotImplementedError


@dataclass
class Builtin(Type):
    """str, the integer types, number, bool, any and null."""

    name: str

    def __post_init__(self) -> None:
        self.json_type, self.intro_name, self.qtype = _BUILTINS[self.name]

    def visit(self, schema: Schema, value: Any, name: str | None, path: str) -> Any:
        n = self.name
        t = type(value)
        if n == "str":
            if t is not str:
                raise _type_error(path, "string")
            return value
        if n in _INT_RANGES:
            lo, hi = _INT_RANGES[n]
            if n.startswith("int"):
                if t is not int or not (-(1 << 63) <= value < (1 << 63)):
                    raise _type_error(path, "integer")
                if not lo <= value <= hi:
                    raise QMPError(f"Parameter '{name or 'null'}' expects {n}_t")
                return value
            # uint64 and friends accept negative int64 for backward compatibility
            if t is not int or not (-(1 << 63) <= value <= _U64):
                # 'size' too: QMP's input visitor reads it as uint64 (QEMU 7.2, observed)
                raise QMPError(f"Parameter '{path}' expects uint64")
            value &= _U64
            if value > hi:  # visit_type_uintN names the C type (QEMU 7.2, observed)
                raise QMPError(f"Parameter '{name or 'null'}' expects {n}_t")
            return value
        if n == "number":
            if t is not int and t is not float:
                raise _type_error(path, "number")
            return float(value)
        if n == "bool":
            if t is not bool:
                raise _type_error(path, "boolean")
            return value
        if n == "null":
            if value is not None:
                raise _type_error(path, "null")
            return None
        return value  # any


@dataclass
class Enum(Type):
    """A QAPI enum: a string from a fixed list."""

    name: str
    values: list[str]
    qtype = "string"

    def visit(self, schema: Schema, value: Any, name: str | None, path: str) -> Any:
        if type(value) is not str:
            raise _type_error(path, "string")
        if value not in self.values:
            raise QMPError(f"Parameter '{name or 'null'}' does not accept value '{value}'")
        return value


@dataclass
class Array(Type):
    """A list of one element type."""

    element: TypeRef
    qtype = "list"

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.element}List"

    def visit(self, schema: Schema, value: Any, name: str | None, path: str) -> Any:
        if type(value) is not list:
            raise _type_error(path, "array")
        elem = schema.resolve(self.element)
        return [elem.visit(schema, v, None, f"{path}[{i}]") for i, v in enumerate(value)]


@dataclass
class Member:
    """One member of an object type."""

    name: str
    type: TypeRef
    optional: bool = False
    features: list[str] = field(default_factory=list)


def members_of(data: Members | None) -> list[Member]:
    """QAPI member notation (``{'*opt': 'str', 'req': ['int']}``) to Member objects."""
    out = []
    for key, decl in (data or {}).items():
        opt = key.startswith("*")
        name = key[1:] if opt else key
        if isinstance(decl, dict):
            out.append(Member(name, decl["type"], opt, list(decl["features"])))
        else:
            out.append(Member(name, decl, opt))
    return out


@dataclass
class Object(Type):
    """A struct, or a flat union when ``tag`` and ``variants`` are set."""

    name: str
    members: list[Member]
    tag: str | None = None
    variants: dict[str, str] = field(default_factory=dict)

    def visit(self, schema: Schema, value: Any, name: str | None, path: str) -> Any:
        if type(value) is not dict:
            raise _type_error(path or "null", "object")
        return self.visit_members(schema, value, path)

    def visit_members(self, schema: Schema, value: dict[str, Any], path: str) -> dict[str, Any]:
        """Check members in declaration order, then variant members, then leftovers."""
        out: dict[str, Any] = {}
        members = self.members
        if self.tag is not None:
            self._visit(schema, members, value, path, out)
            variant = self.variants.get(out[self.tag])
            if variant is not None:
                vtype = schema.resolve(variant)
                assert isinstance(vtype, Object)
                members = vtype.members
            else:
                members = []
        self._visit(schema, members, value, path, out)
        if len(out) != len(value):
            extra = next(k for k in value if k not in out)
            raise QMPError(f"Parameter '{_join(path, extra)}' is unexpected")
        return out

    @staticmethod
    def _visit(schema: Schema, members: list[Member], value: dict[str, Any], path: str,
               out: dict[str, Any]) -> None:
        for m in members:
            if m.name not in value:
                if m.optional:
                    continue
                raise QMPError(f"Parameter '{_join(path, m.name)}' is missing")
            out[m.name] = schema.resolve(m.type).visit(schema, value[m.name], m.name,
                                                        _join(path, m.name))


@dataclass
class Alternate(Type):
    """A value of one of several types, chosen by its JSON type."""

    name: str
    choices: list[TypeRef]

    def visit(self, schema: Schema, value: Any, name: str | None, path: str) -> Any:
        qtype = _qtype_of(value)
        for choice in self.choices:
            typ = schema.resolve(choice)
            if typ.qtype == qtype:
                return typ.visit(schema, value, name, path)
        raise _type_error(name or "null", self.name)


@dataclass
class Command:
    """A QMP command: argument object, return type, and whether it may run out of band."""

    name: str
    args: str | None
    returns: TypeRef | None
    allow_oob: bool = False


@dataclass
class Event:
    """A QMP event and the type of its ``data``."""

    name: str
    data: str | None


def _qtype_of(value: Any) -> str:
    t = type(value)
    if t is str:
        return "string"
    if t is bool:
        return "bool"
    if t is int or t is float:
        return "num"
    if t is dict:
        return "dict"
    if t is list:
        return "list"
    return "null"


def _join(path: str, member: str) -> str:
    return f"{path}.{member}" if path else member


def _type_error(path: str, expected: str) -> QMPError:
    return QMPError(f"Invalid parameter type for '{path}', expected: {expected}")


class Schema:
    """Every type, command and event qmpjobd knows, in declaration order."""

    def __init__(self) -> None:
        self.types: dict[str, Type] = {name: Builtin(name) for name in _BUILTINS}
        self.types["q_empty"] = Object("q_empty", [])
        self.commands: dict[str, Command] = {}
        self.events: dict[str, Event] = {}
        self.entities: list[Command | Event] = []

    # -- declarations ------------------------------------------------------------------------

    def enum(self, name: str, values: Iterable[str]) -> None:
        """Declare an enum (a list of names, or a StrEnum class declared in enums.py)."""
        self._add_type(Enum(name, [str(v) for v in values]))

    def extend_enum(self, name: str, value: str) -> bool:
        """Add ``value`` to the enum ``name`` (a plug-in's job type); False if it was there.
        Validation and query-qmp-schema see it from now on."""
        typ = self.types[name]
        if not isinstance(typ, Enum):
            raise TypeError(f"{name} is not an enum")
        if value in typ.values:
            return False
        typ.values.append(value)
        return True

    def struct(self, name: str, data: Members) -> None:
        """Declare a struct."""
        self._add_type(Object(name, members_of(data)))

    def union(self, name: str, base: Members, discriminator: str,
              data: dict[str, str]) -> None:
        """Declare a flat union: base members, a tag member, and a struct per tag value."""
        self._add_type(Object(name, members_of(base), discriminator, dict(data)))

    def alternate(self, name: str, choices: list[TypeRef]) -> None:
        """Declare an alternate."""
        self._add_type(Alternate(name, list(choices)))

    def command(self, name: str, data: Members | str | None = None,
                returns: TypeRef | None = None, allow_oob: bool = False) -> None:
        """Declare a command; inline ``data`` becomes an implicit argument type."""
        args = self._implicit(f"q_obj_{name}-arg", data)
        cmd = Command(name, args, returns, allow_oob)
        if name in self.commands:
            raise ValueError(f"command {name} declared twice")
        self.commands[name] = cmd
        self.entities.append(cmd)

    def event(self, name: str, data: Members | str | None = None) -> None:
        """Declare an event."""
        ev = Event(name, self._implicit(f"q_obj_{name}-arg", data))
        if name in self.events:
            raise ValueError(f"event {name} declared twice")
        self.events[name] = ev
        self.entities.append(ev)

    def _implicit(self, name: str, data: Members | str | None) -> str | None:
        if data is None or isinstance(data, str):
            return data
        self._add_type(Object(name, members_of(data)))
        return name

    def _add_type(self, typ: Type) -> None:
        if typ.name in self.types:
            raise ValueError(f"type {typ.name} declared twice")
        self.types[typ.name] = typ

    # -- use ---------------------------------------------------------------------------------

    def resolve(self, ref: TypeRef) -> Type:
        """The type a declaration names."""
        if isinstance(ref, list):
            return Array(ref[0])
        return self.types[ref]

    def check_arguments(self, command: Command, args: dict[str, Any]) -> dict[str, Any]:
        """Validate a command's arguments as QEMU's generated marshaller does."""
        if command.args is None:
            if args:
                raise QMPError(f"Parameter '{next(iter(args))}' is unexpected")
            return args
        typ = self.types[command.args]
        assert isinstance(typ, Object)
        return typ.visit_members(self, args, "")

    def check_all_refs(self) -> None:
        """Raise KeyError if any declaration names a type that does not exist."""
        def walk(ref: TypeRef | None) -> None:
            if ref is None:
                return
            typ = self.resolve(ref)
            if isinstance(typ, Array):
                walk(typ.element)
        for typ in list(self.types.values()):
            if isinstance(typ, Object):
                for m in typ.members:
                    walk(m.type)
                for v in typ.variants.values():
                    walk(v)
            elif isinstance(typ, Alternate):
                for c in typ.choices:
                    walk(c)
        for ent in self.entities:
            if isinstance(ent, Command):
                walk(ent.args)
                walk(ent.returns)
            else:
                walk(ent.data)
