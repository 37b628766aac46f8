"""Gateway servers at L4: which VirtualServices bind to a server, and their tls/tcp routes.

Theory of operation (Istio's gateway binding): a VirtualService applies to a Gateway server when
its `gateways` name the Gateway ("name" in the VirtualService's own namespace, or "ns/name") and
the server's `hosts` admit it: a server host is "ns/host" ("*/" or no prefix: any namespace, "./":
the Gateway's namespace) and the VirtualService must live in that namespace and have a host that
intersects the host part (wildcards on either side). HTTP routes of bound VirtualServices are the
route builder's (`RouteBuilder.gateway_route_config`); here are the L4 ones. A PASSTHROUGH TLS
server gets one filter chain per `tls` route, matching the SNI names its `sniHosts` share with the
server's hosts, relaying to the route's (weighted) destinations. A TCP server, or a TLS server
terminated here, relays to the first `tcp` route that matches its port. Destinations resolve
through the route builder (`RouteBuilder.cluster`: Istio's short names, ports and subsets) and
matches are checked with the HTTP routes' rules (`match_applies`: port, gateways, source).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sidecar.config.resources_routing import (
    Gateway,
    GatewayServer,
    L4MatchAttributes,
    RouteDestination,
    TLSMatchAttributes,
    VirtualService,
)
from sidecar.config.snapshot import FilterChain, FilterChainMatch, TcpProxy, Workload
from sidecar.config.translate_http_route import (
    Binding,
    Destinations,
    binds,
    match_applies,
    weighted,
)

ServerRef = tuple[Gateway, GatewayServer]


def gateway_key(gw: Gateway) -> str:
    """ "ns/name", as VirtualServices and the route builder name a Gateway."""
    return f"{gw.meta.namespace}/{gw.meta.name}"


def split_server_host(host: str, gw_namespace: str) -> tuple[str, str]:
    """ "ns/host" -> (namespace or "*", host); "./host" is the Gateway's namespace."""
    ns, _, name = host.rpartition("/")
    if ns == ".":
        ns = gw_namespace
    return ns or "*", name


def gateway_domains(host: str, port: int) -> tuple[str, ...]:
    """A gateway virtual host's domains, as Istio writes them: a name with any port (the Host of
    a client behind a load balancer or a NodePort carries that port), a wildcard name with the
    server's port only (Envoy allows one wildcard per domain), "*" alone."""
    if host == "*":
        return ("*",)
    return (host, f"{host}:{port}" if host.startswith("*") else f"{host}:*")


def host_intersection(a: str, b: str) -> str | None:
    """The more specific of two host patterns when one covers the other, else None."""
    a, b = a.lower(), b.lower()
    if a == b or b == "*":
        return a
    if a == "*":
        return b
    if b.startswith("*.") and a.endswith(b[1:]) and len(a) >= len(b):
        return a
    if a.startswith("*.") and b.endswith(a[1:]) and len(b) >= len(a):
        return b
    return None


def server_admits(vs: VirtualService, ref: ServerRef) -> list[str]:
    """The server host names (host parts) this VirtualService may serve; [] if none."""
    gw, server = ref
    out: list[str] = []
    for written in server.hosts:
        ns, host = split_server_host(written, gw.meta.namespace)
        if ns not in ("*", vs.meta.namespace):
            continue
        if any(host_intersection(h, host) is not None for h in vs.hosts):
            out.append(host)
    return out


@dataclass
class GatewayL4:
    """Builds the L4 side of gateway servers from the VirtualServices bound to them."""

    virtual_services: Sequence[VirtualService]
    dests: Destinations
    workload: Workload

    def bound(self, ref: ServerRef) -> list[tuple[VirtualService, list[str]]]:
        """Bound VirtualServices (in name order) with the server hosts each may serve."""
        key = gateway_key(ref[0])
        out = []
        for vs in self.virtual_services:
            if binds(vs.gateways, vs.meta.namespace, key):
                hosts = server_admits(vs, ref)
                if hosts:
                    out.append((vs, hosts))
        return out

    def _applies(
        self, m: L4MatchAttributes | TLSMatchAttributes, vs: VirtualService, ref: ServerRef
    ) -> bool:
        b = Binding(self.workload, ref[1].port.number, gateway_key(ref[0]))
        return match_applies(m, b, vs.meta.namespace)

    def passthrough_chains(self, name: str, refs: Iterable[ServerRef]) -> list[FilterChain]:
        """One chain per tls route, by SNI (the names its sniHosts share with the server's)."""
        chains: list[FilterChain] = []
        taken: set[str] = set()
        for ref in refs:
            for vs, hosts in self.bound(ref):
                for i, route in enumerate(vs.tls):
                    names = [
                        n
                        for m in route.match
                        if self._applies(m, vs, ref)
                        for n in _intersections(m.sni_hosts, hosts)
                    ]
                    fresh = sorted({n for n in names if n not in taken})
                    tcp = self.tcp_proxy(vs, f"spec.tls[{i}].route", route.route, ref)
                    if not fresh or tcp is None:
                        continue
                    taken.update(fresh)
                    sni = () if "*" in fresh else tuple(fresh)  # "*": any name
                    match = FilterChainMatch(transport_protocol="tls", server_names=sni)
                    label = f"{name}_{vs.meta.namespace}_{vs.meta.name}_tls{i}"
                    chains.append(FilterChain(label, match, tcp))
        return chains

    def tcp_filter(self, refs: Iterable[ServerRef]) -> TcpProxy | None:
        """The first tcp route of the bound VirtualServices that applies to the server."""
        for ref in refs:
            for vs, _ in self.bound(ref):
                for i, route in enumerate(vs.tcp):
                    if route.match and not any(self._applies(m, vs, ref) for m in route.match):
                        continue
                    tcp = self.tcp_proxy(vs, f"spec.tcp[{i}].route", route.route, ref)
                    if tcp is not None:
                        return tcp
        return None

    def tcp_proxy(
        self, vs: VirtualService, path: str, dests: Sequence[RouteDestination], ref: ServerRef
    ) -> TcpProxy | None:
        items = [(d.destination, d.weight, None) for d in dests]
        split = weighted(self.dests, vs, path, ref[1].port.number, items)
        if not split:
            return None
        first = split[0].cluster
        return TcpProxy(first, first, weighted_clusters=split if len(split) > 1 else ())


def _intersections(sni_hosts: Iterable[str], hosts: Iterable[str]) -> list[str]:
    out = []
    for sni in sni_hosts:
        for h in hosts:
            found = host_intersection(sni, h)
            if found is not None:
                out.append(found)
    return out
