"""Load balancing through the real proxy: real upstream servers, a real HTTP client.

Each upstream answers with its name; the tests count where requests landed. Bounds are binomial
(5 sigma); nothing is seeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx

from sidecar.config.snapshot import (
    Cluster,
    DiscoveryType,
    Endpoint,
    HashPolicy,
    LbPolicy,
    LocalityPolicy,
    Protocol,
    Snapshot,
    Workload,
)

from .http_helpers import Proxy, Request, Upstream, ok, simple_routes, start_proxy

TIMEOUT = 10.0


def named(name: str):  # type: ignore[no-untyped-def]
    def handle(req: Request, t: asyncio.Transport) -> None:
        t.write(ok(name.encode()))

    return handle


@contextlib.asynccontextmanager
async def upstreams(n: int) -> AsyncIterator[list[Upstream]]:
    ups = [await Upstream(named(f"u{i}")).start() for i in range(n)]
    try:
        yield ups
    finally:
        for u in ups:
            u.close()


def lb_cluster(ups: list[Upstream], policy: LbPolicy, weights: list[int] | None = None,
               localities: list[str] | None = None, **kw: object) -> Cluster:
    eps = tuple(
        Endpoint(address="127.0.0.1", port=u.port, weight=(weights or [1] * len(ups))[i],
                 locality=(localities or [""] * len(ups))[i])
        for i, u in enumerate(ups)
    )
    return Cluster(name="lb", discovery=DiscoveryType.STATIC, endpoints=eps,
                   protocol=Protocol.HTTP, lb_policy=policy, **kw)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def client(proxy: Proxy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proxy.port}", timeout=TIMEOUT,
                                 trust_env=False) as c:
        yield c


async def spread(proxy: Proxy, n: int, **kw: object) -> Counter[str]:
    out: Counter[str] = Counter()
    async with client(proxy) as c:
        for _ in range(n):
            r = await c.get("/", **kw)  # type: ignore[arg-type]
            assert r.status_code == 200
            out[r.text] += 1
    return out


def within(observed: int, n: int, p: float) -> bool:
    return abs(observed - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1


async def test_round_robin_weights_exact() -> None:
    async with upstreams(3) as ups, start_proxy(
        simple_routes("lb"), [lb_cluster(ups, LbPolicy.ROUND_ROBIN, [1, 1, 2])]
    ) as proxy:
        assert await spread(proxy, 200) == Counter({"u0": 50, "u1": 50, "u2": 100})


async def test_random_and_least_request_honour_weights() -> None:
    n = 500
    for policy in (LbPolicy.RANDOM, LbPolicy.LEAST_REQUEST):
        async with upstreams(3) as ups, start_proxy(
            simple_routes("lb"), [lb_cluster(ups, policy, [1, 1, 2])]
        ) as proxy:
            got = await spread(proxy, n)
            assert sum(got.values()) == n
            for name, p in (("u0", 0.25), ("u1", 0.25), ("u2", 0.5)):
                assert within(got[name], n, p), (policy, got)


async def test_least_request_avoids_an_upstream_holding_a_request() -> None:
    release = asyncio.Event()

    async def slow(req: Request, t: asyncio.Transport) -> None:
        await release.wait()
        t.write(ok(b"slow"))

    slow_up = await Upstream(slow).start()
    async with upstreams(2) as fast, start_proxy(
        simple_routes("lb"), [lb_cluster([slow_up, *fast], LbPolicy.LEAST_REQUEST)]
    ) as proxy, client(proxy) as c:
        hung: list[asyncio.Task[httpx.Response]] = []
        for _ in range(50):  # until one request is stuck at the slow upstream
            hung.append(asyncio.create_task(c.get("/")))
            await asyncio.sleep(0.02)
            if slow_up.requests:
                break
        assert len(slow_up.requests) == 1
        got = await spread(proxy, 60)
        assert got["slow"] == 0 and got["u0"] > 0 and got["u1"] > 0
        release.set()
        for t in hung:
            assert (await t).status_code == 200
    slow_up.close()


async def test_header_hash_sticks_to_one_upstream() -> None:
    async with upstreams(4) as ups, start_proxy(
        simple_routes("lb"),
        [lb_cluster(ups, LbPolicy.RING_HASH, hash_policy=HashPolicy(header="x-user"))],
    ) as proxy:
        for user in ("alice", "bob", "jason"):
            got = await spread(proxy, 15, headers={"x-user": user})
            assert len(got) == 1, (user, got)
        users: set[str] = set()
        async with client(proxy) as c:
            for i in range(40):
                users.add((await c.get("/", headers={"x-user": f"user{i}"})).text)
        assert len(users) >= 3  # different keys spread over the upstreams


async def test_generated_cookie_is_set_then_sticks() -> None:
    policy = HashPolicy(cookie="sticky", cookie_ttl=60.0, cookie_path="/")
    async with upstreams(4) as ups, start_proxy(
        simple_routes("lb"), [lb_cluster(ups, LbPolicy.MAGLEV, hash_policy=policy)]
    ) as proxy:
        async with client(proxy) as c:
            first = await c.get("/")
            set_cookie = first.headers.get("set-cookie")
            assert set_cookie is not None
            assert set_cookie.startswith("sticky=")
            assert "Max-Age=60" in set_cookie and "HttpOnly" in set_cookie
            assert "Path=/" in set_cookie
            value = set_cookie.split(";")[0].split("=", 1)[1]
            assert value
            for _ in range(15):  # the client presents the cookie: same upstream, no new cookie
                r = await c.get("/", headers={"cookie": f"sticky={value}"})
                assert r.text == first.text
                assert "set-cookie" not in r.headers
        # other cookie values land elsewhere, each sticking
        seen: set[str] = set()
        async with client(proxy) as c:
            for i in range(30):
                a = await c.get("/", headers={"cookie": f"sticky=v{i}"})
                b = await c.get("/", headers={"cookie": f"other=1; sticky=v{i}"})
                assert a.text == b.text
                seen.add(a.text)
        assert len(seen) >= 3


async def test_locality_failover_through_reload() -> None:
    me = Workload(name="me", namespace="default", locality="r1/z1/s1")
    async with upstreams(3) as ups, start_proxy(simple_routes("lb"), []) as proxy:
        cluster = lb_cluster(ups, LbPolicy.LEAST_REQUEST,
                             localities=["r1/z1/s1", "r1/z2/s1", "r2/z1/s1"],
                             locality=LocalityPolicy())

        def reload(c: Cluster) -> None:
            proxy.cm.update(Snapshot(version="v", workload=me, listeners=(),
                                     clusters={c.name: c}))

        reload(cluster)
        assert await spread(proxy, 60) == Counter({"u0": 60})  # local zone only
        local_down = replace(cluster, endpoints=(
            replace(cluster.endpoints[0], healthy=False), *cluster.endpoints[1:]))
        reload(local_down)
        assert await spread(proxy, 60) == Counter({"u1": 60})  # same region next
