"""Istio's request-routing, timeout and egress tasks, written as users write them, through a real
client-side `sidecar run` (explicit egress listener), real upstreams and curl."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from .http_helpers import Request, Upstream, curl
from .istio_tasks import (
    NS,
    egress_sidecar,
    http,
    join,
    running,
    service,
    subsets_rule,
    workload,
)
from .routing_helpers import echo

BIND = "127.0.78.1"


@pytest.fixture
async def web() -> AsyncIterator[tuple[Upstream, Upstream]]:
    v1, v2 = await echo("v1").start(), await echo("v2").start()
    yield v1, v2
    v1.close()
    v2.close()


def web_mesh(v1: Upstream, v2: Upstream, *docs: str) -> str:
    return join(
        service("web", ("http", 80)),
        workload("web", "v1", {"http": v1.port}),
        workload("web", "v2", {"http": v2.port}),
        subsets_rule("web", "v1", "v2"),
        egress_sidecar(BIND, (80, "HTTP")),
        *docs,
    )


ROUTES = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: {NS}}}
spec:
  hosts:
  - web
  - web.{NS}.svc.cluster.local
  gateways: [mesh, web-gateway]
  http:
  - name: api
    match:
    - uri:
        regex: "/API/v[0-9]+/.*"
      ignoreUriCase: true
    headers:
      request:
        set: {{x-api-version: "2"}}
      response:
        remove: [x-drop]
    route:
    - destination: {{host: web, subset: v2}}
  - name: default
    route:
    - destination: {{host: web.{NS}.svc.cluster.local, subset: v1}}
"""


async def test_vs_short_name_and_fqdn_hosts_bound_to_mesh_and_a_gateway(
    web: tuple[Upstream, Upstream],
) -> None:
    v1, v2 = web
    with running(web_mesh(v1, v2, ROUTES)) as mesh:
        url = f"http://{BIND}"
        for host in ("web", "web:80", f"web.{NS}", f"web.{NS}.svc", f"web.{NS}.svc.cluster.local"):
            status, body = await http(f"{url}/Api/V3/items", "-H", f"Host: {host}")
            assert (status, json.loads(body)["up"]) == (200, "v2"), (host, mesh.proc.stderr())
            status, body = await http(f"{url}/api/items", "-H", f"Host: {host}")
            assert (status, json.loads(body)["up"]) == (200, "v1"), host
        # Not a regex match: the whole path must match ("/api/v3" has no trailing part).
        status, body = await http(f"{url}/api/v3", "-H", "Host: web")
        assert json.loads(body)["up"] == "v1"
    api = v2.requests
    assert api and all(r.header("x-api-version") == "2" for r in api)
    assert all(r.header("x-api-version") is None for r in v1.requests)


async def test_response_header_remove_and_request_set_reach_the_client_and_upstream(
    web: tuple[Upstream, Upstream],
) -> None:
    v1, v2 = web
    with running(web_mesh(v1, v2, ROUTES)):
        out = await _curl_headers(f"http://{BIND}/API/v1/x", "web")
        assert "x-drop" not in out and "x-keep: 1" in out and "x-up: v2" in out, out
        out = await _curl_headers(f"http://{BIND}/other", "web")
        assert "x-drop: 1" in out and "x-up: v1" in out, out
    assert v2.requests[0].header("x-api-version") == "2"


async def _curl_headers(url: str, host: str) -> str:
    """The response head curl got, lower-cased."""
    code, out, err = await curl("-s", "-o", "/dev/null", "-D", "-", "-H", f"Host: {host}", url)
    assert code == 0, err.decode()
    return out.decode().lower()


def _slow(delay: float) -> Upstream:
    async def handle(req: Request, t: asyncio.Transport) -> None:
        if req.path.startswith("/slow"):
            await asyncio.sleep(delay)
        if not t.is_closing():
            t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-up: slow\r\n\r\nok")

    return Upstream(handle)


async def test_route_timeout_answers_504_ut_and_other_routes_wait() -> None:
    up = await _slow(3.0).start()
    vs = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings, namespace: {NS}}}
spec:
  hosts: [ratings]
  http:
  - match: [{{uri: {{prefix: /slow}}}}]
    timeout: 0.5s
    route: [{{destination: {{host: ratings}}}}]
  - route: [{{destination: {{host: ratings}}}}]
"""
    config = join(service("ratings", ("http-web", 9080)), workload("ratings", "v1",
                  {"http-web": up.port}), egress_sidecar(BIND, (9080, "HTTP")), vs)
    try:
        with running(config) as mesh:
            start = time.monotonic()
            status, body = await http(f"http://{BIND}:9080/slow", "-H", "Host: ratings:9080")
            elapsed = time.monotonic() - start
            assert (status, body) == (504, "upstream request timeout")
            assert 0.45 < elapsed < 2.0, elapsed
            assert await http(f"http://{BIND}:9080/fast", "-H", "Host: ratings") == (200, "ok")
            log = mesh.proc.wait_log('"GET /slow HTTP/1.1" 504 UT', stream="stdout")
            assert "outbound|9080||ratings.shop.svc.cluster.local" in log
    finally:
        up.close()


async def test_service_entry_host_with_virtual_service_rewrite_and_timeout() -> None:
    ext = await echo("partner").start()
    docs = f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner-api, namespace: {NS}}}
spec:
  hosts: [api.partner.example]
  location: MESH_EXTERNAL
  ports:
  - {{number: 80, name: http, protocol: HTTP, targetPort: {ext.port}}}
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partner-api, namespace: {NS}}}
spec:
  hosts: [api.partner.example]
  http:
  - match: [{{uri: {{prefix: /v1/}}}}]
    rewrite: {{uri: /v2/}}
    timeout: 3s
    route:
    - destination: {{host: api.partner.example, port: {{number: 80}}}}
  - route:
    - destination: {{host: api.partner.example}}
"""
    try:
        with running(join(egress_sidecar(BIND, (80, "HTTP")), docs)) as mesh:
            status, body = await http(f"http://{BIND}/v1/quote?x=1",
                                      "-H", "Host: api.partner.example")
            seen = json.loads(body)
            assert (status, seen["path"], seen["host"]) == (200, "/v2/quote?x=1",
                                                            "api.partner.example")
            status, body = await http(f"http://{BIND}/status",
                                      "-H", "Host: api.partner.example:80")
            assert (status, json.loads(body)["path"]) == (200, "/status")
            log = mesh.proc.stdout()
            assert "outbound|80||api.partner.example" in log, log
    finally:
        ext.close()


async def test_unknown_host_on_an_explicit_listener_does_not_loop_back_into_the_proxy(
    web: tuple[Upstream, Upstream],
) -> None:
    # ALLOW_ANY: a Host no service has goes to PassthroughCluster, whose destination is where
    # the connection was going before iptables. This listener was connected to directly, so
    # there is none: Envoy's ORIGINAL_DST balancer finds no host (503 UH). Connecting to the
    # listener's own address instead would feed the request back into the proxy, again and
    # again, until the growing x-forwarded-for hits the header limit.
    v1, v2 = web
    with running(web_mesh(v1, v2, ROUTES)) as mesh:
        for extra in ((), ("--http2-prior-knowledge",)):
            start = time.monotonic()
            status, body = await http(f"http://{BIND}/x", "-H", "Host: typo.example", *extra,
                                      timeout=20)
            assert (status, body) == (503, "no healthy upstream"), body[:200]
            assert time.monotonic() - start < 2.0
        await asyncio.sleep(0.2)
        lines = [ln for ln in mesh.proc.stdout().splitlines() if "PassthroughCluster" in ln]
        assert len(lines) == 2 and all(" 503 UH " in ln for ln in lines), lines[:3]
    assert not v1.requests and not v2.requests


async def test_http2_prior_knowledge_through_a_rewrite(web: tuple[Upstream, Upstream]) -> None:
    v1, v2 = web
    vs = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: {NS}}}
spec:
  hosts: [web]
  http:
  - match: [{{uri: {{prefix: /legacy/}}}}]
    rewrite: {{uri: /modern/, authority: web-modern}}
    route: [{{destination: {{host: web, subset: v2}}}}]
  - route: [{{destination: {{host: web, subset: v1}}}}]
"""
    with running(web_mesh(v1, v2, vs)):
        status, body = await http(f"http://{BIND}/legacy/page?q=1", "--http2-prior-knowledge",
                                  "-H", "Host: web")
        seen = json.loads(body)
        assert (status, seen["up"], seen["path"], seen["host"]) == (
            200, "v2", "/modern/page?q=1", "web-modern")
        status, body = await http(f"http://{BIND}/other", "--http2-prior-knowledge",
                                  "-H", "Host: web")
        assert (status, json.loads(body)["up"]) == (200, "v1")


GATEWAY = f"""\
apiVersion: v1
kind: Pod
metadata: {{name: ingress-1, namespace: {NS}, labels: {{istio: ingressgateway}}}}
spec: {{containers: [{{name: istio-proxy}}]}}
status: {{podIP: 127.0.0.1}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web-gateway, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: GW_PORT, name: http, protocol: HTTP}}
    hosts: ["*"]
"""


async def test_the_same_virtual_service_serves_a_gateway_in_router_mode(
    web: tuple[Upstream, Upstream],
) -> None:
    from .proxy_fixtures import free_port

    v1, v2 = web
    port = free_port()
    config = web_mesh(v1, v2, ROUTES, GATEWAY.replace("GW_PORT", str(port)))
    with running(config, "--mode", "router", "--pod-name", "ingress-1",
                 "--bind-address", "127.0.0.1", "--no-watch") as gw:
        url = f"http://127.0.0.1:{port}"
        status, body = await http(f"{url}/API/V1/x", "-H", f"Host: web.{NS}.svc.cluster.local")
        assert (status, json.loads(body)["up"]) == (200, "v2"), gw.proc.stderr()
        status, body = await http(f"{url}/home", "-H", f"Host: web.{NS}.svc.cluster.local")
        assert (status, json.loads(body)["up"]) == (200, "v1")
        # The VirtualService's hosts bind it; another Host reaches no route on the gateway.
        status, _ = await http(f"{url}/home", "-H", "Host: elsewhere.example")
        assert status == 404
