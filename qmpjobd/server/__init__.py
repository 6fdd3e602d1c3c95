"""The asyncio server: listeners, connections, dispatch and event fan-out."""

from .server import Access, Limits, Server, StartupError

__all__ = ["Access", "Limits", "Server", "StartupError"]
