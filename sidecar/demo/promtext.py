"""Reading a Prometheus scrape, and quantiles from histogram buckets as Prometheus computes them.

Theory of operation: `parse` reads the text exposition format (version 0.0.4) line by line:
comments (`# HELP`, `# TYPE`, others) are skipped, every other line is one sample
`name{label="value",...} value [timestamp]`, with label values unescaped (`\\\\`, `\\"`, `\\n`)
and values as Go's ParseFloat reads them (`+Inf`, `-Inf`, `NaN` included). A line that is not a
sample raises `ExpositionError` naming the line.

`histogram_quantile` follows PromQL's function for classic histograms step by step: a quantile
below 0 is -Inf, above 1 is +Inf; buckets are sorted by upper bound and those sharing a bound
are added up; the highest bound must be +Inf and there must be two buckets at least, else NaN;
counts are made monotonic (a lower count after a higher one is raised to it); no observations is
NaN. The rank q * total falls into the first bucket whose cumulative count reaches it; a rank in
the +Inf bucket answers the highest finite bound; a rank in a first bucket whose bound is <= 0
answers that bound; otherwise the answer is interpolated linearly between the bucket's lower
bound (0 for the first bucket) and its upper bound.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,?)')
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}


class ExpositionError(ValueError):
    """A scrape line that is not a valid sample; the message quotes it."""


@dataclass(frozen=True)
class Sample:
    """One sample of a scrape."""

    name: str
    labels: Mapping[str, str]
    value: float


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m.group(1), "\\" + m.group(1)), text)


def parse_value(text: str) -> float:
    """A sample value as Prometheus writes it (Go float syntax, +Inf/-Inf/NaN)."""
    return float(text)  # Python's float() reads the same spellings Prometheus writes


def _sample(line: str) -> Sample:
    match = _NAME.match(line)
    if not match:
        raise ExpositionError(f"no metric name: {line!r}")
    name, pos = match.group(0), match.end()
    labels: dict[str, str] = {}
    if line.startswith("{", pos):
        pos += 1
        while not line.startswith("}", pos):
            label = _LABEL.match(line, pos)
            if not label:
                raise ExpositionError(f"bad label set: {line!r}")
            labels[label.group(1)] = _unescape(label.group(2))
            pos = label.end()
            if not label.group(3) and not line.startswith("}", pos):
                raise ExpositionError(f"labels not separated by ',': {line!r}")
        pos += 1
    fields = line[pos:].split()
    if not 1 <= len(fields) <= 2:
        raise ExpositionError(f"expected a value and an optional timestamp: {line!r}")
    try:
        return Sample(name, labels, parse_value(fields[0]))
    except ValueError:
        raise ExpositionError(f"bad value {fields[0]!r}: {line!r}") from None


def parse(text: str) -> list[Sample]:
    """Every sample of a text-format scrape, in order."""
    samples = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            samples.append(_sample(line))
    return samples


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """The q-quantile of (upper bound, cumulative count) buckets, as PromQL's
    histogram_quantile computes it for one series (see the module comment)."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for bound, count in buckets:
        merged[bound] = merged.get(bound, 0.0) + count
    ordered = sorted(merged.items())
    if len(ordered) < 2 or ordered[-1][0] != math.inf:
        return math.nan
    bounds = [b for b, _ in ordered]
    counts = _monotonic([c for _, c in ordered])
    total = counts[-1]
    if total == 0:
        return math.nan
    rank = q * total
    # first bucket (the +Inf one excluded) whose count reaches the rank; else the +Inf bucket
    b = next((i for i, c in enumerate(counts[:-1]) if c >= rank), len(counts) - 1)
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, count = 0.0, counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (bounds[b] - start) * _ratio(rank, count)


def _ratio(rank: float, count: float) -> float:
    """rank / count with IEEE semantics (Go's division): 0/0 is NaN, x/0 is +-Inf."""
    if count == 0:
        return math.nan if rank == 0 else math.copysign(math.inf, rank)
    return rank / count


def _monotonic(counts: Sequence[float]) -> list[float]:
    """Cumulative counts with every dip raised to the highest count before it."""
    out: list[float] = []
    highest = -math.inf
    for count in counts:
        highest = max(highest, count)
        out.append(highest)
    return out
