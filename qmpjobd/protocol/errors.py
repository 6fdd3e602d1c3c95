"""QMP error classes and the exception that carries one to the dispatcher."""

from __future__ import annotations

from typing import Literal

from ..errors import QmpjobdError

ErrorClass = Literal["GenericError", "CommandNotFound", "DeviceNotActive", "DeviceNotFound",
                     "KVMMissingCap"]
"""QEMU 7.2's QapiErrorClass values: the only classes a QMP client ever sees."""


class QMPError(QmpjobdError):
    """A command failure rendered as ``{"error": {"class": ..., "desc": ...}}``.

    Handlers raise it; the dispatcher turns it into the reply.  ``str()`` is the desc.
    """

    def __init__(self, desc: str, error_class: ErrorClass = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class: ErrorClass = error_class

    def __repr__(self) -> str:
        return f"QMPError({self.desc!r}, {self.error_class!r})"

