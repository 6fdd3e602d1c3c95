"""``--plugin``: load plug-ins (a module name or a ``.py`` file) and call their
``register(vm)``.  Every failure is a PluginError whose text names the plug-in's file
and what went wrong, so a daemon that refuses to start says which file to fix."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from types import ModuleType
from typing import Any

from .errors import QmpjobdError


class PluginError(QmpjobdError):
    """A plug-in cannot be loaded or registered; the text names its file."""


def _where(e: BaseException, path: str) -> str:
    """`` (line N)`` of the innermost frame of ``e`` that is in ``path``, if any."""
    line = None
    for frame in traceback.extract_tb(e.__traceback__):
        if os.path.abspath(frame.filename) == path:
            line = frame.lineno
    return f" (line {line})" if line else ""


def _module_file(spec: str) -> str:
    """The file a module name resolves to, for messages and duplicate checks."""
    try:
        found = importlib.util.find_spec(spec)
    except (ImportError, ValueError) as e:
        raise PluginError(f"plug-in {spec}: {type(e).__name__}: {e}") from None
    if found is None:
        raise PluginError(f"plug-in {spec}: no module of that name on the Python path "
                          f"({', '.join(p for p in sys.path if p) or 'empty'})")
    return os.path.abspath(found.origin) if found.origin else spec


def load(spec: str) -> tuple[ModuleType, str]:
    """Import a plug-in; returns the module and its file."""
    is_file = spec.endswith(".py") or os.sep in spec
    path = os.path.abspath(spec) if is_file else _module_file(spec)
    try:
        if not is_file:
            return importlib.import_module(spec), path
        if not os.path.isfile(path):
            raise PluginError(f"plug-in {path}: no such file")
        name = "qmpjobd_plugin_" + os.path.splitext(os.path.basename(path))[0]
        found = importlib.util.spec_from_file_location(name, path)
        if found is None or found.loader is None:
            raise PluginError(f"plug-in {spec}: not a Python file")
        module = importlib.util.module_from_spec(found)
        found.loader.exec_module(module)
        return module, path
    except PluginError:
        raise
    except SyntaxError as e:
        raise PluginError(f"plug-in {e.filename or path}: syntax error at line {e.lineno}: "
                          f"{e.msg}") from None
    except ImportError as e:
        raise PluginError(f"plug-in {path}: import failed{_where(e, path)}: "
                          f"{type(e).__name__}: {e}") from None
    except Exception as e:
        raise PluginError(f"plug-in {path}: failed while loading{_where(e, path)}: "
                          f"{type(e).__name__}: {e}") from None


def register_all(specs: list[str], vm: Any) -> None:
    """Load each plug-in once and call its ``register(vm)``."""
    seen: dict[str, str] = {}  # spec and file -> the spec that loaded it first
    for spec in specs:
        if spec in seen:
            raise PluginError(f"plug-in {spec} is given twice; load each plug-in once")
        module, path = load(spec)
        if path in seen:
            raise PluginError(f"plug-in {path} is given twice (--plugin {seen[path]} and "
                              f"--plugin {spec}); load each plug-in once")
        seen[spec] = seen[path] = spec
        register = getattr(module, "register", None)
        if not callable(register):
            raise PluginError(f"plug-in {path}: no register(vm) function (the daemon "
                              "calls it to add the plug-in's commands)")
        try:
            register(vm)
        except Exception as e:
            raise PluginError(f"plug-in {path}: register() failed{_where(e, path)}: "
                              f"{type(e).__name__}: {e}") from None
