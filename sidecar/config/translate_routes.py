"""VirtualServices -> route configs (sidecar outbound and gateways) and L4 (TCP/TLS) routes.

Theory of operation (Istio's BuildSidecarOutboundVirtualHosts and gateway route building): a
`RouteBuilder` is made once per translate. For the sidecar it takes the VirtualServices bound to
"mesh" that are exported to the proxy's namespace and admitted by its Sidecar egress hosts, in
namespace/name order (Istio: creation order). Each VS host is resolved (a short name in the VS's
namespace) and split into registry services (exact, or every service a wildcard covers) and
hosts without a service. Route config "PORT" gets, per service HTTP port, one virtual host whose
routes are only the VS's: a request none of them matches gets 404 NR. A host without a service
gets a virtual host with its own name on the ports of the VS's services, or on port 80 when the
VS has none (as Istio does). The first VS to claim a host wins; later ones are warned about (Istio
merges only for gateways). Services without a VS keep the default route to their cluster.

Gateways (`gateway_route_config`): the VSes naming a gateway, intersected with the server's
hosts; VSes sharing a host are merged, their routes appended in order, as Istio does.
TCP/TLS (`tcp_routes`): the first VS covering a service with tcp[] or tls[] routes gives
`L4Route`s; translate_outbound turns them into filter chains.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from sidecar.bootstrap import OutboundPolicy
from sidecar.config import translate_outbound as outbound
from sidecar.config.registry import MeshPort, MeshService, Notes, exported_to
from sidecar.config.resources import EgressListener, MeshConfig
from sidecar.config.resources_routing import (
    Destination,
    GatewayServer,
    RouteDestination,
    VirtualService,
)
from sidecar.config.scope import Scope
from sidecar.config.snapshot import (
    IPNetwork,
    Protocol,
    Redirect,
    Route,
    RouteConfig,
    RouteMatch,
    TcpProxy,
    VirtualHost,
    Workload,
)
from sidecar.config.translate_gateway_l4 import gateway_domains
from sidecar.config.translate_http_route import (
    MESH,
    Binding,
    binds,
    http_routes,
    match_applies,
    weighted,
)

SubsetClusters = Callable[[str, int, str], str | None]


def resolve_host(host: str, namespace: str, domain: str) -> str:
    """Istio's short-name rule: a name without a dot is a Service in `namespace`."""
    if host == "*" or "." in host or ":" in host:
        return host.lower()
    return f"{host.lower()}.{namespace}.svc.{domain}"


def host_covers(pattern: str, host: str) -> bool:
    """`pattern` ("*", "*.suffix" or exact) matches `host` (which may be a wildcard itself)."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) or host == pattern
    return pattern == host


@dataclass(frozen=True, slots=True)
class L4Route:
    """One TCP or TLS route of a service port: where it matches and the relay it uses."""

    proxy: TcpProxy
    prefixes: tuple[IPNetwork, ...] | None = None  # destinationSubnets; None: the service's
    server_names: tuple[str, ...] = ()  # TLS SNI; () = a TCP route

    @property
    def catch_all(self) -> bool:
        return self.prefixes is None and not self.server_names


class RouteBuilder:
    """Builds route configs and L4 routes from the VirtualServices, for one proxy."""

    def __init__(
        self,
        mesh: MeshConfig,
        services: tuple[MeshService, ...],
        workload: Workload,
        scope: Scope,
        domain: str,
        notes: Notes,
        subset_clusters: SubsetClusters,
    ) -> None:
        self.workload = workload
        self.scope = scope
        self.domain = domain
        self.notes = notes
        self.subset_clusters = subset_clusters
        self.vses = mesh.of(VirtualService)
        self._l4_vses = tuple(vs for vs in self.vses if vs.tcp or vs.tls)
        self._hosts = {
            vs.ref: [resolve_host(h, vs.meta.namespace, domain) for h in vs.hosts]
            for vs in self.vses
        }
        self.by_host: dict[str, MeshService] = {}
        for s in services:
            if s.visible_from(workload.namespace):
                self.by_host.setdefault(s.hostname, s)
        self._warned: set[tuple[str, str, str]] = set()

    # --- shared -------------------------------------------------------------------------------

    def warn(self, vs: VirtualService, path: str, reason: str) -> None:
        """Warn once per (object, path, reason), however many ports translate the VS."""
        key = (vs.ref, path, reason)
        if key not in self._warned:
            self._warned.add(key)
            self.notes.warn(vs, path, reason)

    def hosts(self, vs: VirtualService) -> list[str]:
        """The VS's hosts, short names resolved in its namespace."""
        return self._hosts[vs.ref]

    def cluster(self, dest: Destination, vs: VirtualService, port: int, path: str) -> str:
        """outbound|PORT|SUBSET|HOST for a destination; unknown ones warned, still named."""
        host = resolve_host(dest.host, vs.meta.namespace, self.domain)
        svc = self.by_host.get(host)
        if svc is None:
            number = dest.port or port
            self.warn(vs, path, f"host {host!r} is not a known service; requests get 503 NC")
        else:
            ports = [p.port for p in svc.ports]
            number = dest.port or (ports[0] if len(ports) == 1 else port)
            if number not in ports:
                self.warn(vs, path, f"{host} has no port {number}; requests get 503 NC")
        if not dest.subset:
            return f"outbound|{number}||{host}"
        name = self.subset_clusters(host, number, dest.subset) if svc is not None else None
        if name is None:
            if svc is not None:
                reason = f"no subset {dest.subset!r} of {host}; requests get 503 NC"
                self.warn(vs, path, reason)
            name = f"outbound|{number}|{dest.subset}|{host}"
        return name

    def _mesh_vses(
        self, egress: EgressListener | None, vses: Iterable[VirtualService]
    ) -> list[VirtualService]:
        """VSes bound to the mesh, exported to the proxy, admitted by the Sidecar's egress."""
        ns = self.scope.namespace
        scoped = self.scope.sidecar is not None and bool(self.scope.sidecar.egress)
        out = []
        for vs in vses:
            if not binds(vs.gateways, vs.meta.namespace, MESH):
                continue
            if not exported_to(vs.export_to, vs.meta.namespace, ns):
                continue
            if scoped and (egress is None or not self._admitted(egress, vs)):
                continue
            out.append(vs)
        return out

    def _admitted(self, egress: EgressListener, vs: VirtualService) -> bool:
        """Sidecar egress "ns/host": ns is the VS's namespace ("." the proxy's, "*" any)."""
        for pattern in egress.hosts:
            ns, _, host = pattern.partition("/")
            ns = self.scope.namespace if ns == "." else ns
            if ns != "*" and ns != vs.meta.namespace:
                continue
            if any(host_covers(host, h) or host_covers(h, host) for h in self.hosts(vs)):
                return True
        return False

    def _split(
        self, vs: VirtualService, services: dict[str, MeshService]
    ) -> tuple[list[MeshService], list[str]]:
        """The VS's hosts as registry services (in `services`) and hosts without one."""
        found: dict[str, MeshService] = {}
        others: list[str] = []
        for h in self.hosts(vs):
            if "*" not in h:
                if h in services:
                    found.setdefault(h, services[h])
                else:
                    others.append(h)
                continue
            covered = [s for name, s in services.items() if host_covers(h, name)]
            for s in covered:
                found.setdefault(s.hostname, s)
            if not covered:
                others.append(h)
        return list(found.values()), list(dict.fromkeys(others))

    def _claim(self, owners: dict[str, VirtualService], host: str, vs: VirtualService) -> bool:
        first = owners.setdefault(host, vs)
        if first is not vs:
            self.warn(
                vs,
                "spec.hosts",
                f"{host} is already routed by {first.ref} (the first by namespace/name wins; "
                "Istio merges VirtualServices only on gateways); ignored for this host",
            )
        return first is vs

    # --- sidecar HTTP -------------------------------------------------------------------------

    def http_route_config(
        self,
        port: int,
        pairs: list[outbound.ServicePort],
        policy: OutboundPolicy,
        egress: EgressListener | None = None,
    ) -> RouteConfig:
        """Route config "PORT": VS virtual hosts, default ones for services without a VS,
        then allow_any. `egress`: the Sidecar egress entry of an explicit listener."""
        ns = self.scope.namespace
        services = {s.hostname: s for s, _ in pairs}
        http_ports: dict[str, set[int]] = {}
        for s, p in pairs:
            if outbound.serves_http(p.protocol):
                http_ports.setdefault(s.hostname, set()).add(p.port)
        on_port = {s.hostname: s for s, _ in pairs if port in http_ports.get(s.hostname, ())}
        claimed: dict[str, VirtualHost] = {}
        extra: list[VirtualHost] = []
        owners: dict[str, VirtualService] = {}
        vses = (vs for vs in self.vses if vs.http)
        for vs in self._mesh_vses(egress or self.scope.egress_for(port), vses):
            svcs, others = self._split(vs, services)
            ports = set().union(*(http_ports.get(s.hostname, ()) for s in svcs)) or {80}
            if port not in ports:
                continue
            routes = tuple(http_routes(vs, Binding(self.workload, port), self))
            if not routes:
                continue  # nothing applies here: the services keep their default route
            for s in svcs:
                if s.hostname in on_port and self._claim(owners, s.hostname, vs):
                    name = f"{s.hostname}:{port}"
                    claimed[s.hostname] = VirtualHost(name, outbound.domains(s, port, ns), routes)
            for h in others:
                if self._claim(owners, h, vs):
                    extra.append(VirtualHost(f"{h}:{port}", _host_domains(h, port), routes))
        vhosts = [claimed.get(h) or outbound.default_vhost(s, port, ns) for h, s in on_port.items()]
        vhosts += extra
        if policy is OutboundPolicy.ALLOW_ANY:
            vhosts.append(outbound.ALLOW_ANY_VHOST)
        return RouteConfig(str(port), _dedupe_domains(vhosts))

    # --- gateways -----------------------------------------------------------------------------

    def gateway_route_config(
        self, name: str, port: int, servers: list[tuple[str, GatewayServer]]
    ) -> RouteConfig:
        """A gateway port's route config: one virtual host per host the bound VSes serve
        within the servers' hosts; VSes sharing a host merged in order."""
        merged: dict[str, list[Route]] = {}
        for gw, server in servers:
            gw_ns = gw.partition("/")[0]
            redirect = server.tls is not None and server.tls.https_redirect
            for vs in self.vses:
                if not vs.http or not binds(vs.gateways, vs.meta.namespace, gw):
                    continue
                if not exported_to(vs.export_to, vs.meta.namespace, gw_ns):
                    continue
                hosts = self._gateway_hosts(vs, server.hosts, gw_ns)
                if not hosts:
                    continue
                routes = http_routes(vs, Binding(self.workload, port, gw), self)
                if redirect:  # tls.httpsRedirect: every request is sent to https
                    to_https = Redirect(scheme="https", code=301)
                    routes = [Route("https_redirect", RouteMatch(), redirect=to_https)]
                for h in hosts:
                    merged.setdefault(h, []).extend(routes)
        vhosts = [
            VirtualHost(f"{h}:{port}", gateway_domains(h, port), tuple(routes))
            for h, routes in merged.items()
        ]
        if not vhosts:  # Istio: a blackhole virtual host; every request gets 404 NR
            vhosts = [VirtualHost(f"blackhole:{port}", ("*",), ())]
        return RouteConfig(name, _dedupe_domains(vhosts))

    def _gateway_hosts(
        self, vs: VirtualService, server_hosts: Iterable[str], gw_ns: str
    ) -> list[str]:
        """The VS hosts a server admits ("ns/host": ns the VS's namespace; "." the gateway's),
        each the narrower of the two when one is a wildcard."""
        out: list[str] = []
        for raw in server_hosts:
            ns, sep, pattern = raw.partition("/")
            if not sep:
                ns, pattern = "*", raw
            ns = gw_ns if ns == "." else ns
            if ns != "*" and ns != vs.meta.namespace:
                continue
            for h in self.hosts(vs):
                if host_covers(pattern, h):
                    out.append(h)
                elif host_covers(h, pattern):
                    out.append(pattern)
        return list(dict.fromkeys(out))

    # --- TCP / TLS ----------------------------------------------------------------------------

    def tcp_routes(self, svc: MeshService, port: MeshPort) -> list[L4Route]:
        """The tls[] and tcp[] routes of the first mesh VS covering the service port; [] when
        none applies (the service's own relay)."""
        tls_ok = port.protocol in (Protocol.TLS, Protocol.UNSUPPORTED)
        candidates = [
            vs
            for vs in self._mesh_vses(self.scope.egress_for(port.port), self._l4_vses)
            if (vs.tcp or (tls_ok and vs.tls))
            and any(host_covers(h, svc.hostname) for h in self.hosts(vs))
        ]
        if not candidates:
            return []
        vs = candidates[0]
        for other in candidates[1:]:
            self._claim({svc.hostname: vs}, svc.hostname, other)
        b = Binding(self.workload, port.port)
        ns = vs.meta.namespace
        out: list[L4Route] = []
        for i, tls in enumerate(vs.tls if tls_ok else ()):
            proxy = self._relay(vs, f"spec.tls[{i}].route", port.port, tls.route)
            for m in tls.match:
                if proxy is not None and m.sni_hosts and match_applies(m, b, ns):
                    nets = self._nets(vs, f"spec.tls[{i}]", m.destination_subnets)
                    out.append(L4Route(proxy, nets, tuple(h.lower() for h in m.sni_hosts)))
        for i, tcp in enumerate(vs.tcp):
            proxy = self._relay(vs, f"spec.tcp[{i}].route", port.port, tcp.route)
            entries = [m for m in tcp.match if match_applies(m, b, ns)]
            if proxy is None or (tcp.match and not entries):
                continue
            where = [self._nets(vs, f"spec.tcp[{i}]", m.destination_subnets) for m in entries]
            out += [L4Route(proxy, n) for n in where or [None]]
            if out[-1].catch_all:
                break  # later tcp routes are unreachable
        return out

    def _relay(
        self, vs: VirtualService, path: str, port: int, route: Sequence[RouteDestination]
    ) -> TcpProxy | None:
        split = weighted(self, vs, path, port, [(d.destination, d.weight, None) for d in route])
        if not split:
            return None
        first = split[0].cluster
        return TcpProxy(first, first, weighted_clusters=split if len(split) > 1 else ())

    def _nets(
        self, vs: VirtualService, path: str, subnets: Sequence[str]
    ) -> tuple[IPNetwork, ...] | None:
        nets: list[IPNetwork] = []
        for s in subnets:
            try:
                nets.append(ipaddress.ip_network(s, strict=False))
            except ValueError:
                self.warn(vs, f"{path}.match.destinationSubnets", f"{s!r} is not a CIDR block")
        return tuple(sorted(set(nets), key=str)) or None


def _host_domains(host: str, port: int) -> tuple[str, ...]:
    return ("*",) if host == "*" else (host, f"{host}:{port}")


def _dedupe_domains(vhosts: list[VirtualHost]) -> tuple[VirtualHost, ...]:
    """Each domain belongs to the first virtual host that lists it (Istio drops duplicates)."""
    seen: set[str] = set()
    out: list[VirtualHost] = []
    for vh in vhosts:
        domains = tuple(d for d in vh.domains if d not in seen)
        if domains:
            seen.update(domains)
            out.append(vh if domains == vh.domains else replace(vh, domains=domains))
    return tuple(out)
