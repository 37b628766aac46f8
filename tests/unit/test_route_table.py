"""Route table: Envoy's virtual host order, route matching, weighted clusters."""

from __future__ import annotations

import collections

import pytest

from sidecar.config.snapshot import (
    HeaderMatch,
    Route,
    RouteConfig,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
)
from sidecar.http.router import route_table
from sidecar.http.stream import RequestHead


def _vh(name: str, *domains: str) -> VirtualHost:
    return VirtualHost(name=name, domains=domains,
                       routes=(Route(name=name, match=RouteMatch(), cluster=name),))


RC = RouteConfig(name="80", virtual_hosts=(
    _vh("exact", "reviews.default.svc.cluster.local", "reviews:9080"),
    _vh("suffix-short", "*.com"),
    _vh("suffix-long", "*.example.com"),
    _vh("prefix", "api.*"),
    _vh("any", "*"),
))


@pytest.mark.parametrize(("host", "vhost"), [
    (b"reviews.default.svc.cluster.local", "exact"),
    (b"REVIEWS:9080", "exact"),
    (b"reviews", "any"),  # no ":port"-less form listed
    (b"a.example.com", "suffix-long"),
    (b"example.com", "suffix-short"),  # "*.example.com" needs something before the dot
    (b"x.com", "suffix-short"),
    (b"api.internal", "prefix"),
    (b"api.example.com", "suffix-long"),  # suffix wildcards beat prefix wildcards
    (b"other", "any"),
])
def test_virtual_host_selection(host: bytes, vhost: str) -> None:
    found = route_table(RC).virtual_host(host)
    assert found is not None and found.vhost.name == vhost


def _head(path: bytes, **headers: bytes) -> RequestHead:
    h = RequestHead(b"GET", path, [(k.replace("_", "-").encode(), v) for k, v in headers.items()])
    h.authority = b"svc"
    return h


def test_route_matching_order_and_kinds() -> None:
    routes = (
        Route(name="hdr", match=RouteMatch(prefix="/", headers=(
            HeaderMatch(name="end-user", exact="jason"),)), cluster="v2"),
        Route(name="exact", match=RouteMatch(prefix=None, path="/exact"), cluster="e"),
        Route(name="regex", match=RouteMatch(prefix=None, regex=r"/item/\d+"), cluster="r"),
        Route(name="ci", match=RouteMatch(prefix="/CI", case_sensitive=False), cluster="ci"),
        Route(name="api", match=RouteMatch(prefix="/api"), cluster="api"),
    )
    rc = RouteConfig(name="r", virtual_hosts=(VirtualHost(name="v", domains=("*",),
                                                          routes=routes),))
    table = route_table(rc)
    assert table is route_table(rc)  # compiled once

    def name(h: RequestHead) -> str | None:
        r = table.route(h)
        return r.route.name if r else None

    assert name(_head(b"/x", end_user=b"jason")) == "hdr"
    assert name(_head(b"/exact?q=1")) == "exact"
    assert name(_head(b"/exactly")) is None
    assert name(_head(b"/item/42?x")) == "regex"
    assert name(_head(b"/item/4a")) is None
    assert name(_head(b"/ci/x")) == "ci"
    assert name(_head(b"/api/v1")) == "api"
    assert name(_head(b"/nothing")) is None


def test_weighted_clusters_follow_weights() -> None:
    route = Route(name="w", match=RouteMatch(), weighted_clusters=(
        WeightedCluster("a", 80), WeightedCluster("b", 20), WeightedCluster("z", 0)))
    rc = RouteConfig(name="w", virtual_hosts=(VirtualHost(name="v", domains=("*",),
                                                          routes=(route,)),))
    r = route_table(rc).route(_head(b"/"))
    assert r is not None
    counts = collections.Counter(r.cluster() for _ in range(5000))
    assert counts["z"] == 0
    assert 0.75 < counts["a"] / 5000 < 0.85
