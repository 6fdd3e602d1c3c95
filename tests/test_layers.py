"""The layering the README's Layout table promises, read from the source: who imports whom.

Only imports that run count (``if TYPE_CHECKING:`` blocks are for the type checker alone).
"""

from __future__ import annotations

import ast
import inspect
import pkgutil
from pathlib import Path

import pytest

import qmpjobd
from qmpjobd.errors import QmpjobdError

PKG = Path(qmpjobd.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports when it runs."""
    tree = ast.parse(path.read_text())
    me = _module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    out: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(tree.body)
    return out


def _files(*names: str) -> list[Path]:
    out = []
    for name in names:
        p = PKG / name
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p.with_suffix(".py")]
    return out


def _daemon_imports(path: Path) -> set[str]:
    return {m for m in _runtime_imports(path) if m.startswith("qmpjobd")}


def _allowed(mod: str, allowed: tuple[str, ...]) -> bool:
    return any(mod == a or mod.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize(("layer", "allowed"), [
    (("errors", "paths", "libc"), ()),
    (("address",), ("qmpjobd.errors",)),
    (("client",), ("qmpjobd.address", "qmpjobd.errors")),
    (("protocol",), ("qmpjobd.protocol", "qmpjobd.errors")),
    (("schema",), ("qmpjobd.schema", "qmpjobd.protocol", "qmpjobd.errors")),
    (("server",), ("qmpjobd.server", "qmpjobd.protocol", "qmpjobd.schema", "qmpjobd.errors",
                   "qmpjobd.libc", "qmpjobd.address")),
    (("health", "watch"), ("qmpjobd.client", "qmpjobd.address", "qmpjobd.paths",
                           "qmpjobd.errors")),
    (("qemu/cmdline",), ("qmpjobd.errors",)),
    (("qemu/identity",), ("qmpjobd.schema", "qmpjobd.protocol", "qmpjobd.errors",
                          "qmpjobd.qemu.data")),
    (("qemu/record",), ("qmpjobd.client", "qmpjobd.address", "qmpjobd.errors")),
    (("hmp",), ("qmpjobd.hmp", "qmpjobd.protocol", "qmpjobd.schema", "qmpjobd.errors")),
], ids=["errors+paths+libc", "address", "client", "protocol", "schema", "server", "health+watch",
        "qemu-cmdline", "qemu-identity", "qemu-record", "hmp"])
def test_imports_point_downward(layer: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    wrong = {f"{p.relative_to(PKG)} imports {m}" for p in _files(*layer)
             for m in _daemon_imports(p) if not _allowed(m, allowed)}
    assert not wrong, sorted(wrong)


def test_the_protocol_core_has_no_asyncio() -> None:
    users = [str(p.relative_to(PKG)) for p in _files("protocol")
             if any(m.split(".")[0] in ("asyncio", "uvloop", "socket")
                    for m in _runtime_imports(p))]
    assert users == []


def _resolve(name: str) -> str:
    """The module an imported name lives in (``qmpjobd.a.B`` -> ``qmpjobd.a``)."""
    while "." in name:
        path = PKG.parent / name.replace(".", "/")
        if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
            return name
        name = name.rsplit(".", 1)[0]
    return name


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for p in PKG.rglob("*.py"):
        mod = _module_name(p)
        # a package's __init__ re-exports its own modules: not an edge of the layering
        graph[mod] = {m for m in map(_resolve, _daemon_imports(p))
                      if m != mod and not m.startswith(mod + ".")}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if seen.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in seen:
                walk(nxt)
        stack.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            walk(node)


def test_every_exception_derives_from_the_one_root() -> None:
    strays = []
    for info in pkgutil.walk_packages([str(PKG)], "qmpjobd."):
        if info.name.endswith("__main__"):
            continue
        module = __import__(info.name, fromlist=["_"])
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) \
                    and obj.__module__ == info.name and not name.startswith("_") \
                    and not issubclass(obj, QmpjobdError):
                strays.append(f"{info.name}.{name}")
    assert strays == []
