"""Forwarding actions through a real listener to real upstreams: weighted split, header edits in
both directions (route and per destination), path and authority rewrites."""

from __future__ import annotations

import asyncio
import collections
import math

from sidecar.config.snapshot import HeaderOps, Rewrite, Route, RouteMatch, WeightedCluster

from .h2_raw import H2Client, request_headers
from .http_helpers import cluster, start_proxy
from .routing_helpers import Client, echo, get, table


async def test_weighted_split_95_5_within_binomial_bounds() -> None:
    v1, v2 = await echo("v1").start(), await echo("v2").start()
    rc = table(Route(name="split", match=RouteMatch(), weighted_clusters=(
        WeightedCluster("v1", 95), WeightedCluster("v2", 5))))
    n, conns = 4000, 8
    try:
        async with start_proxy(rc, [cluster("v1", v1.port), cluster("v2", v2.port)]) as proxy:
            counts: collections.Counter[str] = collections.Counter()

            async def run(k: int) -> None:
                c = await Client.open(proxy.port)
                try:
                    for _ in range(k):
                        r = await c.request("/")
                        counts[r.header("x-up") or "?"] += 1
                finally:
                    c.close()

            async with asyncio.timeout(30):
                await asyncio.gather(*(run(n // conns) for _ in range(conns)))
    finally:
        v1.close()
        v2.close()
    assert counts["v1"] + counts["v2"] == n
    sigma = math.sqrt(n * 0.05 * 0.95)
    assert abs(counts["v2"] - n * 0.05) < 5 * sigma, counts


async def test_header_edits_both_directions_route_and_destination() -> None:
    up = await echo("up").start()
    route = Route(
        name="edits", match=RouteMatch(), weighted_clusters=(WeightedCluster(
            "up", 1,
            request_headers=HeaderOps(set=(("x-dest", "d1"), ("x-both", "dest"))),
            response_headers=HeaderOps(add=(("x-dest-resp", "r1"),))),),
        request_headers=HeaderOps(set=(("x-set", "s"), ("x-both", "route")),
                                  add=(("x-add", "a"),), remove=("x-gone",)),
        response_headers=HeaderOps(set=(("x-keep", "overwritten"),), add=(("x-resp", "yes"),),
                                   remove=("x-drop",)))
    try:
        async with start_proxy(table(route), [cluster("up", up.port)]) as proxy:
            r = await get(proxy.port, "/", headers=[("x-set", "client"), ("x-gone", "1"),
                                                    ("x-add", "client")])
    finally:
        up.close()
    assert r.status == 200
    assert r.seen_header("x-set") == "s"
    assert r.seen_header("x-add") == "client,a"
    assert r.seen_header("x-gone") is None
    assert r.seen_header("x-dest") == "d1"
    assert r.seen_header("x-both") == "route"  # destination's first, then the route's (Envoy)
    assert r.header("x-drop") is None
    assert r.header("x-keep") == "overwritten"
    assert r.header("x-resp") == "yes"
    assert r.header("x-dest-resp") == "r1"
    assert r.header("x-up") == "up"


async def test_rewrites_the_upstream_sees() -> None:
    up = await echo("up").start()
    rc = table(
        Route(name="prefix", match=RouteMatch(prefix="/old/"), cluster="up",
              rewrite=Rewrite(prefix="/new/")),
        Route(name="exact", match=RouteMatch(prefix=None, path="/exact"), cluster="up",
              rewrite=Rewrite(prefix="/replaced")),
        Route(name="regex-match", match=RouteMatch(prefix=None, regex="/r/[0-9]+"), cluster="up",
              rewrite=Rewrite(prefix="/whole")),
        Route(name="regex-sub", match=RouteMatch(prefix="/sub/"), cluster="up",
              rewrite=Rewrite(regex="^/sub/([a-z]+)/([0-9]+)$", substitution=r"/\2/\1")),
        Route(name="authority", match=RouteMatch(prefix="/auth"), cluster="up",
              rewrite=Rewrite(authority="rewritten.example")),
    )
    cases = [
        ("/old/rest?q=1", "/new/rest?q=1", "svc"),
        ("/exact?k=v", "/replaced?k=v", "svc"),
        ("/r/42", "/whole", "svc"),
        ("/sub/abc/123?z", "/123/abc?z", "svc"),
        ("/auth/x", "/auth/x", "rewritten.example"),
    ]
    try:
        async with start_proxy(rc, [cluster("up", up.port)]) as proxy:
            for path, want_path, want_host in cases:
                seen = (await get(proxy.port, path)).json()
                assert (seen["path"], seen["host"]) == (want_path, want_host), path
                if want_path != path:
                    orig = [v for n, v in seen["headers"] if n == "x-envoy-original-path"]
                    assert orig == [path]
    finally:
        up.close()


async def test_scheme_from_h2_goes_on_as_x_forwarded_proto() -> None:
    up = await echo("up").start()
    try:
        async with start_proxy(table(Route(name="r", match=RouteMatch(), cluster="up")),
                               [cluster("up", up.port)]) as proxy:
            c = await H2Client.connect(proxy.port)
            try:
                hs = request_headers("/")
                hs[1] = (b":scheme", b"https")
                c.send(c.headers(1, hs))
                assert (await c.expect_response(1)).status == 200
            finally:
                c.close()
            plain = await get(proxy.port, "/")
    finally:
        up.close()
    assert up.requests[0].header("x-forwarded-proto") == "https"
    assert plain.seen_header("x-forwarded-proto") == "http"
