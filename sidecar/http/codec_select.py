"""Which HTTP codec serves a downstream connection (Envoy's `codec_type: AUTO`).

Theory of operation: the listener's sniffing step (listener/sniff.py) hands over the first bytes
the client sent (at least enough to tell, or all it sent before the detection ended). A connection
that starts with the HTTP/2 connection preface (RFC 9113 section 3.4), or whose TLS handshake chose
"h2" by ALPN, gets the HTTP/2 connection manager; every other one HTTP/1.1. The caller installs
the returned protocol on the transport, calls `connection_made`, then `data_received(first)`.
"""

from __future__ import annotations

import asyncio

from sidecar.config.snapshot import HttpConnectionManager
from sidecar.http.connection_manager import HttpConnectionManagerProtocol
from sidecar.http.h2_connection import H2ConnectionManagerProtocol
from sidecar.runtime import Downstream, Runtime

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def is_h2_preface(first: bytes) -> bool | None:
    """True/False once `first` tells; None while it is a proper prefix of the preface."""
    n = min(len(first), len(H2_PREFACE))
    if first[:n] != H2_PREFACE[:n]:
        return False
    return True if n == len(H2_PREFACE) else None


def http_protocol(
    runtime: Runtime,
    downstream: Downstream,
    config: HttpConnectionManager,
    first: bytes,
    alpn: str | None = None,
) -> asyncio.Protocol:
    """The connection manager for this connection, chosen by ALPN or the first bytes."""
    if alpn == "h2" or is_h2_preface(first):
        return H2ConnectionManagerProtocol(runtime, downstream, config)
    return HttpConnectionManagerProtocol(runtime, downstream, config)
