"""Istio's ServerTLSSettings (Sidecar `ingress[].tls`, later Gateway `servers[].tls`).

The proxy reads certificates from files, as a proxy with mounted secrets does: `SIMPLE` needs
`serverCertificate` and `privateKey`, `MUTUAL` also `caCertificates`. The files are loaded while
the config is read, so a missing or broken certificate refuses the config with the field's path
(the running config stays), instead of failing connections later. `credentialName` (a Kubernetes
secret fetched over SDS) and the ISTIO_MUTUAL mode (the mesh's own certificates) belong to the
security work and are refused with that reason.
"""

from __future__ import annotations

import ssl

from sidecar.config.nodes import Fields, Node
from sidecar.config.resources import ServerTls
from sidecar.errors import Severity

_MODES = ("SIMPLE", "MUTUAL", "ISTIO_MUTUAL", "PASSTHROUGH", "AUTO_PASSTHROUGH", "OPTIONAL_MUTUAL")
_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")


def server_tls(node: Node) -> ServerTls | None:
    f = node.fields()
    if f is None:
        return None
    mode = f.choice("mode", _MODES, "SIMPLE")
    cert = f.string("serverCertificate")
    key = f.string("privateKey")
    ca = f.string("caCertificates")
    min_version = f.choice("minProtocolVersion", _VERSIONS, "TLS_AUTO")
    if f.get("credentialName") is not None:
        _error(f, "credentialName", "secrets over SDS are not supported; use certificate files")
    f.finish()
    if mode not in ("SIMPLE", "MUTUAL"):
        _error(f, "mode", f"{mode} is not supported here (SIMPLE or MUTUAL)")
        return None
    ok = _need(f, "serverCertificate", cert) & _need(f, "privateKey", key)
    if mode == "MUTUAL":
        ok &= _need(f, "caCertificates", ca)
    if not ok or not _loads(f, cert, key, ca):
        return None
    return ServerTls(mode, cert, key, ca, "" if min_version == "TLS_AUTO" else min_version)


def _error(f: Fields, key: str, reason: str) -> None:
    child = f.values.get(key)
    (child or f.node).error(reason)


def _need(f: Fields, key: str, value: str) -> bool:
    if value:
        return True
    f.node.doc.add(Severity.ERROR, f.node.line, f.node.child_path(key), "required for this mode")
    return False


def _loads(f: Fields, cert: str, key: str, ca: str) -> bool:
    """The files exist and hold a certificate chain and its key (and CAs)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        _error(f, "serverCertificate", f"cannot load {cert} with {key}: {exc}")
        return False
    if ca:
        try:
            ctx.load_verify_locations(ca)
        except (OSError, ssl.SSLError) as exc:
            _error(f, "caCertificates", f"cannot load {ca}: {exc}")
            return False
    return True
