"""The asyncio server: listeners, connections, dispatch and event fan-out."""

from .server import Limits, Server, StartupError

__all__ = ["Limits", "Server", "StartupError"]
