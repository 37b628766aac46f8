"""Where the sidecar's time goes with observability on: py-spy samples grouped by concern.

Theory of operation: py-spy records the sidecar process for one measured run in its "raw"
(collapsed stacks) format: one line per distinct stack, frames root-first separated by `;`,
then the sample count. Each concern below is a set of source files; a sample counts toward a
concern when any frame of its stack is in one of its files (inclusive time, as a flamegraph's
width), so the shares of nested concerns are not additive: `finish_request` contains metrics
recording and the span hand-off. Idle time (the event loop waiting in epoll) is not sampled
(py-spy's default), so the shares are of the process's busy time, all threads included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# concern -> substrings of a frame's "function (file:line)" text
CONCERNS: dict[str, tuple[str, ...]] = {
    "finish_request (counters, metrics, access log, span hand-off)": (
        "finish_request (",),
    "metrics recording (MetricsStore.record_*, labels)": (
        "observability/metrics.py", "observability/metrics_labels.py"),
    "metrics rendering (the scrapes)": (
        "observability/metrics_render.py", "admin/prometheus.py", "admin/stats.py"),
    "tracing on the loop (sampling, B3/W3C extract and inject, span build)": (
        "observability/tracing.py", "observability/tracing_context.py"),
    "tracing export thread (queue, OTel Zipkin exporter, HTTP POST)": (
        "observability/tracing_export.py", "opentelemetry/"),
    "access log": ("observability/access_log.py",),
}


@dataclass
class Shares:
    """Sample counts per concern out of the total, from one py-spy raw file."""

    total: int = 0
    by_concern: dict[str, int] = field(default_factory=dict)

    def percent(self, concern: str) -> float:
        """The concern's share of all samples, in percent."""
        return 100.0 * self.by_concern.get(concern, 0) / self.total if self.total else 0.0


def parse_raw(path: Path) -> Shares:
    """Group the collapsed stacks of a py-spy `--format raw` file by CONCERNS."""
    shares = Shares(by_concern=dict.fromkeys(CONCERNS, 0))
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        shares.total += count
        for concern, markers in CONCERNS.items():
            if any(marker in stack for marker in markers):
                shares.by_concern[concern] += count
    return shares


def table(shares: Shares) -> str:
    """The shares as a markdown table."""
    lines = ["| concern (inclusive; nested ones overlap) | share of busy samples |",
             "|---|---|"]
    for concern in CONCERNS:
        lines.append(f"| {concern} | {shares.percent(concern):.1f}% |")
    lines.append(f"| (samples) | {shares.total} |")
    return "\n".join(lines)
