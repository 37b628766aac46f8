"""The proxy's Zipkin span encoder (tracing_export.SpanEncoder) writes exactly what
OpenTelemetry's stock Zipkin v2 encoder writes for the equivalent ReadableSpan, byte for byte, and
what it writes is valid Zipkin v2."""

from __future__ import annotations

import json

from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.exporter.zipkin.node_endpoint import NodeEndpoint
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from sidecar.observability.tracing_export import FinishedSpan, SpanEncoder, SpanRecord
from tests.integration.zipkin_schema import assert_valid

START_NS = 1_764_000_000_123_456_789


def reference(span: FinishedSpan) -> ReadableSpan:
    """The OpenTelemetry span that describes `span` (what the exporter's users hand it)."""
    r = span.record
    flags = TraceFlags(TraceFlags.SAMPLED if r.debug else TraceFlags.DEFAULT)
    ctx = SpanContext(r.trace_id, r.span_id, is_remote=False, trace_flags=flags)
    parent = (
        SpanContext(r.trace_id, r.parent_id, is_remote=True, trace_flags=flags)
        if r.parent_id else None
    )  # fmt: skip
    return ReadableSpan(
        name=r.name,
        context=ctx,
        parent=parent,
        resource=Resource({SERVICE_NAME: span.service}),
        attributes=span.tags,
        kind=SpanKind.CLIENT if span.client else SpanKind.SERVER,
        start_time=span.start_ns,
        end_time=span.end_ns,
    )


def spans() -> list[FinishedSpan]:
    """Spans as the tracer makes them: client and server, root and child, forced (debug),
    gRPC tags, error, and values a client controls (quotes, backslashes, non-ASCII, control
    characters) that JSON must escape."""
    tags = {
        "component": "proxy",
        "node_id": "sidecar~10.0.0.1~a-1.default~default.svc.cluster.local",
        "guid:x-request-id": '7f"quoted\\id',
        "http.url": "http://b.default:8080/caf\u00e9/\u2603?q=\x01",
        "http.method": "GET",
        "http.protocol": "HTTP/1.1",
        "http.status_code": "200",
        "upstream_cluster": "outbound|8080||b.default.svc.cluster.local",
        "user_agent": "curl/8.0 \U0001f600",
    }
    grpc = dict(tags, **{"grpc.path": "/pkg.Svc/Call", "grpc.status_code": "14", "error": "true"})
    out = []
    for i, (client, parent, debug, t) in enumerate([
        (True, 0, False, tags),  # a root span (the client side of a new trace)
        (False, 0x6B221D5BC9E6496C, False, tags),  # a server span below its caller's
        (True, 0x1, True, grpc),  # forced, gRPC, error
        (False, 0xFFFFFFFFFFFFFFFF, False, {}),  # no tags at all
    ]):
        record = SpanRecord(
            0x4E441824EC2B6A44FFDC9BB9A6453DF3 >> (64 * (i % 2)), 0xFFDC9BB9A6453DF3 - i, parent,
            debug, f"b.default.svc.cluster.local:8080/{i}*", "http://b/",
        )  # fmt: skip
        start = START_NS + i * 1_000_499
        out.append(FinishedSpan(record, client, start, start + 1_499 + i * 500, "a.default", t))
    return out


def test_the_same_json_as_the_stock_encoder_for_the_equivalent_readable_spans() -> None:
    node = NodeEndpoint()
    node.service_name = "a.default"
    stock = ZipkinExporter().encoder  # the exporter's default: Zipkin v2 JSON
    batch = spans()
    ours = SpanEncoder().serialize(batch, node)  # type: ignore[arg-type]
    theirs = stock.serialize([reference(s) for s in batch], node)  # type: ignore[arg-type]
    assert ours == theirs
    decoded = json.loads(ours)
    assert [s.get("debug") for s in decoded] == [None, None, True, None]
    assert [s.get("parentId") for s in decoded] == [
        None, "6b221d5bc9e6496c", "0000000000000001", "ffffffffffffffff",
    ]  # fmt: skip
    assert decoded[1]["traceId"] == "00000000000000004e441824ec2b6a44"  # a 64-bit trace id
    assert decoded[0]["timestamp"] == (START_NS + 500) // 1000
    assert decoded[0]["tags"]["service.name"] == "a.default"


def test_every_encoded_span_is_valid_zipkin_v2() -> None:
    node = NodeEndpoint()
    node.service_name = "a.default"
    assert_valid(json.loads(SpanEncoder().serialize(spans(), node)))  # type: ignore[arg-type]


def test_a_service_name_tag_keeps_its_place_and_takes_the_proxy_s_value() -> None:
    """As the stock encoder merges the resource's service.name over the span's tags."""
    node = NodeEndpoint()
    node.service_name = "a.default"
    [span, *_] = spans()
    span.tags = {"component": "proxy", SERVICE_NAME: "app-set", "http.method": "GET"}
    ours = SpanEncoder().serialize([span], node)  # type: ignore[arg-type]
    theirs = ZipkinExporter().encoder.serialize([reference(span)], node)  # type: ignore[arg-type]
    assert ours == theirs
    assert list(json.loads(ours)[0]["tags"].items()) == [
        ("component", "proxy"), (SERVICE_NAME, "a.default"), ("http.method", "GET"),
    ]  # fmt: skip
