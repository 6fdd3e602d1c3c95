"""QEMU 7.2 x86_64's identity answers under TCG, from the recording ``record.py`` made.

A recorded request gets QEMU's recorded reply, return or error.  Other arguments get what
QEMU computes from the same data where that is possible (unknown types, filtered type lists,
one command-line option); what QEMU would compute from state qmpjobd lacks (the properties
of a type nobody recorded, other CPU expansions) is refused with a GenericError that says so.
Imports only the schema and protocol layers, so the composition root can import it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, get_args

import orjson

from ..protocol.errors import ErrorClass, QMPError
from ..protocol.session import Session
from ..schema import Registry
from .data import path as data_path

DATA = "data/qemu72-x86_64.json"
"""The recording, as package data of qmpjobd.qemu."""

KVM = {"enabled": False, "present": True}
"""query-kvm as QEMU 7.2 answers under TCG: KVM compiled in (``present`` is
``accel_find("kvm")``, not /dev/kvm) but not in use.  ``Identity.kvm_enabled`` is set when
the command line asked for KVM and /dev/kvm opened, as QEMU's accelerator choice goes:
libvirt compares ``enabled`` with whether its libvirt-qemu user can use /dev/kvm, and probes
again at every lookup while they differ."""

_ERROR_CLASSES: dict[str, ErrorClass] = {c: c for c in get_args(ErrorClass)}

Args = dict[str, Any]


def key(command: str, args: Args | None) -> bytes:
    """A request's identity: the command and its arguments, key order aside."""
    args = args or {}
    if command == "query-cpu-model-expansion":
        args = {**args, "model": _model_for_qemu(args["model"])}
    return command.encode() + b" " + orjson.dumps(args, option=orjson.OPT_SORT_KEYS)


def _model_for_qemu(model: Args) -> Args:
    """QEMU takes a model's ``props`` only when it is an object; anything else is ignored."""
    if "props" in model and not isinstance(model["props"], dict):
        return {k: v for k, v in model.items() if k != "props"}
    return model


class Recording:
    """The recorded replies by request, and the QOM type tree they describe."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.replies: dict[bytes, dict[str, Any]] = {}
        for req in data["requests"]:
            self.replies.setdefault(key(req["execute"], req.get("arguments")), req)
        self.types: list[dict[str, Any]] = self.answer("qom-list-types", {"abstract": True})
        self.by_name = {t["name"]: t for t in self.types}

    def recorded(self, command: str, args: Args | None) -> dict[str, Any] | None:
        """The recorded request and reply, if this request was recorded."""
        return self.replies.get(key(command, args))

    def answer(self, command: str, args: Args | None = None) -> Any:
        """The recorded return value, or the recorded error raised as QMPError."""
        rec = self.recorded(command, args)
        if rec is None:
            raise not_recorded(command)
        return replay(rec)

    def ancestors(self, name: str) -> list[str]:
        """``name`` and its parents up to the root."""
        out = []
        while name in self.by_name:
            out.append(name)
            name = self.by_name[name].get("parent", "")
        return out

    def is_interface(self, name: str) -> bool:
        """Whether ``name`` is a QOM interface (a type outside the ``object`` tree)."""
        return "interface" in self.ancestors(name)


def replay(rec: dict[str, Any]) -> Any:
    """A recorded reply: its return value, or its error as QMPError."""
    if "error" in rec:
        err = rec["error"]
        raise QMPError(err["desc"], _ERROR_CLASSES.get(err["class"], "GenericError"))
    return rec["return"]


def not_recorded(command: str) -> QMPError:
    """What qmpjobd says where QEMU would compute an answer nobody recorded."""
    return QMPError(f"qmpjobd has no recording of QEMU 7.2's answer to {command} "
                    "with these arguments")


def parse(text: str | bytes) -> Recording:
    """A recording from the text record.py writes."""
    return Recording(json.loads(text))


@functools.cache
def recording() -> Recording:
    """The shipped recording, read once per process on first use."""
    with open(data_path(DATA.removeprefix("data/")), "rb") as f:
        return parse(f.read())


class Identity:
    """The handlers; the recording is read when the first identity command arrives."""

    def __init__(self, load: Callable[[], Recording] = recording) -> None:
        self._load = load
        self.kvm_enabled = False
        """Whether the accelerator in use is KVM (see :data:`KVM`)."""

    @property
    def rec(self) -> Recording:
        return self._load()

    def recorded(self, command: str) -> Callable[[Args, Session], Any]:
        """A handler that answers only from the recording."""
        return lambda args, session: self.rec.answer(command, args)

    def query_kvm(self, args: Args, session: Session) -> Any:
        """query-kvm: KVM compiled in; in use only if the accelerator chosen was KVM."""
        return {**KVM, "enabled": self.kvm_enabled}

    def qom_list_types(self, args: Args, session: Session) -> Any:
        """qom-list-types: a subsequence of the full list, in QEMU's order; an interface's
        implementations as recorded, a class's subclasses by parent; unknown types none."""
        rec = self.rec
        if (hit := rec.recorded("qom-list-types", args)) is not None:
            return replay(hit)
        implements = args.get("implements")
        if implements is None:
            found = rec.types
        elif implements not in rec.by_name:
            found = []
        elif rec.is_interface(implements):
            found = rec.answer("qom-list-types", {"implements": implements, "abstract": True})
        else:
            found = [t for t in rec.types if implements in rec.ancestors(t["name"])]
        if args.get("abstract", False):
            return found
        return [t for t in found if not t.get("abstract", False)]

    def device_list_properties(self, args: Args, session: Session) -> Any:
        """device-list-properties: recorded, else QEMU's refusal for this kind of type."""
        rec = self.rec
        if (hit := rec.recorded("device-list-properties", args)) is not None:
            return replay(hit)
        name = args["typename"]
        info = rec.by_name.get(name)
        if info is None:
            raise QMPError(f"Device '{name}' not found", "DeviceNotFound")
        if info.get("abstract", False) or "device" not in rec.ancestors(name):
            raise QMPError("Parameter 'typename' expects a non-abstract device type")
        raise not_recorded("device-list-properties")

    def qom_list_properties(self, args: Args, session: Session) -> Any:
        """qom-list-properties: recorded, else QEMU's refusal for this kind of type."""
        rec = self.rec
        if (hit := rec.recorded("qom-list-properties", args)) is not None:
            return replay(hit)
        name = args["typename"]
        if name not in rec.by_name:
            raise QMPError(f"Class '{name}' not found", "DeviceNotFound")
        if rec.is_interface(name):
            raise QMPError("Parameter 'typename' expects a QOM type")
        raise not_recorded("qom-list-properties")

    def query_command_line_options(self, args: Args, session: Session) -> Any:
        """query-command-line-options: one option is its entry in the full list."""
        rec = self.rec
        if (hit := rec.recorded("query-command-line-options", args)) is not None:
            return replay(hit)
        option = args["option"]
        found = [o for o in rec.answer("query-command-line-options") if o["option"] == option]
        if not found:
            raise QMPError(f"invalid option name: {option}")
        return found

    def query_cpu_model_expansion(self, args: Args, session: Session) -> Any:
        """query-cpu-model-expansion: recorded, else QEMU's refusal of an unknown model."""
        rec = self.rec
        if (hit := rec.recorded("query-cpu-model-expansion", args)) is not None:
            return replay(hit)
        name = args["model"]["name"]
        if "x86_64-cpu" not in rec.ancestors(f"{name}-x86_64-cpu"):
            raise QMPError(f"CPU model '{name}' not found")
        raise not_recorded("query-cpu-model-expansion")


ANSWERED = ("query-target", "query-machines", "query-cpu-definitions", "query-tpm-models",
            "query-tpm-types", "query-sev-capabilities", "query-sgx-capabilities")
"""Commands without arguments: the recorded reply is the answer."""


def register(registry: Registry, identity: Identity | None = None) -> Identity:
    """Attach the identity commands to ``registry``."""
    ident = identity or Identity()
    for command in ANSWERED:
        registry.register(command, ident.recorded(command))
    registry.register("query-kvm", ident.query_kvm)
    registry.register("qom-list-types", ident.qom_list_types)
    registry.register("device-list-properties", ident.device_list_properties)
    registry.register("qom-list-properties", ident.qom_list_properties)
    registry.register("query-command-line-options", ident.query_command_line_options)
    registry.register("query-cpu-model-expansion", ident.query_cpu_model_expansion)
    return ident
