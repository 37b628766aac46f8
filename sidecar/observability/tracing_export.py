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

The OpenTelemetry objects are built in the thread, only for sampled requests: the SDK's span
machinery (TracerProvider, processors, context) is not used, so an unsampled request costs
nothing here. The span's trace flags carry Zipkin's `debug` (the exporter writes `debug: true`
for a "sampled" flag), so they are set only for forced (`x-b3-flags: 1`) traces.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

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

    __slots__ = ("client", "end_ns", "record", "service", "start_ns", "tags")

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


class ExportCounters:
    """Envoy's tracing.zipkin.* stats; each field is written by one thread only."""

    __slots__ = ("reports_failed", "reports_sent", "spans_dropped", "spans_sent")

    def __init__(self) -> None:
        self.spans_sent = 0  # thread
        self.reports_sent = 0  # thread
        self.reports_failed = 0  # thread
        self.spans_dropped = 0  # loop: spans dropped because the queue was full


def readable(span: FinishedSpan, resource: Resource) -> ReadableSpan:
    """The OpenTelemetry span the Zipkin exporter encodes."""
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
        resource=resource,
        attributes=span.tags,
        kind=SpanKind.CLIENT if span.client else SpanKind.SERVER,
        start_time=span.start_ns,
        end_time=span.end_ns,
    )


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
        by_service: dict[str, list[ReadableSpan]] = {}
        for s in spans:
            by_service.setdefault(s.service, []).append(readable(s, self._resource(s.service)))
        for group in by_service.values():
            try:
                # Annotated Sequence[trace.Span], but it reads ReadableSpan's fields (the SDK's
                # BatchSpanProcessor hands it ReadableSpans the same way).
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
