"""Istio's bookinfo weighted VirtualServices through a real productpage sidecar.

Each test sends N = 2,000 requests to reviews on one keep-alive connection and checks that only
the weighted subsets answer and that the share of each falls within 5 standard deviations of
its binomial count (a false failure has probability ~6e-7; a split off by 5 points fails:
e.g. 80/20 has sd 17.9, window 400 +- 89, while 75/25 would give ~500). Each file runs with
destination-rule-all.yaml and with destination-rule-reviews.yaml in its place (RANDOM
balancing within a subset must not change the split between subsets).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .bookinfo import Bookinfo, binomial_window, running_bookinfo

N = 2000
DR_ALL = "destination-rule-all.yaml"
REVIEWS_RULES = [DR_ALL, "destination-rule-reviews.yaml"]

# sample file -> {reviews version: weight %}
SPLITS = {
    "virtual-service-reviews-80-20.yaml": {"v1": 80, "v2": 20},
    "virtual-service-reviews-90-10.yaml": {"v1": 90, "v2": 10},
    "virtual-service-reviews-50-v3.yaml": {"v1": 50, "v3": 50},
    "virtual-service-reviews-v2-v3.yaml": {"v2": 50, "v3": 50},
}


@pytest.fixture(scope="module")
def bookinfo() -> Iterator[Bookinfo]:
    with running_bookinfo(DR_ALL, "virtual-service-all-v1.yaml") as b:
        yield b


@pytest.mark.parametrize("rules", REVIEWS_RULES)
@pytest.mark.parametrize("sample", sorted(SPLITS))
def test_weighted_split(bookinfo: Bookinfo, sample: str, rules: str) -> None:
    bookinfo.use(rules, sample)
    with bookinfo.client() as c:
        seen = c.tally("reviews", N)
    weights = SPLITS[sample]
    assert sorted(seen) == sorted(f"reviews-{v}" for v in weights), seen
    for version, weight in weights.items():
        low, high = binomial_window(N, weight / 100)
        assert low <= seen[f"reviews-{version}"] <= high, (version, weight, seen)


def test_split_holds_for_requests_of_one_user(bookinfo: Bookinfo) -> None:
    """80-20 has no match: jason's requests are split like everyone's (no stickiness)."""
    bookinfo.use(DR_ALL, "virtual-service-reviews-80-20.yaml")
    with bookinfo.client() as c:
        seen = c.tally("reviews", N, {"end-user": "jason"})
    low, high = binomial_window(N, 0.2)
    assert seen["reviews-v1"] + seen["reviews-v2"] == N, seen
    assert low <= seen["reviews-v2"] <= high, seen
