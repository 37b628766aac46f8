"""VirtualService (networking.istio.io v1alpha3/v1beta1/v1) -> `VirtualService`.

Theory of operation: the loader has read metadata; this reads `spec` field by field with the
checks of Istio's ValidateVirtualService: hosts are required (names, FQDNs, "*.suffix"
wildcards, IPs; "*" only on a gateway-bound service; no duplicates), at least one of
http/tcp/tls, TLS routes match on SNI hosts covered by the service's hosts, TCP/TLS routes have
destinations. HTTP routes are read by `parse_http_route.py`. Rules that can never match (a rule
after one without matches) are warnings, as Istio's analysis reports them.
"""

from __future__ import annotations

import yaml

from sidecar.config import names
from sidecar.config import parse_routing_common as common
from sidecar.config.nodes import Fields, Node
from sidecar.config.parse_http_route import check_weights, http_route
from sidecar.config.resources import ObjectMeta
from sidecar.config.resources_routing import (
    L4MatchAttributes,
    RouteDestination,
    TCPRoute,
    TLSMatchAttributes,
    TLSRoute,
    VirtualService,
)
from sidecar.config.snapshot import Labels

MESH = "mesh"


def _hosts(f: Fields, gateway_bound: bool) -> tuple[str, ...]:
    node = f.require("hosts")
    if node is None:
        return ()
    items = node.items()
    if not items and isinstance(node.node.value, list):
        node.error("at least one host is required")
    out: list[str] = []
    for item in items:
        host = common.host_or_ip(item)
        if host is None:
            continue
        if host == "*" and not gateway_bound:
            item.error('wildcard host "*" is not allowed for virtual services bound to the mesh')
            continue
        dup = next(
            (h for h in out if common.host_covers(h, host) or common.host_covers(host, h)), None
        )
        if dup is not None:
            item.error(f"duplicate hosts in virtual service: {dup} and {host}")
            continue
        out.append(host)
    return tuple(out)


def _subnets(node: Node) -> tuple[str, ...]:
    out = (names.ip_or_cidr(item) for item in node.items())
    return tuple(s for s in out if s)


L4Common = tuple[tuple[str, ...], int | None, Labels | None, str, tuple[str, ...]]


def _l4_common(f: Fields) -> L4Common:
    """The match fields TCP and TLS matches share."""
    subnets = common.opt(f, "destinationSubnets", _subnets) or ()
    port = f.read("port", Node.port, 0) or None
    labels = f.read("sourceLabels", common.source_labels, None)
    namespace = f.read("sourceNamespace", common.source_namespace, "")
    gateways = common.opt(f, "gateways", common.gateway_names) or ()
    return subnets, port, labels, namespace, gateways


def _tcp_match(node: Node) -> L4MatchAttributes | None:
    f = node.fields()
    if f is None:
        return None
    parts = _l4_common(f)
    f.finish()
    return L4MatchAttributes(*parts)


def _sni_hosts(node: Node, vs_hosts: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    items = node.items()
    if not items:
        node.error("a TLS match needs at least one SNI host")
    for item in items:
        text = item.string()
        if text is None:
            continue
        if common.is_ip(text):
            item.warn(
                f"{text!r}: an IP address as SNI goes against the TLS spec; most "
                "clients do not send it"
            )
            out.append(text)
            continue
        host = names.host(item)
        if host is None:
            continue
        if vs_hosts and not any(common.host_covers(h, host) for h in vs_hosts):
            item.error(
                f"SNI host {host!r} is not covered by the virtual service's hosts "
                f"({', '.join(vs_hosts)})"
            )
            continue
        out.append(host)
    return tuple(out)


def _tls_match(node: Node, vs_hosts: tuple[str, ...]) -> TLSMatchAttributes | None:
    f = node.fields()
    if f is None:
        return None
    sni = f.read_required("sniHosts", lambda n: _sni_hosts(n, vs_hosts)) or ()
    parts = _l4_common(f)
    f.finish()
    return TLSMatchAttributes(sni, *parts)


def _l4_destination(node: Node) -> RouteDestination | None:
    f = node.fields()
    if f is None:
        return None
    dest = f.read_required("destination", common.destination)
    weight_node = f.get("weight")
    weight = None if weight_node is None else weight_node.integer()
    f.finish()
    if weight is not None and weight < 0 and weight_node is not None:
        weight_node.error(f"weight {weight} must not be negative")
        return None
    return None if dest is None else RouteDestination(dest, weight)


def _l4_routes(f: Fields, kind: str) -> tuple[RouteDestination, ...]:
    node = f.get("route")
    items = [] if node is None else node.items()
    if not items:
        (node or f.node).error(f"a {kind} route needs at least one destination in route")
        return ()
    dests = [_l4_destination(n) for n in items]
    check_weights(node or f.node, [d.weight for d in dests if d is not None])
    return tuple(d for d in dests if d is not None)


def _tcp_route(node: Node) -> TCPRoute | None:
    f = node.fields()
    if f is None:
        return None
    matches = [_tcp_match(m) for m in common.items(f, "match")]
    route = _l4_routes(f, "TCP")
    f.finish()
    return TCPRoute(tuple(m for m in matches if m), route)


def _tls_route(node: Node, vs_hosts: tuple[str, ...]) -> TLSRoute | None:
    f = node.fields()
    if f is None:
        return None
    match_nodes = common.items(f, "match")
    if not match_nodes:
        node.error("a TLS route needs at least one match (with sniHosts)")
    matches = [_tls_match(m, vs_hosts) for m in match_nodes]
    route = _l4_routes(f, "TLS")
    f.finish()
    return TLSRoute(tuple(m for m in matches if m), route)


def _has_match(item: Node) -> bool:
    if not isinstance(item.node, yaml.MappingNode):
        return True  # not a rule at all: reported by its parser
    return any(
        k.value == "match" and isinstance(v, yaml.SequenceNode) and bool(v.value)
        for k, v in item.node.value
    )


def _warn_unreachable(items: list[Node]) -> None:
    """Istio's analysis: rules after a rule without matches are never used."""
    catch_all: int | None = None
    for i, item in enumerate(items):
        if catch_all is not None:
            item.warn(f"rule never used: rule #{catch_all} has no match and takes every request")
        elif not _has_match(item):
            catch_all = i


def parse_virtual_service(meta: ObjectMeta, root: Fields) -> VirtualService | None:
    node = root.require("spec")
    root.finish(frozenset({"status"}))
    spec = None if node is None else node.fields()
    if spec is None or node is None:
        return None
    gateways = common.opt(spec, "gateways", common.gateway_names) or ()
    gateway_bound = bool(gateways) and MESH not in gateways
    hosts = _hosts(spec, gateway_bound)
    http_items, tcp_items, tls_items = (common.items(spec, k) for k in ("http", "tcp", "tls"))
    http = [http_route(n) for n in http_items]
    tcp = [_tcp_route(n) for n in tcp_items]
    tls = [_tls_route(n, hosts) for n in tls_items]
    export = common.opt(spec, "exportTo", common.export_to) or ()
    spec.finish()
    if not (http_items or tcp_items or tls_items):
        node.error("a virtual service needs http, tcp or tls routes")
    for items in (http_items, tcp_items, tls_items):
        _warn_unreachable(items)
    return VirtualService(
        meta,
        hosts,
        gateways,
        tuple(r for r in http if r),
        tuple(r for r in tls if r),
        tuple(r for r in tcp if r),
        export,
    )
