"""Zipkin tracing as Envoy does it in an Istio sidecar: one span per sampled request.

Theory of operation: the server makes a `Tracer` only when `Bootstrap.tracing.zipkin_address` is
set (`Runtime.tracer` is None otherwise, and the request path tests only that). When a request
head arrives (`begin`), its trace headers are read (tracing_context.py) and the sampling decided:
the caller's decision wins, `x-b3-flags: 1` forces, else a random draw against the configured
percentage. An unsampled request gets no record; only its decision is propagated upstream
(`x-b3-sampled: 0`), so the next proxy does not draw again. A sampled request gets a small slotted
`SpanRecord` on its StreamInfo (ids, name, url) and its upstream head carries the child context:
this proxy's span id, with the caller's span as parent.

When the request ends (`finish`, from stream_info.finish_request), the record and the StreamInfo
become one `FinishedSpan` with Envoy's tags, kind CLIENT on outbound listeners and SERVER on
inbound ones, and go to the export queue (tracing_export.py), which posts from its own thread.
Span names follow Istio's `host:port/path` operation names (query string left out).
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

from sidecar.observability.tracing_context import extract, inject, inject_unsampled
from sidecar.observability.tracing_export import FinishedSpan, SpanQueue

if TYPE_CHECKING:
    from sidecar.bootstrap import Bootstrap
    from sidecar.http.stream import RequestHead
    from sidecar.runtime import Runtime, StreamInfo


class SpanRecord:
    """What a sampled request keeps until it ends."""

    __slots__ = ("debug", "name", "parent_id", "span_id", "trace_id", "url")

    def __init__(
        self, trace_id: int, span_id: int, parent_id: int, debug: bool, name: str, url: str
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.debug = debug
        self.name = name
        self.url = url


def zipkin_endpoint(address: str) -> str:
    """The collector's span intake URL for ProxyConfig's `host:port` (a URL is taken as is)."""
    if address.startswith(("http://", "https://")):
        return address
    return f"http://{address}/api/v2/spans"


class Tracer:
    """Sampling, context propagation and span reporting for one proxy process."""

    def __init__(self, bootstrap: Bootstrap, queue: SpanQueue | None = None) -> None:
        self.sampling = bootstrap.tracing.sampling
        self.node_id = bootstrap.node_id
        self.queue = SpanQueue(zipkin_endpoint(bootstrap.tracing.zipkin_address)) \
            if queue is None else queue  # fmt: skip
        self._rng = random.Random()
        if hasattr(os, "register_at_fork"):  # worker processes must not repeat span ids
            os.register_at_fork(after_in_child=self._rng.seed)
        self._service_of: tuple[object, str, str] = (None, "", "")  # snapshot, service, zone
        self._fallback_service = f"{bootstrap.pod_name or 'unknown'}.{bootstrap.pod_namespace}"

    # request start ---------------------------------------------------------------------------

    def begin(self, head: RequestHead, info: StreamInfo) -> None:
        """Decide sampling for a new request and rewrite its trace headers for upstream."""
        ctx, present = extract(head.headers)
        sampled = ctx.sampled
        if sampled is None:
            sampled = self._rng.random() * 100.0 < self.sampling
        if not sampled:
            head.headers = inject_unsampled(head.headers, ctx, present)
            return
        rng = self._rng
        trace_id = ctx.trace_id or rng.getrandbits(128) or 1
        span_id = rng.getrandbits(64) or 1
        head.headers = inject(head.headers, present, trace_id, span_id, ctx.span_id, ctx.debug)
        authority = head.authority.decode("latin-1") if head.authority else ""
        if authority and ":" not in authority.rsplit("]", 1)[-1]:
            authority += ":" + info.downstream_local_address.rsplit(":", 1)[-1]
        path = head.path.decode("latin-1")
        name = authority + path.split("?", 1)[0]
        url = f"{head.scheme.decode('latin-1')}://{authority}{path}"
        info.trace = SpanRecord(trace_id, span_id, ctx.span_id, ctx.debug, name, url)

    # request end -----------------------------------------------------------------------------

    def finish(self, record: SpanRecord, info: StreamInfo, runtime: Runtime) -> None:
        """Report the request's span (queued; posted by the export thread)."""
        service, zone = self._service(runtime)
        code = info.response_code
        tags = {
            "component": "proxy",
            "node_id": self.node_id,
            "guid:x-request-id": info.request_id,
            "http.url": record.url,
            "http.method": info.method,
            "http.protocol": info.protocol,
            "http.status_code": str(code),
            "upstream_cluster": info.upstream_cluster,
            "upstream_address": info.upstream_host,
            "peer.address": info.downstream_remote_address,
            "request_size": str(info.bytes_received),
            "response_size": str(info.bytes_sent),
            "response_flags": info.response_flags.code(),
            "user_agent": info.user_agent,
        }
        if zone:
            tags["zone"] = zone
        if code == 0 or code >= 500:
            tags["error"] = "true"
        start_ns = int(info.start_time * 1e9)
        duration_ns = int(((info.end_mono or info.start_mono) - info.start_mono) * 1e9)
        self.queue.submit(FinishedSpan(
            record.trace_id, record.span_id, record.parent_id, record.debug, record.name,
            info.direction == "outbound", start_ns, start_ns + max(duration_ns, 1000),
            service, tags,
        ))  # fmt: skip

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
