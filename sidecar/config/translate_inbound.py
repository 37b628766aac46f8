"""Inbound: what the proxy accepts for its own workload, and how it hands it over.

Theory of operation (Istio's sidecar inbound): the ports the workload serves are the target ports
of the Services (and ServiceEntries with a workloadSelector) that select it, or, when its Sidecar
resource lists `ingress` entries, exactly those. Each port gets a cluster `inbound|PORT||`:
ORIGINAL_DST from source 127.0.0.6 (the connection goes on to pod-ip:PORT, as iptables found it),
or STATIC to the entry's `defaultEndpoint`. The capture listener `virtualInbound` has one chain per
port (HTTP through route config `inbound|PORT||`, else a TCP relay; an auto port both, chosen by
protocol detection) and passes everything else to InboundPassthroughCluster. Ingress entries
with a `bind` or captureMode NONE get their own listener on bind:port instead. As in Istio, the
connectionPool of the DestinationRule for the Service a port serves also limits its inbound
cluster (`PolicyIndex.inbound`), so the server side has the capacity the clients were given.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.bootstrap import Bootstrap
from sidecar.config.protocol import port_protocol
from sidecar.config.registry import Notes
from sidecar.config.resources import (
    CaptureMode,
    IngressListener,
    MeshConfig,
    ServerTls,
    Service,
    ServiceEntry,
    ServiceType,
    Sidecar,
    labels_match,
)
from sidecar.config.snapshot import (
    INBOUND_PASSTHROUGH_CLUSTER,
    VIRTUAL_INBOUND,
    Cluster,
    Direction,
    DiscoveryType,
    Endpoint,
    FilterChain,
    FilterChainMatch,
    HttpConnectionManager,
    Listener,
    Protocol,
    Route,
    RouteConfig,
    RouteMatch,
    TcpProxy,
    TlsContext,
    VirtualHost,
    Workload,
)
from sidecar.config.translate_outbound import auto_chains


@dataclass(frozen=True, slots=True)
class WorkloadInfo:
    """The workload as found in the mesh config, with the port names it declares."""

    workload: Workload
    named_ports: tuple[tuple[str, int], ...] = ()
    is_entry: bool = False  # WorkloadEntry: its ports are keyed by service port name


@dataclass(frozen=True, slots=True)
class InboundPort:
    """One port the workload serves."""

    port: int
    protocol: Protocol
    endpoint: Endpoint | None = None  # Sidecar defaultEndpoint: STATIC; None: ORIGINAL_DST
    captured: bool = True  # on virtualInbound
    bind: str = ""  # own listener on bind:port when set
    tls: ServerTls | None = None  # terminate TLS (Sidecar ingress tls; bound listeners)
    service: str = ""  # the first Service (name, in the workload's namespace) that selects it
    service_port: int = 0  # that Service's port: DestinationRule portLevelSettings key on it

    @property
    def cluster(self) -> str:
        return f"inbound|{self.port}||"


def _resolve(info: WorkloadInfo, port_name: str, target: int | str) -> int | None:
    named = dict(info.named_ports)
    if info.is_entry and port_name in named:
        return named[port_name]
    if isinstance(target, int):
        return target
    return named.get(target)


def from_services(mesh: MeshConfig, info: WorkloadInfo, notes: Notes) -> list[InboundPort]:
    """Target ports of every Service / ServiceEntry that selects the workload."""
    w = info.workload
    found: dict[int, InboundPort] = {}
    for svc in mesh.of(Service):
        if (
            svc.meta.namespace != w.namespace
            or not svc.selector
            or svc.type is ServiceType.EXTERNAL_NAME
            or not labels_match(svc.selector, w.labels)
        ):
            continue
        for i, sp in enumerate(svc.ports):
            port = _resolve(info, sp.name, sp.target_port)
            if port is None:
                notes.warn(
                    svc,
                    f"spec.ports[{i}].targetPort",
                    f"workload {w.name} has no port named {sp.target_port!r}",
                )
                continue
            proto = port_protocol(sp.app_protocol, sp.name)
            found.setdefault(
                port, InboundPort(port, proto, service=svc.meta.name, service_port=sp.port)
            )
    for se in mesh.of(ServiceEntry):
        if (
            se.meta.namespace != w.namespace
            or not se.workload_selector
            or not labels_match(se.workload_selector, w.labels)
        ):
            continue
        for p in se.ports:
            port = _resolve(info, p.name, p.target_port or p.number) or p.number
            found.setdefault(port, InboundPort(port, port_protocol(p.protocol, p.name)))
    return [found[k] for k in sorted(found)]


def default_endpoint(text: str, boot: Bootstrap) -> Endpoint:
    """Sidecar ingress defaultEndpoint: "127.0.0.1:PORT", "0.0.0.0:PORT" or "unix:///path"."""
    if text.startswith("unix://"):
        return Endpoint(text, 0)
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if host == "0.0.0.0":
        host = boot.instance_ip or "127.0.0.1"
    elif host == "::":
        host = boot.instance_ip or "::1"
    return Endpoint(host, int(port))


def from_sidecar(sidecar: Sidecar, boot: Bootstrap) -> list[InboundPort]:
    """Sidecar ingress entries, which replace the service-derived ports."""
    return [_from_entry(entry, boot) for entry in sidecar.ingress]


def _from_entry(entry: IngressListener, boot: Bootstrap) -> InboundPort:
    p = entry.port
    endpoint = default_endpoint(entry.default_endpoint, boot) if entry.default_endpoint else None
    captured = entry.capture_mode is not CaptureMode.NONE
    bind = entry.bind
    if not bind and not captured:
        bind = boot.instance_ip or "0.0.0.0"
    proto = port_protocol(p.protocol, p.name)
    if entry.tls is not None and proto is Protocol.TLS:
        # Terminated here: HTTPS is HTTP inside (Istio's rule); other TLS is detected inside.
        https = (p.protocol or p.name).lower().startswith("https")
        proto = Protocol.HTTP if https else Protocol.UNSUPPORTED
    return InboundPort(p.number, proto, endpoint, captured, bind, entry.tls)


def inbound_cluster(ip: InboundPort, boot: Bootstrap) -> Cluster:
    # The Service it serves, by FQDN (Istio's cluster metadata; the metrics' destination_service).
    ns = boot.pod_namespace if ip.service else ""
    fqdn = f"{ip.service}.{ns}.svc.{boot.cluster_domain}" if ip.service else ""
    if ip.endpoint is not None:
        return Cluster(
            ip.cluster,
            DiscoveryType.STATIC,
            ip.protocol,
            (ip.endpoint,),
            direction=Direction.INBOUND,
            service=fqdn,
            service_namespace=ns,
        )
    return Cluster(
        ip.cluster,
        DiscoveryType.ORIGINAL_DST,
        ip.protocol,
        source_address=boot.inbound_passthrough_ipv4,
        direction=Direction.INBOUND,
        service=fqdn,
        service_namespace=ns,
    )


def inbound_route_config(ip: InboundPort, fqdn: str = "") -> RouteConfig:
    # Istio's inbound decorator: the served Service's "host:port/*" (none when no Service).
    op = f"{fqdn}:{ip.service_port or ip.port}/*" if fqdn else ""
    route = Route("default", RouteMatch(prefix="/"), cluster=ip.cluster, operation=op)
    return RouteConfig(ip.cluster, (VirtualHost(f"inbound|http|{ip.port}", ("*",), (route,)),))


def inbound_filter(ip: InboundPort, stat_prefix: str) -> HttpConnectionManager | TcpProxy:
    if ip.protocol.is_http:
        return HttpConnectionManager(ip.cluster, stat_prefix, ip.protocol)
    return TcpProxy(ip.cluster, ip.cluster)


def inbound_chains(ip: InboundPort, name: str, port: int | None) -> tuple[FilterChain, ...]:
    """The port's chain; an auto port's chains (detected HTTP, else TCP), as Istio builds them."""
    stat_prefix = f"inbound_{name}"
    filt = inbound_filter(ip, stat_prefix)
    if ip.protocol is Protocol.UNSUPPORTED and isinstance(filt, TcpProxy):
        hcm = HttpConnectionManager(ip.cluster, stat_prefix, Protocol.HTTP)
        return auto_chains(name, port, (), hcm, filt)
    return (FilterChain(name, FilterChainMatch(destination_port=port), filt),)


def virtual_inbound(ports: list[InboundPort], boot: Bootstrap) -> Listener:
    chains = tuple(
        c for ip in ports if ip.captured for c in inbound_chains(ip, f"0.0.0.0_{ip.port}", ip.port)
    )
    passthrough = TcpProxy(INBOUND_PASSTHROUGH_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER)
    return Listener(
        VIRTUAL_INBOUND,
        boot.bind_address,
        boot.inbound_port,
        Direction.INBOUND,
        True,
        chains,
        FilterChain("InboundPassthroughFilterChain", FilterChainMatch(), passthrough),
        detection_timeout=boot.protocol_detection_timeout,
    )


def bound_listener(ip: InboundPort, detection_timeout: float = 0.1) -> Listener:
    """An ingress entry's own listener on bind:port (no iptables)."""
    name = f"{ip.bind}_{ip.port}"
    chains = inbound_chains(ip, name, None)
    return Listener(
        name,
        ip.bind,
        ip.port,
        Direction.INBOUND,
        False,
        chains,
        detection_timeout=detection_timeout,
        tls=tls_context(ip.tls, ip.protocol) if ip.tls is not None else None,
    )


def tls_context(tls: ServerTls, protocol: Protocol) -> TlsContext:
    """The listener's TLS from Istio's ServerTLSSettings; HTTP ports offer h2 and http/1.1."""
    alpn = ("h2", "http/1.1") if protocol.is_http or protocol is Protocol.UNSUPPORTED else ()
    return TlsContext(
        tls.server_certificate,
        tls.private_key,
        tls.ca_certificates if tls.mode == "MUTUAL" else "",
        alpn,
        tls.min_protocol_version,
    )
