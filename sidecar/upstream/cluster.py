"""The cluster manager: live state for each cluster of the current snapshot.

Theory of operation: a snapshot's `Cluster` is static description; `ClusterState` is what lives
beside it at run time: the load balancer, the connection pools per endpoint (owned by the protocol
that made them, stored here under a key of their choosing), counters in Envoy's names, and for DNS
clusters the resolved endpoints, refreshed in the background without blocking the event loop.
On reload, a cluster whose description did not change keeps its state (and its warm pools); the
others are rebuilt and the old state's pools close once idle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sidecar.config.snapshot import (
    Cluster,
    DiscoveryType,
    Endpoint,
    LbPolicy,
    Snapshot,
    Workload,
)

if TYPE_CHECKING:
    from sidecar.http.stream import RequestHead

from sidecar.upstream.dns import Resolver
from sidecar.upstream.dns_cluster import refresh_forever, resolve_once
from sidecar.upstream.hash_key import request_key
from sidecar.upstream.lb import ActiveCounts, new_rng
from sidecar.upstream.locality import build_balancer


class Pool(Protocol):
    """A connection pool to one endpoint; the cluster manager only ever closes it."""

    def close(self) -> None: ...


@dataclass(slots=True)
class ClusterCounters:
    """Per-cluster counters in Envoy's names (cluster.<name>.upstream_*)."""

    upstream_cx_total: int = 0
    upstream_cx_active: int = 0
    upstream_cx_connect_fail: int = 0
    upstream_cx_connect_timeout: int = 0
    upstream_cx_destroy: int = 0
    upstream_rq_total: int = 0
    upstream_rq_active: int = 0
    upstream_rq_timeout: int = 0
    upstream_rq_retry: int = 0
    upstream_rq_pending_overflow: int = 0
    upstream_rq_tx_reset: int = 0  # requests reset locally (a mirror copy that fell behind)
    upstream_rq_2xx: int = 0
    upstream_rq_3xx: int = 0
    upstream_rq_4xx: int = 0
    upstream_rq_5xx: int = 0
    upstream_cx_tx_bytes_total: int = 0
    upstream_cx_rx_bytes_total: int = 0


DNS_DISCOVERY = (DiscoveryType.STRICT_DNS, DiscoveryType.LOGICAL_DNS)


class ClusterState:
    """A cluster's run-time state: endpoints as currently known, balancer, pools, counters.

    `choose`/`choose_hashed` pick an endpoint and count it active; `release` ends that count
    (LEAST_REQUEST reads it). The balancer (locality.py) is rebuilt when the endpoints change.
    """

    __slots__ = (
        "_active",
        "_counting",
        "_dns_task",
        "_original_dst",
        "_rng",
        "cluster",
        "counters",
        "endpoints",
        "in_flight",
        "lb",
        "pools",
        "warmed",
        "workload",
    )

    def __init__(self, cluster: Cluster, workload: Workload | None = None) -> None:
        self.cluster = cluster
        self.workload = workload  # the proxy's own workload: its locality ranks the endpoints
        self._original_dst = cluster.discovery is DiscoveryType.ORIGINAL_DST
        self._rng = new_rng()
        self._active: ActiveCounts = {}  # by (address, port): lb.py
        self._counting = cluster.lb_policy is LbPolicy.LEAST_REQUEST
        dns = cluster.discovery in DNS_DISCOVERY
        # A DNS cluster's endpoints are host names until resolved: none to pick before that.
        self.endpoints: tuple[Endpoint, ...] = () if dns else cluster.endpoints
        # Set once the cluster can serve: at once, or after a DNS cluster's first resolution
        # (Envoy's cluster warming; the server binds listeners after it, bounded in time).
        self.warmed = asyncio.Event()
        if not dns:
            self.warmed.set()
        self.lb = build_balancer(cluster, self.endpoints, workload, self._active, self._rng)
        self.pools: dict[Hashable, Pool] = {}
        self.counters = ClusterCounters()
        self.in_flight = 0  # requests routed here and not finished (the max_requests breaker)
        self._dns_task: asyncio.Task[None] | None = None

    def choose(
        self, original_dst: tuple[str, int] | None, key: int | None = None
    ) -> Endpoint | None:
        """The endpoint for the next request or connection (for hash key `key`, when the
        cluster hashes), or None when there is none (UH)."""
        if self._original_dst:
            if original_dst is None:
                return None
            return Endpoint(address=original_dst[0], port=original_dst[1])
        ep = self.lb.pick(key)
        if ep is not None and self._counting:
            active = self._active
            k = (ep.address, ep.port)
            active[k] = active.get(k, 0) + 1
        return ep

    def choose_hashed(
        self, head: RequestHead, remote_ip: bytes, connection: bytes | None = None
    ) -> tuple[Endpoint | None, bytes | None]:
        """For clusters with a hash policy: the endpoint for this request's key, and a
        Set-Cookie value to add to the response when the policy's cookie had to be generated
        (derived from `connection`, the downstream connection's addresses, as Envoy does)."""
        policy = self.cluster.hash_policy
        if policy is None or self._original_dst:
            return self.choose(None), None
        key, cookie = request_key(policy, head, remote_ip, connection)
        return self.choose(None, key), cookie

    def release(self, endpoint: Endpoint) -> None:
        """A request or connection `choose`/`choose_hashed` returned `endpoint` for has ended."""
        if self._counting:
            active = self._active
            k = (endpoint.address, endpoint.port)
            n = active.get(k, 0)
            if n > 1:
                active[k] = n - 1
            elif n == 1:
                del active[k]

    def active_requests(self, endpoint: Endpoint) -> int:
        """Requests/connections to `endpoint` chosen and not yet released (LEAST_REQUEST)."""
        return self._active.get((endpoint.address, endpoint.port), 0)

    def set_endpoints(self, endpoints: tuple[Endpoint, ...]) -> None:
        """Install a new endpoint set (DNS refresh): the balancer is rebuilt for it."""
        if endpoints != self.endpoints:
            self.endpoints = endpoints
            self.lb = build_balancer(
                self.cluster, endpoints, self.workload, self._active, self._rng
            )

    def inherit(self, old: ClusterState) -> None:
        """Take over what a rebuilt cluster keeps from its previous state: the counters, and a
        DNS cluster resolving the same names keeps its addresses until its own first answer
        (so a reload that changes only its policy never leaves it empty)."""
        self.counters = old.counters
        c, o = self.cluster, old.cluster
        same_names = (c.endpoints, c.dns_name, c.dns_port) == (o.endpoints, o.dns_name, o.dns_port)
        if c.discovery in DNS_DISCOVERY and old.warmed.is_set() and same_names:
            self.set_endpoints(old.endpoints)
            self.warmed.set()

    def start(self, resolver: Resolver) -> None:
        """Begin background work (DNS resolution) for this cluster; needs a running loop."""
        if self.cluster.discovery in DNS_DISCOVERY and self._dns_task is None:
            self._dns_task = asyncio.get_running_loop().create_task(
                refresh_forever(self, resolver)
            )

    async def resolve_now(self, resolver: Resolver) -> None:
        """Resolve the cluster's DNS name(s) once and install the addresses as endpoints."""
        await resolve_once(self, resolver)

    def close(self) -> None:
        if self._dns_task is not None:
            self._dns_task.cancel()
            self._dns_task = None
        for pool in list(self.pools.values()):
            pool.close()
        self.pools.clear()


class ClusterManager:
    """Cluster states for the current snapshot, updated in place on reload."""

    __slots__ = ("_states", "resolver")

    def __init__(self, resolver: Resolver | None = None) -> None:
        self._states: dict[str, ClusterState] = {}
        self.resolver = resolver if resolver is not None else Resolver()

    def get(self, name: str) -> ClusterState | None:
        return self._states.get(name)

    def states(self) -> list[ClusterState]:
        return list(self._states.values())

    def update(self, snapshot: Snapshot) -> None:
        """Adopt the snapshot's clusters: keep unchanged ones, rebuild changed, drop removed.
        The proxy's workload is part of a cluster's state (its locality ranks endpoints)."""
        new: dict[str, ClusterState] = {}
        for name, cluster in snapshot.clusters.items():
            old = self._states.get(name)
            if old is not None and old.cluster == cluster and old.workload == snapshot.workload:
                new[name] = old
            else:
                state = ClusterState(cluster, snapshot.workload)
                if old is not None:
                    state.inherit(old)
                new[name] = state
        for name, old in self._states.items():
            if new.get(name) is not old:
                old.close()
        self._states = new
        with contextlib.suppress(RuntimeError):  # no running loop: started later by start()
            asyncio.get_running_loop()
            self.start()

    def start(self) -> None:
        for state in self._states.values():
            state.start(self.resolver)

    async def warm(self, timeout: float) -> list[str]:
        """Wait until every cluster is warmed (DNS clusters: first answer), at most `timeout`
        seconds; the names of those still cold."""
        cold = [s for s in self._states.values() if not s.warmed.is_set()]
        if cold:
            waits = [asyncio.ensure_future(s.warmed.wait()) for s in cold]
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for w in pending:
                w.cancel()
        return [s.cluster.name for s in cold if not s.warmed.is_set()]

    def close(self) -> None:
        for state in self._states.values():
            state.close()
        self._states.clear()
        self.resolver.close()
