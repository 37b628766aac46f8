"""Route matching through a real listener: every match kind, first-match order, 404 NR."""

from __future__ import annotations

import pytest

from sidecar.config.snapshot import (
    HeaderMatch,
    QueryParamMatch,
    RouteConfig,
    RouteMatch,
    VirtualHost,
)
from sidecar.outcome import ResponseFlag

from .h2_raw import H2Client, request_headers
from .http_helpers import start_proxy
from .routing_helpers import answer, get, table


def _m(prefix: str | None = None, **kw: object) -> RouteMatch:
    return RouteMatch(prefix=prefix, **kw)  # type: ignore[arg-type]


H = HeaderMatch
Q = QueryParamMatch

# More than LINEAR_MAX routes: the virtual host is indexed; order still decides.
ROUTES = table(
    answer("order-prefix", _m("/order")),
    answer("order-exact", _m(None, path="/order/x")),  # after a matching prefix: never wins
    answer("exact", _m(None, path="/exact")),
    answer("regex", _m(None, regex=r"/item/[0-9]+")),
    answer("ci-prefix", _m("/CI/", case_sensitive=False)),
    answer("ci-exact", _m(None, path="/Exact/Path", case_sensitive=False)),
    answer("h-exact", _m("/h", headers=(H("x-a", exact="1"),))),
    answer("h-prefix", _m("/h", headers=(H("x-a", prefix="pre"),))),
    answer("h-regex", _m("/h", headers=(H("x-a", regex="re[0-9]+"),))),
    answer("h-present", _m("/h", headers=(H("x-b", present=True),))),
    answer("h-without", _m("/h", headers=(H("x-c", exact="no", invert=True),))),
    answer("h-rest", _m("/h")),
    answer("method", _m("/m", headers=(H(":method", exact="POST"),))),
    answer("authority", _m("/m", headers=(H(":authority", exact="special.example"),))),
    answer("scheme-https", _m("/m", headers=(H(":scheme", exact="https"),))),
    answer("path-pseudo", _m("/m", headers=(H(":path", prefix="/m/p"),))),
    answer("q-exact", _m("/q", query_params=(Q("a", exact="1"),))),
    answer("q-prefix", _m("/q", query_params=(Q("a", prefix="pre"),))),
    answer("q-regex", _m("/q", query_params=(Q("a", regex="r[0-9]"),))),
    answer("q-present", _m("/q", query_params=(Q("b", present=True),))),
)

CASES = [
    ("/order/x", {}, "order-prefix"),
    ("/exact", {}, "exact"),
    ("/exact?x=1", {}, "exact"),
    ("/item/42", {}, "regex"),
    ("/ci/x", {}, "ci-prefix"),
    ("/EXACT/path?q", {}, "ci-exact"),
    ("/h", {"x-a": "1"}, "h-exact"),
    ("/h", {"x-a": "prefixed"}, "h-prefix"),
    ("/h", {"x-a": "re42"}, "h-regex"),
    ("/h", {"x-a": "re4x", "x-b": ""}, "h-present"),
    ("/h", {}, "h-without"),
    ("/h", {"x-c": "no"}, "h-rest"),
    ("/m", {"method": "POST"}, "method"),
    ("/m", {"host": "special.example"}, "authority"),
    ("/m/p", {}, "path-pseudo"),
    ("/q?a=1", {}, "q-exact"),
    ("/q?z=2&a=prefix", {}, "q-prefix"),
    ("/q?a=r7", {}, "q-regex"),
    ("/q?b", {}, "q-present"),
]


async def test_every_match_kind_in_route_order() -> None:
    async with start_proxy(ROUTES, []) as proxy:
        for path, hdrs, want in CASES:
            hdrs = dict(hdrs)
            method = hdrs.pop("method", "GET")
            host = hdrs.pop("host", "svc")
            r = await get(proxy.port, path, method=method, host=host,
                          headers=list(hdrs.items()))
            assert (r.status, r.body) == (200, want.encode()), (path, hdrs, want)
        for path in ("/item/4a", "/exactly", "/q?a=2", "/m", "/nothing"):
            r = await get(proxy.port, path)
            assert r.status == 404, path
        logs = await proxy.log.wait_for(len(CASES) + 5)
        assert logs[-1].response_flags == ResponseFlag.NR


async def test_scheme_match_over_h2() -> None:
    """:scheme as the HTTP/2 client sent it decides a ":scheme" header match."""
    async with start_proxy(ROUTES, []) as proxy:
        c = await H2Client.connect(proxy.port)
        try:
            hs = request_headers("/m")
            hs[1] = (b":scheme", b"https")
            c.send(c.headers(1, hs))
            r = await c.expect_response(1)
            assert (r.status, r.body) == (200, b"scheme-https")
            c.send(c.headers(3, request_headers("/m")))
            assert (await c.expect_response(3)).status == 404
        finally:
            c.close()


@pytest.mark.parametrize(("host", "want"), [
    ("a.example.com", "suffix"), ("api.internal", "prefix"), ("exact.svc:8080", "exact"),
    ("other", None),
])
async def test_virtual_host_by_authority(host: str, want: str | None) -> None:
    rc = RouteConfig(name="80", virtual_hosts=tuple(
        VirtualHost(name=n, domains=(d,), routes=(answer(n, _m("/")),))
        for n, d in (("exact", "exact.svc:8080"), ("suffix", "*.example.com"),
                     ("prefix", "api.*"))))
    async with start_proxy(rc, []) as proxy:
        r = await get(proxy.port, "/", host=host)
        if want is None:
            assert r.status == 404  # no virtual host: 404 NR
            (info,) = await proxy.log.wait_for(1)
            assert info.response_flags == ResponseFlag.NR
        else:
            assert (r.status, r.body) == (200, want.encode())
