"""A DestinationRule's trafficPolicy for one cluster: merged as Istio merges it, mapped to Cluster.

Theory of operation: a cluster's policy has four groups (loadBalancer, connectionPool,
outlierDetection, tls). `effective` merges them as Istio does for a port and a subset:
  1. the top-level policy, or, when its portLevelSettings has an entry for the port, that entry
     *instead* (a port entry replaces all four groups: a group it omits takes the default, it is
     not inherited from the top level; Istio documents and implements it so);
  2. the subset's policy the same way; each group it sets replaces the step-1 group (when the
     subset has a port entry, all four are replaced, unset ones by the default).
Groups replace whole: connectionPool.tcp and .http are never mixed from two levels.

`apply` writes the merged groups onto a Cluster (Istio's applyLoadBalancer/applyConnectionPool):
simple LB policies, PASSTHROUGH (ORIGINAL_DST, no endpoints), consistent hash (ring hash or
maglev plus the HashPolicy), locality, connection pool limits and timeouts. An ORIGINAL_DST
cluster ignores LB, hash and locality settings (Envoy's cluster-provided balancer).

`unapplied` lists the fields this proxy parses but does not act on yet (outlier detection, client
TLS, retries budget, keepalive, ...), each with its field path, for one warning apiece.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from sidecar.config.resources_destination import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    DestinationRule,
    LoadBalancerSettings,
    OutlierDetection,
    TrafficPolicy,
)
from sidecar.config.snapshot import (
    Cluster,
    DiscoveryType,
    HashPolicy,
    LbPolicy,
    LocalityPolicy,
    Protocol,
)

# idleTimeout: 0s means "no idle timeout" in Istio/Envoy; the pools need a number: ~10 years.
NO_IDLE_TIMEOUT = 315_360_000.0

_SIMPLE = {
    "": LbPolicy.LEAST_REQUEST,  # unset / UNSPECIFIED: Istio's default
    "UNSPECIFIED": LbPolicy.LEAST_REQUEST,
    "LEAST_REQUEST": LbPolicy.LEAST_REQUEST,
    "LEAST_CONN": LbPolicy.LEAST_REQUEST,  # deprecated alias, as Istio maps it
    "ROUND_ROBIN": LbPolicy.ROUND_ROBIN,
    "RANDOM": LbPolicy.RANDOM,
}


@dataclass(frozen=True, slots=True)
class Groups:
    """The four field groups of a traffic policy after merging (None: the default)."""

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


def _at_port(policy: TrafficPolicy | None, port: int) -> tuple[Groups | None, bool]:
    """The policy's groups for `port`, and whether a port-level entry supplied them."""
    if policy is None:
        return None, False
    for p in policy.port_level_settings:
        if p.port == port:
            return Groups(p.load_balancer, p.connection_pool, p.outlier_detection, p.tls), True
    g = Groups(policy.load_balancer, policy.connection_pool, policy.outlier_detection, policy.tls)
    return g, False


def effective(top: TrafficPolicy | None, subset: TrafficPolicy | None, port: int) -> Groups:
    """Istio's merge of the top-level and the subset's policy for one port (module docstring)."""
    base, _ = _at_port(top, port)
    sub, port_level = _at_port(subset, port)
    if sub is None:
        return base or Groups()
    if base is None:
        return sub

    def pick(b: Any, s: Any) -> Any:
        return s if s is not None or port_level else b

    return Groups(
        pick(base.load_balancer, sub.load_balancer),
        pick(base.connection_pool, sub.connection_pool),
        pick(base.outlier_detection, sub.outlier_detection),
        pick(base.tls, sub.tls),
    )


def apply(cluster: Cluster, groups: Groups) -> Cluster:
    """The cluster with the merged policy written onto it."""
    changes: dict[str, Any] = {}
    changes.update(_pool(groups.connection_pool, cluster.protocol))
    changes.update(_balancer(cluster, groups))
    return replace(cluster, **changes) if changes else cluster


def _balancer(cluster: Cluster, groups: Groups) -> dict[str, Any]:
    lb = groups.load_balancer
    if cluster.discovery is DiscoveryType.ORIGINAL_DST:
        return {}  # cluster-provided: the original destination is the endpoint
    if lb is not None and lb.simple == "PASSTHROUGH":
        # Istio: ORIGINAL_DST with the load assignment wiped (the VIP as dialled).
        return {
            "discovery": DiscoveryType.ORIGINAL_DST,
            "endpoints": (),
            "dns_name": "",
            "dns_port": 0,
        }
    out: dict[str, Any] = {"locality": locality_policy(lb, groups.outlier_detection)}
    ch = lb.consistent_hash if lb is not None else None
    if ch is None:
        out["lb_policy"] = _SIMPLE.get(lb.simple if lb is not None else "", LbPolicy.LEAST_REQUEST)
        return out
    out["hash_policy"] = HashPolicy(
        header=ch.http_header_name.lower(),
        cookie=ch.http_cookie.name if ch.http_cookie else "",
        cookie_path=ch.http_cookie.path if ch.http_cookie else "",
        cookie_ttl=ch.http_cookie.ttl if ch.http_cookie else None,
        source_ip=ch.use_source_ip,
        query_parameter=ch.http_query_parameter_name,
    )
    if ch.use_maglev:
        out["lb_policy"] = LbPolicy.MAGLEV
        if ch.maglev_table_size:
            out["maglev_table_size"] = ch.maglev_table_size
    else:
        out["lb_policy"] = LbPolicy.RING_HASH
        if ch.minimum_ring_size:
            out["ring_size"] = ch.minimum_ring_size
    return out


def locality_policy(
    lb: LoadBalancerSettings | None, outlier: OutlierDetection | None
) -> LocalityPolicy | None:
    """When Istio turns on locality-aware balancing for a cluster, and how.

    Istio (loadbalancer.GetLocalityLbSetting + ApplyLocalityLoadBalancer): the mesh default is
    enabled with no settings; a DestinationRule's `enabled: false` turns it off. `distribute`
    applies on its own (weights per locality, every locality one priority). Otherwise failover
    by priority (closeness to the proxy's locality, `failover` regions, `failoverPriority`
    labels) applies only when the cluster has outlierDetection: Istio does so because without
    it Envoy never sees a locality go unhealthy. We follow that exactly, so without
    outlierDetection (and without distribute) every endpoint is one pool, as in Istio.
    """
    setting = lb.locality_lb_setting if lb is not None else None
    if setting is not None and setting.enabled is False:
        return None
    if setting is not None and setting.distribute:
        dist = tuple((d.from_, d.to) for d in setting.distribute)
        return LocalityPolicy(distribute=dist)
    if outlier is None:
        return None
    if setting is None:
        return LocalityPolicy()
    failover = tuple((f.from_, f.to) for f in setting.failover)
    return LocalityPolicy(failover=failover, failover_priority=setting.failover_priority)


def _idle(cp: ConnectionPoolSettings, protocol: Protocol) -> float | None:
    """http.idleTimeout for HTTP pools; tcp.idleTimeout for the TCP relay (Istio sets it on
    tcp_proxy); an auto-detected port serves both: http's when written, else tcp's."""
    http = cp.http.idle_timeout if cp.http is not None else None
    tcp = cp.tcp.idle_timeout if cp.tcp is not None else None
    if protocol.is_http:
        return http
    if protocol is Protocol.UNSUPPORTED and http is not None:
        return http
    return tcp


def _pool(cp: ConnectionPoolSettings | None, protocol: Protocol) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cp is None:
        return out
    tcp, http = cp.tcp, cp.http
    idle = _idle(cp, protocol)
    if idle is not None:
        out["idle_timeout"] = idle or NO_IDLE_TIMEOUT
    if tcp is not None:
        if tcp.connect_timeout is not None:
            out["connect_timeout"] = tcp.connect_timeout
        if tcp.max_connections is not None:
            out["max_connections"] = tcp.max_connections
    if http is not None:
        if http.http2_max_requests is not None:
            out["max_requests"] = http.http2_max_requests
        if http.http1_max_pending_requests is not None:
            out["max_pending_requests"] = http.http1_max_pending_requests
        if http.max_requests_per_connection is not None:
            out["max_requests_per_connection"] = http.max_requests_per_connection
        if http.h2_upgrade_policy:
            out["h2_upgrade"] = http.h2_upgrade_policy == "UPGRADE"
        if http.use_client_protocol is not None:
            out["use_client_protocol"] = http.use_client_protocol
    return out


# --- fields parsed but applied by later work -----------------------------------------------------


def unapplied(dr: DestinationRule) -> Iterator[str]:
    """Field paths in `dr` that are set but not acted on yet."""
    if dr.traffic_policy is not None:
        yield from _policy_unapplied(dr.traffic_policy, "spec.trafficPolicy")
    for i, s in enumerate(dr.subsets):
        if s.traffic_policy is not None:
            yield from _policy_unapplied(s.traffic_policy, f"spec.subsets[{i}].trafficPolicy")


def _policy_unapplied(tp: TrafficPolicy, path: str) -> Iterator[str]:
    yield from _groups_unapplied(
        Groups(tp.load_balancer, tp.connection_pool, tp.outlier_detection, tp.tls), path
    )
    for i, p in enumerate(tp.port_level_settings):
        g = Groups(p.load_balancer, p.connection_pool, p.outlier_detection, p.tls)
        yield from _groups_unapplied(g, f"{path}.portLevelSettings[{i}]")


def _groups_unapplied(g: Groups, path: str) -> Iterator[str]:
    if g.load_balancer is not None and g.load_balancer.warmup_duration is not None:
        yield f"{path}.loadBalancer.warmupDurationSecs"
    cp = g.connection_pool
    if cp is not None and cp.tcp is not None:
        t = cp.tcp
        if t.max_connection_duration is not None:
            yield f"{path}.connectionPool.tcp.maxConnectionDuration"
        keepalive = (t.keepalive_time, t.keepalive_interval, t.keepalive_probes)
        if any(v is not None for v in keepalive):
            yield f"{path}.connectionPool.tcp.tcpKeepalive"
    if cp is not None and cp.http is not None:
        if cp.http.max_retries is not None:
            yield f"{path}.connectionPool.http.maxRetries"
        if cp.http.max_concurrent_streams is not None:
            yield f"{path}.connectionPool.http.maxConcurrentStreams"
    if g.outlier_detection is not None:
        yield f"{path}.outlierDetection"
    if g.tls is not None and g.tls.mode != "DISABLE":
        yield f"{path}.tls"
