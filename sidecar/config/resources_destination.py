"""Istio's DestinationRule as users write it: traffic policy for a host and its subsets.

Theory of operation: as `resources_routing.py` (the VirtualService and Gateway kinds): the
parsers (`parse_destination_rule.py`, `parse_load_balancer.py`) fill these frozen dataclasses and
the translator (`translate_policy.py`, `policy_settings.py`) reads them. Durations are float
seconds; a field the user did not write is None (or empty), so "unset" (inherit, or the default)
is told apart from a written zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sidecar.config.resources import Resource
from sidecar.config.snapshot import Labels

# --- DestinationRule ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HTTPCookie:
    """consistentHash.httpCookie: generated (Set-Cookie) when absent, as Envoy does."""

    name: str
    path: str = ""
    ttl: float | None = None  # seconds; None/0: a session cookie


@dataclass(frozen=True, slots=True)
class ConsistentHash:
    """consistentHash: exactly one key source; ring hash (default) or maglev."""

    http_header_name: str = ""
    http_cookie: HTTPCookie | None = None
    use_source_ip: bool = False
    http_query_parameter_name: str = ""
    use_maglev: bool = False
    minimum_ring_size: int | None = None  # ringHash.minimumRingSize (or the deprecated field)
    maglev_table_size: int | None = None


@dataclass(frozen=True, slots=True)
class LocalityDistribute:
    """localityLbSetting.distribute[]: from "region/zone/*" to {locality: weight}."""

    from_: str
    to: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class LocalityFailover:
    """localityLbSetting.failover[]: from region to region."""

    from_: str
    to: str


@dataclass(frozen=True, slots=True)
class LocalityLbSetting:
    """localityLbSetting."""

    distribute: tuple[LocalityDistribute, ...] = ()
    failover: tuple[LocalityFailover, ...] = ()
    failover_priority: tuple[str, ...] = ()
    enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class LoadBalancerSettings:
    """loadBalancer: `simple` or `consistent_hash`, plus locality."""

    simple: str = ""  # "" | ROUND_ROBIN | LEAST_REQUEST | LEAST_CONN | RANDOM | PASSTHROUGH
    consistent_hash: ConsistentHash | None = None
    locality_lb_setting: LocalityLbSetting | None = None
    warmup_duration: float | None = None


@dataclass(frozen=True, slots=True)
class TCPSettings:
    """connectionPool.tcp."""

    max_connections: int | None = None
    connect_timeout: float | None = None
    max_connection_duration: float | None = None
    idle_timeout: float | None = None
    keepalive_time: float | None = None
    keepalive_interval: float | None = None
    keepalive_probes: int | None = None


@dataclass(frozen=True, slots=True)
class HTTPSettings:
    """connectionPool.http."""

    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None
    idle_timeout: float | None = None
    h2_upgrade_policy: str = ""  # "" | DEFAULT | DO_NOT_UPGRADE | UPGRADE
    use_client_protocol: bool | None = None
    max_concurrent_streams: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectionPoolSettings:
    """connectionPool."""

    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """outlierDetection (applied by the resilience work; parsed and carried here)."""

    consecutive_gateway_errors: int | None = None
    consecutive_5xx_errors: int | None = None
    consecutive_local_origin_failures: int | None = None
    split_external_local_origin_errors: bool = False
    interval: float | None = None
    base_ejection_time: float | None = None
    max_ejection_percent: int | None = None
    min_health_percent: int | None = None


@dataclass(frozen=True, slots=True)
class ClientTLSSettings:
    """tls (applied by the security work; parsed and carried here)."""

    mode: str = "DISABLE"  # DISABLE | SIMPLE | MUTUAL | ISTIO_MUTUAL
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    credential_name: str = ""
    subject_alt_names: tuple[str, ...] = ()
    sni: str = ""
    insecure_skip_verify: bool | None = None


@dataclass(frozen=True, slots=True)
class PortTrafficPolicy:
    """trafficPolicy.portLevelSettings[]: overrides for one port."""

    port: int
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """trafficPolicy (top level, or a subset's)."""

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: tuple[PortTrafficPolicy, ...] = ()


@dataclass(frozen=True, slots=True)
class Subset:
    """subsets[]: the endpoints whose labels include `labels`, with their own policy."""

    name: str
    labels: Labels = frozenset()
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True, slots=True)
class DestinationRule(Resource):
    """networking.istio.io DestinationRule."""

    kind: ClassVar[str] = "DestinationRule"
    host: str = ""
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    export_to: tuple[str, ...] = ()
    workload_selector: Labels | None = None
