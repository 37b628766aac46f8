"""Zipkin tracing as Envoy does it in an Istio sidecar: one span per sampled request.

Theory of operation: the server makes a `Tracer` only when `Bootstrap.tracing.zipkin_address` is
set (`Runtime.tracer` is None otherwise, and the request path tests only that). When a request
head has been routed (`begin`, before anything else happens to it), its trace headers are read
(tracing_context.py; only when the codec saw one: `RequestHead.traced`) and the sampling
decided: the caller's decision wins, `x-b3-flags: 1` forces, else a random draw against the
configured percentage. An unsampled request gets no record; only its decision is propagated
upstream (`x-b3-sampled: 0`), so the next proxy does not draw again. The usual request, with
no trace header, is settled inline by the request path (active_stream.py) without a draw of
its own: the tracer keeps how many such requests go unsampled before the next one is sampled
(`untraced`, a geometric draw made when it runs out: the same odds, request by request, as a
draw each), and the request path counts it down and sets `RequestHead.not_sampled`, which the
encoders write; no call, no allocation. A sampled request gets a small slotted `SpanRecord` on
its StreamInfo (ids, name, url) and its upstream head carries the child context: this proxy's
span id, with the caller's span as parent.

When the request ends (`finish`, from stream_info.finish_request), what the span needs of the
record and the StreamInfo goes to the export queue (tracing_export.py) packed in one bytes object
(marshal), so none of the request's objects outlives it. The export thread makes it one
`FinishedSpan` with Envoy's tags, kind CLIENT on outbound listeners and SERVER on inbound ones
(`span_of`), and posts it: the event loop does none of that work.

Span names are Envoy's: the route's decorator operation, which the translator sets as Istio does
(`reviews.default.svc.cluster.local:9080/*` for a service without a VirtualService; a VS route's
`host:port` + `/*`, `prefix*`, the exact path or the regex, or `vs-name:port...` for a split).
The client side sends it upstream as `x-envoy-decorator-operation`; the server side takes its
span name from that header when present (else its own inbound route's `fqdn:port/*`) and removes
it. Without a decorator (no route, passthrough) the names are Envoy's `egress HOST` / `ingress`.
Tags are those of Envoy's HttpTracerUtility, gRPC's included (`grpc.status_code`, and
`error=true` for the statuses Envoy counts as upstream errors).
"""

from __future__ import annotations

import math
import os
import random
import sys
from marshal import dumps, loads
from typing import TYPE_CHECKING

from sidecar.observability.tracing_context import (
    NO_CONTEXT,
    extract,
    inject,
    inject_unsampled,
)
from sidecar.observability.tracing_export import FinishedSpan, SpanQueue, SpanRecord
from sidecar.outcome import ResponseFlag

if TYPE_CHECKING:
    from sidecar.bootstrap import Bootstrap
    from sidecar.config.snapshot import Route
    from sidecar.http.stream import RequestHead
    from sidecar.runtime import Runtime, StreamInfo


# gRPC statuses Envoy tags error=true (upstream errors; client-side ones are not).
GRPC_ERRORS = frozenset({2, 4, 8, 12, 13, 14, 15})
MAX_PATH_TAG = 256  # Envoy's default max_path_tag_length for http.url
NEVER = sys.maxsize  # the gap of a tracer that samples nothing


def grpc_request_tags(head: RequestHead) -> dict[str, str]:
    """Envoy's request tags of a gRPC call: grpc.path, grpc.authority, grpc.content_type and
    grpc.timeout (those present)."""
    tags = {"grpc.path": head.path.decode("latin-1")}
    if head.authority:
        tags["grpc.authority"] = head.authority.decode("latin-1")
    for tag, header in (("grpc.content_type", b"content-type"), ("grpc.timeout", b"grpc-timeout")):
        value = head.header(header)
        if value is not None:
            tags[tag] = value.decode("latin-1")
    return tags


def zipkin_endpoint(address: str) -> str:
    """The collector's span intake URL for ProxyConfig's `host:port` (a URL is taken as is)."""
    if address.startswith(("http://", "https://")):
        return address
    return f"http://{address}/api/v2/spans"


class Tracer:
    """Sampling, context propagation and span reporting for one proxy process."""

    def __init__(self, bootstrap: Bootstrap) -> None:
        self.sampling = bootstrap.tracing.sampling
        self.node_id = bootstrap.node_id
        tracing = bootstrap.tracing
        self.queue = SpanQueue(zipkin_endpoint(tracing.zipkin_address), self.span_of,
                               interval=tracing.flush_interval)  # fmt: skip
        self._rng = random.Random()
        self.draw = self._rng.random  # `draw() < fraction`: sampled (a caller left it to us)
        self.fraction = self.sampling / 100.0
        self._log_miss = math.log1p(-self.fraction) if 0.0 < self.fraction < 1.0 else 0.0
        # Requests without trace headers still to go unsampled before the next one is sampled
        # (`gap`): the request path counts it down inline, no draw per request.
        self.untraced = self.gap()
        if hasattr(os, "register_at_fork"):  # worker processes must not repeat span ids
            os.register_at_fork(after_in_child=self._reseed)
        self._service_of: tuple[object, str, str] = (None, "", "")  # snapshot, service, zone
        self._fallback_service = f"{bootstrap.pod_name or 'unknown'}.{bootstrap.pod_namespace}"

    def gap(self) -> int:
        """How many requests go unsampled before the next one is: a geometric draw (failures
        before the first success, P(k) = (1 - f)^k f), so each request is sampled with
        probability `fraction`, independently of the others, exactly as by a draw per request.
        `floor(log(U) / log(1 - f))` for U uniform on (0, 1]."""
        if self.fraction >= 1.0:
            return 0
        if self.fraction <= 0.0:
            return NEVER
        return int(math.log(1.0 - self.draw()) / self._log_miss)

    def _reseed(self) -> None:
        self._rng.seed()
        self.untraced = self.gap()

    # request start ---------------------------------------------------------------------------

    def begin(self, head: RequestHead, info: StreamInfo, route: Route | None) -> None:
        """A new request (routed to `route`, None when no route matched) that came with trace
        headers (`head.traced`: the caller's decision, else a draw, decides) or that the request
        path sampled (its `untraced` ran out); rewrites its trace headers for upstream. (The
        usual request has neither: the request path only sets `head.not_sampled`.)"""
        if head.traced:
            ctx = extract(head.headers)
            sampled = ctx.sampled
            if sampled is None:
                sampled = self.draw() < self.fraction
            if not sampled:
                head.headers = inject_unsampled(head.headers, ctx)
                return
        else:  # sampled by the countdown: the next gap
            ctx = NO_CONTEXT
            self.untraced = self.gap()
        present = ctx is not NO_CONTEXT
        rng = self._rng
        trace_id = ctx.trace_id or rng.getrandbits(128) or 1
        span_id = rng.getrandbits(64) or 1
        authority = head.authority.decode("latin-1")
        operation = route.operation if route is not None else ""
        if info.direction == "inbound":
            name = ctx.operation.decode("latin-1") or operation or "ingress"
            send = b""
        else:
            name = operation or f"egress {authority}"
            send = operation.encode("latin-1")
        head.headers = inject(
            head.headers, present, trace_id, span_id, ctx.span_id, ctx.debug, send
        )  # fmt: skip
        path = head.path[:MAX_PATH_TAG].decode("latin-1")
        url = f"{head.scheme.decode('latin-1')}://{authority}{path}"
        extra = grpc_request_tags(head) if head.grpc else None
        record = SpanRecord(trace_id, span_id, ctx.span_id, ctx.debug, name, url, extra)
        info.trace = record
        if head.request_id is not None:
            record.request_id = head.request_id.decode("latin-1")

    # request end -----------------------------------------------------------------------------

    def finish(self, record: SpanRecord, info: StreamInfo, runtime: Runtime) -> None:
        """Queue the request's span as one bytes object, what its tags need packed by marshal
        (C, a few microseconds); the export thread makes the span from it (`span_of`).

        Only that object stays alive until the post, up to `--zipkin-flush-interval` later:
        keeping the request's own objects (record, StreamInfo, heads) that long cost every
        request ~2% of its CPU at 1% sampling (benchmarks/README.md, sixth pass). The blocks
        they pin keep the allocator from reusing the cache-hot blocks each request frees."""
        service, zone = self._service(runtime)
        self.queue.submit(dumps((
            record.trace_id, record.span_id, record.parent_id, record.debug, record.name,
            record.url, record.extra,
            record.request_id if info.request_id == "-" else info.request_id,
            info.method, info.protocol, info.response_code, info.grpc_status,
            info.upstream_cluster, info.upstream_host, info.downstream_remote_ip,
            info.bytes_received, info.bytes_sent, info.response_flags._value_, info.user_agent,
            info.direction == "outbound", info.start_time, info.start_mono, info.end_mono,
            service, zone,
        )))  # fmt: skip

    def span_of(self, ended: bytes) -> FinishedSpan:
        """The span, with Envoy's tags, of a request `finish` packed (run by the export
        thread)."""
        (trace_id, span_id, parent_id, debug, name, url, extra, request_id, method, protocol,
         code, grpc_status, cluster, host, peer, received, sent, flags, user_agent, client,
         start_time, start_mono, end_mono, service, zone) = loads(ended)  # fmt: skip
        record = SpanRecord(trace_id, span_id, parent_id, debug, name, url, extra)
        tags = {
            "component": "proxy",
            "node_id": self.node_id,
            "guid:x-request-id": request_id,
            "http.url": url,
            "http.method": method,
            "http.protocol": protocol,
            "http.status_code": str(code),
            "downstream_cluster": "-",
            "upstream_cluster": cluster,
            "upstream_cluster.name": cluster,
            "upstream_address": host,
            "peer.address": peer,
            "request_size": str(received),
            "response_size": str(sent),
            "response_flags": ResponseFlag(flags).code(),
            "user_agent": user_agent,
        }
        if zone:
            tags["zone"] = zone
        if extra is not None:
            tags.update(extra)
        if grpc_status is not None:
            tags["grpc.status_code"] = str(grpc_status)
        if code == 0 or code >= 500 or grpc_status in GRPC_ERRORS:
            tags["error"] = "true"
        start_ns = int(start_time * 1e9)
        duration_ns = int(((end_mono or start_mono) - start_mono) * 1e9)
        return FinishedSpan(
            record, client, start_ns, start_ns + max(duration_ns, 1000), service, tags
        )  # fmt: skip

    def _service(self, runtime: Runtime) -> tuple[str, str]:
        """Istio's serviceName ("app.namespace") and zone of this proxy's workload, computed
        once per snapshot."""
        snap = runtime.snapshot
        cached_snap, service, zone = self._service_of
        if snap is cached_snap and service:
            return service, zone
        if snap is None:
            return self._fallback_service, ""
        w = snap.workload
        app = w.label("app") or w.label("app.kubernetes.io/name") or w.name or "unknown"
        service = f"{app}.{w.namespace}"
        parts = w.locality.split("/")
        zone = parts[1] if len(parts) > 1 else ""
        self._service_of = (snap, service, zone)
        return service, zone

    def stats(self) -> dict[str, int]:
        """Envoy's tracing.zipkin.* counters."""
        c = self.queue.counters
        return {
            "tracing.zipkin.spans_sent": c.spans_sent,
            "tracing.zipkin.reports_sent": c.reports_sent,
            "tracing.zipkin.reports_failed": c.reports_failed,
            "tracing.zipkin.spans_dropped": c.spans_dropped,
        }

    def close(self) -> None:
        """Post the spans still queued (bounded) and stop the export thread."""
        self.queue.close()


def make_tracer(bootstrap: Bootstrap) -> Tracer | None:
    """A tracer when a Zipkin address is configured; None (tracing off, no cost) otherwise."""
    return Tracer(bootstrap) if bootstrap.tracing.zipkin_address else None
