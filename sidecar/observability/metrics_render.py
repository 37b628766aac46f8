"""Prometheus text exposition of the Istio metrics and the proxy's Envoy-named stats.

Theory of operation: at scrape time, fresh aioprometheus collectors are built in a registry of
their own (never the library's global one) from the stored numbers: counters take the series'
values, histograms get one aioprometheus bucket object per label set filled with the cumulative
counts, sum and count. aioprometheus's text formatter renders them; it does not escape label
values, so values are escaped here first (the text format's `\\`, `"` and newline rules).

Envoy's own stats (admin /stats names, `cluster.<name>.upstream_rq_total`, ...) are rendered as
Envoy's Prometheus sink names them: `envoy_` + the name with the tag parts pulled out as labels
(`envoy_cluster_upstream_rq_total{cluster_name="..."}`,
`envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="all"}`); other characters become
`_`. Gauges are told apart by name (Envoy's gauges here: *_active, membership, server state).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from itertools import accumulate

from aioprometheus.collectors import Counter, Gauge, Histogram, Registry
from aioprometheus.formats.text import TextFormatter
from aioprometheus.histogram import Histogram as Buckets

from sidecar.observability import metrics_labels as ml
from sidecar.observability.metrics import Histogram as Counts
from sidecar.observability.metrics import MetricsStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_REQUEST_HISTOGRAMS = (
    ("istio_request_duration_milliseconds", "duration", "Request duration in milliseconds."),
    ("istio_request_bytes", "request_bytes", "Request body size in bytes."),
    ("istio_response_bytes", "response_bytes", "Response body size in bytes."),
)
_MESSAGE_COUNTERS = (
    ("istio_request_messages_total", "request_messages", "gRPC messages sent by the client."),
    ("istio_response_messages_total", "response_messages", "gRPC messages sent by the server."),
)
_PROTOCOL = ml.REQUEST_LABELS.index("request_protocol")
_TCP_COUNTERS = (
    ("istio_tcp_sent_bytes_total", "sent", "Bytes sent to the downstream."),
    ("istio_tcp_received_bytes_total", "received", "Bytes received from the downstream."),
    ("istio_tcp_connections_opened_total", "opened", "TCP connections opened."),
    ("istio_tcp_connections_closed_total", "closed", "TCP connections closed."),
)


def escape(value: str) -> str:
    """A label value as the text format writes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: Iterable[str]) -> dict[str, str]:
    return {n: escape(v) for n, v in zip(names, values, strict=True)}


def _fill(counts: Counts, bounds: tuple[float, ...]) -> Buckets:
    out = Buckets(*bounds)
    for bound, total in zip(out.buckets, accumulate(counts.counts), strict=True):
        out.buckets[bound] = total
    out.observations = counts.count
    out.sum = counts.sum
    return out


def istio_collectors(store: MetricsStore, registry: Registry) -> None:
    """The Istio metrics of `store`, as collectors in `registry`."""
    names = ml.REQUEST_LABELS
    if store.requests:
        total = Counter("istio_requests_total", "Requests handled by the proxy.",
                        registry=registry)  # fmt: skip
        hists = [
            (Histogram(n, doc, registry=registry, buckets=store.bounds[attr]), attr)
            for n, attr, doc in _REQUEST_HISTOGRAMS
        ]
        messages = [(Counter(n, doc, registry=registry), attr) for n, attr, doc in
                    _MESSAGE_COUNTERS]  # fmt: skip
        for values, s in store.requests.items():
            labels = _labels(names, values)
            total.set(labels, s.count)
            for hist, attr in hists:
                hist.set_value(labels, _fill(getattr(s, attr), store.bounds[attr]))
            if values[_PROTOCOL] == "grpc" or s.request_messages or s.response_messages:
                for counter, attr in messages:  # gRPC calls only, as Istio
                    counter.set(labels, getattr(s, attr))
    if store.tcp:
        counters = [(Counter(n, doc, registry=registry), attr) for n, attr, doc in _TCP_COUNTERS]
        for values, t in store.tcp.items():
            labels = _labels(ml.TCP_LABELS, values)
            for counter, attr in counters:
                value = getattr(t, attr)
                if value:  # opened and closed often differ by flags: no series of zeros
                    counter.set(labels, value)


# Envoy's tag extraction for the stat names this proxy has: (prefix, tag label).
_TAGGED = (
    ("cluster.", "cluster_name"),
    ("http.", "envoy_http_conn_manager_prefix"),
)
_GAUGE = re.compile(
    r"(_active$|^server\.(live|state|uptime|concurrency|hot_restart_epoch|total_connections)$"
    r"|membership_|^listener_manager\.total_listeners|^cluster_manager\.active_clusters$)"
)
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def envoy_name(stat: str) -> tuple[str, dict[str, str]]:
    """An admin stat name -> Envoy's Prometheus metric name and its tag labels."""
    for prefix, tag in _TAGGED:
        if stat.startswith(prefix):
            rest = stat[len(prefix):]
            value, _, field = rest.rpartition(".")
            if value:
                base = prefix.rstrip(".")
                return f"envoy_{base}_{_INVALID.sub('_', field)}", {tag: escape(value)}
    return "envoy_" + _INVALID.sub("_", stat), {}


def envoy_collectors(stats: Mapping[str, int], registry: Registry) -> None:
    """The proxy's own stats (admin /stats) as Envoy's Prometheus sink names them."""
    collectors: dict[str, Counter | Gauge] = {}
    for stat, value in sorted(stats.items()):
        name, labels = envoy_name(stat)
        collector = collectors.get(name)
        if collector is None:
            kind = Gauge if _GAUGE.search(stat) else Counter
            doc = f"Envoy stat {name[len('envoy_'):]}."
            collector = collectors[name] = kind(name, doc, registry=registry)
        collector.set(labels, value)


def render(store: MetricsStore, stats: Mapping[str, int]) -> bytes:
    """The text exposition of the Istio metrics and the Envoy stats."""
    registry = Registry()
    istio_collectors(store, registry)
    envoy_collectors(stats, registry)
    return TextFormatter().marshall(registry)
