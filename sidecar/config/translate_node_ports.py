"""Router mode: NodePort and LoadBalancer Services, reached on the node port or the LB address.

Theory of operation: what kube-proxy and a cloud load balancer do for these Service types, a
router-mode proxy does with listeners. Every TCP port of a NodePort or LoadBalancer Service gets
a listener on the proxy's bind address at the port's `nodePort` (when written: Kubernetes
allocates it otherwise, and the config cannot know it), and a LoadBalancer Service one more on
each of its addresses (`spec.loadBalancerIP`, `status.loadBalancer.ingress[].ip`) at the service
port. Both forward to the service port's cluster `outbound|PORT||HOST`, which router mode builds
for every visible service: HTTP ports through an HTTP connection manager routing everything to
it, opaque ports through a TCP relay, and auto ports (no protocol in the name) both, told apart by
protocol detection. A listener address that overlaps one already taken (a Gateway server's, or
another Service's) is warned about and skipped: Gateways win.
"""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.bootstrap import Bootstrap
from sidecar.config.protocol import port_protocol
from sidecar.config.registry import Notes
from sidecar.config.resources import MeshConfig, Service, ServicePort, ServiceType
from sidecar.config.snapshot import (
    Direction,
    FilterChain,
    FilterChainMatch,
    HttpConnectionManager,
    Listener,
    Protocol,
    Route,
    RouteConfig,
    RouteMatch,
    TcpProxy,
    VirtualHost,
)
from sidecar.config.translate_outbound import auto_chains

_WILDCARDS = ("0.0.0.0", "::", "")
Address = tuple[str, int]


def overlaps(a: Address, b: Address) -> bool:
    """Two listen addresses that cannot both be bound: same port, same or a wildcard address."""
    return a[1] == b[1] and (a[0] == b[0] or a[0] in _WILDCARDS or b[0] in _WILDCARDS)


def service_addresses(svc: Service, sp: ServicePort, bind: str) -> list[Address]:
    """Where a service port is reached in router mode: node port, then LB addresses."""
    out: list[Address] = []
    if sp.node_port is not None:
        out.append((bind, sp.node_port))
    out += [(ip, sp.port) for ip in svc.lb_addresses]
    return out


def node_port_config(
    mesh: MeshConfig, boot: Bootstrap, taken: Iterable[Address], notes: Notes
) -> tuple[list[Listener], dict[str, RouteConfig]]:
    """Listeners (and their route configs) for the NodePort and LoadBalancer Services."""
    used = list(taken)
    listeners: list[Listener] = []
    routes: dict[str, RouteConfig] = {}
    for svc in mesh.of(Service):
        if svc.type not in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER):
            continue
        host = f"{svc.meta.name}.{svc.meta.namespace}.svc.{boot.cluster_domain}"
        for i, sp in enumerate(svc.ports):
            path = f"spec.ports[{i}]"
            if sp.protocol != "TCP":
                notes.warn(svc, path, f"{sp.protocol} is not proxied; port {sp.port} not served")
                continue
            addresses = service_addresses(svc, sp, boot.bind_address)
            if sp.node_port is None and svc.type is ServiceType.NODE_PORT:
                notes.warn(svc, path, f"port {sp.port}: no nodePort written; not served")
            fresh: list[Address] = []
            for addr in addresses:
                clash = next((u for u in used if overlaps(u, addr)), None)
                if clash is not None:
                    notes.warn(
                        svc,
                        path,
                        f"{addr[0]}:{addr[1]} is already served ({clash[0]}:{clash[1]}); "
                        "not served for this Service",
                    )
                    continue
                used.append(addr)
                fresh.append(addr)
            if not fresh:
                continue
            cluster = f"outbound|{sp.port}||{host}"
            proto = port_protocol(sp.app_protocol, sp.name)
            route_name = f"{host}:{sp.port}"
            if proto.is_http or proto is Protocol.UNSUPPORTED:
                routes[route_name] = _route_config(route_name, cluster)
            for addr in fresh:
                listeners.append(_listener(addr, proto, route_name, cluster, boot))
    return listeners, routes


def _route_config(name: str, cluster: str) -> RouteConfig:
    route = Route("default", RouteMatch(prefix="/"), cluster=cluster)
    return RouteConfig(name, (VirtualHost(name, ("*",), (route,)),))


def _listener(
    addr: Address, proto: Protocol, route_name: str, cluster: str, boot: Bootstrap
) -> Listener:
    name = f"{addr[0]}_{addr[1]}"
    stat = f"outbound_{name}"
    chains: tuple[FilterChain, ...]
    tcp = TcpProxy(cluster, stat)
    if proto.is_http:
        hcm = HttpConnectionManager(route_name, stat, proto)
        chains = (FilterChain(name, FilterChainMatch(), hcm),)
    elif proto is Protocol.UNSUPPORTED:
        hcm = HttpConnectionManager(route_name, stat, Protocol.HTTP)
        chains = auto_chains(name, None, (), hcm, tcp)
    else:
        chains = (FilterChain(name, FilterChainMatch(), tcp),)
    return Listener(
        name,
        addr[0],
        addr[1],
        Direction.OUTBOUND,
        False,
        chains,
        detection_timeout=boot.protocol_detection_timeout,
        freebind=True,  # a load-balancer address is usually routed to the node, not on it
    )
