"""Load balancers: pick one endpoint of a cluster for a request or connection.

Round robin is the default (Istio's default is LEAST_REQUEST since 1.14 in DestinationRule-less
clusters; the traffic management issue brings that and the rest). A balancer is built once per
cluster per snapshot and keeps only an index; choosing allocates nothing.
"""

from __future__ import annotations

from sidecar.config.snapshot import Endpoint


class RoundRobin:
    """Cycles through endpoints in order; an endpoint of weight w appears w times in the cycle."""

    __slots__ = ("_cycle", "_next")

    def __init__(self, endpoints: tuple[Endpoint, ...]) -> None:
        self._cycle: tuple[Endpoint, ...] = tuple(
            ep for ep in endpoints for _ in range(max(1, min(ep.weight, 128)))
        )
        self._next = 0

    def update(self, endpoints: tuple[Endpoint, ...]) -> None:
        self.__init__(endpoints)  # type: ignore[misc]

    def choose(self) -> Endpoint | None:
        cycle = self._cycle
        if not cycle:
            return None
        i = self._next
        if i >= len(cycle):
            i = 0
        self._next = i + 1
        return cycle[i]
