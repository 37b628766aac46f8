"""Golden signals per service from the sidecars' Istio metrics: traffic, errors, latency.

Theory of operation: each sidecar's scrape is parsed (`promtext`) and its
`istio_requests_total` and `istio_request_duration_milliseconds_bucket` samples are summed per
(reporter, destination_service, destination_version) over every other label - what
`sum by (reporter, destination_service, destination_version, le)` does in PromQL. A `Signal` row
then gives requests, the 5xx share, the rate over the window the demo sent in, and p50/p99 by
`histogram_quantile` over the summed buckets. Destination rows (the called sidecar's view) come
first, then source rows (the calling sidecar's view of the same traffic).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from sidecar.demo.promtext import Sample, histogram_quantile

REQUESTS = "istio_requests_total"
DURATION_BUCKET = "istio_request_duration_milliseconds_bucket"
Key = tuple[str, str, str]  # reporter, destination_service, destination_version


@dataclass
class Signal:
    """One row: the traffic to one service version as one side reports it."""

    reporter: str
    service: str
    version: str
    reported_by: set[str] = field(default_factory=set)  # sidecar labels
    requests: float = 0.0
    errors: float = 0.0  # 5xx answers
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float:
        return histogram_quantile(q, self.buckets.items())

    def rate(self, window: float) -> float:
        return self.requests / window if window > 0 else math.nan


def _key(labels: Mapping[str, str]) -> Key:
    get = labels.get
    return (get("reporter", "?"), get("destination_service", "?"), get("destination_version", "?"))


def golden_signals(scrapes: Mapping[str, Iterable[Sample]]) -> list[Signal]:
    """Rows from sidecar label -> its samples; destination rows first, then source rows."""
    rows: dict[Key, Signal] = {}
    for sidecar, samples in scrapes.items():
        for sample in samples:
            if sample.name not in (REQUESTS, DURATION_BUCKET):
                continue
            key = _key(sample.labels)
            row = rows.setdefault(key, Signal(*key))
            row.reported_by.add(sidecar)
            if sample.name == REQUESTS:
                row.requests += sample.value
                if sample.labels.get("response_code", "").startswith("5"):
                    row.errors += sample.value
            else:
                le = float(sample.labels.get("le", "nan"))
                row.buckets[le] = row.buckets.get(le, 0.0) + sample.value
    order = {"destination": 0, "source": 1}
    return sorted(rows.values(), key=lambda r: (order.get(r.reporter, 2), r.service, r.version))


def total(rows: Sequence[Signal], reporter: str, service_prefix: str) -> float:
    """Requests reported by `reporter` for services whose name starts with `service_prefix`."""
    return sum(r.requests for r in rows if r.reporter == reporter
               and r.service.startswith(service_prefix))  # fmt: skip


def _ms(value: float) -> str:
    return "-" if math.isnan(value) or math.isinf(value) else f"{value:.2f}"


def render(out: TextIO, rows: Sequence[Signal], window: float, indent: str = "  ") -> None:
    """The rows as a table (one line per row)."""
    head = ("service", "version", "reporter", "by", "requests", "rate/s", "5xx", "errors",
            "p50 ms", "p99 ms")  # fmt: skip
    cells = [
        (r.service, r.version, r.reporter, ",".join(sorted(r.reported_by)), f"{r.requests:.0f}",
         f"{r.rate(window):.1f}", f"{r.errors:.0f}", f"{100 * r.error_ratio:.1f} %",
         _ms(r.quantile(0.5)), _ms(r.quantile(0.99)))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    left = 4  # service, version, reporter, by: left-aligned; numbers right-aligned
    for line in [head, *cells]:
        parts = [c.ljust(w) if i < left else c.rjust(w)
                 for i, (c, w) in enumerate(zip(line, widths, strict=True))]  # fmt: skip
        out.write(indent + "  ".join(parts).rstrip() + "\n")
