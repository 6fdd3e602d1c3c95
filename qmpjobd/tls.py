"""TLS contexts from certificate files (stdlib ``ssl``), shared by the QMP TCP listener and the
COLO replication link."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: this side's certificate and key, and the CA that peers must chain to (with a
    CA, peers must present a certificate: client-certificate verification)."""

    cert: str
    key: str
    ca: str | None = None

    def server_context(self) -> ssl.SSLContext:
        """For a listener (QMP over TCP, an incoming migration)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        if self.ca is not None:
            ctx.load_verify_locations(self.ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """For an outgoing migration: the peer must chain to ``ca``; we present our own
        certificate so that a listener that verifies clients accepts us.  Peers are addressed
        by IP, so the chain is checked but not the host name."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED if self.ca is not None else ssl.CERT_NONE
        ctx.load_cert_chain(self.cert, self.key)
        return ctx
