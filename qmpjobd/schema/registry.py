"""Command handlers, bound to the schema that declares them, and the event sink they use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..protocol.session import Session
from .model import Schema

Handler = Callable[[dict[str, Any], Session], Any]
"""A command implementation: validated arguments and the caller's session in, the return
value out (None means ``{}``).  It may return an awaitable; the caller's later in-band
commands then wait for it.  Errors are raised as QMPError."""

AsyncResult = Awaitable[Any]


class EventSink(Protocol):
    """Where events go: the server broadcasts them to every negotiated client."""

    def emit(self, name: str, data: Any = None, capability: str | None = None) -> None:
        """Send event ``name`` with ``data`` (a dict, or None for no data); with
        ``capability``, only to clients that enabled it in qmp_capabilities."""


class Registry:
    """Maps declared command names to handlers; refuses handlers for undeclared commands."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        """Attach ``handler`` to the declared command ``name``."""
        if name not in self.schema.commands:
            raise KeyError(f"command {name} is not declared in the schema")
        if name in self.handlers:
            raise KeyError(f"command {name} already has a handler")
        self.handlers[name] = handler

    def missing(self) -> list[str]:
        """Declared commands that have no handler."""
        return [n for n in self.schema.commands if n not in self.handlers]
