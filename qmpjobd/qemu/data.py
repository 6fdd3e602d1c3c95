"""The recorded QEMU 7.2 data shipped with the package, loaded once on first use."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import orjson

DIR = Path(__file__).with_name("data")


@functools.cache
def load(name: str) -> Any:
    """A data file by name (``qemu72-x86_64-cpu.json``), parsed."""
    return orjson.loads((DIR / name).read_bytes())
