"""Load balancers: distributions per policy, consistent hashing, locality priorities, hash keys.

Distribution bounds come from the binomial (5 sigma), so a fair balancer passes essentially
always and a biased one fails; nothing is seeded.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter

import pytest

from sidecar.config.snapshot import (
    Cluster,
    DiscoveryType,
    Endpoint,
    HashPolicy,
    LbPolicy,
    LocalityPolicy,
    Workload,
)
from sidecar.http.stream import RequestHead
from sidecar.upstream.cluster import ClusterState
from sidecar.upstream.hash_key import cookie_value, generated_cookie, query_value, request_key
from sidecar.upstream.lb import new_rng
from sidecar.upstream.lb_hash import Maglev, RingHash, hash64
from sidecar.upstream.locality import priority_loads


def ep(i: int, weight: int = 1, locality: str = "", healthy: bool = True,
       labels: frozenset[tuple[str, str]] = frozenset()) -> Endpoint:
    return Endpoint(address=f"10.0.0.{i}", port=8080, weight=weight, locality=locality,
                    healthy=healthy, labels=labels)


def state(eps: tuple[Endpoint, ...], policy: LbPolicy = LbPolicy.LEAST_REQUEST,
          workload: Workload | None = None, **kw: object) -> ClusterState:
    c = Cluster(name="c", discovery=DiscoveryType.STATIC, endpoints=eps, lb_policy=policy,
                **kw)  # type: ignore[arg-type]
    return ClusterState(c, workload)


def counts(s: ClusterState, n: int) -> Counter[Endpoint]:
    out: Counter[Endpoint] = Counter()
    for _ in range(n):
        e = s.choose(None)
        assert e is not None
        out[e] += 1
        s.release(e)
    return out


def within(observed: int, n: int, p: float, sigmas: float = 5.0, slack: float = 0.0) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return abs(observed - n * p) <= sigmas * sd + slack * n + 1


def assert_shares(c: Counter[Endpoint], n: int, shares: dict[Endpoint, float],
                  slack: float = 0.0) -> None:
    """Each endpoint's count within 5 binomial sigmas of its share (plus `slack`, a share of n:
    a hash ring's arcs are not exactly equal, so its endpoints' true shares differ a little)."""
    for e, p in shares.items():
        assert within(c[e], n, p, slack=slack), (e.address, c[e], n * p)
    assert sum(c[e] for e in shares) == n  # nothing else was chosen


# --- per policy -----------------------------------------------------------------------------


def test_round_robin_weights_exact_and_interleaved() -> None:
    a, b = ep(1, weight=3), ep(2, weight=1)
    s = state((a, b), LbPolicy.ROUND_ROBIN)
    picks = [s.choose(None) for _ in range(400)]
    assert picks.count(a) == 300 and picks.count(b) == 100
    assert all(b in picks[i : i + 4] for i in range(0, 400, 4))  # never 4 in a row of a


def test_round_robin_equal_weights_alternate() -> None:
    eps = (ep(1), ep(2), ep(3))
    s = state(eps, LbPolicy.ROUND_ROBIN)
    assert [s.choose(None) for _ in range(6)] == list(eps) * 2


@pytest.mark.parametrize("policy", [LbPolicy.RANDOM, LbPolicy.LEAST_REQUEST])
def test_weighted_policies_honour_weights(policy: LbPolicy) -> None:
    eps = (ep(1, 1), ep(2, 2), ep(3, 5))
    n = 16000
    c = counts(state(eps, policy), n)
    assert_shares(c, n, {eps[0]: 1 / 8, eps[1]: 2 / 8, eps[2]: 5 / 8})


@pytest.mark.parametrize("policy", [LbPolicy.RANDOM, LbPolicy.LEAST_REQUEST,
                                    LbPolicy.RING_HASH, LbPolicy.MAGLEV])
def test_equal_weights_uniform_without_key(policy: LbPolicy) -> None:
    eps = tuple(ep(i) for i in range(4))
    n = 8000
    c = counts(state(eps, policy), n)
    # Ring hash (1,024 points per endpoint): these four addresses' arcs are 23.4%, 26.1%, 25.2%
    # and 25.3% of the ring; Envoy's ring has the same kind of spread.
    slack = 0.03 if policy is LbPolicy.RING_HASH else 0.0
    assert_shares(c, n, {e: 0.25 for e in eps}, slack)


def test_least_request_avoids_busy_endpoint() -> None:
    eps = tuple(ep(i) for i in range(4))
    s = state(eps[:1])  # one endpoint takes 20 long requests, then the service scales up
    held = [s.choose(None) for _ in range(20)]
    s.set_endpoints(eps)
    assert s.active_requests(eps[0]) == 20
    c = counts(s, 3000)
    assert c[eps[0]] == 0
    assert_shares(c, 3000, {e: 1 / 3 for e in eps[1:]})
    for h in held:
        assert h is not None
        s.release(h)
    assert s.active_requests(eps[0]) == 0
    assert counts(s, 4000)[eps[0]] > 500  # idle again: back in rotation


def test_least_request_spreads_concurrent_requests_evenly() -> None:
    eps = tuple(ep(i) for i in range(4))
    s = state(eps)
    held = [s.choose(None) for _ in range(400)]  # none released: P2C balances the active counts
    c = Counter(held)
    assert max(c.values()) - min(c.values()) <= 10


def test_unhealthy_never_chosen_even_when_all_are() -> None:
    good, bad = ep(1), ep(2, healthy=False)
    for policy in LbPolicy:
        s = state((good, bad), policy)
        assert counts(s, 300)[bad] == 0
    # No panic mode, as Istio configures Envoy: nothing healthy, nothing chosen (503 UH).
    none_healthy = state((ep(1, healthy=False), ep(2, healthy=False)), LbPolicy.ROUND_ROBIN)
    assert none_healthy.choose(None) is None


def test_set_endpoints_rebuilds() -> None:
    s = state((ep(1),), LbPolicy.ROUND_ROBIN)
    s.set_endpoints((ep(2), ep(3)))
    assert set(counts(s, 10)) == {ep(2), ep(3)}
    s.set_endpoints(())
    assert s.choose(None) is None


# --- consistent hashing ---------------------------------------------------------------------

KEYS = [hash64(b"user-%d" % i) for i in range(10000)]


@pytest.mark.parametrize("build", [lambda e: RingHash(e, 1024, new_rng()),
                                   lambda e: Maglev(e, 65537, new_rng())],
                         ids=["ring", "maglev"])
@pytest.mark.parametrize("n", [3, 5, 10])
def test_removing_one_endpoint_moves_about_1_over_n(build, n: int) -> None:  # type: ignore[no-untyped-def]
    eps = tuple(ep(i) for i in range(n))
    before, after = build(eps), build(eps[:-1])
    assert all(before.pick(k) == before.pick(k) for k in KEYS[:100])  # stable
    moved = [k for k in KEYS if before.pick(k) != after.pick(k)]
    assert 0.5 / n * len(KEYS) <= len(moved) <= 2 / n * len(KEYS)
    strays = [k for k in moved if before.pick(k) != eps[-1]]
    if isinstance(before, RingHash):
        assert strays == []  # only the removed endpoint's keys move
    else:
        assert len(strays) <= 0.01 * len(KEYS)  # Maglev: a few more, by design


def test_hash_is_stable_across_builds_and_processes() -> None:
    eps = tuple(ep(i) for i in range(5))
    a, b = RingHash(eps, 1024, new_rng()), RingHash(eps, 1024, new_rng())
    assert [a.pick(k) for k in KEYS[:500]] == [b.pick(k) for k in KEYS[:500]]
    m1, m2 = Maglev(eps, 65537, new_rng()), Maglev(eps, 65537, new_rng())
    assert [m1.pick(k) for k in KEYS[:500]] == [m2.pick(k) for k in KEYS[:500]]
    # another process (another hash() salt) picks the same endpoints for the same keys
    code = (
        "from sidecar.config.snapshot import Endpoint as E;"
        "from sidecar.upstream.lb import new_rng;"
        "from sidecar.upstream.lb_hash import RingHash, hash64;"
        "r = RingHash(tuple(E(address=f'10.0.0.{i}', port=8080) for i in range(5)), 1024,"
        " new_rng());"
        "print(','.join(r.pick(hash64(b'user-%d' % i)).address for i in range(50)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30,
                         check=True, env={**os.environ, "PYTHONHASHSEED": "random"})
    mine = ",".join(a.pick(k).address for k in KEYS[:50])  # type: ignore[union-attr]
    assert out.stdout.decode().strip() == mine


@pytest.mark.parametrize("policy", [LbPolicy.RING_HASH, LbPolicy.MAGLEV])
def test_hash_weights(policy: LbPolicy) -> None:
    eps = (ep(1, 1), ep(2, 1), ep(3, 2))
    s = state(eps, policy, hash_policy=HashPolicy(header="x-user"))
    c = Counter(s.lb.pick(k) for k in KEYS)
    for e, p in ((eps[0], 0.25), (eps[1], 0.25), (eps[2], 0.5)):
        assert abs(c[e] / len(KEYS) - p) < 0.05 * 1.5, (e, c[e])


def test_ring_has_at_least_ring_size_points() -> None:
    eps = (ep(1), ep(2, 3))
    assert len(RingHash(eps, 1024, new_rng())) >= 1024
    assert len(RingHash(eps, 100, new_rng())) >= 100


# --- hash keys ------------------------------------------------------------------------------


def head(path: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None) -> RequestHead:
    return RequestHead(b"GET", path, headers or [])


def test_header_key_sticks() -> None:
    eps = tuple(ep(i) for i in range(5))
    s = state(eps, LbPolicy.RING_HASH, hash_policy=HashPolicy(header="x-user"))
    for user in (b"alice", b"bob", b"carol"):
        got = {s.choose_hashed(head(headers=[(b"X-User", user)]), b"10.1.1.1")[0]
               for _ in range(20)}
        assert len(got) == 1
    users = {s.choose_hashed(head(headers=[(b"x-user", b"u%d" % i)]), b"1.1.1.1")[0]
             for i in range(200)}
    assert len(users) == 5  # different keys spread


def test_key_sources() -> None:
    h = head(b"/p?a=1&user=bob&z", [(b"cookie", b"x=1; sess=\"abc\""), (b"cookie", b"y=2")])
    assert request_key(HashPolicy(query_parameter="user"), h, b"")[0] == hash64(b"bob")
    assert request_key(HashPolicy(cookie="sess"), h, b"")[0] == hash64(b"abc")
    assert request_key(HashPolicy(cookie="y"), h, b"")[0] == hash64(b"2")
    assert request_key(HashPolicy(source_ip=True), h, b"10.0.0.9")[0] == hash64(b"10.0.0.9")
    assert request_key(HashPolicy(header="missing"), h, b"")[0] is None
    assert request_key(HashPolicy(query_parameter="nope"), h, b"")[0] is None
    assert cookie_value(b"a=1;b=2", b"c") is None
    assert query_value(b"/x", b"a") is None


def test_absent_cookie_generated_with_ttl() -> None:
    policy = HashPolicy(cookie="sticky", cookie_ttl=3600.0, cookie_path="/app")
    key, set_cookie = request_key(policy, head(), b"10.0.0.7")
    value = generated_cookie(b"10.0.0.7")
    assert set_cookie == b"sticky=" + value + b"; Max-Age=3600; Path=/app; HttpOnly"
    # the client sends it back and hashes to the same key: it keeps its endpoint
    again, none = request_key(policy, head(headers=[(b"cookie", b"sticky=" + value)]), b"x")
    assert again == key and none is None
    session = HashPolicy(cookie="s", cookie_ttl=0.0)
    assert request_key(session, head(), b"10.0.0.7")[1] == b"s=" + value + b"; HttpOnly"
    assert request_key(HashPolicy(cookie="s"), head(), b"10.0.0.7") == (None, None)


def test_no_key_falls_back_to_spreading() -> None:
    eps = tuple(ep(i) for i in range(4))
    s = state(eps, LbPolicy.MAGLEV, hash_policy=HashPolicy(header="x-user"))
    got = Counter(s.choose_hashed(head(), b"1.1.1.1")[0] for _ in range(400))
    assert len(got) == 4


# --- locality -------------------------------------------------------------------------------

ME = Workload(name="me", namespace="ns", locality="r1/z1/s1")


def zones(local_healthy: int, local_total: int = 10) -> tuple[Endpoint, ...]:
    local = tuple(ep(i, locality="r1/z1/s1", healthy=i < local_healthy)
                  for i in range(local_total))
    same_region = tuple(ep(100 + i, locality="r1/z2/s1") for i in range(5))
    far = tuple(ep(200 + i, locality="r2/z9/s1") for i in range(5))
    return local + same_region + far


def share_by_locality(s: ClusterState, n: int) -> Counter[str]:
    return Counter(e.locality for e, k in counts(s, n).items() for _ in range(k))


def test_priority_loads_as_envoy() -> None:
    assert priority_loads([100, 100]) == [100, 0]
    assert priority_loads([70, 100]) == [70, 30]  # 50% healthy x 1.4
    assert priority_loads([0, 100, 100]) == [0, 100, 0]
    assert priority_loads([20, 30]) == [40, 60]  # not enough anywhere: normalised
    assert priority_loads([0, 0]) == [0, 0]


def test_locality_stays_local_while_healthy() -> None:
    s = state(zones(10), LbPolicy.ROUND_ROBIN, ME, locality=LocalityPolicy())
    assert share_by_locality(s, 1000) == Counter({"r1/z1/s1": 1000})
    s = state(zones(8), LbPolicy.ROUND_ROBIN, ME, locality=LocalityPolicy())  # 80% x 1.4 > 100
    assert share_by_locality(s, 1000) == Counter({"r1/z1/s1": 1000})


def test_locality_spills_partially_then_fails_over() -> None:
    n = 10000
    half = state(zones(5), LbPolicy.LEAST_REQUEST, ME, locality=LocalityPolicy())
    c = share_by_locality(half, n)  # 50% healthy -> 70% stays, 30% to the same region
    assert within(c["r1/z1/s1"], n, 0.7) and within(c["r1/z2/s1"], n, 0.3)
    assert c["r2/z9/s1"] == 0
    down = state(zones(0), LbPolicy.LEAST_REQUEST, ME, locality=LocalityPolicy())
    assert share_by_locality(down, 1000) == Counter({"r1/z2/s1": 1000})


def test_failover_region() -> None:
    eps = (ep(1, locality="r1/z1/s1", healthy=False), ep(2, locality="r2/z1/s1"),
           ep(3, locality="r3/z1/s1"))
    s = state(eps, LbPolicy.ROUND_ROBIN, ME, locality=LocalityPolicy(failover=(("r1", "r3"),)))
    assert share_by_locality(s, 100) == Counter({"r3/z1/s1": 100})


def test_failover_priority_labels() -> None:
    me = Workload(name="me", namespace="ns", locality="r1/z1/s1",
                  labels=frozenset({("net", "a"), ("tier", "x")}))
    same = ep(1, labels=frozenset({("net", "a"), ("tier", "x")}))
    half = ep(2, labels=frozenset({("net", "a"), ("tier", "y")}))
    other = ep(3, labels=frozenset({("net", "b"), ("tier", "x")}))
    pol = LocalityPolicy(failover_priority=("net", "tier"))
    s = state((same, half, other), LbPolicy.ROUND_ROBIN, me, locality=pol)
    assert set(counts(s, 20)) == {same}
    s.set_endpoints((replace_healthy(same), half, other))
    assert set(counts(s, 20)) == {half}


def replace_healthy(e: Endpoint) -> Endpoint:
    return Endpoint(address=e.address, port=e.port, labels=e.labels, healthy=False)


def test_distribute_weights() -> None:
    eps = (ep(1, locality="r1/z1/s1"), ep(2, locality="r1/z2/s1"), ep(3, locality="r1/z2/s2"),
           ep(4, locality="r2/z1/s1"))
    pol = LocalityPolicy(distribute=(("r1/z1/*", (("r1/z1/*", 60), ("r1/z2/*", 40))),))
    n = 10000
    c = share_by_locality(state(eps, LbPolicy.RANDOM, ME, locality=pol), n)
    assert within(c["r1/z1/s1"], n, 0.6)
    assert within(c["r1/z2/s1"], n, 0.2) and within(c["r1/z2/s2"], n, 0.2)
    assert c["r2/z1/s1"] == 0  # not a target


def test_no_proxy_locality_means_no_priorities() -> None:
    s = state(zones(10), LbPolicy.ROUND_ROBIN, Workload(name="x", namespace="n"),
              locality=LocalityPolicy())
    assert len(share_by_locality(s, 2000)) == 3
