"""Shared fixtures: a real qmpjobd process per test, and QEMU 7.2 where installed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from qmptest import (
    NO_QEMU_REASON,
    QEMU,
    STARTED,
    Daemon,
    start_qemu,
    start_qmpjobd,
)


@pytest.fixture(autouse=True)
def _stop_leftover_processes() -> Iterator[None]:
    """A test that fails half-way must not leave its daemons running."""
    yield
    while STARTED:
        STARTED.pop().stop()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A qmpjobd process listening on a fresh Unix socket."""
    d = start_qmpjobd(str(tmp_path))
    yield d
    d.stop()


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Daemon]:
    """QEMU 7.2 (-M none) with one QMP monitor; skipped only when QEMU is not installed."""
    if QEMU is None:
        pytest.skip(NO_QEMU_REASON)
    d = start_qemu(str(tmp_path))
    yield d
    d.stop()
