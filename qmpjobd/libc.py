"""The C library, for the few calls the standard library lacks (prctl, mallopt, malloc_trim,
fallocate's hole punching): a leaf module every layer may use."""

from __future__ import annotations

import ctypes
import functools
from typing import Any


@functools.cache
def libc() -> Any:
    """The C library's functions, from the symbols this process has already loaded: no
    find_library, which would run ldconfig at start-up."""
    return ctypes.CDLL(None, use_errno=True)
