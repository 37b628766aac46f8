"""Consistent-hash balancers: ring hash (Karger) and Maglev, keyed by a request's 64-bit hash.

Theory of operation: both map a 64-bit key to an endpoint through a structure built once per
endpoint set (never on the request path); a pick is one binary search (ring) or one index
(Maglev). Hashes come from BLAKE2b (`hash64`), never Python's `hash()`, which is salted per
process: every proxy (and every restart) must send a key to the same endpoint.

Ring hash: each endpoint contributes points hash("address:port_j") for j < its count; a key goes
to the first point at or after it (wrapping). An endpoint of the lowest weight gets `ring_size`
points, a heavier one proportionally more (Envoy's minimum ring size is a floor on the whole
ring; here it is the floor per endpoint, so the ring is at least that large). The count per
endpoint depends only on its weight relative to the lightest endpoint, not on how many
endpoints there are, so removing one endpoint moves exactly the keys it owned. The total is
capped (MAX_RING_POINTS); only then do counts scale down.

Maglev: a lookup table of a prime size M; each endpoint has a permutation of the slots
(offset + i*skip mod M, both from its name's hash) and, in turns, claims its next free slot;
heavier endpoints take turns proportionally more often. Removing an endpoint moves its keys and
only a few others (Maglev's bounded disruption). A table size above MAX_MAGLEV_TABLE is built at
that size (a fixed cap, so it never depends on the endpoint count).

Both caps exist because the tables are built in Python on the event loop: Envoy builds a
5,000,011-slot Maglev table or an 8M-point ring in milliseconds, here it took seconds per
cluster (and per subset), freezing all traffic at every load and reload.
"""

from __future__ import annotations

import bisect
import random
from hashlib import blake2b

from sidecar.config.snapshot import Endpoint

MAX_RING_POINTS = 1 << 16  # bounds build time (~0.3 s) and memory for very large rings
MAX_MAGLEV_TABLE = 131071  # a prime (2**17 - 1): bounds a Maglev table's build time (~0.2 s)
_MASK64 = (1 << 64) - 1


def hash64(data: bytes) -> int:
    """A stable 64-bit hash (BLAKE2b), the same in every process."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


def _name(ep: Endpoint) -> bytes:
    return f"{ep.address}:{ep.port}".encode()


class RingHash:
    """RING_HASH: a sorted ring of weighted points; the key's successor point's endpoint."""

    __slots__ = ("_hashes", "_owners", "_rng")

    def __init__(
        self, endpoints: tuple[Endpoint, ...], ring_size: int, rng: random.Random
    ) -> None:
        self._rng = rng
        points: list[tuple[int, int]] = []
        if endpoints:
            weights = [max(1, ep.weight) for ep in endpoints]
            lightest = min(weights)
            per_unit = max(1, ring_size) / lightest
            total = per_unit * sum(weights)
            if total > MAX_RING_POINTS:
                per_unit *= MAX_RING_POINTS / total
            for i, (ep, w) in enumerate(zip(endpoints, weights, strict=True)):
                base = _name(ep) + b"_"
                count = max(1, round(w * per_unit))
                points.extend((hash64(base + str(j).encode()), i) for j in range(count))
            points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = tuple(endpoints[i] for _, i in points)

    def __len__(self) -> int:
        return len(self._hashes)

    def pick(self, key: int | None) -> Endpoint | None:
        owners = self._owners
        if not owners:
            return None
        if key is None:  # no hash key for this request: a random point (as Envoy)
            key = self._rng.getrandbits(64)
        i = bisect.bisect_left(self._hashes, key & _MASK64)
        return owners[i] if i < len(owners) else owners[0]


class Maglev:
    """MAGLEV: a prime-sized lookup table filled from per-endpoint slot permutations."""

    __slots__ = ("_rng", "_size", "_table")

    def __init__(
        self, endpoints: tuple[Endpoint, ...], table_size: int, rng: random.Random
    ) -> None:
        self._rng = rng
        self._size = table_size = next_prime(min(table_size, MAX_MAGLEV_TABLE))
        self._table: tuple[Endpoint, ...] = ()
        if endpoints:
            owner = _fill(endpoints, table_size)
            self._table = tuple(endpoints[i] for i in owner)

    def pick(self, key: int | None) -> Endpoint | None:
        table = self._table
        if not table:
            return None
        if key is None:
            key = self._rng.getrandbits(64)
        return table[key % self._size]


def next_prime(n: int) -> int:
    """The smallest prime >= n (and >= 2): a permutation covers every slot only when M is prime,
    which the population loop needs to finish."""
    n = max(2, n)
    while any(n % d == 0 for d in range(2, int(n**0.5) + 1)):
        n += 1
    return n


def _fill(endpoints: tuple[Endpoint, ...], m: int) -> list[int]:
    """The Maglev population loop: in turns, each endpoint claims the next free slot of its
    permutation; an endpoint takes a turn when its accumulated weight share reaches one."""
    n = len(endpoints)
    pos: list[int] = []
    skip: list[int] = []
    for ep in endpoints:
        name = _name(ep)
        pos.append(hash64(b"offset:" + name) % m)
        skip.append(hash64(b"skip:" + name) % (m - 1) + 1)
    weights = [max(1, ep.weight) for ep in endpoints]
    heaviest = max(weights)
    share = [w / heaviest for w in weights]
    credit = [0.0] * n
    table = [-1] * m
    filled = 0
    while True:
        for i in range(n):
            credit[i] += share[i]
            if credit[i] < 1.0:
                continue
            credit[i] -= 1.0
            c = pos[i]
            s = skip[i]
            while table[c] >= 0:
                c += s
                if c >= m:
                    c -= m
            table[c] = i
            c += s
            pos[i] = c - m if c >= m else c
            filled += 1
            if filled == m:
                return table
