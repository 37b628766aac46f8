"""Span names as Istio's Envoy makes them, read off two real sidecars' spans in `sidecar traces`.

Istio gives every route a decorator operation (pilot's GetRouteOperation / TraceOperation): a
service without a VirtualService gets `fqdn:port/*`; a VirtualService route with one destination
`fqdn:port` of that destination's cluster, followed by `/*`, `prefix*`, the exact path or the
regex; a split between several clusters `vs-name:port` instead; the inbound route `fqdn:port/*`.
Envoy's client side sends its operation as `x-envoy-decorator-operation`, and the server side
names its span after it (and removes it), so both spans of a hop carry the client's name.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest

from .mesh_two import B_IP, NAMESPACE
from .test_traces_collector import CollectorProcess
from .test_tracing import (
    B_FQDN,
    Client,
    _App,
    by_kind,
    sidecar_pair,
    wait_spans,
)
from .test_tracing import app as app  # the fixture
from .test_tracing import collector as collector  # the fixture (one collector per module)

VS_NAME = "b-routes"
ROUTES = f"""\
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: b
  namespace: {NAMESPACE}
spec:
  host: b
  subsets:
  - name: one
    labels:
      app: b
  - name: two
    labels:
      app: b
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: {VS_NAME}
  namespace: {NAMESPACE}
spec:
  hosts:
  - b
  http:
  - match:
    - uri:
        prefix: /api
    route:
    - destination:
        host: b
        subset: one
  - match:
    - uri:
        exact: /exact
    route:
    - destination:
        host: b
  - match:
    - uri:
        regex: /re/[0-9]+
    route:
    - destination:
        host: b
  - route:
    - destination:
        host: b
        subset: one
      weight: 50
    - destination:
        host: b
        subset: two
      weight: 50
"""


@pytest.fixture(scope="module")
def routed(app: int, collector: CollectorProcess) -> Iterator[Client]:
    with sidecar_pair(app, f"127.0.0.1:{collector.port}", 100, extra=ROUTES) as pair:
        client = Client(pair)
        yield client
        client.close()


@pytest.mark.parametrize(("path", "name"), [
    ("/api/v1/items?q=1", f"{B_FQDN}:{{port}}/api*"),
    ("/exact", f"{B_FQDN}:{{port}}/exact"),
    ("/re/42", f"{B_FQDN}:{{port}}/re/[0-9]+"),
    ("/anything/else", f"{VS_NAME}:{{port}}/*"),  # a split: the VirtualService's name
], ids=["prefix", "exact", "regex", "split"])
def test_virtual_service_routes_name_both_spans(
    routed: Client, collector: CollectorProcess, path: str, name: str
) -> None:
    rid = routed.get(path=path)
    client, server = by_kind(wait_spans(collector, rid, 2))
    expected = name.format(port=routed.pair.port)
    assert client["name"] == server["name"] == expected
    assert server["parentId"] == client["id"]
    assert "x-envoy-decorator-operation" not in _App.seen[rid]


def _direct(port: int, headers: dict[str, str]) -> str:
    """A sampled GET straight to b's ingress listener (a caller without a sidecar)."""
    rid = f"direct-{port}-{len(_App.seen)}-{sorted(headers)}"
    conn = http.client.HTTPConnection(B_IP, port, timeout=10)
    try:
        conn.request("GET", "/x", headers={
            "host": f"b:{port}", "x-request-id": rid, "x-b3-sampled": "1", **headers})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    finally:
        conn.close()
    return rid


def test_the_server_side_names_its_span_itself_without_a_client_proxy(
    routed: Client, collector: CollectorProcess
) -> None:
    port = routed.pair.port
    (span,) = wait_spans(collector, _direct(port, {}), 1)
    assert span["kind"] == "SERVER"
    assert span["name"] == f"{B_FQDN}:{port}/*"  # the inbound route's decorator
    rid = _direct(port, {"x-envoy-decorator-operation": "caller-op"})
    (span,) = wait_spans(collector, rid, 1)
    assert span["name"] == "caller-op"  # Envoy: the request's operation overrides ingress's
    assert "x-envoy-decorator-operation" not in _App.seen[rid]


def test_no_route_is_named_like_envoy_without_a_decorator(
    routed: Client, collector: CollectorProcess
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", routed.pair.port, timeout=10)
    try:
        conn.request("GET", "/", headers={"host": "nowhere.example", "x-request-id": "nr-1",
                                          "x-b3-sampled": "1"})
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    (span,) = wait_spans(collector, "nr-1", 1)
    assert span["kind"] == "CLIENT"
    assert span["name"] == "egress nowhere.example"
    assert span["tags"]["http.status_code"] == str(resp.status)
    if resp.status >= 500:
        assert span["tags"]["error"] == "true"
