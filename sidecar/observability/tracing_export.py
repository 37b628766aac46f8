"""Sending finished spans to a Zipkin collector, off the event loop.

Theory of operation: the event loop hands each ended request it sampled (what the tracer keeps of
it: one bytes object, Tracer.finish) to `SpanQueue.submit`, which appends it to a deque or, when
`max_queued` are already waiting, drops it and counts the drop: the loop never waits and memory
stays bounded. A daemon thread wakes every `interval` (Envoy's 5 s by default,
`--zipkin-flush-interval`), makes the queued requests' spans (`to_span`: a `FinishedSpan` each,
ids, times and tags as plain data) and posts them, up to `batch` spans per post, with
opentelemetry-exporter-zipkin-json's `ZipkinExporter` (Zipkin v2 JSON) and a timeout. A full batch
wakes it early, and then only full batches go: a post costs ~1-2 ms of CPU whatever its size, so
the few spans behind a batch wait for the timer rather than cost a post of their own. A collector
that is down, slow or answers an error only costs that thread time and counts a failed report;
spans that arrive meanwhile are dropped once the queue is full.

The spans are encoded by `SpanEncoder`, a subclass of the exporter's own `JsonV2Encoder` that
takes `FinishedSpan`s as they are and writes each one's JSON text directly: one format string
per span, its tags joined by C-level maps, strings escaped by json's own C escaper. Building an
OpenTelemetry `ReadableSpan` per span, converting each tag and `json.dumps` of the encoder's
dicts cost 85k instructions per span, this 55k; on the proxy's one CPU the 1% of sampled
requests pay it. The JSON is the one the stock encoder writes for the equivalent ReadableSpan,
byte for byte (a unit test compares them): the same ids, rounding, kind names, key and tag order
(the span's tags, then the resource's `service.name`) and json.dumps' separators and escapes.
Tags are str by construction, so none needs converting. The SDK's span machinery
(TracerProvider, processors, context) is not used either, so an unsampled request costs nothing
here. Zipkin's `debug` is written only for forced (`x-b3-flags: 1`) traces, as the stock encoder
does for a span whose trace flags say "sampled".
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii as _quote  # json's C string escaper
from operator import add
from typing import Generic, TypeVar

from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
from opentelemetry.exporter.zipkin.node_endpoint import NodeEndpoint
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace.export import SpanExportResult

log = logging.getLogger(__name__)
E = TypeVar("E")  # what the queue holds of one ended request until its span is made


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

    def serialize(  # type: ignore[override]  # the proxy's spans, not the SDK's
        self, spans: Sequence[FinishedSpan], local_endpoint: NodeEndpoint,
    ) -> str:  # fmt: skip
        endpoint = json.dumps(self._encode_local_endpoint(local_endpoint))
        return "[" + ", ".join([_span_json(span, endpoint) for span in spans]) + "]"


# One span as json.dumps writes the stock encoder's dict for it (keys in its order, its default
# separators), formatted directly: no dict per span, and the tags joined by C-level maps. Strings
# are escaped by json's own C escaper; tag names repeat in every span, so each is escaped once.
_SPAN = (
    '{"traceId": "%032x", "id": "%016x", "name": %s, "timestamp": %d, "duration": %d, '
    '"localEndpoint": %s, "kind": "%s", "tags": {%s}%s}'
)


class _QuotedNames(dict[str, str]):
    """Tag name -> its JSON string and the separator, escaped on first use."""

    def __missing__(self, name: str) -> str:
        if len(self) >= 1024:  # the tracer's own names: bounded anyway
            self.clear()
        quoted = self[name] = _quote(name) + ": "
        return quoted


_NAMES = _QuotedNames()
_SERVICE_TAG = _NAMES[SERVICE_NAME]


def _span_json(span: FinishedSpan, endpoint: str) -> str:
    r = span.record
    tags = span.tags
    service: str | None = _SERVICE_TAG + _quote(span.service)
    if SERVICE_NAME in tags:  # keeps its place, as {**tags, SERVICE_NAME: ...} does
        tags = {**tags, SERVICE_NAME: span.service}
        service = None
    pairs = [*map(add, map(_NAMES.__getitem__, tags), map(_quote, tags.values()))]
    if service is not None:
        pairs.append(service)
    tail = ', "debug": true' if r.debug else ""
    if r.parent_id:
        tail += f', "parentId": "{r.parent_id:016x}"'
    start = span.start_ns
    return _SPAN % (
        r.trace_id, r.span_id, _quote(r.name), (start + 500) // 1000,
        (span.end_ns - start + 500) // 1000, endpoint, "CLIENT" if span.client else "SERVER",
        ", ".join(pairs), tail,
    )  # fmt: skip


class SpanQueue(Generic[E]):
    """A bounded queue of ended requests (E: whatever the tracer keeps of one) and the thread
    that makes their spans (`to_span`) and posts them."""

    def __init__(
        self, endpoint: str, to_span: Callable[[E], FinishedSpan], max_queued: int = 4096,
        batch: int = 256, interval: float = 5.0, timeout: int = 2,
    ) -> None:  # fmt: skip
        self.endpoint = endpoint
        self.to_span = to_span
        self.max_queued = max_queued
        self.batch = batch
        self.interval = interval
        self.timeout = timeout
        self.counters = ExportCounters()
        self._spans: deque[E] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._resources: dict[str, Resource] = {}
        self._failing = False

    def submit(self, span: E) -> None:
        """Queue an ended request's span (event loop); never blocks: a full queue drops it."""
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
            woken = self._wake.wait(self.interval)
            self._wake.clear()
            # On the timer (and when stopping) every queued span goes; woken by a full batch,
            # only full batches do: the few spans right behind one wait for the timer instead
            # of costing a post of their own.
            full_only = woken and not self._stopping
            while self._spans and (not full_only or len(self._spans) >= self.batch):
                self._post(exporter, self._take())
            if self._stopping:
                return

    def _take(self) -> list[FinishedSpan]:
        spans = self._spans
        to_span = self.to_span
        out: list[FinishedSpan] = []
        while spans and len(out) < self.batch:
            out.append(to_span(spans.popleft()))
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
