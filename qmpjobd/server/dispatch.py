"""qmp_dispatch(): from a parsed message to the reply bytes (qmp-protocol.md §4).

No asyncio here: a handler that returns an awaitable makes dispatch() return a coroutine
that produces the reply; the connection decides how to run it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Coroutine
from typing import Any

from ..protocol import encode
from ..protocol.errors import QMPError
from ..protocol.request import BadRequest, Request, parse_request
from ..protocol.session import Session
from ..schema import Registry

log = logging.getLogger(__name__)

NEGOTIATION_DESC = "Expecting capabilities negotiation with 'qmp_capabilities'"

Outcome = bytes | Coroutine[Any, Any, bytes]
_PLAIN = frozenset((dict, list, str, int, float, bool))


class Dispatcher:
    """Runs requests against a registry of handlers, producing QEMU-shaped replies."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.schema = registry.schema
        registry.register("qmp_capabilities", self._qmp_capabilities)

    @staticmethod
    def _qmp_capabilities(args: dict[str, Any], session: Session) -> Any:
        session.negotiate(args.get("enable", []))

    def dispatch(self, value: Any, session: Session) -> Outcome:
        """Handle one parsed message; returns reply bytes or a coroutine producing them."""
        try:
            req = parse_request(value, session.oob)
        except BadRequest as e:
            return encode.error(e.desc, e.error_class, e.id, e.has_id)
        try:
            cmd = self.schema.commands.get(req.command)
            if cmd is None or (not session.negotiated and req.command != "qmp_capabilities"):
                raise QMPError(f"The command {req.command} has not been found", "CommandNotFound")
            if req.oob and not cmd.allow_oob:
                raise QMPError(f"The command {req.command} does not support OOB")
            args = self.schema.check_arguments(cmd, req.arguments)
            ret = self.registry.handlers[req.command](args, session)
        except QMPError as e:
            return self._error(e, req, session)
        except Exception:
            log.exception("command %s failed", req.command)
            return self._error(QMPError(f"internal error in {req.command}"), req, session)
        if ret is not None and type(ret) not in _PLAIN and inspect.isawaitable(ret):
            return self._finish(ret, req, session)
        return self._reply(ret, req, session)

    async def _finish(self, pending: Any, req: Request, session: Session) -> bytes:
        try:
            ret = await pending
        except QMPError as e:
            return self._error(e, req, session)
        except Exception:
            log.exception("command %s failed", req.command)
            return self._error(QMPError(f"internal error in {req.command}"), req, session)
        return self._reply(ret, req, session)

    def _reply(self, ret: Any, req: Request, session: Session) -> bytes:
        """The reply line; a return value JSON cannot carry (a handler's bug) becomes an
        error for this request only, so the session goes on."""
        try:
            return encode.reply({} if ret is None else ret, req.id, req.has_id)
        except (TypeError, ValueError) as e:
            log.error("command %s returned a value that cannot be sent as JSON: %s",
                      req.command, e)
            return self._error(QMPError(f"internal error in {req.command}: its result "
                                        "cannot be encoded"), req, session)

    @staticmethod
    def _error(e: QMPError, req: Request, session: Session) -> bytes:
        desc = e.desc
        if not session.negotiated and e.error_class == "CommandNotFound":
            desc = NEGOTIATION_DESC
        return encode.error(desc, e.error_class, req.id, req.has_id)
