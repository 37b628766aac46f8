"""DestinationRule (networking.istio.io v1alpha3/v1beta1/v1) -> `DestinationRule`.

Theory of operation: reads `spec` with the checks of Istio's ValidateDestinationRule: host is a
(wildcard) domain, subsets have unique DNS-label names, a traffic policy (top level, a subset's,
or a port's) sets at least one field; loadBalancer is `simple` or `consistentHash` (a oneof in
Istio's API), a consistent hash has one key source and ring hash or maglev (a prime table
size below 5000011); counts are non-negative; outlier percentages are 0..100; durations are at
least 1ms. `tunnel` and `proxyProtocol` are warned as not implemented. Connection pool, outlier
detection and TLS are parsed and carried for the resilience and security work.
"""

from __future__ import annotations

from sidecar.config import names
from sidecar.config import parse_routing_common as common
from sidecar.config.nodes import Fields, Node
from sidecar.config.parse_load_balancer import load_balancer
from sidecar.config.resources import ObjectMeta
from sidecar.config.resources_destination import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    DestinationRule,
    HTTPSettings,
    OutlierDetection,
    PortTrafficPolicy,
    Subset,
    TCPSettings,
    TrafficPolicy,
)
from sidecar.config.snapshot import Labels

TLS_MODES = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")
H2_UPGRADE = ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")
_NOT_IMPLEMENTED = "not implemented; ignored"


def _percent_int(node: Node) -> int | None:
    value = node.integer()
    if value is not None and not 0 <= value <= 100:
        node.error(f"percentage {value} is not in 0..100")
        return None
    return value


def _keepalive(f: Fields) -> tuple[float | None, float | None, int | None]:
    node = f.get("tcpKeepalive")
    ka = None if node is None else node.fields()
    if ka is None:
        return None, None, None
    time = ka.read("time", common.duration, None)
    interval = ka.read("interval", common.duration, None)
    probes = ka.read("probes", common.count, None)
    ka.finish()
    return time, interval, probes


def _tcp(node: Node) -> TCPSettings | None:
    f = node.fields()
    if f is None:
        return None
    max_conn = f.read("maxConnections", common.count, None)
    connect = f.read("connectTimeout", common.duration, None)
    duration = f.read("maxConnectionDuration", common.duration, None)
    idle = f.read("idleTimeout", lambda n: common.duration(n, allow_zero=True), None)
    ka_time, ka_interval, ka_probes = _keepalive(f)
    f.finish()
    return TCPSettings(max_conn, connect, duration, idle, ka_time, ka_interval, ka_probes)


def _http(node: Node) -> HTTPSettings | None:
    f = node.fields()
    if f is None:
        return None
    pending = f.read("http1MaxPendingRequests", common.count, None)
    h2_max = f.read("http2MaxRequests", common.count, None)
    per_conn = f.read("maxRequestsPerConnection", common.count, None)
    retries = f.read("maxRetries", common.count, None)
    idle = f.read("idleTimeout", common.duration, None)
    upgrade = f.choice("h2UpgradePolicy", H2_UPGRADE, "")
    client = f.read("useClientProtocol", Node.boolean, None)
    streams = f.read("maxConcurrentStreams", common.count, None)
    f.finish()
    if upgrade == "UPGRADE" and client:
        common.error_at(f, "useClientProtocol", "must not be true when h2UpgradePolicy is UPGRADE")
        return None
    return HTTPSettings(pending, h2_max, per_conn, retries, idle, upgrade, client, streams)


def connection_pool(node: Node) -> ConnectionPoolSettings | None:
    f = node.fields()
    if f is None:
        return None
    tcp = f.read("tcp", _tcp, None)
    http = f.read("http", _http, None)
    f.finish()
    if "tcp" not in f.values and "http" not in f.values:
        node.error("a connection pool needs tcp and/or http settings")
    return ConnectionPoolSettings(tcp, http)


def outlier_detection(node: Node) -> OutlierDetection | None:
    f = node.fields()
    if f is None:
        return None
    old = f.read("consecutiveErrors", common.count, None)
    gateway = f.read("consecutiveGatewayErrors", common.count, None)
    five = f.read("consecutive5xxErrors", common.count, None)
    local = f.read("consecutiveLocalOriginFailures", common.count, None)
    split = f.read("splitExternalLocalOriginErrors", Node.boolean, False)
    interval = f.read("interval", common.duration, None)
    base = f.read("baseEjectionTime", common.duration, None)
    max_eject = f.read("maxEjectionPercent", _percent_int, None)
    min_health = f.read("minHealthPercent", _percent_int, None)
    f.finish()
    if "consecutiveErrors" in f.values:
        common.warn_at(
            f,
            "consecutiveErrors",
            "deprecated: use consecutiveGatewayErrors or consecutive5xxErrors",
        )
        if five is None:
            five = old  # Istio maps the deprecated field onto 5xx errors
    if local and not split:
        common.error_at(
            f,
            "consecutiveLocalOriginFailures",
            "set while splitExternalLocalOriginErrors is false",
        )
    return OutlierDetection(gateway, five, local, split, interval, base, max_eject, min_health)


def client_tls(node: Node) -> ClientTLSSettings | None:
    f = node.fields()
    if f is None:
        return None
    mode = f.choice("mode", TLS_MODES, "DISABLE")
    cert = f.string("clientCertificate")
    key = f.string("privateKey")
    ca = f.string("caCertificates")
    credential = f.string("credentialName")
    sans = common.opt(f, "subjectAltNames", Node.string_list) or ()
    sni = f.string("sni")
    skip = f.read("insecureSkipVerify", Node.boolean, None)
    f.finish()
    if mode == "MUTUAL" and not credential and not (cert and key):
        node.error("MUTUAL mode needs clientCertificate and privateKey (or credentialName)")
    if mode == "ISTIO_MUTUAL" and (cert or key or ca or credential):
        node.error("ISTIO_MUTUAL uses the mesh's certificates: do not set certificate files")
    return ClientTLSSettings(mode, cert, key, ca, credential, sans, sni, skip)


_POLICY_PARTS = ("loadBalancer", "connectionPool", "outlierDetection", "tls")


def _port_policy(node: Node) -> PortTrafficPolicy | None:
    f = node.fields()
    if f is None:
        return None
    port = f.read_required("port", common.port_selector)
    lb = f.read("loadBalancer", load_balancer, None)
    pool = f.read("connectionPool", connection_pool, None)
    outlier = f.read("outlierDetection", outlier_detection, None)
    tls = f.read("tls", client_tls, None)
    f.finish()
    if not any(k in f.values for k in _POLICY_PARTS):
        node.error("a port traffic policy needs at least one setting besides port")
    return None if port is None else PortTrafficPolicy(port, lb, pool, outlier, tls)


def traffic_policy(node: Node) -> TrafficPolicy | None:
    f = node.fields()
    if f is None:
        return None
    lb = f.read("loadBalancer", load_balancer, None)
    pool = f.read("connectionPool", connection_pool, None)
    outlier = f.read("outlierDetection", outlier_detection, None)
    tls = f.read("tls", client_tls, None)
    ports: list[PortTrafficPolicy] = []
    for item in common.items(f, "portLevelSettings"):
        policy = _port_policy(item)
        if policy is not None and any(p.port == policy.port for p in ports):
            item.error(f"duplicate port {policy.port} in portLevelSettings")
        elif policy is not None:
            ports.append(policy)
    for key in ("tunnel", "proxyProtocol"):
        if f.get(key) is not None:
            common.warn_at(f, key, _NOT_IMPLEMENTED)
    f.finish()
    if not f.values:
        node.error("a traffic policy needs at least one setting")
    return TrafficPolicy(lb, pool, outlier, tls, tuple(ports))


def _subset(node: Node) -> Subset | None:
    f = node.fields()
    if f is None:
        return None
    name = f.read_required("name", common.subset_name)
    labels = names.selector_labels(f, "labels")
    policy = f.read("trafficPolicy", traffic_policy, None)
    f.finish()
    return None if name is None else Subset(name, labels, policy)


def _workload_selector(node: Node) -> Labels | None:
    f = node.fields()
    if f is None:
        return None
    labels = names.selector_labels(f, "matchLabels")
    f.finish()
    if not labels:
        node.warn("workload selector without labels selects every workload in the namespace")
    return labels


def parse_destination_rule(meta: ObjectMeta, root: Fields) -> DestinationRule | None:
    node = root.require("spec")
    root.finish(frozenset({"status"}))
    spec = None if node is None else node.fields()
    if spec is None:
        return None
    host = spec.read_required("host", common.host_or_ip)
    policy = spec.read("trafficPolicy", traffic_policy, None)
    subsets: list[Subset] = []
    for item in common.items(spec, "subsets"):
        subset = _subset(item)
        if subset is not None and any(s.name == subset.name for s in subsets):
            item.error(f"duplicate subset name {subset.name!r}")
        elif subset is not None:
            subsets.append(subset)
    export = common.opt(spec, "exportTo", common.export_to) or ()
    selector = spec.read("workloadSelector", _workload_selector, None)
    spec.finish()
    if selector is not None and any(e not in (".", meta.namespace) for e in export):
        common.error_at(
            spec, "exportTo", "a rule with a workload selector is visible only in its namespace"
        )
    if host is None:
        return None
    return DestinationRule(meta, host, policy, tuple(subsets), export, selector)
