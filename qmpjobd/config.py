"""The TOML configuration file: one key per long command-line option, same names and values.

``socket = "/run/qmpjobd/qmpjobd.sock"``, ``tcp = ["127.0.0.1:4444"]``, ``paused = true``...
Values go through the option's own type check, so a file and a flag are refused alike; flags
given on the command line override the file.  ``--print-config`` writes the effective
settings back in the same form.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from typing import Any

from .errors import QmpjobdError
from .paths import default_socket

NOT_IN_FILE = frozenset(("help", "version", "config", "print_config"))


class ConfigError(QmpjobdError):
    """The file cannot be used; the message names the file, the key and the reason."""


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long option name (without dashes) -> its action, for every option a file may set."""
    out = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in NOT_IN_FILE:
            out[longs[0][2:]] = action
    return out


def _convert(action: argparse.Action, key: str, value: Any) -> Any:
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise ConfigError(f"key '{key}' expects true or false")
        return value
    if isinstance(action, argparse._AppendAction):
        if not isinstance(value, list):
            raise ConfigError(f"key '{key}' expects a list, e.g. {key} = [\"...\"]")
        return [_scalar(action, key, v) for v in value]
    return _scalar(action, key, value)


def _scalar(action: argparse.Action, key: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"key '{key}' expects a string or a number")
    if action.metavar == "OCTAL" and not isinstance(value, str):
        raise ConfigError(f"key '{key}' expects a string such as \"0660\" (a TOML integer "
                          "would be read in decimal)")
    conv = action.type
    try:
        result = conv(str(value)) if callable(conv) else str(value)
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise ConfigError(f"key '{key}': {e}") from None
    if action.choices is not None and result not in action.choices:
        raise ConfigError(f"key '{key}': {value!r} is not one of "
                          f"{', '.join(map(str, action.choices))}")
    return result


def load(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """Read ``path`` and return parser defaults (dest -> value); ConfigError when it cannot
    be used."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    options = _options(parser)
    defaults = {}
    for key, value in data.items():
        action = options.get(key)
        if action is None:
            raise ConfigError(f"{path}: unknown key '{key}' (keys are the long option names: "
                              f"{', '.join(sorted(options))})")
        try:
            defaults[action.dest] = _convert(action, key, value)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    return defaults


def render(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The effective settings as a TOML file that ``--config`` accepts."""
    lines = ["# qmpjobd effective configuration"]
    for key, action in _options(parser).items():
        value = getattr(args, action.dest)
        if value is None and key == "socket":
            lines.append(f"# socket = {_toml(default_socket())}  (not set: this default, or "
                         "the sockets systemd passes)")
        elif value is None:
            lines.append(f"# {key} = (not set)")
        else:
            lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if type(value) is int:
        return str(value)
    if type(value) is float:
        return repr(value)
    if isinstance(value, tuple):  # a version triple or a (host, port) pair
        if len(value) == 3:
            return _toml(".".join(map(str, value)))
        return _toml(f"{value[0]}:{value[1]}")
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # JSON's escapes are TOML's
