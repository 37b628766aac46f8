"""The demo's ending: the golden signals of what it sent, and one trace across both sidecars.

Theory of operation: after the demo's requests the driver hands over how many it sent and since
when. One more request goes to a, marked `x-b3-sampled: 1` - a caller's sampling decision, which
the sidecars honour - so that a trace surely exists whatever the configured sampling (1 % by
default). Then each sidecar's Prometheus endpoint is scraped, again until the counts add up to
what was sent (a sidecar records a request just after answering it) or METRICS_DEADLINE passes,
and the golden-signals table is printed. Last, the collector is asked for the trace carrying the
request's id (`annotationQuery=guid:x-request-id=...`) until it holds a's client span and b's
server span (spans are exported every half second) or TRACE_DEADLINE passes; the trace, fetched
by id, is printed as a waterfall. Each part answers whether it showed what it promised.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TextIO
from urllib.parse import quote

from sidecar.demo import report, signals
from sidecar.demo.promtext import ExpositionError, Sample, parse
from sidecar.demo.stage import A_SERVICE, B_SERVICE, FAIL_EVERY, Endpoint, Stage
from sidecar.observability import waterfall

METRICS_DEADLINE = 3.0  # seconds for the scraped counts to reach what was sent
TRACE_DEADLINE = 5.0  # seconds for the traced request's spans to reach the collector
POLL_INTERVAL = 0.2
FETCH_TIMEOUT = 5.0
TRACED_HEADER = ("x-b3-sampled", "1")


def finale(stage: Stage, sent: int, began: float, out: TextIO) -> bool:
    """Send the traced request, print golden signals and its waterfall; True when both showed
    consistent numbers and a trace through both sidecars."""
    request_id = str(uuid.uuid4())
    answer = stage.client.fetch(
        stage.entry_url, [("x-request-id", request_id), TRACED_HEADER], FETCH_TIMEOUT
    )
    sent += 1
    window = time.monotonic() - began
    ok = golden(stage, sent, window, out)
    collector = stage.collector()
    if collector is None:
        out.write("  (this setting runs no trace collector; the loopback demo shows a trace)\n\n")
        return ok
    report.heading(out, "one trace")
    out.write(
        "  The sidecars trace 1 % of requests (Istio's default sampling). So that there surely\n"
        "  is a trace to show, the demo sent one more request asking for it, as any caller may;\n"
        "  the sidecars honour a caller's x-b3-sampled decision:\n"
        f"  $ curl -H 'x-request-id: {request_id}' -H '{': '.join(TRACED_HEADER)}' "
        f"{stage.entry_url}\n"
    )
    if answer.status != 200:
        out.write(f"  (answered {answer.status or answer.error})\n")
    out.write("\n")
    return show_trace(collector, request_id, sent, out) and ok


def scrape(targets: Sequence[Endpoint]) -> tuple[dict[str, list[Sample]], list[str]]:
    """Each sidecar's samples, and the problems met (unreachable, unparsable)."""
    scrapes: dict[str, list[Sample]] = {}
    problems = []
    for target in targets:
        answer = target.site.fetch(target.url, (), FETCH_TIMEOUT)
        if answer.status != 200:
            problems.append(f"{target.label}: {target.url}: {answer.status or answer.error}")
            continue
        try:
            scrapes[target.label] = parse(answer.body)
        except ExpositionError as exc:
            problems.append(f"{target.label}: {exc}")
    return scrapes, problems


def _consistent(rows: Sequence[signals.Signal], sent: int) -> bool:
    """a's sidecar saw every request; b's sidecars, and a's as their source, saw every call."""
    return (
        signals.total(rows, "destination", A_SERVICE) == sent
        and signals.total(rows, "destination", B_SERVICE) == sent
        and signals.total(rows, "source", B_SERVICE) == sent
    )


def golden(stage: Stage, sent: int, window: float, out: TextIO) -> bool:
    """Scrape until the counts add up (bounded), print the table; True when they added up."""
    end = time.monotonic() + METRICS_DEADLINE
    while True:
        scrapes, problems = scrape(stage.metrics())
        rows = signals.golden_signals(scrapes)
        if (_consistent(rows, sent) and not problems) or time.monotonic() >= end:
            break
        time.sleep(POLL_INTERVAL)
    report.heading(out, "golden signals")
    out.write(
        f"  The demo sent {sent} requests to a in {window:.1f} s. Each sidecar's Prometheus\n"
        "  endpoint (port 15090, /stats/prometheus), summed per service version as\n"
        "  `sum by (reporter, destination_service, destination_version)` would: reporter\n"
        "  destination is the called sidecar's count, source the calling sidecar's. rate: per\n"
        "  second of that window; errors: 5xx share; p50/p99: histogram_quantile over the\n"
        "  istio_request_duration_milliseconds buckets, computed as Prometheus does.\n\n"
    )
    signals.render(out, rows, window)
    for problem in problems:
        out.write(f"  could not scrape {problem}\n")
    ok = _consistent(rows, sent) and not problems
    if not ok:
        out.write(f"\n  the counts do not add up to the {sent} requests sent "
                  f"(after {METRICS_DEADLINE:.0f} s)\n")  # fmt: skip
    canary = {r.version: r for r in rows
              if r.reporter == "destination" and r.service == B_SERVICE}  # fmt: skip
    if "v1" in canary and "v2" in canary:
        v1, v2 = canary["v1"], canary["v2"]
        out.write(
            f"\n  The canary shows: b v2 failed {100 * v2.error_ratio:.1f} % of its "
            f"{v2.requests:.0f} requests (its app answers\n  every {FAIL_EVERY}th with 503), "
            f"b v1 {100 * v1.error_ratio:.1f} % of {v1.requests:.0f}: the numbers that say "
            "roll v2 back before\n  it gets more than its 5 %.\n"
        )
    out.write("\n")
    return ok


def _get_json(collector: Endpoint, path: str) -> Any:
    answer = collector.site.fetch(collector.url + path, (), FETCH_TIMEOUT)
    if answer.status != 200:
        return None
    try:
        return json.loads(answer.body)
    except ValueError:
        return None


def _service(span: Mapping[str, Any]) -> str:
    return str((span.get("localEndpoint") or {}).get("serviceName", ""))


def crosses_both(spans: Sequence[Mapping[str, Any]]) -> bool:
    """a's sidecar's CLIENT span and b's sidecar's SERVER span, one trace id."""
    kinds = {(span.get("kind"), _service(span).split(".")[0]) for span in spans}
    ids = {span.get("traceId") for span in spans}
    return ("CLIENT", "a") in kinds and ("SERVER", "b") in kinds and len(ids) == 1


def _find_trace(collector: Endpoint, request_id: str) -> list[dict[str, Any]]:
    """The trace of the request, fetched by its id, once it crosses both sidecars (bounded)."""
    query = quote(f"guid:x-request-id={request_id}", safe=":")
    end = time.monotonic() + TRACE_DEADLINE
    spans: list[dict[str, Any]] = []
    while True:
        found = _get_json(collector, f"/api/v2/traces?annotationQuery={query}&limit=1")
        if found and found[0]:
            trace_id = found[0][0].get("traceId", "")
            spans = _get_json(collector, f"/api/v2/trace/{trace_id}") or []
            if crosses_both(spans):
                return spans
        if time.monotonic() >= end:
            return spans
        time.sleep(POLL_INTERVAL)


def show_trace(collector: Endpoint, request_id: str, sent: int, out: TextIO) -> bool:
    """Print the request's trace as a waterfall; True when it crosses both sidecars."""
    spans = _find_trace(collector, request_id)
    if not spans:
        out.write(f"  no trace for {request_id} reached {collector.url} in "
                  f"{TRACE_DEADLINE:.0f} s\n\n")  # fmt: skip
        return False
    trace_id = spans[0].get("traceId", "?")
    out.write(f"  Its spans, from `sidecar traces` at {collector.url} (GET /api/v2/trace/"
              f"{trace_id}):\n\n")  # fmt: skip
    width = min(shutil.get_terminal_size((110, 24)).columns, 140)
    for line in waterfall.render(spans, width - 2).splitlines():
        out.write(f"  {line}\n")
    health = _get_json(collector, "/health") or {}
    others = max(0, int(health.get("traces", 1)) - 1)
    were = "was" if others == 1 else "were"
    out.write(f"\n  Of the other {sent - 1} requests, {others} {were} traced by the 1 % sampling "
              "(so far).\n\n")  # fmt: skip
    if not crosses_both(spans):
        out.write("  the trace lacks a's client span or b's server span\n\n")
        return False
    return True
