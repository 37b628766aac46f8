"""Istio's traffic-shifting, mirroring and load-balancing configs through a real client-side
`sidecar run`, real upstreams and curl (one curl process per client, keeping its connection and,
for sticky sessions, its cookie jar). Splits are checked against binomial bounds (5 sigma)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .http_helpers import Upstream, curl
from .istio_tasks import NS, egress_sidecar, join, loop_curl, running, service, workload
from .routing_helpers import echo

BIND = "127.0.78.2"
VERSIONS = ("v1", "v2", "v3")


@pytest.fixture
async def ups() -> AsyncIterator[dict[str, Upstream]]:
    servers = {v: await echo(v).start() for v in VERSIONS}
    yield servers
    for s in servers.values():
        s.close()


def base(ups: dict[str, Upstream], *docs: str, ports: tuple[tuple[str, int], ...] = (
        ("http", 80),)) -> str:
    """Service `web` (app=web) with a WorkloadEntry per version; every service port of a
    version reaches that version's one upstream."""
    return join(
        service("web", *ports),
        *(workload("web", v, {name: up.port for name, _ in ports}) for v, up in ups.items()),
        egress_sidecar(BIND, *((p, "HTTP") for _, p in ports)),
        *docs,
    )


def rule(policy: str, subsets: bool = True) -> str:
    subset_yaml = "".join(f"  - {{name: {v}, labels: {{version: {v}}}}}\n" for v in VERSIONS)
    return f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: {NS}}}
spec:
  host: web.{NS}.svc.cluster.local
  trafficPolicy:
{policy}{"  subsets:" + chr(10) + subset_yaml if subsets else ""}"""


def within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


async def test_weighted_50_50_through_a_curl_loop(ups: dict[str, Upstream]) -> None:
    vs = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: {NS}}}
spec:
  hosts: [web]
  http:
  - route:
    - destination: {{host: web, subset: v1}}
      weight: 50
    - destination: {{host: web, subset: v3}}
      weight: 50
"""
    n = 400
    with running(base(ups, rule("    loadBalancer: {simple: ROUND_ROBIN}\n"), vs)):
        seen = Counter(await loop_curl(f"http://{BIND}/", n, "-H", "Host: web"))
    assert set(seen) == {"v1", "v3"} and sum(seen.values()) == n, seen
    assert within(seen["v1"], n, 0.5), seen


async def test_http_cookie_hash_sticks_per_client_jar_and_spreads_clients(
    ups: dict[str, Upstream], tmp_path: Path,
) -> None:
    policy = """\
    loadBalancer:
      consistentHash:
        httpCookie: {name: session, path: /, ttl: 0s}
"""
    clients = 12
    with running(base(ups, rule(policy, subsets=False))):

        async def browse(i: int) -> tuple[str, list[str]]:
            jar = str(tmp_path / f"jar{i}")
            seen: list[str] = []
            for _ in range(4):  # one curl per page view, as separate visits: new connections
                seen += await loop_curl(f"http://{BIND}/cart", 1, "-H", "Host: web",
                                        "-c", jar, "-b", jar)
            cookie = [ln for ln in Path(jar).read_text().splitlines() if "\tsession\t" in ln]
            assert len(cookie) == 1, Path(jar).read_text()
            return cookie[0].split("\t")[-1], seen

        results = [await browse(i) for i in range(clients)]
    for _cookie, seen in results:
        assert len(set(seen)) == 1, seen  # each client keeps its endpoint
    # Envoy derives a generated cookie from the connection (client address and port): clients
    # sharing an address (behind one gateway or NAT) still get their own sessions.
    assert len({c for c, _ in results}) == clients, results
    by_endpoint = Counter(seen[0] for _c, seen in results)
    assert len(by_endpoint) >= 2, by_endpoint  # all on one of 3: p = 3 * 3**-12


async def test_mirror_percentage_copies_about_half_and_the_client_sees_only_v1(
    ups: dict[str, Upstream],
) -> None:
    vs = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: {NS}}}
spec:
  hosts: [web]
  http:
  - route:
    - destination: {{host: web, subset: v1}}
      weight: 100
    mirror: {{host: web, subset: v2}}
    mirrorPercentage: {{value: 50.0}}
"""
    n = 300
    with running(base(ups, rule("    loadBalancer: {simple: ROUND_ROBIN}\n"), vs)):
        seen = Counter(await loop_curl(f"http://{BIND}/orders", n, "-H", "Host: web"))
        mirrored = ups["v2"].requests
        for _ in range(100):  # mirrored copies are fire-and-forget: let them land
            count = len(mirrored)
            await asyncio.sleep(0.05)
            if count == len(mirrored) and count:
                break
    assert seen == Counter({"v1": n})
    assert within(len(mirrored), n, 0.5), len(mirrored)
    assert {r.header("host") for r in mirrored} == {"web-shadow"}
    assert {r.path for r in mirrored} == {"/orders"}
    assert not ups["v3"].requests


def _strict_rotation(seq: list[str], k: int) -> bool:
    return all(len(set(seq[i:i + k])) == k for i in range(len(seq) - k + 1))


async def test_round_robin_rotates_and_the_default_least_request_does_not(
    ups: dict[str, Upstream],
) -> None:
    n = 90
    rr = base(ups, rule("    loadBalancer: {simple: ROUND_ROBIN}\n", subsets=False))
    with running(rr) as mesh:
        rotating = await loop_curl(f"http://{BIND}/", n, "-H", "Host: web")
        mesh.apply(base(ups))  # no DestinationRule: Istio's default, LEAST_REQUEST
        default = await loop_curl(f"http://{BIND}/", n, "-H", "Host: web")
    assert _strict_rotation(rotating, 3), rotating
    assert Counter(rotating) == Counter({v: n // 3 for v in VERSIONS})
    # Sequential requests leave every endpoint idle: power of two choices picks at random.
    assert not _strict_rotation(default, 3), default
    assert all(within(Counter(default)[v], n, 1 / 3) for v in VERSIONS), Counter(default)


async def test_port_level_settings_override_the_top_level_policy_on_one_port(
    ups: dict[str, Upstream],
) -> None:
    policy = """\
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
    portLevelSettings:
    - port: {number: 8080}
      loadBalancer: {simple: ROUND_ROBIN}
"""
    ports = (("http", 80), ("http-admin", 8080))
    with running(base(ups, rule(policy, subsets=False), ports=ports)):
        hashed = await loop_curl(f"http://{BIND}/", 30, "-H", "Host: web", "-H", "x-user: ann")
        rotating = await loop_curl(f"http://{BIND}:8080/", 30, "-H", "Host: web:8080",
                                   "-H", "x-user: ann")
        others = [await loop_curl(f"http://{BIND}/", 1, "-H", "Host: web",
                                  "-H", f"x-user: u{i}") for i in range(12)]
    assert len(set(hashed)) == 1, hashed
    assert _strict_rotation(rotating, 3), rotating
    assert len({o[0] for o in others}) >= 2, others  # other users hash elsewhere


async def test_curl_cookie_jar_round_trip_sets_no_second_cookie(
    ups: dict[str, Upstream], tmp_path: Path,
) -> None:
    policy = """\
    loadBalancer:
      consistentHash:
        httpCookie: {name: user, ttl: 60s}
"""
    jar = str(tmp_path / "jar")
    with running(base(ups, rule(policy, subsets=False))):
        _, first, _ = await curl("-s", "-o", "/dev/null", "-D", "-", "-c", jar, "-b", jar,
                                    "-H", "Host: web", f"http://{BIND}/")
        _, second, _ = await curl("-s", "-o", "/dev/null", "-D", "-", "-c", jar, "-b", jar,
                                     "-H", "Host: web", f"http://{BIND}/")
    assert b"set-cookie: user=" in first.lower() and b"max-age=60" in first.lower(), first
    assert b"set-cookie" not in second.lower(), second
