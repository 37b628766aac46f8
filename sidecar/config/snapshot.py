"""The proxy's running configuration, in Envoy's vocabulary.

Theory of operation: the translator turns typed mesh resources (Services, Sidecars, ...) into one
immutable `Snapshot` of listeners, route configs and clusters. The data plane reads a snapshot once
per connection (listeners, filter chains) or request (routes) and never mutates it. A reload
builds a whole new snapshot off to the side and the server swaps it in with one assignment;
connections in flight keep the one they started with.

Everything here is a frozen dataclass of tuples, frozensets and read-only mappings, so it can be
shared freely and compared for equality (the cluster manager keeps pools for clusters that did not
change across a reload).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sidecar.config.snapshot_routes import (
    Cors,
    Fault,
    HashPolicy,
    HeaderMatch,
    HeaderOps,
    LbPolicy,
    LocalityPolicy,
    Mirror,
    QueryParamMatch,
    Redirect,
    Rewrite,
    Route,
    RouteConfig,
    RouteMatch,
    StringMatcher,
    VirtualHost,
    WeightedCluster,
)

__all__ = [
    "Cors", "Fault", "HashPolicy", "HeaderMatch", "HeaderOps", "LbPolicy", "LocalityPolicy",
    "Mirror", "QueryParamMatch", "Redirect", "Rewrite", "Route", "RouteConfig", "RouteMatch",
    "StringMatcher", "VirtualHost", "WeightedCluster",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Labels = frozenset[tuple[str, str]]

PASSTHROUGH_CLUSTER = "PassthroughCluster"
INBOUND_PASSTHROUGH_CLUSTER = "InboundPassthroughCluster"
BLACKHOLE_CLUSTER = "BlackHoleCluster"

VIRTUAL_OUTBOUND = "virtualOutbound"
VIRTUAL_INBOUND = "virtualInbound"


class Protocol(enum.Enum):
    """What a port speaks, as Istio reads it from `appProtocol` or the port name prefix."""

    HTTP = "HTTP"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"
    TCP = "TCP"
    TLS = "TLS"
    UNSUPPORTED = "UNSUPPORTED"  # unknown name: detected at runtime (until detection lands: TCP)

    @property
    def is_http(self) -> bool:
        return self in (Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC)


class Direction(enum.Enum):
    """Which way traffic flows through this proxy relative to the workload it serves."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


class DiscoveryType(enum.Enum):
    """How a cluster finds its endpoints (Envoy's cluster discovery types)."""

    STATIC = "STATIC"  # endpoints listed in the snapshot (EDS in Envoy; the same to us)
    ORIGINAL_DST = "ORIGINAL_DST"  # the downstream connection's original destination
    STRICT_DNS = "STRICT_DNS"  # resolve `dns_name` asynchronously, every address an endpoint
    LOGICAL_DNS = "LOGICAL_DNS"  # resolve `dns_name`, first address only


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One upstream host: an address and port, with the workload's identity and placement."""

    address: str  # IP address (or hostname for DNS clusters after resolution)
    port: int
    labels: Labels = frozenset()
    service_account: str = ""
    locality: str = ""  # "region/zone/subzone"
    weight: int = 1
    workload: str = ""  # "Kind/namespace/name" of the Pod or WorkloadEntry, for /clusters
    healthy: bool = True  # False: not ready (Kubernetes readiness); counted, never chosen

    def __hash__(self) -> int:
        # Equal endpoints have equal addresses and ports, so this is consistent with __eq__;
        # it skips hashing the other fields (labels) on each pool lookup.
        return hash((self.address, self.port))

    def label(self, key: str, default: str = "") -> str:
        for k, v in self.labels:
            if k == key:
                return v
        return default


@dataclass(frozen=True, slots=True)
class Cluster:
    """A named group of endpoints the proxy can send traffic to."""

    name: str  # "outbound|9080|v1|reviews.default.svc.cluster.local", "inbound|9080||"
    discovery: DiscoveryType
    protocol: Protocol = Protocol.TCP
    endpoints: tuple[Endpoint, ...] = ()
    dns_name: str = ""  # STRICT_DNS / LOGICAL_DNS: the name to resolve
    dns_port: int = 0
    connect_timeout: float = 10.0  # seconds; Istio's default connectTimeout
    idle_timeout: float = 3600.0  # seconds an idle upstream connection is kept (Envoy: 1h)
    source_address: str | None = None  # bind upstream sockets here (inbound: 127.0.0.6 / ::6)
    max_requests_per_connection: int = 0  # 0 = unlimited
    max_requests: int = 0  # active requests to the cluster at most (http2MaxRequests); 0 = any
    h2_upgrade: bool = False  # HTTP/1.1 ports: speak HTTP/2 upstream (h2UpgradePolicy UPGRADE)
    use_client_protocol: bool = False  # upstream protocol = the client's (useClientProtocol)
    service: str = ""  # FQDN of the Service or ServiceEntry host this cluster serves
    service_namespace: str = ""
    direction: Direction = Direction.OUTBOUND
    subset: str = ""  # DestinationRule subset name ("" = the whole service)
    lb_policy: LbPolicy = LbPolicy.LEAST_REQUEST  # Istio's default
    hash_policy: HashPolicy | None = None  # RING_HASH / MAGLEV: where the key comes from
    ring_size: int = 1024  # RING_HASH minimum ring size (Envoy's default)
    maglev_table_size: int = 65537  # MAGLEV table size (a prime; Envoy's default)
    locality: LocalityPolicy | None = None  # None: no locality awareness
    max_connections: int = 0  # connectionPool.tcp.maxConnections; 0 = unlimited
    max_pending_requests: int = 0  # connectionPool.http.http1MaxPendingRequests; 0 = unlimited


# The application protocols Envoy's http_inspector reports for plain-text HTTP.
HTTP_DETECTED: tuple[str, ...] = ("http/1.0", "http/1.1", "h2c")


@dataclass(frozen=True, slots=True)
class FilterChainMatch:
    """Which connections a filter chain takes; empty fields match anything.

    Selection follows Envoy: the most specific destination port first (an exact port beats no
    port), then the longest destination prefix, then the most specific server name (exact, then
    the longest wildcard, then none), then (among the chains sharing that port and
    prefix) the transport protocol and the application protocols the listener detected.
    """

    destination_port: int | None = None
    prefix_ranges: tuple[IPNetwork, ...] = ()
    transport_protocol: str = ""  # "tls" | "raw_buffer" | "" (any)
    application_protocols: tuple[str, ...] = ()  # "http/1.0", "http/1.1", "h2c", ALPN; () = any
    server_names: tuple[str, ...] = ()  # TLS SNI: exact names or "*.suffix"; () = any


@dataclass(frozen=True, slots=True)
class HttpConnectionManager:
    """L7: decode HTTP, route each request by `route_config`."""

    route_config: str
    stat_prefix: str
    protocol: Protocol = Protocol.HTTP
    stream_idle_timeout: float = 300.0  # seconds a stream may make no progress (Envoy's 5 min)


@dataclass(frozen=True, slots=True)
class TcpProxy:
    """L4: relay bytes to `cluster`."""

    cluster: str
    stat_prefix: str
    idle_timeout: float = 3600.0  # seconds; Envoy's tcp_proxy default is 1h
    weighted_clusters: tuple[WeightedCluster, ...] = ()  # set: a weighted split (overrides cluster)


NetworkFilter = HttpConnectionManager | TcpProxy


@dataclass(frozen=True, slots=True)
class FilterChain:
    """A match and the network filter that handles the connections it matches."""

    name: str
    match: FilterChainMatch
    filter: NetworkFilter


@dataclass(frozen=True, slots=True)
class TlsContext:
    """Envoy's DownstreamTlsContext, from files: the certificate the listener presents."""

    certificate_chain: str
    private_key: str
    ca_certificates: str = ""  # set: clients must present a certificate chaining to these
    alpn: tuple[str, ...] = ("h2", "http/1.1")  # offered in this order (HTTP listeners)
    min_version: str = ""  # "TLSV1_2" | "TLSV1_3" | "" (library default)


@dataclass(frozen=True, slots=True)
class Listener:
    """A socket the proxy accepts on, and how it hands each connection to a filter chain."""

    name: str  # "virtualOutbound", "virtualInbound", "127.0.0.1_9080"
    address: str
    port: int
    direction: Direction
    use_original_dst: bool  # read SO_ORIGINAL_DST (iptables REDIRECT capture)
    filter_chains: tuple[FilterChain, ...]
    default_filter_chain: FilterChain | None = None  # no chain matched: this, else close
    detection_timeout: float = 0.1  # seconds protocol detection waits for the client's bytes
    tls: TlsContext | None = None  # terminate TLS on every connection (Sidecar ingress tls)
    freebind: bool = False  # bind even when the address is not (yet) on this host (IP_FREEBIND)


@dataclass(frozen=True, slots=True)
class Workload:
    """The workload this proxy serves, as found in the mesh config (Pod or WorkloadEntry)."""

    name: str
    namespace: str
    labels: Labels = frozenset()
    service_account: str = "default"
    address: str = ""
    locality: str = ""  # "region/zone/subzone" (Pod label istio-locality, WorkloadEntry locality)
    # The Pod's sidecar.istio.io/statsHistogramBuckets: (stat prefix, bounds), sorted by prefix.
    stats_histogram_buckets: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def label(self, key: str, default: str = "") -> str:
        for k, v in self.labels:
            if k == key:
                return v
        return default


def _readonly(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class Snapshot:
    """One complete, immutable configuration of the proxy."""

    version: str
    workload: Workload
    listeners: tuple[Listener, ...]
    route_configs: Mapping[str, RouteConfig] = field(default_factory=dict)
    clusters: Mapping[str, Cluster] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # rendered ConfigIssues of severity warning
    # The mesh's workloads (Pods, WorkloadEntries) by IP: who an inbound peer is, for metrics.
    peers: Mapping[str, Workload] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "route_configs", _readonly(self.route_configs))
        object.__setattr__(self, "clusters", _readonly(self.clusters))
        object.__setattr__(self, "peers", _readonly(self.peers))

    def to_json(self) -> dict[str, Any]:
        """The snapshot as plain JSON data, for the admin `/config_dump`."""
        return _jsonable(self)  # type: ignore[no-any-return]


_PLAIN = (str, int, float, bool, type(None))


def _jsonable(value: Any) -> Any:
    """Plain JSON data for a snapshot value (fast on the common types: a 10,000-service
    snapshot has millions of values, and its version is a hash of this)."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is tuple or kind is list:
        return [_jsonable(v) for v in value]
    names = getattr(value, "__dataclass_fields__", None)
    if names is not None:
        return {name: _jsonable(getattr(value, name)) for name in names}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, frozenset):
        items = [_jsonable(v) for v in value]
        if all(isinstance(i, list) and len(i) == 2 for i in items):
            return dict(sorted((str(i[0]), i[1]) for i in items))
        return sorted(items, key=str)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
