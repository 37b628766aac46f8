"""The sampling decision of requests without trace headers: the tracer's countdown (`untraced`,
redrawn by `gap()` when it runs out) must sample each request with the configured probability,
as one draw per request would. Each check is a 5-sigma binomial window over 200,000 requests
(seeded, so a run repeats); an off-by-one gap (p / (1 + p) sampled) fails at 30% and 50%."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from sidecar.bootstrap import Bootstrap, Tracing
from sidecar.observability.tracing import NEVER, Tracer

REQUESTS = 200_000


def tracer(percent: float) -> Tracer:
    boot = Bootstrap(tracing=Tracing(zipkin_address="127.0.0.1:9", sampling=percent))
    t = Tracer(boot)  # its export thread starts with the first span: never, here
    t._rng.seed(20261127)
    t.untraced = t.gap()
    return t


def sampled(t: Tracer, requests: int) -> list[bool]:
    """The decisions of `requests` requests without trace headers, as the request path makes
    them (active_stream.py counts down; `Tracer.begin` draws the next gap)."""
    out = []
    for _ in range(requests):
        if t.untraced:
            t.untraced -= 1
            out.append(False)
        else:
            t.untraced = t.gap()
            out.append(True)
    return out


def window(n: int, p: float) -> tuple[float, float]:
    sd = math.sqrt(n * p * (1 - p))
    return n * p - 5 * sd, n * p + 5 * sd


@pytest.mark.parametrize("percent", [1.0, 0.1, 30.0, 50.0, 95.0])
def test_share_sampled_is_the_configured_percentage(percent: float) -> None:
    lo, hi = window(REQUESTS, percent / 100)
    assert lo <= sum(sampled(tracer(percent), REQUESTS)) <= hi


def test_gaps_are_geometric() -> None:
    """P(gap = k) = (1 - p)^k p: the run of unsampled requests before each sampled one is as
    long as independent draws make it (counts of k = 0..3, each in its 5-sigma window)."""
    p = 0.3
    t = tracer(100 * p)
    gaps = Counter(t.gap() for _ in range(REQUESTS))
    for k in range(4):
        lo, hi = window(REQUESTS, (1 - p) ** k * p)
        assert lo <= gaps[k] <= hi, (k, gaps[k])


def test_every_request_at_100_and_none_at_0() -> None:
    assert all(sampled(tracer(100.0), 1000))
    none = tracer(0.0)
    assert none.gap() == NEVER
    assert not any(sampled(none, 1000))
