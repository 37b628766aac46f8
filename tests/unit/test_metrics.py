"""Istio metrics: labels (outbound, inbound, unknowns), buckets, merge and the text exposition."""

from __future__ import annotations

import re
import textwrap

import pytest

from sidecar.bootstrap import Bootstrap
from sidecar.config.load import load_text
from sidecar.config.snapshot import Snapshot
from sidecar.config.translate import translate
from sidecar.observability import metrics_labels as ml
from sidecar.observability.metrics import DEFAULT_BUCKETS, MetricsStore
from sidecar.observability.metrics_render import envoy_name, render
from sidecar.outcome import ResponseFlag
from sidecar.runtime import Runtime, StreamInfo
from sidecar.upstream.cluster import ClusterManager

MESH = """\
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.9
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v2-7d9f8c6b5d-x2k4q
  namespace: shop
  labels: {app: reviews, version: v2, pod-template-hash: 7d9f8c6b5d}
spec:
  serviceAccountName: bookinfo-reviews
  containers: [{name: app, ports: [{containerPort: 9080}]}]
status: {podIP: 10.0.0.9}
---
apiVersion: v1
kind: Pod
metadata:
  name: productpage-v1-5b4f9cd8c7-zq2xk
  namespace: shop
  labels: {app: productpage, version: v1}
spec:
  serviceAccountName: bookinfo-productpage
status: {podIP: 10.0.0.5}
"""


class NullLog:
    def log(self, info: StreamInfo) -> None:
        pass


def runtime_for(pod: str) -> tuple[Runtime, Snapshot]:
    boot = Bootstrap(pod_name=pod, pod_namespace="shop", cluster_id="Kubernetes")
    snap = translate(load_text(textwrap.dedent(MESH), "mesh.yaml"), boot)
    manager = ClusterManager()
    manager.update(snap)
    rt = Runtime(boot, manager, NullLog())
    rt.snapshot = snap
    return rt, snap


def request(direction: str, cluster: str, peer_ip: str, code: int = 200,
            flags: ResponseFlag = ResponseFlag.NONE, ms: float = 3.0,
            sent: int = 0, received: int = 0) -> StreamInfo:  # fmt: skip
    info = StreamInfo()
    info.direction = direction
    info.upstream_cluster = cluster
    info.downstream_remote_ip = peer_ip
    info.response_code = code
    info.response_flags = flags
    info.start_mono = 0.0
    info.end_mono = ms / 1000
    info.bytes_sent = sent
    info.bytes_received = received
    return info


def labels_of(store: MetricsStore) -> list[dict[str, str]]:
    return [dict(zip(ml.REQUEST_LABELS, k, strict=True)) for k in store.requests]


def test_outbound_labels_name_both_workloads_and_the_service() -> None:
    rt, snap = runtime_for("productpage-v1-5b4f9cd8c7-zq2xk")
    cluster = "outbound|9080||reviews.shop.svc.cluster.local"
    endpoint = snap.clusters[cluster].endpoints[0]
    info = request("outbound", cluster, "10.0.0.5")
    info.upstream_endpoint = endpoint
    info.upstream_host = "10.0.0.9:9080"
    rt.metrics.record_http(info, rt)
    [labels] = labels_of(rt.metrics)
    assert labels == {
        "reporter": "source",
        "source_workload": "productpage-v1",  # the Deployment's name, from the pod's
        "source_workload_namespace": "shop",
        "source_principal": "unknown",  # no mTLS: no verified identity
        "source_app": "productpage",
        "source_version": "v1",
        "source_canonical_service": "productpage",
        "source_canonical_revision": "v1",
        "source_cluster": "Kubernetes",
        "destination_workload": "reviews-v2",
        "destination_workload_namespace": "shop",
        "destination_principal": "unknown",
        "destination_app": "reviews",
        "destination_version": "v2",
        "destination_canonical_service": "reviews",
        "destination_canonical_revision": "v2",
        "destination_cluster": "Kubernetes",
        "destination_service": "reviews.shop.svc.cluster.local",
        "destination_service_name": "reviews",
        "destination_service_namespace": "shop",
        "connection_security_policy": "unknown",
        "request_protocol": "http",
        "response_code": "200",
        "grpc_response_status": "",
        "response_flags": "-",
    }


def test_inbound_labels_find_the_peer_by_ip_else_unknown() -> None:
    rt, _ = runtime_for("reviews-v2-7d9f8c6b5d-x2k4q")
    known = request("inbound", "inbound|9080||", "10.0.0.5")
    stranger = request("inbound", "inbound|9080||", "192.0.2.1", code=503,
                       flags=ResponseFlag.UF)  # fmt: skip
    rt.metrics.record_http(known, rt)
    rt.metrics.record_http(stranger, rt)
    first, second = labels_of(rt.metrics)
    assert first["reporter"] == "destination"
    assert first["source_workload"] == "productpage-v1"
    assert first["source_app"] == "productpage"
    assert first["destination_workload"] == "reviews-v2"
    assert first["destination_service"] == "reviews.shop.svc.cluster.local"
    assert first["destination_service_name"] == "reviews"
    assert first["connection_security_policy"] == "none"
    assert second["source_workload"] == "unknown"
    assert second["source_canonical_service"] == "unknown"
    assert second["source_canonical_revision"] == "latest"
    assert second["source_cluster"] == "unknown"
    assert (second["response_code"], second["response_flags"]) == ("503", "UF")


def test_no_route_and_no_endpoint_are_unknown_destinations() -> None:
    rt, _ = runtime_for("productpage-v1-5b4f9cd8c7-zq2xk")
    rt.metrics.record_http(request("outbound", "-", "10.0.0.5", 404, ResponseFlag.NR), rt)
    [labels] = labels_of(rt.metrics)
    assert labels["destination_workload"] == "unknown"
    assert labels["destination_service"] == "unknown"
    assert labels["response_flags"] == "NR"
    assert labels["source_workload"] == "productpage-v1"


def test_same_labels_share_one_series_and_count_requests() -> None:
    rt, _ = runtime_for("reviews-v2-7d9f8c6b5d-x2k4q")
    for _ in range(5):
        rt.metrics.record_http(request("inbound", "inbound|9080||", "10.0.0.5"), rt)
    rt.snapshot = runtime_for("reviews-v2-7d9f8c6b5d-x2k4q")[1]  # a reload clears the caches
    rt.metrics.record_http(request("inbound", "inbound|9080||", "10.0.0.5"), rt)
    [series] = rt.metrics.requests.values()
    assert series.count == 6
    assert series.duration.count == 6


@pytest.mark.parametrize(
    ("ms", "bucket"),
    [(0.0, 0.5), (0.25, 0.5), (0.5, 0.5), (0.51, 1), (1.0, 1), (4.99, 5), (5.0, 5), (5.01, 10),
     (250.0, 250), (250.01, 500), (999.9, 1000), (1000.0, 1000), (1000.01, 2500),
     (3600000.0, 3600000), (3600001.0, float("inf"))],
)  # fmt: skip
def test_bucket_boundaries_are_inclusive_upper_bounds(ms: float, bucket: float) -> None:
    rt, _ = runtime_for("reviews-v2-7d9f8c6b5d-x2k4q")
    rt.metrics.record_http(request("inbound", "inbound|9080||", "10.0.0.5", ms=ms), rt)
    [series] = rt.metrics.requests.values()
    bounds = (*DEFAULT_BUCKETS, float("inf"))
    assert series.duration.counts[bounds.index(bucket)] == 1
    assert series.duration.sum == pytest.approx(ms, abs=1e-6)
    text = render(rt.metrics, {}).decode()
    le = "+Inf" if bucket == float("inf") else str(float(bucket))
    line = re.search(rf'istio_request_duration_milliseconds_bucket{{[^}}]*le="{re.escape(le)}"'
                     rf'[^}}]*}} (\S+)', text)  # fmt: skip
    assert line is not None and float(line.group(1)) == 1.0
    below = [b for b in DEFAULT_BUCKETS if b < bucket]
    if below:
        lower = re.search(rf'_duration_milliseconds_bucket{{[^}}]*le="{float(below[-1])}"'
                          rf'[^}}]*}} (\S+)', text)  # fmt: skip
        assert lower is not None and float(lower.group(1)) == 0.0


@pytest.mark.parametrize(
    ("sent", "bucket"),
    [(0, 0.5), (1, 1), (2, 5), (5, 5), (6, 10), (1000, 1000), (1001, 2500), (2047, 2500),
     (2048, 2500), (2501, 5000), (10000, 10000), (16383, 30000), (16384, 30000),
     (3600001, float("inf"))],
)  # fmt: skip
def test_byte_buckets_by_table_and_by_bisect_agree(sent: int, bucket: float) -> None:
    """Small sizes find their bucket in a table, large ones by bisect: the same bounds."""
    rt, _ = runtime_for("reviews-v2-7d9f8c6b5d-x2k4q")
    rt.metrics.record_http(request("inbound", "inbound|9080||", "10.0.0.5", sent=sent), rt)
    [series] = rt.metrics.requests.values()
    bounds = (*DEFAULT_BUCKETS, float("inf"))
    assert series.response_bytes.counts[bounds.index(bucket)] == 1
    assert series.response_bytes.sum == sent


def test_first_byte_bucket_counts_every_size_up_to_its_bound() -> None:
    """Bodies in the first bucket (none, or up to its bound) count there and add to the sum."""
    rt, _ = runtime_for("reviews-v2-7d9f8c6b5d-x2k4q")
    rt.metrics = MetricsStore((100.0, 1000.0))
    for size in (0, 0, 50, 100, 101, 5000):
        rt.metrics.record_http(request("inbound", "inbound|9080||", "10.0.0.5", received=size,
                                       sent=size), rt)  # fmt: skip
    [series] = rt.metrics.requests.values()
    assert series.count == 6
    for histogram in (series.request_bytes, series.response_bytes):
        assert (histogram.counts, histogram.sum, histogram.count) == ([4, 1, 1], 5251, 6)
    text = render(rt.metrics, {}).decode()
    assert re.search(r'istio_request_bytes_bucket\{[^}]*le="100.0"[^}]*\} 4', text)
    assert re.search(r'istio_request_bytes_count\{[^}]*\} 6', text)


@pytest.mark.parametrize(
    ("bounds", "ms", "bucket"),
    [((0.3, 1.7, 9.0), 0.29, 0.3), ((0.3, 1.7, 9.0), 0.3, 0.3), ((0.3, 1.7, 9.0), 0.31, 1.7),
     ((0.3, 1.7, 9.0), 1.71, 9.0), ((0.5, 1.7, 9.0), 0.4, 0.5), ((0.5, 1.7, 9.0), 1.2, 1.7),
     ((0.5, 1.7, 9.0), 1.6, 1.7), ((0.5, 1.7, 9.0), 1.7, 1.7), ((0.5, 1.7, 9.0), 1.8, 9.0),
     ((0.5, 1.7, 9.0), 20.0, float("inf"))],
)  # fmt: skip
def test_bounds_off_the_half_millisecond_grid_are_exact(
    bounds: tuple[float, ...], ms: float, bucket: float
) -> None:
    """Custom bounds that are not multiples of 0.5 ms end the half-millisecond table before the
    first interval they split: durations from there on bisect, and land where they belong."""
    rt, _ = runtime_for("reviews-v2-7d9f8c6b5d-x2k4q")
    rt.metrics = MetricsStore(bounds)
    rt.metrics.record_http(request("inbound", "inbound|9080||", "10.0.0.5", ms=ms), rt)
    [series] = rt.metrics.requests.values()
    assert series.duration.counts[(*bounds, float("inf")).index(bucket)] == 1
    assert series.duration.sum == pytest.approx(ms, abs=1e-9)


def test_merge_sums_series_of_two_stores() -> None:
    rt1, _ = runtime_for("reviews-v2-7d9f8c6b5d-x2k4q")
    rt2, _ = runtime_for("reviews-v2-7d9f8c6b5d-x2k4q")
    for _ in range(3):
        rt1.metrics.record_http(request("inbound", "inbound|9080||", "10.0.0.5", sent=10), rt1)
    rt2.metrics.record_http(request("inbound", "inbound|9080||", "10.0.0.5", sent=5), rt2)
    rt2.metrics.record_http(request("inbound", "inbound|9080||", "192.0.2.1", 500), rt2)
    tcp = request("inbound", "inbound|9080||", "10.0.0.5", sent=7, received=9)
    rt2.metrics.tcp_opened(tcp, rt2)
    rt2.metrics.tcp_closed(tcp, rt2)
    merged = rt1.metrics.merge(rt2.metrics)
    counts = sorted(s.count for s in merged.requests.values())
    assert counts == [1, 4]
    big = max(merged.requests.values(), key=lambda s: s.count)
    assert big.response_bytes.sum == 35
    assert big.response_bytes.counts[DEFAULT_BUCKETS.index(10)] == 3
    assert big.response_bytes.counts[DEFAULT_BUCKETS.index(5)] == 1
    [t] = merged.tcp.values()
    assert (t.opened, t.closed, t.sent, t.received) == (1, 1, 7, 9)
    assert rt1.metrics.requests  # the inputs are unchanged
    assert sum(s.count for s in rt1.metrics.requests.values()) == 3
    with pytest.raises(ValueError):
        rt1.metrics.merge(MetricsStore((1.0, 2.0)))


def test_render_escapes_label_values_and_names_envoy_stats() -> None:
    rt, _ = runtime_for("reviews-v2-7d9f8c6b5d-x2k4q")
    rt.metrics.record_http(request("inbound", "inbound|9080||", "10.0.0.5"), rt)
    text = render(rt.metrics, {
        'cluster.out|80||a"b.upstream_rq_total': 3,
        "http.all.downstream_rq_active": 1,
        "server.live": 1,
    }).decode()  # fmt: skip
    assert 'envoy_cluster_upstream_rq_total{cluster_name="out|80||a\\"b"} 3' in text
    assert "# TYPE envoy_http_downstream_rq_active gauge" in text
    assert 'envoy_http_downstream_rq_active{envoy_http_conn_manager_prefix="all"} 1' in text
    assert "envoy_server_live 1" in text
    assert "# TYPE istio_requests_total counter" in text
    assert "# TYPE istio_response_bytes histogram" in text
    assert envoy_name("listener_manager.total_listeners_active") == (
        "envoy_listener_manager_total_listeners_active", {})


def test_workload_names() -> None:
    assert ml.workload_name("reviews-v1-545db77b95-x2k4q", frozenset()) == "reviews-v1"
    assert ml.workload_name("a-1", frozenset()) == "a-1"
    assert ml.workload_name("web-abc-def", frozenset({("pod-template-hash", "abc")})) == "web"
    assert ml.spiffe_id("cluster.local", "ns", "sa") == "spiffe://cluster.local/ns/ns/sa/sa"
