"""Zipkin v2 spans for `sidecar traces`: checked on the way in, kept in a bounded store, queried.

Theory of operation: `decode_spans` turns a POSTed JSON body into span dicts, checking every field
the v2 `Span` definition names (types, lower-hex ids of the right length, the kind enum, integer
microseconds, endpoints, annotations, string tags). The first bad field rejects the whole payload
with a reason naming it, as Zipkin does. Fields the definition does not name are dropped and a
JSON `null` counts as absent (Zipkin's reader does both), so what is kept is what a client may read
back. `TraceStore` keeps traces in an insertion-ordered dict: a trace moves to the end whenever a
span arrives for it and, past `max_traces`, the least recently updated trace is dropped; a trace
keeps at most `max_spans` spans (more are dropped and counted). Queries scan the bounded store.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Span = dict[str, Any]
_HEX = frozenset("0123456789abcdef")
_KINDS = frozenset({"CLIENT", "SERVER", "PRODUCER", "CONSUMER"})
_INT64_MAX = 2**63 - 1
_ZERO_HIGH = "0" * 16


class SpanError(ValueError):
    """A payload that is not a list of valid Zipkin v2 spans; the message says where and why."""


def _hex(value: object, lengths: tuple[int, ...]) -> str | None:
    if not isinstance(value, str) or len(value) not in lengths or not _HEX.issuperset(value):
        got = json.dumps(value)[:40]
        sizes = " or ".join(map(str, lengths))
        return f"must be {sizes} lower-case hex characters, got {got}"
    return None


def _int(value: object, minimum: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, got {json.dumps(value)[:40]}"
    if not minimum <= value <= _INT64_MAX:
        return f"must be between {minimum} and {_INT64_MAX}, got {value}"
    return None


def _typed(kind: type, label: str) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        return None if isinstance(value, kind) else f"must be {label}, got {json.dumps(value)[:40]}"

    return check


def _ip(version: int) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if not isinstance(value, str):
            return "must be a string"
        try:
            parsed = ipaddress.ip_address(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.version != version:
            return f"must be an IPv{version} address, got {value!r}"
        return None

    return check


def _port(value: object) -> str | None:
    error = _int(value, 0)
    if error is None and isinstance(value, int) and value > 65535:
        return f"must be a port number, got {value}"
    return error


_ENDPOINT: dict[str, Callable[[object], str | None]] = {
    "serviceName": _typed(str, "a string"),
    "ipv4": _ip(4),
    "ipv6": _ip(6),
    "port": _port,
}


def _endpoint(value: object) -> str | None:
    if not isinstance(value, dict):
        return "must be an object"
    return _fields(value, _ENDPOINT)[1]


_ANNOTATION: dict[str, Callable[[object], str | None]] = {
    "timestamp": lambda v: _int(v, 0),
    "value": _typed(str, "a string"),
}


def _annotations(value: object) -> str | None:
    if not isinstance(value, list):
        return "must be a list"
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            return f"[{i}] must be an object"
        for key, check in _ANNOTATION.items():
            error = "is required" if item.get(key) is None else check(item[key])
            if error:
                return f"[{i}].{key} {error}"
    return None


def _tags(value: object) -> str | None:
    if not isinstance(value, dict):
        return "must be an object of string values"
    for key, tag in value.items():
        if not isinstance(tag, str):
            return f"[{key!r}] must be a string, got {json.dumps(tag)[:40]}"
    return None


_SPAN: dict[str, Callable[[object], str | None]] = {
    "traceId": lambda v: _hex(v, (16, 32)),
    "id": lambda v: _hex(v, (16,)),
    "parentId": lambda v: _hex(v, (16,)),
    "name": _typed(str, "a string"),
    "kind": lambda v: None if v in _KINDS else f"must be one of {sorted(_KINDS)}, got {v!r}",
    "timestamp": lambda v: _int(v, 0),
    "duration": lambda v: _int(v, 1),
    "debug": _typed(bool, "true or false"),
    "shared": _typed(bool, "true or false"),
    "localEndpoint": _endpoint,
    "remoteEndpoint": _endpoint,
    "annotations": _annotations,
    "tags": _tags,
}
_REQUIRED = ("traceId", "id")


def _fields(
    raw: Mapping[str, object], checks: Mapping[str, Callable[[object], str | None]]
) -> tuple[Span, str | None]:
    kept: Span = {}
    for key, value in raw.items():
        check = checks.get(key)
        if check is None or value is None:
            continue
        error = check(value)
        if error:
            sep = "" if error.startswith("[") else " "
            return kept, f"{key}{sep}{error}"
        kept[key] = value
    return kept, None


def check_span(raw: object) -> tuple[Span, str | None]:
    """The span with only the v2 fields kept, and the first problem found (None: valid)."""
    if not isinstance(raw, dict):
        return {}, "must be a span object"
    for key in _REQUIRED:
        if raw.get(key) is None:
            return {}, f"{key} is required"
    return _fields(raw, _SPAN)


def decode_spans(body: bytes) -> list[Span]:
    """Parse a POSTed ListOfSpans; SpanError names the first problem."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpanError(f"body is not JSON: {exc}") from None
    if not isinstance(payload, list):
        raise SpanError("body must be a JSON list of spans")
    spans: list[Span] = []
    for i, raw in enumerate(payload):
        span, error = check_span(raw)
        if error:
            raise SpanError(f"span {i}: {error}")
        spans.append(span)
    return spans


def trace_key(trace_id: str) -> str:
    """128-bit ids whose high half is zero are the same trace as the 64-bit id."""
    return trace_id[16:] if len(trace_id) == 32 and trace_id.startswith(_ZERO_HIGH) else trace_id


@dataclass(slots=True)
class Trace:
    """The spans of one trace, in arrival order, with what queries and the printer need."""

    trace_id: str
    received_us: int  # wall clock of the first span's arrival, for traces without timestamps
    spans: list[Span] = field(default_factory=list)
    seen: set[tuple[object, ...]] = field(default_factory=set)

    def start_us(self) -> int:
        stamps = [s["timestamp"] for s in self.spans if s.get("timestamp")]
        return min(stamps) if stamps else self.received_us


@dataclass(frozen=True, slots=True)
class TraceQuery:
    """GET /api/v2/traces filters, in the spec's units (endTs, lookback: ms; durations: us)."""

    service_name: str | None = None
    span_name: str | None = None
    annotation_query: str | None = None
    min_duration: int | None = None
    max_duration: int | None = None
    end_ts: int | None = None
    lookback: int | None = None
    limit: int = 10

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> TraceQuery:
        """Build from query parameters; ValueError says which one is bad."""
        ints: dict[str, int | None] = {}
        for name in ("minDuration", "maxDuration", "endTs", "lookback", "limit"):
            text = params.get(name)
            if text is None or text == "":
                ints[name] = None
                continue
            if not text.isdigit():
                raise ValueError(f"{name} must be a non-negative integer, got {text!r}")
            ints[name] = int(text)
        if ints["maxDuration"] is not None and ints["minDuration"] is None:
            raise ValueError("maxDuration is only valid with minDuration")
        limit = ints["limit"]
        if limit == 0:
            raise ValueError("limit must be at least 1")
        return cls(
            service_name=params.get("serviceName") or None,
            span_name=params.get("spanName") or None,
            annotation_query=params.get("annotationQuery") or None,
            min_duration=ints["minDuration"],
            max_duration=ints["maxDuration"],
            end_ts=ints["endTs"],
            lookback=ints["lookback"],
            limit=10 if limit is None else limit,
        )

    def _span_matches(self, span: Span) -> bool:
        if self.service_name is not None:
            local = span.get("localEndpoint") or {}
            if str(local.get("serviceName", "")).lower() != self.service_name.lower():
                return False
        if self.span_name is not None and self.span_name.lower() not in (
            "all", str(span.get("name", "")).lower()
        ):
            return False
        if self.min_duration is not None:
            duration = span.get("duration")
            if duration is None or duration < self.min_duration:
                return False
            if self.max_duration is not None and duration > self.max_duration:
                return False
        return self.annotation_query is None or _annotation_match(span, self.annotation_query)

    def matches(self, trace: Trace, now_ms: int) -> bool:
        """True when the trace starts inside the time window and one span meets every filter."""
        end_ms = now_ms if self.end_ts is None else self.end_ts
        lookback = end_ms if self.lookback is None else self.lookback
        start_ms = trace.start_us() // 1000
        if not end_ms - lookback <= start_ms <= end_ms:
            return False
        return any(self._span_matches(span) for span in trace.spans)


def _annotation_match(span: Span, query: str) -> bool:
    tags: Mapping[str, str] = span.get("tags") or {}
    values = {a["value"] for a in span.get("annotations") or ()}
    for term in (t.strip() for t in query.split(" and ")):
        key, eq, value = term.partition("=")
        if eq and tags.get(key) != value:
            return False
        if not eq and term and term not in values and term not in tags:
            return False
    return True


class TraceStore:
    """Recent traces by id, bounded in trace count and spans per trace."""

    def __init__(self, max_traces: int, max_spans: int) -> None:
        self.max_traces = max_traces
        self.max_spans = max_spans
        self._traces: OrderedDict[str, Trace] = OrderedDict()
        self.spans_accepted = 0
        self.spans_dropped = 0
        self.traces_evicted = 0

    def __len__(self) -> int:
        return len(self._traces)

    def span_count(self) -> int:
        return sum(len(t.spans) for t in self._traces.values())

    def add(self, spans: Iterable[Span]) -> list[str]:
        """Store spans; the keys of the traces they touched, in order of first touch."""
        touched: dict[str, None] = {}
        now_us = time.time_ns() // 1000
        for span in spans:
            key = trace_key(span["traceId"])
            trace = self._traces.get(key)
            if trace is None:
                trace = self._traces[key] = Trace(key, now_us)
            else:
                self._traces.move_to_end(key)
            ident = (span["id"], span.get("kind"), span.get("shared"), span.get("timestamp"))
            if ident in trace.seen:
                continue  # a retransmission
            if len(trace.spans) >= self.max_spans:
                self.spans_dropped += 1
                continue
            trace.seen.add(ident)
            trace.spans.append(span)
            self.spans_accepted += 1
            touched[key] = None
        while len(self._traces) > self.max_traces:
            gone, _ = self._traces.popitem(last=False)
            touched.pop(gone, None)
            self.traces_evicted += 1
        return list(touched)

    def get(self, trace_id: str) -> Trace | None:
        return self._traces.get(trace_key(trace_id))

    def query(self, query: TraceQuery) -> list[Trace]:
        """Matching traces, newest start first, at most `query.limit`."""
        now_ms = time.time_ns() // 1_000_000
        found = [t for t in self._traces.values() if query.matches(t, now_ms)]
        found.sort(key=Trace.start_us, reverse=True)
        return found[: query.limit]

    def services(self) -> list[str]:
        names = {
            span["localEndpoint"]["serviceName"]
            for trace in self._traces.values()
            for span in trace.spans
            if "serviceName" in span.get("localEndpoint", ())
        }
        return sorted(names)
