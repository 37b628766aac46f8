"""Envoy's `x-envoy-upstream-service-time` through a real listener: the milliseconds from the end
of the request to the upstream's response head, on every response from upstream (HTTP/1.1 and
HTTP/2 to the client), replacing a value from further upstream, in the access log, absent from
the proxy's own replies, and removable by a route's response header edits."""

from __future__ import annotations

import asyncio
import re

from sidecar.config.snapshot import HeaderOps, Route, RouteMatch

from .http_helpers import Request, Upstream, cluster, curl, ok, start_proxy
from .routing_helpers import table

DELAY = 0.12  # the upstream's think time before it answers
HEADER = re.compile(rb"^x-envoy-upstream-service-time: *(\S*)\r?$", re.I | re.M)


async def slow(req: Request, t: asyncio.Transport) -> None:
    await asyncio.sleep(DELAY)
    # A value from a proxy further upstream, which this one must replace.
    t.write(ok(b"slow", b"x-envoy-upstream-service-time: 99999\r\n"))


def values(out: bytes) -> list[int]:
    return [int(v) for v in HEADER.findall(out)]


async def test_responses_carry_the_upstream_time_once_and_the_log_has_it() -> None:
    up = await Upstream(slow).start()
    route = Route(name="r", match=RouteMatch(), cluster="up")
    try:
        async with start_proxy(table(route), [cluster("up", up.port)]) as p:
            url = f"http://127.0.0.1:{p.port}/"
            rc1, h1_out, err1 = await curl("-i", url)
            rc2, h2_out, err2 = await curl("-i", "--http2-prior-knowledge", url)
            records = await p.log.wait_for(2)
    finally:
        up.close()
    assert rc1 == 0 and rc2 == 0, (err1, err2)
    assert h2_out.startswith(b"HTTP/2 200")
    (t1,), (t2,) = values(h1_out), values(h2_out)
    for t in (t1, t2):
        assert DELAY * 1000 <= t < 2000, t
    assert sorted(r.upstream_service_time_ms or -1 for r in records) == sorted([t1, t2])


async def test_the_proxys_own_replies_have_none() -> None:
    dead = await Upstream(slow).start()
    port = dead.port
    dead.close()  # nothing listens there now: 503 UF from the proxy itself
    await asyncio.sleep(0.05)
    route = Route(name="r", match=RouteMatch(), cluster="gone")
    async with start_proxy(table(route), [cluster("gone", port)]) as p:
        rc, out, _ = await curl("-i", f"http://127.0.0.1:{p.port}/")
        [record] = await p.log.wait_for(1)
    assert rc == 0 and out.startswith(b"HTTP/1.1 503")
    assert values(out) == []
    assert record.upstream_service_time_ms is None


async def test_a_route_can_remove_or_replace_it() -> None:
    up = await Upstream(slow).start()
    removed = Route(name="rm", match=RouteMatch(prefix="/rm"), cluster="up",
                    response_headers=HeaderOps(remove=("x-envoy-upstream-service-time",)))
    replaced = Route(name="set", match=RouteMatch(prefix="/set"), cluster="up",
                     response_headers=HeaderOps(set=(("x-envoy-upstream-service-time", "7"),)))
    kept = Route(name="other", match=RouteMatch(prefix="/"), cluster="up",
                 response_headers=HeaderOps(add=(("x-other", "1"),)))
    try:
        async with start_proxy(table(removed, replaced, kept), [cluster("up", up.port)]) as p:
            base = f"http://127.0.0.1:{p.port}"
            outs = [(await curl("-i", f"{base}{path}"))[1] for path in ("/rm", "/set", "/x")]
    finally:
        up.close()
    assert values(outs[0]) == []
    assert values(outs[1]) == [7]
    [t] = values(outs[2])  # other edits leave it in place
    assert DELAY * 1000 <= t < 2000 and b"x-other: 1" in outs[2]
