"""Priorities and localities: which endpoints a cluster balances over, as Istio configures Envoy.

Theory of operation: `build_balancer` turns a cluster's endpoints, its policy and the proxy's own
workload into a `Balancer`: priority levels, each with one leaf balancer (lb.py / lb_hash.py)
over its healthy endpoints, or with weighted localities (`distribute`) each with its leaf.

Priorities (localityLbSetting, when the proxy has a locality): as Istio assigns them, P0 same
region/zone/subzone, P1 same region/zone, P2 same region, P3 a `failover` target region of the
proxy's region, P4 the rest. `failover_priority` label keys rank endpoints by how many of the
keys, in order, carry the proxy's value (a "key=value" entry compares with that value); with
`failover` too, locality ranks first and labels within. Empty levels are dropped.

Load per level, as Envoy: a level's health is healthy/total scaled by the overprovisioning
factor 1.4 (in integer percent, capped at 100); P0 takes its health, the next level the part
still missing, and so on; when all levels together are under 100, the loads are scaled to sum to
100. So P0 keeps all traffic until fewer than ~71% of its endpoints are healthy, then spills the
shortfall to P1. `distribute` instead keeps one level whose localities are picked by weight (a
`to` entry's weight split evenly among the localities it matches; unmatched localities get
none), each weight scaled by its locality's health the same way.

Unhealthy endpoints (Endpoint.healthy False: not ready in Kubernetes; later, outlier ejection)
are never picked. Envoy's panic mode (balance over all hosts when too few are healthy) is off as
Istio configures it: Istio sends no not-ready endpoints at all and sets healthy_panic_threshold
to the outlier detection's minHealthPercent, 0 unless set. So a cluster with no healthy endpoint
has nothing to pick: the request gets 503 UH, as in Istio.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

from sidecar.config.snapshot import Cluster, Endpoint, LbPolicy, LocalityPolicy, Workload
from sidecar.upstream.lb import ActiveCounts, Leaf, LeastRequest, RandomLb, RoundRobin
from sidecar.upstream.lb_hash import Maglev, RingHash

OVERPROVISIONING = 140  # percent: Envoy's default overprovisioning factor 1.4

REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"


def split_locality(locality: str) -> tuple[str, str, str]:
    """"region/zone/subzone" -> its three parts ("" for missing ones)."""
    parts = locality.split("/")
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def locality_matches(pattern: str, locality: str) -> bool:
    """Istio's locality match: "region/zone/*", "region/*", "region", or the full triple."""
    have = split_locality(locality)
    for i, seg in enumerate(pattern.split("/")[:3]):
        if seg == "*":
            return True
        if have[i] != seg:
            return False
    return True


def locality_priority(
    proxy: tuple[str, str, str], ep: tuple[str, str, str], failover: tuple[tuple[str, str], ...]
) -> int:
    """Istio's priority of an endpoint locality seen from the proxy's locality (0 is best)."""
    if ep[0] == proxy[0]:
        if ep[1] == proxy[1]:
            return 0 if ep[2] == proxy[2] else 1
        return 2
    if any(src == proxy[0] and dst == ep[0] for src, dst in failover):
        return 3
    return 4


def _label(labels: frozenset[tuple[str, str]], locality: str, key: str) -> str:
    region, zone, subzone = split_locality(locality)
    fixed = {REGION_LABEL: region, ZONE_LABEL: zone, SUBZONE_LABEL: subzone}.get(key)
    if fixed is not None and locality:
        return fixed
    for k, v in labels:
        if k == key:
            return v
    return ""


def label_priority(keys: tuple[str, ...], proxy: Workload, ep: Endpoint) -> int:
    """failoverPriority: the number of keys left after the longest matching prefix."""
    matched = 0
    for key in keys:
        name, eq, value = key.partition("=")
        want = value if eq else _label(proxy.labels, proxy.locality, name)
        if _label(ep.labels, ep.locality, name) != want:
            break
        matched += 1
    return len(keys) - matched


def _health(group: tuple[Endpoint, ...]) -> int:
    """Envoy's health score of a level or locality: healthy share x 1.4, integer percent <= 100."""
    if not group:
        return 0
    healthy = sum(1 for ep in group if ep.healthy)
    return min(100, healthy * OVERPROVISIONING // len(group))


def priority_loads(healths: list[int]) -> list[int]:
    """Envoy's priority load: integer percents per level from their health scores."""
    total = sum(healths)
    if total == 0:
        return [0] * len(healths)
    if total < 100:  # not enough health anywhere: scale so the loads still sum to 100
        loads = [h * 100 // total for h in healths]
        first = next(i for i, h in enumerate(healths) if h)
        loads[first] += 100 - sum(loads)
        return loads
    loads = []
    remaining = 100
    for h in healths:
        take = min(h, remaining)
        loads.append(take)
        remaining -= take
    return loads


def make_leaf(
    cluster: Cluster,
    endpoints: tuple[Endpoint, ...],
    active: ActiveCounts,
    rng: random.Random,
) -> Leaf:
    """The cluster's lb_policy over these (eligible) endpoints."""
    policy = cluster.lb_policy
    if policy is LbPolicy.ROUND_ROBIN:
        return RoundRobin(endpoints)
    if policy is LbPolicy.RANDOM:
        return RandomLb(endpoints, rng)
    if policy is LbPolicy.RING_HASH:
        return RingHash(endpoints, cluster.ring_size, rng)
    if policy is LbPolicy.MAGLEV:
        return Maglev(endpoints, cluster.maglev_table_size, rng)
    return LeastRequest(endpoints, active, rng)


@dataclass(frozen=True, slots=True)
class Level:
    """One priority level: its localities' leaves and their cumulative weights."""

    leaves: tuple[Leaf, ...]
    cum_weights: tuple[float, ...]  # empty when there is one leaf


class Balancer:
    """A cluster's endpoint picker: priority level, then locality, then the leaf's policy."""

    __slots__ = ("_cum_loads", "_levels", "_rng", "_single", "loads")

    def __init__(self, levels: list[tuple[int, Level]], rng: random.Random) -> None:
        self._rng = rng
        live = [(load, lvl) for load, lvl in levels if load > 0 and lvl.leaves]
        self._levels = tuple(lvl for _, lvl in live)
        cum, acc = [], 0
        for load, _ in live:
            acc += load
            cum.append(acc)
        self._cum_loads = tuple(cum)
        only = self._levels[0] if len(self._levels) == 1 else None
        self._single = only.leaves[0] if only is not None and len(only.leaves) == 1 else None
        self.loads = tuple(load for load, _ in levels)  # percent of traffic per priority level

    def pick(self, key: int | None = None) -> Endpoint | None:
        single = self._single
        if single is not None:
            return single.pick(key)
        levels = self._levels
        if not levels:
            return None
        if key is None:
            r1, r2 = self._rng.random(), self._rng.random()
        else:  # hashed: the key picks level and locality too, so a key keeps its endpoint
            r1, r2 = (key & 0xFFFF) / 65536, ((key >> 16) & 0xFFFF) / 65536
        level = levels[bisect.bisect_right(self._cum_loads, int(r1 * self._cum_loads[-1]))]
        leaves = level.leaves
        if len(leaves) == 1:
            return leaves[0].pick(key)
        cum = level.cum_weights
        return leaves[bisect.bisect_right(cum, r2 * cum[-1])].pick(key)


def build_balancer(
    cluster: Cluster,
    endpoints: tuple[Endpoint, ...],
    workload: Workload | None,
    active: ActiveCounts,
    rng: random.Random,
) -> Balancer:
    """The balancer for this endpoint set (built off the request path, once per set)."""
    healthy = tuple(ep for ep in endpoints if ep.healthy)
    if not healthy:  # no panic mode (see the module comment): nothing to pick, 503 UH
        return Balancer([], rng)
    policy = cluster.locality
    if policy is None or workload is None or not workload.locality:
        leaf = make_leaf(cluster, healthy, active, rng)
        return Balancer([(100, Level((leaf,), ()))], rng)
    for src, targets in policy.distribute:
        if locality_matches(src, workload.locality):
            return Balancer([(100, _distributed(cluster, endpoints, targets, active, rng))], rng)
    groups = _prioritized(policy, workload, endpoints)
    loads = priority_loads([_health(g) for g in groups])
    levels = [
        (load, Level((make_leaf(cluster, tuple(e for e in g if e.healthy), active, rng),), ()))
        for load, g in zip(loads, groups, strict=True)
    ]
    return Balancer(levels, rng)


def _prioritized(
    policy: LocalityPolicy, workload: Workload, endpoints: tuple[Endpoint, ...]
) -> list[tuple[Endpoint, ...]]:
    proxy = split_locality(workload.locality)
    keys = policy.failover_priority
    by_rank: dict[tuple[int, int], list[Endpoint]] = {}
    for ep in endpoints:
        loc = locality_priority(proxy, split_locality(ep.locality), policy.failover)
        if keys and not policy.failover:
            loc = 0
        lab = label_priority(keys, workload, ep) if keys else 0
        by_rank.setdefault((loc, lab), []).append(ep)
    return [tuple(by_rank[rank]) for rank in sorted(by_rank)]


def _distributed(
    cluster: Cluster,
    endpoints: tuple[Endpoint, ...],
    targets: tuple[tuple[str, int], ...],
    active: ActiveCounts,
    rng: random.Random,
) -> Level:
    by_locality: dict[str, list[Endpoint]] = {}
    for ep in endpoints:
        by_locality.setdefault(ep.locality, []).append(ep)
    matched: dict[str, list[str]] = {}  # to-pattern -> localities it takes (first match wins)
    for loc in by_locality:
        pattern = next((p for p, _ in targets if locality_matches(p, loc)), None)
        if pattern is not None:
            matched.setdefault(pattern, []).append(loc)
    leaves: list[Leaf] = []
    cum: list[float] = []
    acc = 0.0
    for pattern, weight in targets:
        for loc in matched.get(pattern, ()):
            group = tuple(by_locality[loc])
            eligible = tuple(ep for ep in group if ep.healthy)
            effective = weight / len(matched[pattern]) * _health(group) / 100
            if not eligible or effective <= 0:
                continue
            acc += effective
            leaves.append(make_leaf(cluster, eligible, active, rng))
            cum.append(acc)
    return Level(tuple(leaves), tuple(cum))
