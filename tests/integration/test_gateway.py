"""Router mode end to end: a real `sidecar run --mode router`, real upstreams, curl.

Istio's bookinfo gateway routes its five productpage paths and answers 404 for the rest; a
NodePort Service is reached on its node port (HTTP and TCP) and a LoadBalancer Service on its
address; an HTTPS server terminates TLS with certificate files and its plain-text twin redirects
to it. The gateway proxy is found as a Pod labelled istio=ingressgateway, as in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import require

from .certs import self_signed
from .http_helpers import Request, Upstream, curl, ok
from .proxy_fixtures import free_port
from .sidecar_process import SidecarProcess

SAMPLES = Path("/work/shared/samples/istio-bookinfo")

GATEWAY_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway-1
  namespace: default
  labels: {istio: ingressgateway}
spec: {containers: [{name: istio-proxy}]}
status: {podIP: 127.0.0.1}
"""


def endpoints(name: str, port_name: str, port: int, ip: str = "127.0.0.1") -> str:
    """An Endpoints object pointing a Service's port at a test server (and its Pod)."""
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}-pod, namespace: default, labels: {{app: {name}}}}}
spec: {{containers: [{{name: app}}]}}
status: {{podIP: {ip}}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: {name}, namespace: default}}
subsets:
- addresses: [{{ip: {ip}, targetRef: {{kind: Pod, name: {name}-pod}}}}]
  ports: [{{name: {port_name}, port: {port}}}]
"""


def router(config: str) -> SidecarProcess:
    return SidecarProcess(
        config,
        "--mode", "router",
        "--pod-name", "istio-ingressgateway-1",
        "--pod-namespace", "default",
        "--bind-address", "127.0.0.1",
        "--no-watch",
    )


def echo_path(req: Request, t: asyncio.Transport) -> None:
    t.write(ok(f"productpage {req.path}".encode()))


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream(echo_path).start()
    yield up
    up.close()


async def get(url: str, *extra: str) -> tuple[int, str]:
    code, out, err = await curl("-s", "-w", "\n%{http_code}", *extra, url, timeout=10)
    assert code == 0, err
    body, _, status = out.decode().rpartition("\n")
    return int(status), body


def _require_curl() -> None:
    require(shutil.which("curl") is not None, "curl is not installed")


async def test_bookinfo_gateway_routes_the_productpage_paths_and_404s_the_rest(
    upstream: Upstream,
) -> None:
    _require_curl()
    port = free_port()
    gateway = (SAMPLES / "bookinfo-gateway.yaml").read_text()
    assert "number: 8080" in gateway
    config = "\n---\n".join(
        [
            (SAMPLES / "bookinfo-kube.yaml").read_text(),
            gateway.replace("number: 8080", f"number: {port}"),
            GATEWAY_POD,
            endpoints("productpage", "http", upstream.port),
        ]
    )
    with router(config) as proc:
        base = f"http://127.0.0.1:{port}"
        routed = ["/productpage", "/static/css/x.css", "/login", "/logout", "/api/v1/products/1"]
        for path in routed:
            status, body = await get(base + path, "-H", "host: bookinfo.example.com")
            assert (status, body) == (200, f"productpage {path}"), proc.stderr()
        for path in ["/", "/productpage/extra", "/loginx", "/api/v1/other"]:
            status, _ = await get(base + path)
            assert status == 404, path
    assert [r.path for r in upstream.requests] == routed


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(1024)
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _tcp_roundtrip(host: str, port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(1024)
    finally:
        writer.close()


async def test_node_port_and_load_balancer_services_reach_their_endpoints(
    upstream: Upstream,
) -> None:
    _require_curl()
    echo, echo_port = await _echo_server()
    http_np, tcp_np, lb_port = free_port(), free_port(), free_port()
    services = f"""\
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, nodePort: {http_np}}}
  - {{name: tcp-echo, port: 7000, nodePort: {tcp_np}}}
---
apiVersion: v1
kind: Service
metadata: {{name: front, namespace: default}}
spec:
  type: LoadBalancer
  selector: {{app: front}}
  ports: [{{name: http, port: {lb_port}}}]
status:
  # 198.51.100.7 is the cloud balancer's address, routed to nodes, never on this host: the
  # listener binds it anyway (IP_FREEBIND) instead of refusing to start.
  loadBalancer: {{ingress: [{{ip: 127.0.0.51}}, {{ip: 198.51.100.7}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: web, namespace: default}}
subsets:
- addresses: [{{ip: 127.0.0.1}}]
  ports: [{{name: http, port: {upstream.port}}}, {{name: tcp-echo, port: {echo_port}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: front, namespace: default}}
subsets:
- addresses: [{{ip: 127.0.0.1}}]
  ports: [{{name: http, port: {upstream.port}}}]
"""
    try:
        with router(GATEWAY_POD + "---\n" + services) as proc:
            status, body = await get(f"http://127.0.0.1:{http_np}/a")
            assert (status, body) == (200, "productpage /a"), proc.stderr()
            assert await _tcp_roundtrip("127.0.0.1", tcp_np, b"ping") == b"echo:ping"
            status, body = await get(f"http://127.0.0.51:{lb_port}/lb")
            assert (status, body) == (200, "productpage /lb")
            code, text = proc.admin("GET", "/listeners")
            assert code == 200 and f"198.51.100.7:{lb_port}".encode() in text, text
            # The service port itself is not a node port: nothing listens there.
            code, _, _ = await curl("-s", f"http://127.0.0.1:{lb_port}/", timeout=10)
            assert code == 7  # connection refused
    finally:
        echo.close()


async def test_https_server_terminates_tls_with_files_and_http_redirects_to_it(
    upstream: Upstream, tmp_path: Path
) -> None:
    _require_curl()
    cert, key = self_signed(tmp_path, "shop.example.com")
    https_port, http_port = free_port(), free_port()
    config = f"""\
{GATEWAY_POD}---
apiVersion: v1
kind: Service
metadata: {{name: shop, namespace: default}}
spec:
  selector: {{app: shop}}
  ports: [{{name: http, port: 9080}}]
---
{endpoints("shop", "http", upstream.port)}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop-gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {https_port}, name: https, protocol: HTTPS}}
    hosts: ["shop.example.com"]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
  - port: {{number: {http_port}, name: http, protocol: HTTP}}
    hosts: ["shop.example.com"]
    tls: {{httpsRedirect: true}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: default}}
spec:
  hosts: ["shop.example.com"]
  gateways: [shop-gw]
  http:
  - route: [{{destination: {{host: shop}}}}]
"""
    with router(config) as proc:
        resolve = f"shop.example.com:{https_port}:127.0.0.1"
        status, body = await get(
            f"https://shop.example.com:{https_port}/buy", "--cacert", str(cert),
            "--resolve", resolve,
        )
        assert (status, body) == (200, "productpage /buy"), proc.stderr()
        code, out, _ = await curl(
            "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
            "-H", "host: shop.example.com", f"http://127.0.0.1:{http_port}/buy?x=1", timeout=10,
        )
        assert code == 0
        status_text, _, location = out.decode().partition(" ")
        assert status_text == "301"
        assert location.startswith("https://shop.example.com") and location.endswith("/buy?x=1")
    assert [r.path for r in upstream.requests] == ["/buy"]  # the redirect never went upstream


async def _tls_http_server(cert: Path, key: Path) -> tuple[asyncio.Server, int]:
    """A TLS upstream that answers every request with its own name (it owns the certificate)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ok(b"tls upstream"))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1]


async def test_passthrough_server_relays_tls_by_sni_without_terminating(tmp_path: Path) -> None:
    _require_curl()
    cert, key = self_signed(tmp_path, "a.example.com")
    upstream, up_port = await _tls_http_server(cert, key)
    port = free_port()
    config = f"""\
{GATEWAY_POD}---
apiVersion: v1
kind: Service
metadata: {{name: secure, namespace: default}}
spec:
  selector: {{app: secure}}
  ports: [{{name: tls, port: 443}}]
---
{endpoints("secure", "tls", up_port)}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tls-gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: tls, protocol: TLS}}
    hosts: ["*.example.com"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: default}}
spec:
  hosts: ["a.example.com"]
  gateways: [tls-gw]
  tls:
  - match: [{{sniHosts: ["a.example.com"]}}]
    route: [{{destination: {{host: secure}}}}]
"""
    try:
        with router(config) as proc:
            url = f"https://a.example.com:{port}/"
            resolve = f"a.example.com:{port}:127.0.0.1"
            # The certificate the client verifies is the upstream's: TLS went through untouched.
            status, body = await get(url, "--cacert", str(cert), "--resolve", resolve)
            assert (status, body) == (200, "tls upstream"), proc.stderr()
            # Another name under the server's hosts, but no route for it: no chain, closed.
            code, _, _ = await curl(
                "-s", "-k", "--resolve", f"b.example.com:{port}:127.0.0.1",
                f"https://b.example.com:{port}/", timeout=10,
            )
            assert code == 35  # TLS handshake failed: the proxy closed the connection
    finally:
        upstream.close()
