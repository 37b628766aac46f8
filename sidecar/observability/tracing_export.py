"""Sending finished spans to a Zipkin collector, off the event loop.

Theory of operation: the event loop hands each finished span (a `FinishedSpan`: ids, times and
tags, plain data) to `SpanQueue.submit`, which appends it to a deque or, when `max_queued` are
already waiting, drops it and counts the drop: the loop never waits and memory stays bounded. A
daemon thread wakes every `interval` (Envoy's 5 s by default, `--zipkin-flush-interval`; or as
soon as a batch is full: a post costs ~1 ms of CPU whatever its size), builds OpenTelemetry
`ReadableSpan`s from up to `batch` queued spans and posts them with opentelemetry-exporter-zipkin
-json's `ZipkinExporter` (Zipkin v2 JSON) with a timeout. A collector that is down, slow or
answers an error only costs that thread time and counts a failed report; spans that arrive
meanwhile are dropped once the queue is full.

The spans are encoded by `SpanEncoder`, a subclass of the exporter's own `JsonV2Encoder` that
takes `FinishedSpan`s as they are: building an OpenTelemetry `ReadableSpan` per span and passing
each tag through the encoder's generic value conversion cost ~30 us per span on this VM, more
than half the export, which the 1% of sampled requests pays on the proxy's one CPU. The JSON is
the one the stock encoder writes for the equivalent ReadableSpan, byte for byte (a unit test
compares them): the same ids, rounding, kind names, tag order (the span's, then the resource's
`service.name`) and `json.dumps`. Tags are str by construction, so none needs converting. The
SDK's span machinery (TracerProvider, processors, context) is not used either, so an unsampled
request costs nothing here. Zipkin's `debug` is written only for forced (`x-b3-flags: 1`)
traces, as the stock encoder does for a span whose trace flags say "sampled".
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace.export import SpanExportResult

log = logging.getLogger(__name__)


class SpanRecord:
    """What a sampled request keeps until it ends."""

    __slots__ = ("debug", "extra", "name", "parent_id", "request_id", "span_id", "trace_id", "url")

    def __init__(
        self, trace_id: int, span_id: int, parent_id: int, debug: bool, name: str, url: str,
        extra: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.debug = debug
        self.name = name
        self.url = url
        self.extra = extra  # request tags of gRPC calls
        self.request_id = "-"  # the caller's x-request-id (local replies never set the info's)


class FinishedSpan:
    """One span ready to export (built on the loop, read by the thread): the request's record
    and what its end added."""

    __slots__ = ("client", "end_ns", "record", "resource", "service", "start_ns", "tags")

    def __init__(
        self, record: SpanRecord, client: bool, start_ns: int, end_ns: int, service: str,
        tags: dict[str, str],
    ) -> None:  # fmt: skip
        self.record = record
        self.client = client
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.service = service
        self.tags = tags
        # The exporter reads the batch's service name from its first span's resource; set by
        # the export thread (SpanQueue._post).
        self.resource: Resource | None = None


class ExportCounters:
    """Envoy's tracing.zipkin.* stats; each field is written by one thread only."""

    __slots__ = ("reports_failed", "reports_sent", "spans_dropped", "spans_sent")

    def __init__(self) -> None:
        self.spans_sent = 0  # thread
        self.reports_sent = 0  # thread
        self.reports_failed = 0  # thread
        self.spans_dropped = 0  # loop: spans dropped because the queue was full


class SpanEncoder(JsonV2Encoder):
    """OpenTelemetry's Zipkin v2 JSON encoder, given FinishedSpans instead of ReadableSpans
    (the JSON is the same; see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(max_tag_value_length=0)  # no cut, as the exporter's default (None)

    def _encode_span(  # type: ignore[override]  # the proxy's spans, not the SDK's
        self, span: FinishedSpan, encoded_local_endpoint: dict[str, object],
    ) -> dict[str, object]:  # fmt: skip
        r = span.record
        encoded: dict[str, object] = {
            "traceId": self._encode_trace_id(r.trace_id),
            "id": self._encode_span_id(r.span_id),
            "name": r.name,
            "timestamp": (span.start_ns + 500) // 1000,
            "duration": (span.end_ns - span.start_ns + 500) // 1000,
            "localEndpoint": encoded_local_endpoint,
            "kind": "CLIENT" if span.client else "SERVER",
            "tags": {**span.tags, SERVICE_NAME: span.service},
        }
        if r.debug:
            encoded["debug"] = True
        if r.parent_id:
            encoded["parentId"] = self._encode_span_id(r.parent_id)
        return encoded


class SpanQueue:
    """A bounded queue of finished spans and the thread that posts them."""

    def __init__(
        self, endpoint: str, max_queued: int = 4096, batch: int = 256,
        interval: float = 5.0, timeout: int = 2,
    ) -> None:  # fmt: skip
        self.endpoint = endpoint
        self.max_queued = max_queued
        self.batch = batch
        self.interval = interval
        self.timeout = timeout
        self.counters = ExportCounters()
        self._spans: deque[FinishedSpan] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._resources: dict[str, Resource] = {}
        self._failing = False

    def submit(self, span: FinishedSpan) -> None:
        """Queue a span (event loop); never blocks: a full queue drops it."""
        spans = self._spans
        n = len(spans)
        if n >= self.max_queued:
            self.counters.spans_dropped += 1
            return
        spans.append(span)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zipkin-export", daemon=True)
            self._thread.start()
        elif n + 1 == self.batch:
            self._wake.set()

    def close(self, timeout: float = 2.0) -> None:
        """Post what is queued (bounded by `timeout`) and stop the thread."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        exporter = ZipkinExporter(endpoint=self.endpoint, timeout=self.timeout)
        # The attribute is typed by the constructor's V1 branch; V2 is a JsonV2Encoder.
        exporter.encoder = SpanEncoder()  # type: ignore[assignment]
        exporter.session.trust_env = False  # no HTTP(S)_PROXY detour to the collector
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            while self._spans:
                self._post(exporter, self._take())
            if self._stopping:
                return

    def _take(self) -> list[FinishedSpan]:
        spans = self._spans
        out: list[FinishedSpan] = []
        while spans and len(out) < self.batch:
            out.append(spans.popleft())
        return out

    def _resource(self, service: str) -> Resource:
        res = self._resources.get(service)
        if res is None:
            res = self._resources[service] = Resource({SERVICE_NAME: service})
        return res

    def _post(self, exporter: ZipkinExporter, spans: list[FinishedSpan]) -> None:
        # The exporter takes localEndpoint.serviceName from a batch's first span: one post per
        # service name (one in practice: the proxy's workload).
        by_service: dict[str, list[FinishedSpan]] = {}
        for s in spans:
            s.resource = self._resource(s.service)
            by_service.setdefault(s.service, []).append(s)
        for group in by_service.values():
            try:
                # Annotated Sequence[trace.Span]; it reads the first span's resource and hands
                # the batch to its encoder, a SpanEncoder.
                result = exporter.export(group)  # type: ignore[arg-type]
                ok = result is SpanExportResult.SUCCESS
            except (OSError, ValueError) as exc:  # requests' errors: refused, timed out, reset
                ok = False
                if not self._failing:
                    log.warning("zipkin: cannot post spans to %s: %s", self.endpoint, exc)
            c = self.counters
            if ok:
                c.reports_sent += 1
                c.spans_sent += len(group)
            else:
                c.reports_failed += 1
            self._failing = not ok
