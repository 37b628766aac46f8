"""Load balancers: pick one endpoint among a set of (healthy) endpoints.

Theory of operation: a *leaf* balancer works over a fixed tuple of endpoints, all eligible (the
locality layer in locality.py has already chosen the priority level, the locality and whether to
panic). Leaves are built once per endpoint set, off the request path; `pick(key)` allocates
nothing beyond a float from the random generator. `key` is the request's 64-bit hash (consistent
hash policies, lb_hash.py) or None; the leaves here ignore it.

- ROUND_ROBIN: a smooth weighted cycle (earliest-deadline order of w copies of each endpoint, so
  a 3:1 split interleaves A A B A A A B A ... rather than running in blocks), as Envoy's EDF.
- RANDOM: a weighted random pick (binary search over cumulative weights).
- LEAST_REQUEST: power of two choices: two distinct random candidates (drawn by weight), the
  one with fewer active requests per unit of weight wins. With equal weights this is Envoy's
  P2C; with unequal weights it is the "expand hosts by weight, then P2C" variant Envoy's source
  names as the alternative to its EDF over weight/(active+1), with the same effect: heavier
  endpoints get proportionally more, busy ones fewer. Active counts live in the cluster
  state's dict, which `choose` increments and `release` decrements.
"""

from __future__ import annotations

import bisect
import os
import random
from itertools import accumulate
from math import gcd
from typing import Protocol

from sidecar.config.snapshot import Endpoint

# Active requests/connections per endpoint, keyed by (address, port) (ClusterState keeps it):
# equal endpoints share a count across endpoint updates, and a tuple hashes in C, where
# Endpoint.__hash__ is Python; LEAST_REQUEST reads and the cluster writes it on every request.
ActiveCounts = dict[tuple[str, int], int]

MAX_CYCLE = 4096  # round robin: at most this many slots in the weighted cycle


class Leaf(Protocol):
    """Picks one endpoint of a fixed set; `key` is the request's hash or None."""

    def pick(self, key: int | None) -> Endpoint | None: ...


def new_rng() -> random.Random:
    """A generator of its own per balancer (no shared module state), seeded from the OS."""
    return random.Random(os.urandom(16))


def _weights(endpoints: tuple[Endpoint, ...]) -> list[int]:
    return [max(1, ep.weight) for ep in endpoints]


class RoundRobin:
    """Cycles through endpoints; an endpoint of weight w has w slots, spread evenly."""

    __slots__ = ("_cycle", "_next")

    def __init__(self, endpoints: tuple[Endpoint, ...]) -> None:
        self._cycle = smooth_cycle(endpoints)
        self._next = 0

    def pick(self, key: int | None = None) -> Endpoint | None:
        cycle = self._cycle
        if not cycle:
            return None
        i = self._next
        if i >= len(cycle):
            i = 0
        self._next = i + 1
        return cycle[i]

    def choose(self) -> Endpoint | None:
        return self.pick(None)


def smooth_cycle(endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """Weighted round-robin order: slot k of endpoint i is due at (k+1)/w_i; sorted by due time."""
    weights = _weights(endpoints)
    if len(set(weights)) <= 1:
        return endpoints
    g = 0
    for w in weights:
        g = gcd(g, w)
    weights = [w // g for w in weights]
    total = sum(weights)
    if total > MAX_CYCLE:  # keep the cycle bounded; proportions kept to within 1/MAX_CYCLE
        weights = [max(1, round(w * MAX_CYCLE / total)) for w in weights]
    due = sorted(((k + 1) / w, i) for i, w in enumerate(weights) for k in range(w))
    return tuple(endpoints[i] for _, i in due)


class WeightedPicker:
    """Draws endpoints at random in proportion to their weights (uniform when all are equal)."""

    __slots__ = ("_cum", "_endpoints", "_n", "_rng", "_total")

    def __init__(self, endpoints: tuple[Endpoint, ...], rng: random.Random) -> None:
        self._endpoints = endpoints
        self._n = len(endpoints)
        weights = _weights(endpoints)
        uniform = len(set(weights)) <= 1
        self._cum: list[int] | None = None if uniform else list(accumulate(weights))
        self._total = sum(weights)
        self._rng = rng

    def index(self) -> int:
        r = self._rng.random()
        cum = self._cum
        if cum is None:
            return int(r * self._n)
        return bisect.bisect_right(cum, int(r * self._total))

    def other(self, i: int) -> int:
        """A second draw, distinct from `i` (n >= 2): exact when uniform, else a few redraws."""
        if self._cum is None:
            j = int(self._rng.random() * (self._n - 1))
            return j + 1 if j >= i else j
        for _ in range(4):
            j = self.index()
            if j != i:
                return j
        return (i + 1) % self._n


class RandomLb:
    """RANDOM: a weighted random endpoint per request."""

    __slots__ = ("_draw", "_endpoints")

    def __init__(self, endpoints: tuple[Endpoint, ...], rng: random.Random) -> None:
        self._endpoints = endpoints
        self._draw = WeightedPicker(endpoints, rng)

    def pick(self, key: int | None = None) -> Endpoint | None:
        if not self._endpoints:
            return None
        return self._endpoints[self._draw.index()]


class LeastRequest:
    """LEAST_REQUEST: of two candidates drawn by weight, the one with fewer active requests
    (relative to its weight) wins; ties go to the first drawn."""

    __slots__ = ("_active", "_draw", "_endpoints", "_weights")

    def __init__(
        self, endpoints: tuple[Endpoint, ...], active: ActiveCounts, rng: random.Random
    ) -> None:
        self._endpoints = endpoints
        self._active = active
        self._draw = WeightedPicker(endpoints, rng)
        self._weights = tuple(_weights(endpoints))

    def pick(self, key: int | None = None) -> Endpoint | None:
        eps = self._endpoints
        if len(eps) <= 1:
            return eps[0] if eps else None
        i = self._draw.index()
        j = self._draw.other(i)
        active = self._active
        ei, ej = eps[i], eps[j]
        a = active.get((ei.address, ei.port), 0)
        b = active.get((ej.address, ej.port), 0)
        w = self._weights
        # b/w_j < a/w_i without division
        return eps[j] if b * w[i] < a * w[j] else eps[i]
