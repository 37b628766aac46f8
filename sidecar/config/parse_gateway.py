"""Gateway (networking.istio.io v1alpha3/v1beta1/v1) -> `Gateway`.

Theory of operation: reads `spec` with the checks of Istio's ValidateGateway: at least one
server; each server has a port (number, a known protocol, a name unique within the Gateway) and
at least one host ("host" or "namespace/host", wildcards allowed); HTTPS and TLS ports need
`tls`, plain-text HTTP ports may only carry `tls.httpsRedirect`, other protocols none. TLS
settings are parsed and carried; certificates are not loaded here (termination is the security
work's). `selector` is a plain label map, as in Istio.
"""

from __future__ import annotations

import yaml

from sidecar.config import names
from sidecar.config import parse_routing_common as common
from sidecar.config.nodes import Fields, Node
from sidecar.config.parse_istio import ISTIO_PROTOCOLS
from sidecar.config.resources import ObjectMeta
from sidecar.config.resources_routing import (
    Gateway,
    GatewayPort,
    GatewayServer,
    GatewayTls,
)

TLS_MODES = (
    "PASSTHROUGH",
    "SIMPLE",
    "MUTUAL",
    "AUTO_PASSTHROUGH",
    "ISTIO_MUTUAL",
    "OPTIONAL_MUTUAL",
)
TLS_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")
_HTTP = ("HTTP", "HTTP2", "GRPC", "GRPC-WEB")
_TLS = ("HTTPS", "TLS")
_STR = "tag:yaml.org,2002:str"


def _port(node: Node) -> GatewayPort | None:
    f = node.fields()
    if f is None:
        return None
    number = f.read_required("number", Node.port)
    protocol = f.read_required("protocol", Node.string)
    name = f.read_required("name", Node.string)
    target = f.read("targetPort", Node.port, 0) or None
    f.finish()
    if protocol is not None and protocol.upper() not in ISTIO_PROTOCOLS:
        common.error_at(f, "protocol", f"unknown protocol {protocol!r}")
        return None
    if name == "":
        common.error_at(f, "name", "a port name is required")
    if target is not None:
        common.warn_at(f, "targetPort", "targetPort has no effect on Gateways")
    if number is None or protocol is None or not name:
        return None
    return GatewayPort(number, protocol.upper(), name, target)


def _server_host(node: Node) -> str | None:
    """ "host" or "namespace/host" (namespace ".", "*" or a name); hosts may be wildcards."""
    text = node.string()
    if text is None:
        return None
    ns, sep, host = text.rpartition("/")
    if sep and ns not in (".", "*") and not names.is_dns_label(ns):
        node.error(f"{text!r}: {ns!r} is not a namespace")
        return None
    if common.is_ip(host):
        return text
    # validate the host part at this node's place
    checked = names.host(
        Node(yaml.ScalarNode(_STR, host, node.node.start_mark), node.path, node.doc)
    )
    if checked is None:
        return None
    return f"{ns}/{checked}" if sep else checked


def _tls(node: Node) -> GatewayTls | None:
    f = node.fields()
    if f is None:
        return None
    redirect = f.read("httpsRedirect", Node.boolean, False)
    mode = f.choice("mode", TLS_MODES, "PASSTHROUGH")  # Istio's enum default
    cert = f.string("serverCertificate")
    key = f.string("privateKey")
    ca = f.string("caCertificates")
    credential = f.string("credentialName")
    sans = common.opt(f, "subjectAltNames", Node.string_list) or ()
    min_version = f.choice("minProtocolVersion", TLS_VERSIONS, "TLS_AUTO")
    f.finish()
    if mode == "ISTIO_MUTUAL" and (cert or key or ca or credential):
        node.error("ISTIO_MUTUAL uses the mesh's certificates: do not set certificates")
    elif mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL") and not credential:
        for key_name, value in (("serverCertificate", cert), ("privateKey", key)):
            if not value:
                common.error_at(f, key_name, f"{mode} TLS requires {key_name} (or credentialName)")
        if mode != "SIMPLE" and not ca:
            common.error_at(f, "caCertificates", f"{mode} TLS requires a client CA bundle")
    return GatewayTls(
        mode,
        redirect,
        cert,
        key,
        ca,
        credential,
        sans,
        "" if min_version == "TLS_AUTO" else min_version,
    )


def _server(node: Node) -> GatewayServer | None:
    f = node.fields()
    if f is None:
        return None
    port = f.read_required("port", _port)
    hosts_node = f.require("hosts")
    items = [] if hosts_node is None else hosts_node.items()
    if hosts_node is not None and not items:
        hosts_node.error("a server needs at least one host")
    hosts = tuple(h for h in (_server_host(i) for i in items) if h)
    bind = f.read("bind", names.ip, "")
    name = f.string("name")
    tls = f.read("tls", _tls, None)
    default_endpoint = f.string("defaultEndpoint")
    f.finish()
    if port is not None:
        _check_tls_protocol(f, port.protocol, tls)
    return None if port is None else GatewayServer(port, hosts, bind, name, tls, default_endpoint)


def _check_tls_protocol(f: Fields, protocol: str, tls: GatewayTls | None) -> None:
    if protocol in _TLS and "tls" not in f.values:
        common.error_at(f, "tls", f"a {protocol} server needs tls settings")
    elif protocol not in _TLS and tls is not None:
        plain_redirect = protocol in _HTTP and not (
            tls.server_certificate or tls.private_key or tls.ca_certificates
        )
        if not plain_redirect:
            common.error_at(f, "tls", f"a {protocol} server cannot have TLS settings")
        elif not tls.https_redirect:
            common.warn_at(f, "tls", "tls on a plain-text HTTP server only uses httpsRedirect")


def parse_gateway(meta: ObjectMeta, root: Fields) -> Gateway | None:
    node = root.require("spec")
    root.finish(frozenset({"status"}))
    spec = None if node is None else node.fields()
    if spec is None or node is None:
        return None
    selector = common.opt(spec, "selector", names.labels) or frozenset()
    servers: list[GatewayServer] = []
    items = common.items(spec, "servers")
    if not items:
        common.error_at(spec, "servers", "a gateway needs at least one server")
    for item in items:
        server = _server(item)
        if server is None:
            continue
        if any(s.port.name == server.port.name for s in servers):
            item.error(f"port names must be unique in a gateway: {server.port.name!r} repeats")
            continue
        servers.append(server)
    spec.finish()
    return Gateway(meta, selector, tuple(servers))
