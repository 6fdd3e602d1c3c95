"""The recorded QEMU 7.2 data shipped with the package, loaded once on first use."""

from __future__ import annotations

import functools
import os
from typing import Any

import orjson

DIR = os.path.join(os.path.dirname(__file__), "data")


def path(name: str) -> str:
    """Where a data file is (os.path: pathlib costs milliseconds at start-up)."""
    return os.path.join(DIR, name)


@functools.cache
def load(name: str) -> Any:
    """A data file by name (``qemu72-x86_64-cpu.json``), parsed."""
    with open(path(name), "rb") as f:
        return orjson.loads(f.read())
