"""A sampled request's span, as the export thread makes it from what `Tracer.finish` queued: one
bytes object per request (nothing of the request itself outlives it), and from it Envoy's tags,
the span's ids, kind and times."""

from __future__ import annotations

from sidecar.bootstrap import Bootstrap, Tracing
from sidecar.observability.access_log import NullAccessLogger
from sidecar.observability.tracing import Tracer
from sidecar.observability.tracing_export import SpanRecord
from sidecar.outcome import ResponseFlag
from sidecar.runtime import Runtime, StreamInfo
from sidecar.upstream.cluster import ClusterManager

START = 1_764_000_000.25
TRACE_ID = 0x4E441824EC2B6A44FFDC9BB9A6453DF3


def tracer_and_runtime() -> tuple[Tracer, Runtime]:
    boot = Bootstrap(pod_name="a-1", pod_namespace="shop",
                     tracing=Tracing(zipkin_address="127.0.0.1:9", sampling=100.0))  # fmt: skip
    return Tracer(boot), Runtime(boot, ClusterManager(), NullAccessLogger())


def grpc_call() -> tuple[SpanRecord, StreamInfo]:
    """An outbound gRPC call that failed upstream (UNAVAILABLE after a retry)."""
    info = StreamInfo(start_time=START)
    info.end_mono = info.start_mono + 0.0123
    info.direction = "outbound"
    info.method, info.protocol = "POST", "HTTP/2"
    info.response_code, info.grpc_status = 200, 14
    info.upstream_cluster = "outbound|8080||b.shop.svc.cluster.local"
    info.upstream_host, info.downstream_remote_ip = "10.0.0.7:8080", "10.0.0.5"
    info.bytes_received, info.bytes_sent = 12, 345
    info.response_flags = ResponseFlag.URX
    info.user_agent = "grpc-python/1.60 \u00e9"
    record = SpanRecord(
        TRACE_ID, 0xFFDC9BB9A6453DF3, 0x6B221D5BC9E6496C, True, "b.shop.svc.cluster.local:8080/*",
        "http://b.shop:8080/pkg.Svc/Call", {"grpc.path": "/pkg.Svc/Call"},
    )  # fmt: skip
    record.request_id = "rid-from-caller"
    return record, info


def test_finish_queues_one_bytes_object_and_the_thread_makes_envoys_span() -> None:
    tracer, runtime = tracer_and_runtime()
    record, info = grpc_call()
    tracer.finish(record, info, runtime)
    (packed,) = tracer.queue._spans  # the thread has not started: nothing was posted
    assert type(packed) is bytes
    span = tracer.span_of(packed)
    r = span.record
    assert (r.trace_id, r.span_id, r.parent_id, r.debug) == (
        TRACE_ID, 0xFFDC9BB9A6453DF3, 0x6B221D5BC9E6496C, True,
    )  # fmt: skip
    assert (r.name, span.client, span.service) == (
        "b.shop.svc.cluster.local:8080/*", True, "a-1.shop",
    )  # fmt: skip
    assert span.start_ns == int(START * 1e9)
    assert abs(span.end_ns - span.start_ns - 12_300_000) <= 1_000
    assert span.tags == {
        "component": "proxy",
        "node_id": tracer.node_id,
        "guid:x-request-id": "rid-from-caller",  # the StreamInfo had none of its own
        "http.url": "http://b.shop:8080/pkg.Svc/Call",
        "http.method": "POST",
        "http.protocol": "HTTP/2",
        "http.status_code": "200",
        "downstream_cluster": "-",
        "upstream_cluster": "outbound|8080||b.shop.svc.cluster.local",
        "upstream_cluster.name": "outbound|8080||b.shop.svc.cluster.local",
        "upstream_address": "10.0.0.7:8080",
        "peer.address": "10.0.0.5",
        "request_size": "12",
        "response_size": "345",
        "response_flags": "URX",
        "user_agent": "grpc-python/1.60 \u00e9",
        "grpc.path": "/pkg.Svc/Call",
        "grpc.status_code": "14",
        "error": "true",  # UNAVAILABLE is an upstream error for Envoy
    }


def test_an_inbound_request_without_response_is_an_error_server_span() -> None:
    tracer, runtime = tracer_and_runtime()
    record, info = grpc_call()
    info.direction, info.response_code, info.grpc_status = "inbound", 0, None
    info.end_mono = 0.0  # never ended: the shortest duration Envoy reports
    info.request_id = "rid-own"
    record.extra = None
    tracer.finish(record, info, runtime)
    span = tracer.span_of(tracer.queue._spans[0])
    assert span.client is False and span.end_ns - span.start_ns == 1_000
    assert span.tags["guid:x-request-id"] == "rid-own"
    assert (span.tags["http.status_code"], span.tags["error"]) == ("0", "true")
    assert "grpc.status_code" not in span.tags and "grpc.path" not in span.tags
