"""TLS termination on a listener: the server-side SSL context from a `TlsContext`.

Theory of operation: the listener's socket server is created with this context, so asyncio does
the handshake before the connection reaches the accept step; ALPN offers "h2" then "http/1.1" on
HTTP listeners, and the protocol the client chose decides the codec (codec_select.py) without
looking at the bytes. MUTUAL mode requires and verifies a client certificate against the CAs.
The SNI the client sent is kept on its SSL object during the handshake (`sni_callback`), so the
access log shows it as Envoy's does (`requested_server_name`).
"""

from __future__ import annotations

import ssl

from sidecar.config.snapshot import TlsContext

_VERSIONS = {"TLSV1_2": ssl.TLSVersion.TLSv1_2, "TLSV1_3": ssl.TLSVersion.TLSv1_3}


def server_context(tls: TlsContext) -> ssl.SSLContext:
    """An SSL context presenting the listener's certificate (loaded again on each reload)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS.get(tls.min_version, ssl.TLSVersion.TLSv1_2)
    ctx.load_cert_chain(tls.certificate_chain, tls.private_key)
    if tls.ca_certificates:
        ctx.load_verify_locations(tls.ca_certificates)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.alpn:
        ctx.set_alpn_protocols(list(tls.alpn))
    ctx.sni_callback = _remember_sni
    return ctx


_SNI_ATTR = "sidecar_sni"


def _remember_sni(obj: object, server_name: str | None, ctx: ssl.SSLContext) -> None:
    """The handshake's SNI callback: keep the name on the connection's SSL object."""
    if server_name:
        setattr(obj, _SNI_ATTR, server_name)


def requested_server_name(transport: object) -> str:
    """The SNI the client sent on a TLS connection this listener terminated, or ""."""
    get = getattr(transport, "get_extra_info", None)
    ssl_object = get("ssl_object") if get is not None else None
    return str(getattr(ssl_object, _SNI_ATTR, "")) if ssl_object is not None else ""


def negotiated_alpn(transport: object) -> str | None:
    """The application protocol the TLS handshake chose, or None (no TLS, or no ALPN)."""
    get = getattr(transport, "get_extra_info", None)
    ssl_object = get("ssl_object") if get is not None else None
    if ssl_object is None:
        return None
    chosen = ssl_object.selected_alpn_protocol()
    return str(chosen) if chosen else None
