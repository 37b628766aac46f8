"""Router mode: the listeners of a gateway proxy, from the Gateways that select it.

Theory of operation (Istio's gateway listeners): a proxy started with `--mode router` serves the
`servers` of every Gateway (any namespace) whose `selector` matches its workload's labels. It has
no capture listeners and no inbound side. Servers are merged by (bind address, port) into one
listener named "ADDRESS_PORT", in Gateway name order; the first server on a port decides what the
port is, and a later server of another kind on the same port is warned about and skipped:

- HTTP / HTTP2 / GRPC: an HTTP connection manager with route config "http.PORT", built by the
  route builder from the VirtualServices bound to the port's servers. A server with
  `tls.httpsRedirect` answers every request for its hosts with a 301 to https instead (Envoy's
  `require_tls: ALL`), ahead of the bound routes.
- HTTPS with tls SIMPLE / MUTUAL and certificate files: TLS terminated on the listener, then HTTP
  as above through route config "https.PORT". TLS with SIMPLE / MUTUAL: terminated, then the first
  bound `tcp` route. One certificate per listener: the first server's (TLS terminates before any
  filter chain is chosen); other certificates on the same port are warned about.
- TLS / HTTPS with PASSTHROUGH: not terminated; a filter chain per bound `tls` route, chosen by
  SNI (`translate_gateway_l4`).
- TCP (and MONGO and other opaque protocols): the first bound `tcp` route.

`credentialName` (Kubernetes secrets over SDS) and the ISTIO_MUTUAL / AUTO_PASSTHROUGH modes are
the security work's: such servers are warned about and skipped. NodePort and LoadBalancer
Services are served next to the Gateways (`translate_node_ports`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol as TypingProtocol

from sidecar.bootstrap import Bootstrap
from sidecar.config.registry import Notes
from sidecar.config.resources import MeshConfig, ServerTls, labels_match
from sidecar.config.resources_routing import (
    Gateway,
    GatewayServer,
    GatewayTls,
    VirtualService,
)
from sidecar.config.snapshot import (
    Direction,
    FilterChain,
    FilterChainMatch,
    HttpConnectionManager,
    Listener,
    Protocol,
    Redirect,
    Route,
    RouteConfig,
    RouteMatch,
    TlsContext,
    VirtualHost,
    Workload,
)
from sidecar.config.translate_gateway_l4 import (
    GatewayL4,
    ServerRef,
    gateway_domains,
    gateway_key,
    split_server_host,
)
from sidecar.config.translate_http_route import Destinations
from sidecar.config.translate_inbound import tls_context
from sidecar.config.translate_node_ports import node_port_config


class GatewayRoutes(Destinations, TypingProtocol):
    """What router mode needs from the route builder (`RouteBuilder` in translate_routes.py)."""

    def gateway_route_config(
        self, name: str, port: int, servers: list[tuple[str, GatewayServer]]
    ) -> RouteConfig: ...


class ServerKind(enum.Enum):
    """What a port of the gateway does with its connections."""

    HTTP = "http"
    HTTPS = "https"  # TLS terminated, then HTTP
    TLS = "tls"  # TLS terminated, then TCP routes
    PASSTHROUGH = "passthrough"  # TLS by SNI, not terminated
    TCP = "tcp"


_HTTP = {"HTTP": Protocol.HTTP, "HTTP2": Protocol.HTTP2, "GRPC": Protocol.GRPC}
_OPAQUE = ("TCP", "MONGO", "MYSQL", "REDIS")


@dataclass
class RouterConfig:
    """What router mode adds to the snapshot: listeners and their route configs."""

    listeners: list[Listener] = field(default_factory=list)
    routes: dict[str, RouteConfig] = field(default_factory=dict)


@dataclass
class _Port:
    address: str
    number: int
    kind: ServerKind
    refs: list[ServerRef]

    @property
    def name(self) -> str:
        return f"{self.address}_{self.number}"


def selected_gateways(mesh: MeshConfig, workload: Workload) -> list[Gateway]:
    """The Gateways whose selector matches the workload's labels (any namespace, name order)."""
    return [gw for gw in mesh.of(Gateway) if labels_match(gw.selector, workload.labels)]


def server_kind(server: GatewayServer) -> ServerKind | str:
    """The server's kind, or why it cannot be served."""
    proto = server.port.protocol.upper()
    tls = server.tls
    if proto in _HTTP:
        return ServerKind.HTTP
    if proto in _OPAQUE:
        return ServerKind.TCP
    if proto not in ("HTTPS", "TLS"):
        return f"protocol {server.port.protocol} is not supported"
    if tls is None:
        return f"{proto} needs tls settings"
    if tls.mode == "PASSTHROUGH":
        return ServerKind.PASSTHROUGH
    if tls.mode not in ("SIMPLE", "MUTUAL"):
        return f"tls mode {tls.mode} is not implemented (the security work's)"
    if tls.credential_name:
        return "credentialName: secrets over SDS are the security work's; use certificate files"
    if not (tls.server_certificate and tls.private_key):
        return "tls needs serverCertificate and privateKey"
    if tls.mode == "MUTUAL" and not tls.ca_certificates:
        return "tls mode MUTUAL needs caCertificates"
    return ServerKind.HTTPS if proto == "HTTPS" else ServerKind.TLS


def _server_tls(tls: GatewayTls) -> ServerTls:
    version = "" if tls.min_protocol_version in ("", "TLS_AUTO") else tls.min_protocol_version
    return ServerTls(
        tls.mode, tls.server_certificate, tls.private_key, tls.ca_certificates, version
    )


def _redirects(tls: GatewayTls | None) -> bool:
    return tls is not None and tls.https_redirect


class GatewayTranslator:
    """Builds router mode's listeners and route configs for one snapshot."""

    def __init__(
        self,
        boot: Bootstrap,
        routes: GatewayRoutes,
        l4: GatewayL4,
        notes: Notes,
    ) -> None:
        self.boot = boot
        self.routes = routes
        self.l4 = l4
        self.notes = notes

    def ports(self, gateways: Sequence[Gateway]) -> list[_Port]:
        """Servers merged by (bind address, port), in Gateway order; conflicts warned."""
        found: dict[tuple[str, int], _Port] = {}
        for gw in gateways:
            for i, server in enumerate(gw.servers):
                path = f"spec.servers[{i}]"
                number = server.port.number
                kind = server_kind(server)
                if isinstance(kind, str):
                    self.notes.warn(gw, path, f"port {number}: {kind}; server skipped")
                    continue
                key = (server.bind or self.boot.bind_address, number)
                taken = found.get(key)
                if taken is None:
                    found[key] = _Port(*key, kind, [(gw, server)])
                elif taken.kind is not kind:
                    first = gateway_key(taken.refs[0][0])
                    self.notes.warn(
                        gw,
                        path,
                        f"port {number} already serves {taken.kind.value} (Gateway {first}); "
                        f"this {kind.value} server is skipped",
                    )
                else:
                    taken.refs.append((gw, server))
        return [found[k] for k in sorted(found)]

    def build(self, gateways: Sequence[Gateway]) -> RouterConfig:
        out = RouterConfig()
        for port in self.ports(gateways):
            listener = self.listener(port, out)
            if listener is not None:
                out.listeners.append(listener)
        return out

    def listener(self, port: _Port, out: RouterConfig) -> Listener | None:
        name = port.name
        tls = None
        chains: list[FilterChain] = []
        if port.kind in (ServerKind.HTTPS, ServerKind.TLS):
            tls = self._tls(port)
        if port.kind in (ServerKind.HTTP, ServerKind.HTTPS):
            prefix = "http" if port.kind is ServerKind.HTTP else "https"
            route_name = f"{prefix}.{port.number}"
            if port.address != self.boot.bind_address:
                route_name += f".{port.address}"
            out.routes[route_name] = self.http_routes(route_name, port)
            proto = _HTTP.get(port.refs[0][1].port.protocol.upper(), Protocol.HTTP)
            hcm = HttpConnectionManager(route_name, f"outbound_{name}", proto)
            chains.append(FilterChain(name, FilterChainMatch(), hcm))
        elif port.kind is ServerKind.PASSTHROUGH:
            chains += self.l4.passthrough_chains(name, port.refs)
        else:
            tcp = self.l4.tcp_filter(port.refs)
            if tcp is not None:
                chains.append(FilterChain(name, FilterChainMatch(), tcp))
        if not chains:
            gw = port.refs[0][0]
            self.notes.warn(
                gw,
                "spec.servers",
                f"port {port.number}: no VirtualService binds a "
                f"{'tls' if port.kind is ServerKind.PASSTHROUGH else 'tcp'} route to it; "
                "nothing served",
            )
            return None
        return Listener(
            name,
            port.address,
            port.number,
            Direction.OUTBOUND,
            False,
            tuple(chains),
            detection_timeout=self.boot.protocol_detection_timeout,
            tls=tls,
        )

    def _tls(self, port: _Port) -> TlsContext:
        first = port.refs[0][1].tls
        assert first is not None  # server_kind checked it
        for gw, server in port.refs[1:]:
            tls = server.tls
            if tls is not None and _server_tls(tls) != _server_tls(first):
                self.notes.warn(
                    gw,
                    "spec.servers",
                    f"port {port.number}: one certificate per port (the first server's); "
                    "this server's tls settings are not used",
                )
        proto = Protocol.HTTP if port.kind is ServerKind.HTTPS else Protocol.TCP
        return tls_context(_server_tls(first), proto)

    def http_routes(self, name: str, port: _Port) -> RouteConfig:
        """The bound VirtualServices' routes; httpsRedirect servers' hosts redirect first."""
        plain = port.kind is ServerKind.HTTP
        redirect = [r for r in port.refs if plain and _redirects(r[1].tls)]
        served = [(gateway_key(gw), s) for gw, s in port.refs if (gw, s) not in redirect]
        vhosts: list[VirtualHost] = []
        covered: set[str] = set()
        for gw, server in redirect:
            for written in server.hosts:
                host = split_server_host(written, gw.meta.namespace)[1]
                domains = gateway_domains(host, port.number)
                fresh = tuple(d for d in domains if d not in covered)
                if not fresh:
                    continue
                covered.update(fresh)
                route = Route(
                    "https_redirect", RouteMatch(prefix="/"), redirect=Redirect(scheme="https")
                )
                vhosts.append(VirtualHost(f"{host}:{port.number}", fresh, (route,)))
        if served:
            built = self.routes.gateway_route_config(name, port.number, served)
            for vh in built.virtual_hosts:
                keep = tuple(d for d in vh.domains if d not in covered)
                if keep:
                    vhosts.append(replace(vh, domains=keep))
        return RouteConfig(name, tuple(vhosts))


def router_config(
    mesh: MeshConfig, boot: Bootstrap, workload: Workload, routes: GatewayRoutes, notes: Notes
) -> RouterConfig:
    """Router mode's listeners and route configs: selected Gateways, then node ports."""
    l4 = GatewayL4(mesh.of(VirtualService), routes, workload)
    out = GatewayTranslator(boot, routes, l4, notes).build(selected_gateways(mesh, workload))
    taken = [(lst.address, lst.port) for lst in out.listeners]
    listeners, route_configs = node_port_config(mesh, boot, taken, notes)
    out.listeners += listeners
    out.routes.update(route_configs)
    return out
