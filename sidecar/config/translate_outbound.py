"""Outbound: clusters, route configs and listeners for traffic the workload sends.

Theory of operation (Istio's sidecar outbound): every visible service port gets a cluster
`outbound|PORT||HOST`. The capture listener `virtualOutbound` picks a filter chain by the original
destination: HTTP-ish ports share one chain per port (no address match) whose HTTP connection
manager routes by Host through route config "PORT" (one virtual host per service on that port);
TCP ports get a chain per service matching its VIP (or, headless, its endpoint IPs) that relays to
its cluster. Auto ports (no protocol in the name) get both, on the VIP match, told apart at
runtime by protocol detection. Unmatched traffic goes to PassthroughCluster (ALLOW_ANY) or
BlackHoleCluster (REGISTRY_ONLY). Sidecar egress entries with a `bind` get their own explicit
listener.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from sidecar.bootstrap import Bootstrap, OutboundPolicy
from sidecar.config.protocol import port_protocol
from sidecar.config.registry import MeshPort, MeshService, Notes
from sidecar.config.resources import EgressListener, Sidecar
from sidecar.config.scope import Scope
from sidecar.config.snapshot import (
    BLACKHOLE_CLUSTER,
    HTTP_DETECTED,
    PASSTHROUGH_CLUSTER,
    VIRTUAL_OUTBOUND,
    Cluster,
    Direction,
    FilterChain,
    FilterChainMatch,
    HttpConnectionManager,
    IPNetwork,
    Listener,
    Protocol,
    Route,
    RouteMatch,
    TcpProxy,
    VirtualHost,
)

if TYPE_CHECKING:
    from sidecar.config.translate_routes import L4Route

ServicePort = tuple[MeshService, MeshPort]
ChainKey = tuple[int, tuple[IPNetwork, ...], tuple[str, ...]]  # port, prefixes, server names
L4Routes = Callable[[MeshService, MeshPort], "list[L4Route]"]


def cluster_name(svc: MeshService, port: MeshPort) -> str:
    return f"outbound|{port.port}||{svc.hostname}"


def visible_ports(
    services: Iterable[MeshService], scope: Scope, egress: EgressListener | None = None
) -> list[ServicePort]:
    """(service, port) pairs the workload may reach, in hostname order."""
    return [(s, p) for s in services for p in s.ports if scope.visible(s, p.port, egress)]


def outbound_cluster(svc: MeshService, port: MeshPort) -> Cluster:
    return Cluster(
        name=cluster_name(svc, port),
        discovery=svc.discovery,
        protocol=port.protocol,
        endpoints=port.endpoints,
        dns_name=port.dns_name,
        dns_port=port.dns_port,
        service=svc.hostname,
        service_namespace=svc.namespace,
    )


def domains(svc: MeshService, port: int, proxy_ns: str) -> tuple[str, ...]:
    """The Host values that reach a service port: its names (short ones for Kubernetes
    Services, the bare name only from its own namespace) and VIPs, with and without the port."""
    names: list[str] = [svc.hostname]
    if svc.name:  # a Kubernetes Service: the shorter names its clients use
        if svc.namespace == proxy_ns:
            names.append(svc.name)
        ns = f"{svc.name}.{svc.namespace}"
        names += [ns, f"{ns}.svc"]
    names += svc.vips
    out: list[str] = []
    for n in names:
        # An IPv6 VIP appears in a Host header only in brackets, with or without the port.
        bracketed = f"[{n}]" if ":" in n else n
        out += [bracketed, f"{bracketed}:{port}"]
    return tuple(out)


def default_vhost(svc: MeshService, port: int, proxy_ns: str) -> VirtualHost:
    """A service without a VirtualService: every request to its cluster on this port."""
    cluster = f"outbound|{port}||{svc.hostname}"
    return VirtualHost(
        f"{svc.hostname}:{port}",
        domains(svc, port, proxy_ns),
        (Route("default", RouteMatch(), cluster=cluster, operation=f"{svc.hostname}:{port}/*"),),
    )


ALLOW_ANY_VHOST = VirtualHost(
    "allow_any", ("*",), (Route("allow_any", RouteMatch(), PASSTHROUGH_CLUSTER),)
)


def serves_http(protocol: Protocol) -> bool:
    """Declared HTTP, or auto-detected (which may turn out to be HTTP): needs routes."""
    return protocol.is_http or protocol is Protocol.UNSUPPORTED


def _http_protocol(pairs: list[ServicePort], port: int) -> Protocol:
    protos = {p.protocol for _, p in pairs if p.port == port and p.protocol.is_http}
    return protos.pop() if len(protos) == 1 else Protocol.HTTP


def _prefixes(svc: MeshService, port: MeshPort) -> tuple[IPNetwork, ...] | None:
    """Destination prefixes for a TCP chain: VIPs, or endpoint IPs when headless; () = any."""
    addresses = [e.address for e in port.endpoints] if svc.headless else list(svc.vips)
    nets: list[IPNetwork] = []
    for a in addresses:
        try:
            nets.append(ipaddress.ip_network(a, strict=False))
        except ValueError:
            continue
    if svc.headless and not nets:
        return None  # headless with no endpoints: nothing to match
    return tuple(sorted(set(nets), key=str))


def auto_chains(
    name: str,
    port: int | None,
    prefixes: tuple[IPNetwork, ...],
    hcm: HttpConnectionManager,
    tcp: TcpProxy,
) -> tuple[FilterChain, ...]:
    """An auto port's chains, as Istio builds them for plain text (permissive without mTLS).

    Detected HTTP in clear -> the HCM; anything else in clear -> TCP; TLS -> TCP. All three share
    (port, prefixes), so the protocol decides among them and nothing else does.
    """
    return (
        FilterChain(
            f"{name}_http", FilterChainMatch(port, prefixes, "raw_buffer", HTTP_DETECTED), hcm
        ),
        FilterChain(name, FilterChainMatch(port, prefixes, "raw_buffer"), tcp),
        FilterChain(f"{name}_tls", FilterChainMatch(port, prefixes, "tls"), tcp),
    )


def outbound_chains(
    pairs: list[ServicePort], notes: Notes, l4_routes: L4Routes | None = None
) -> list[FilterChain]:
    """virtualOutbound's filter chains for the visible service ports.

    An auto (UNSUPPORTED) port gets `auto_chains` on the same (port, prefixes): connections
    detected as HTTP go to an HCM routing through the port's route config, the rest to the TCP
    relay. The HTTP chain carries the TCP one's prefixes (VIPs) so that the longest-prefix step
    cannot split them before the protocol is looked at. `l4_routes` gives a non-HTTP port's
    VirtualService tcp/tls routes: a catch-all one replaces the service's relay, TLS ones get a
    chain per route matching their SNI names, destinationSubnets ones a chain on those subnets.
    """
    chains: dict[ChainKey, tuple[FilterChain, ...]] = {}
    for svc, p in pairs:
        if p.protocol.is_http:
            key: ChainKey = (p.port, (), ())
            taken = chains.get(key)
            if taken and isinstance(taken[0].filter, HttpConnectionManager):
                continue
            hcm = _outbound_hcm(pairs, p.port)
            chains[key] = (FilterChain(f"0.0.0.0_{p.port}", FilterChainMatch(p.port), hcm),)
            continue
        prefixes = _prefixes(svc, p)
        if prefixes is None:
            continue
        name = cluster_name(svc, p)
        label = f"{_label(prefixes)}_{p.port}"
        routes = l4_routes(svc, p) if l4_routes is not None else []
        tcp = TcpProxy(name, name)
        for r in routes:
            if r.catch_all:
                tcp = r.proxy
                continue
            nets = prefixes if r.prefixes is None else r.prefixes
            sni = r.server_names
            match = FilterChainMatch(p.port, nets, "tls" if sni else "", (), sni)
            chain_name = f"{_label(nets)}_{p.port}" + (f"_{','.join(sni)}" if sni else "")
            chains.setdefault((p.port, nets, sni), (FilterChain(chain_name, match, r.proxy),))
        key = (p.port, prefixes, ())
        if key in chains:
            notes.warn(
                None,
                "",
                f"{name}: port {p.port} already taken by "
                f"{min(c.name for c in chains[key])}; not reachable through capture",
            )
            continue
        if p.protocol is Protocol.UNSUPPORTED:
            hcm = _outbound_hcm(pairs, p.port)
            chains[key] = auto_chains(label, p.port, prefixes, hcm, tcp)
        else:
            chains[key] = (FilterChain(label, FilterChainMatch(p.port, prefixes), tcp),)
    ordered = sorted(chains, key=lambda k: (k[0], [str(n) for n in k[1]], k[2]))
    return [c for k in ordered for c in chains[k]]


def _label(prefixes: tuple[IPNetwork, ...]) -> str:
    return ",".join(str(n) for n in prefixes) or "0.0.0.0"


def _outbound_hcm(pairs: list[ServicePort], port: int) -> HttpConnectionManager:
    return HttpConnectionManager(str(port), f"outbound_0.0.0.0_{port}", _http_protocol(pairs, port))


def default_chain(policy: OutboundPolicy) -> FilterChain:
    target = PASSTHROUGH_CLUSTER if policy is OutboundPolicy.ALLOW_ANY else BLACKHOLE_CLUSTER
    return FilterChain("PassthroughFilterChain", FilterChainMatch(), TcpProxy(target, target))


def virtual_outbound(
    boot: Bootstrap,
    pairs: list[ServicePort],
    policy: OutboundPolicy,
    notes: Notes,
    l4_routes: L4Routes | None = None,
) -> Listener:
    return Listener(
        name=VIRTUAL_OUTBOUND,
        address=boot.bind_address,
        port=boot.outbound_port,
        direction=Direction.OUTBOUND,
        use_original_dst=True,
        filter_chains=tuple(outbound_chains(pairs, notes, l4_routes)),
        default_filter_chain=default_chain(policy),
        detection_timeout=boot.protocol_detection_timeout,
    )


def egress_listener(
    sidecar: Sidecar,
    index: int,
    entry: EgressListener,
    pairs: list[ServicePort],
    notes: Notes,
    l4_routes: L4Routes | None = None,
) -> Listener | None:
    """An egress entry with a port and a bind: its own listener on bind:port. A TCP one applies
    the service's VirtualService tcp/tls routes (`bound_chains`), as the capture listener does."""
    port = entry.port
    if port is None:
        return None
    path = f"spec.egress[{index}]"
    name = f"{entry.bind}_{port.number}"
    on_port = [(s, p) for s, p in pairs if p.port == port.number]
    explicit = port.protocol or port.name
    is_http = (
        port_protocol(port.protocol, port.name).is_http
        if explicit
        else any(p.protocol.is_http for _, p in on_port)
    )
    chains: tuple[FilterChain, ...]
    if is_http:
        hcm = HttpConnectionManager(str(port.number), name, _http_protocol(on_port, port.number))
        chains = (FilterChain(name, FilterChainMatch(), hcm),)
    else:
        if len(on_port) != 1:
            notes.warn(
                sidecar,
                path,
                f"a TCP egress listener needs exactly one service on port "
                f"{port.number} among its hosts, found {len(on_port)}; listener skipped",
            )
            return None
        cluster = cluster_name(*on_port[0])
        routes = l4_routes(*on_port[0]) if l4_routes is not None else []
        chains = bound_chains(name, TcpProxy(cluster, cluster), routes)
    return Listener(name, entry.bind, port.number, Direction.OUTBOUND, False, chains)


def bound_chains(name: str, tcp: TcpProxy, routes: list[L4Route]) -> tuple[FilterChain, ...]:
    """A bound TCP listener's chains: the connection's destination is the bind address, so a
    route's destinationSubnets match against it, SNI routes get a TLS chain by server name, a
    catch-all tcp route replaces the service's relay (which takes whatever matches nothing)."""
    chains: dict[tuple[tuple[IPNetwork, ...], tuple[str, ...]], FilterChain] = {}
    for r in routes:
        if r.catch_all:
            tcp = r.proxy
            continue
        nets, sni = r.prefixes or (), r.server_names
        label = f"{name}_{_label(nets)}" + (f"_{','.join(sni)}" if sni else "")
        match = FilterChainMatch(None, nets, "tls" if sni else "", (), sni)
        chains.setdefault((nets, sni), FilterChain(label, match, r.proxy))
    chains.setdefault(((), ()), FilterChain(name, FilterChainMatch(), tcp))
    return tuple(chains.values())
