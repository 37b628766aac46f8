"""Route policies answered by the proxy itself or around forwarding: redirects, CORS, fault
delay and abort (HTTP and gRPC), through a real listener with real upstreams and clients."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from sidecar.config.snapshot import Cors, Fault, Redirect, Route, RouteMatch, StringMatcher
from sidecar.outcome import ResponseFlag

from .h2_raw import H2Client, request_headers
from .http_helpers import cluster, start_proxy
from .routing_helpers import Client, echo, get, table


def _redirect(**kw: object) -> Route:
    return Route(name="rd", match=RouteMatch(), redirect=Redirect(**kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(("redirect", "path", "host", "status", "location"), [
    ({"path": "/new"}, "/old?q=1", "svc", 301, "http://svc/new?q=1"),
    ({"path": "/new?x=2"}, "/old?q=1", "svc", 301, "http://svc/new?x=2"),
    ({"authority": "other.example", "code": 302}, "/p", "svc:8080", 302,
     "http://other.example/p"),
    ({"scheme": "https", "code": 308}, "/p", "svc", 308, "https://svc/p"),
    ({"scheme": "https"}, "/p", "svc:80", 301, "https://svc/p"),  # the old default port goes
    ({"port": 8443}, "/p", "svc:9080", 301, "http://svc:8443/p"),
    ({"derive_port": "FROM_PROTOCOL_DEFAULT", "scheme": "https"}, "/p", "svc:9080", 301,
     "https://svc/p"),
    ({"derive_port": "FROM_REQUEST_PORT", "authority": "b.example"}, "/p", "svc:9080", 301,
     "http://b.example:9080/p"),
])
async def test_redirects(redirect: dict[str, object], path: str, host: str, status: int,
                         location: str) -> None:
    async with start_proxy(table(_redirect(**redirect)), []) as proxy:
        r = await get(proxy.port, path, host=host)
    assert (r.status, r.header("location")) == (status, location)


CORS = Cors(allow_origins=(StringMatcher(exact="https://good.example"),
                           StringMatcher(regex=r"https://.*\.trusted\.example")),
            allow_methods="GET,POST", allow_headers="x-custom", expose_headers="x-up",
            max_age="60", allow_credentials=True)


async def test_cors_preflight_and_actual_requests() -> None:
    up = await echo("up").start()
    strict = Cors(allow_origins=(StringMatcher(exact="https://only.example"),),
                  forward_unmatched_preflights=False)
    rc = table(Route(name="strict", match=RouteMatch(prefix="/strict"), cluster="up", cors=strict),
               Route(name="api", match=RouteMatch(), cluster="up"), cors=CORS)
    pre = [("Access-Control-Request-Method", "POST")]
    try:
        async with start_proxy(rc, [cluster("up", up.port)]) as proxy:
            r = await get(proxy.port, "/", method="OPTIONS",
                          headers=[("Origin", "https://good.example"), *pre])
            assert r.status == 200 and r.header("x-up") is None  # answered by the proxy
            assert r.header("access-control-allow-origin") == "https://good.example"
            assert r.header("access-control-allow-methods") == "GET,POST"
            assert r.header("access-control-allow-headers") == "x-custom"
            assert r.header("access-control-max-age") == "60"
            assert r.header("access-control-allow-credentials") == "true"
            assert not up.requests
            r = await get(proxy.port, "/", method="OPTIONS",
                          headers=[("Origin", "https://evil.example"), *pre])
            assert r.header("x-up") == "up"  # not allowed: forwarded
            assert r.header("access-control-allow-origin") is None
            r = await get(proxy.port, "/", headers=[("Origin", "https://a.trusted.example")])
            assert r.header("x-up") == "up"
            assert r.header("access-control-allow-origin") == "https://a.trusted.example"
            assert r.header("access-control-expose-headers") == "x-up"
            assert r.header("access-control-allow-credentials") == "true"
            r = await get(proxy.port, "/")  # no Origin: no CORS
            assert r.header("access-control-allow-origin") is None
            # The route's policy replaces the virtual host's.
            r = await get(proxy.port, "/strict", method="OPTIONS",
                          headers=[("Origin", "https://good.example"), *pre])
            assert r.status == 200 and r.header("x-up") is None
            assert r.header("access-control-allow-origin") is None
            r = await get(proxy.port, "/strict", headers=[("Origin", "https://only.example")])
            assert r.header("access-control-allow-origin") == "https://only.example"
            assert r.header("access-control-allow-credentials") is None
    finally:
        up.close()


async def test_fault_delay_every_request_and_body_kept() -> None:
    up = await echo("up").start()
    rc = table(Route(name="slow", match=RouteMatch(), cluster="up", fault=Fault(delay=0.3)))
    try:
        async with start_proxy(rc, [cluster("up", up.port)]) as proxy:
            t0 = time.monotonic()
            r = await get(proxy.port, "/", method="POST", body=b"payload")
            elapsed = time.monotonic() - t0
            (info,) = await proxy.log.wait_for(1)
    finally:
        up.close()
    assert r.status == 200 and elapsed >= 0.3
    assert up.requests[0].body == b"payload"
    assert ResponseFlag.DI in info.response_flags


async def _shares(port: int, n: int, conns: int) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []

    async def run(k: int) -> None:
        c = await Client.open(port)
        try:
            for _ in range(k):
                t0 = time.monotonic()
                r = await c.request("/")
                out.append((r.status, time.monotonic() - t0))
        finally:
            c.close()

    async with asyncio.timeout(30):
        await asyncio.gather(*(run(n // conns) for _ in range(conns)))
    return out


def _within(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) < 5 * math.sqrt(n * p * (1 - p))


async def test_fault_percentages_delay_half_abort_half() -> None:
    up = await echo("up").start()
    n = 400
    rc = table(
        Route(name="delay", match=RouteMatch(prefix="/"), cluster="up",
              fault=Fault(delay=0.1, delay_percent=50.0, abort_status=503, abort_percent=50.0)))
    try:
        async with start_proxy(rc, [cluster("up", up.port)]) as proxy:
            results = await _shares(proxy.port, n, 40)
            logs = await proxy.log.wait_for(n)
    finally:
        up.close()
    delayed = [i for i in logs if ResponseFlag.DI in i.response_flags]
    aborted = [i for i in logs if ResponseFlag.FI in i.response_flags]
    assert _within(len(delayed), n, 0.5) and _within(len(aborted), n, 0.5)
    assert sum(1 for s, _ in results if s == 503) == len(aborted)
    assert sum(1 for s, _ in results if s == 200) == n - len(aborted) == len(up.requests)
    slow = sum(1 for _, t in results if t >= 0.095)  # (event-loop timers: ms granularity)
    assert slow >= len(delayed)  # every delayed request took at least the delay


async def test_fault_abort_http_status_and_body() -> None:
    rc = table(Route(name="abort", match=RouteMatch(), cluster="up",
                     fault=Fault(abort_status=418)))
    async with start_proxy(rc, []) as proxy:
        r = await get(proxy.port, "/")
        (info,) = await proxy.log.wait_for(1)
    assert (r.status, r.body) == (418, b"fault filter abort")
    assert ResponseFlag.FI in info.response_flags


async def test_fault_abort_grpc_status_is_trailers_only() -> None:
    rc = table(Route(name="http", match=RouteMatch(prefix="/pkg.Svc/Http"), cluster="up",
                     fault=Fault(abort_status=503)),
               Route(name="grpc", match=RouteMatch(), cluster="up",
                     fault=Fault(abort_grpc_status=8)))
    grpc_headers = [("content-type", "application/grpc"), ("te", "trailers")]
    async with start_proxy(rc, []) as proxy:
        c = await H2Client.connect(proxy.port)
        try:
            c.send(c.headers(1, request_headers("/pkg.Svc/Call", "POST", grpc_headers)))
            r = await c.expect_response(1)
            c.send(c.headers(3, request_headers("/pkg.Svc/Http", "POST", grpc_headers)))
            r2 = await c.expect_response(3)
        finally:
            c.close()
    fields = dict(r.headers)
    assert fields[b":status"] == b"200" and fields[b"grpc-status"] == b"8"
    assert not r.body and not r.trailers  # trailers-only: one HEADERS frame
    assert dict(r2.headers)[b"grpc-status"] == b"14"  # HTTP 503 -> UNAVAILABLE
