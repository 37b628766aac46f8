"""Router mode tried as Istio's ingress tasks use it: a real `sidecar run --mode router`, curl.

The gateway proxy is the Pod istio-system/istio-ingressgateway-1 (labels istio=ingressgateway);
apps live in namespace `shop` (istio_tasks.py: a Service per app, a WorkloadEntry per version
pointing at a real echo upstream). Each test binds its gateway listeners on an address of its
own in 127.0.91.0/24 and checks what a curl user sees (status, body, Location) and what the
access log says (route name, cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .certs import self_signed
from .http_helpers import Upstream, curl, ok
from .istio_tasks import (
    NS,
    egress_sidecar,
    http,
    join,
    loop_curl,
    running,
    service,
    subsets_rule,
    workload,
)
from .routing_helpers import echo
from .sidecar_process import SidecarProcess

GATEWAY_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway-1
  namespace: istio-system
  labels: {istio: ingressgateway, app: istio-ingressgateway}
spec: {containers: [{name: istio-proxy}]}
status: {podIP: 127.0.91.1}
"""


def router(config: str, address: str) -> SidecarProcess:
    """The gateway proxy, its Gateway listeners bound on `address`."""
    return SidecarProcess(
        join(GATEWAY_POD, config),
        "--mode", "router",
        "--pod-name", "istio-ingressgateway-1",
        "--pod-namespace", "istio-system",
        "--bind-address", address,
        "--no-watch",
    )


def gateway(name: str, namespace: str, servers: str, selector: str = "ingressgateway") -> str:
    """A Gateway; `servers` is YAML, indented for spec."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector: {{istio: {selector}}}
  servers:
{servers}"""


def virtual_service(name: str, body: str, namespace: str = NS) -> str:
    """A VirtualService; `body` is YAML, indented for spec."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {namespace}}}
spec:
{body}"""


@pytest.fixture
async def ups() -> AsyncIterator[dict[str, Upstream]]:
    started = {n: await echo(n).start() for n in ("httpbin", "v1", "v2")}
    yield started
    for up in started.values():
        up.close()


def apps(ups: dict[str, Upstream]) -> str:
    """httpbin (port 8000) and web (port 9080, versions v1 and v2, subsets by DestinationRule)."""
    return join(
        service("httpbin", ("http", 8000)),
        workload("httpbin", "v1", {"http": ups["httpbin"].port}),
        service("web", ("http-web", 9080)),
        workload("web", "v1", {"http-web": ups["v1"].port}),
        workload("web", "v2", {"http-web": ups["v2"].port}),
        subsets_rule("web", "v1", "v2"),
    )


async def access_log(proc: SidecarProcess, needle: str) -> str:
    """The access log once it holds `needle` (polled without blocking the test's own servers)."""
    async with asyncio.timeout(5):
        while needle not in (text := proc.stdout()):
            await asyncio.sleep(0.05)
    return text


async def status_of(url: str, *args: str) -> int:
    return (await http(url, *args))[0]


async def test_httpbin_gateway_routes_its_hosts_on_any_host_port_and_404s_the_rest(
    ups: dict[str, Upstream],
) -> None:
    """Istio's ingress task: my-gw in istio-system, a VirtualService in another namespace bound
    as "istio-system/my-gw". Istio's gateway virtual hosts take the host with any port (a
    gateway behind a load balancer or a NodePort sees the client's port in Host)."""
    addr = "127.0.91.2"
    config = join(
        apps(ups),
        gateway("my-gw", "istio-system", """\
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["httpbin.example.com"]
"""),
        virtual_service("httpbin", """\
  hosts: ["httpbin.example.com"]
  gateways: [istio-system/my-gw]
  http:
  - name: status
    match: [{uri: {prefix: /status}}, {uri: {prefix: /delay}}]
    route: [{destination: {host: httpbin, port: {number: 8000}}}]
"""),
        # A short gateway name means the VirtualService's own namespace: shop/my-gw, none.
        virtual_service("not-bound", """\
  hosts: ["headers.example.com"]
  gateways: [my-gw]
  http: [{route: [{destination: {host: httpbin}}]}]
"""),
    )
    with router(config, addr) as proc:
        url = f"http://{addr}:8080/status/200"
        for host in ["httpbin.example.com", "httpbin.example.com:8080", "HTTPBIN.Example.COM",
                     "httpbin.example.com:31380", "httpbin.example.com:80"]:
            status, body = await http(url, "-H", f"Host: {host}")
            assert status == 200, (host, proc.stderr())
            assert '"up": "httpbin"' in body
        unmatched = f"http://{addr}:8080/headers"
        assert await status_of(unmatched, "-H", "Host: httpbin.example.com") == 404
        for host in ["headers.example.com", "other.example.com:8080", addr]:
            assert await status_of(url, "-H", f"Host: {host}") == 404, host
        log = await access_log(proc, "other.example.com:8080")
    cluster = "outbound|8000||httpbin.shop.svc.cluster.local"
    ok_lines = [line for line in log.splitlines() if '" 200 ' in line]
    assert len(ok_lines) == 5
    assert all(line.split()[-1] == "status" and cluster in line for line in ok_lines), log
    assert '" 404 NR ' in log


async def test_header_weighted_and_rewrite_routes_of_a_vs_bound_to_mesh_and_gateway(
    ups: dict[str, Upstream],
) -> None:
    """One VirtualService for the gateway (short name, same namespace) and the mesh: the header
    rule, the /api/ rewrite and the 80/20 split hold at the gateway and at a client sidecar."""
    addr, client = "127.0.91.3", "127.0.91.4"
    config = join(
        apps(ups),
        egress_sidecar(client, (9080, "HTTP")),
        gateway("web-gw", NS, """\
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
"""),
        virtual_service("web", """\
  hosts: [web, web.example.com]
  gateways: [web-gw, mesh]
  http:
  - name: canary
    match: [{headers: {x-canary: {exact: "yes"}}}]
    route: [{destination: {host: web, subset: v2}}]
  - name: api
    match: [{uri: {prefix: /api/}}]
    rewrite: {uri: /}
    route: [{destination: {host: web, subset: v1}}]
  - name: split
    route:
    - {destination: {host: web, subset: v1}, weight: 80}
    - {destination: {host: web, subset: v2}, weight: 20}
"""),
    )
    with router(config, addr) as gw, running(config):
        for base, host in [(f"http://{addr}:8080", "web.example.com"),
                           (f"http://{client}:9080", "web")]:
            status, body = await http(f"{base}/a", "-H", f"Host: {host}", "-H", "x-canary: yes")
            assert status == 200 and '"up": "v2"' in body, (base, body, gw.stderr())
            status, body = await http(f"{base}/api/users?id=7", "-H", f"Host: {host}")
            assert status == 200 and '"up": "v1"' in body and '"path": "/users?id=7"' in body
            n = 200
            seen = await loop_curl(f"{base}/s", n, "-H", f"Host: {host}")
            v2 = seen.count("v2")
            assert seen.count("v1") + v2 == n
            sigma = math.sqrt(n * 0.2 * 0.8)
            assert abs(v2 - n * 0.2) < 5 * sigma, v2
        # The gateway resolved the short host against the VirtualService's namespace.
        fqdn = f"web.{NS}.svc.cluster.local"
        assert await status_of(f"http://{addr}:8080/x", "-H", f"Host: {fqdn}") == 200
        assert await status_of(f"http://{addr}:8080/x", "-H", "Host: web") == 404
        log = await access_log(gw, f'"{fqdn}"')
    assert f"outbound|9080|v2|{fqdn} " in log and log.splitlines()[0].endswith(" canary"), log
    assert any(line.endswith(" api") and f"outbound|9080|v1|{fqdn}" in line
               for line in log.splitlines())


async def test_two_gateways_share_a_port_by_host_and_an_unselected_gateway_is_not_served(
    ups: dict[str, Upstream],
) -> None:
    addr = "127.0.91.5"
    config = join(
        apps(ups),
        gateway("gw-a", NS, """\
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["a.example.com"]
"""),
        gateway("gw-b", "istio-system", """\
  - port: {number: 8080, name: http-b, protocol: HTTP}
    hosts: ["shop/b.example.com"]
"""),
        gateway("egress", NS, """\
  - port: {number: 8081, name: http, protocol: HTTP}
    hosts: ["*"]
""", selector="egressgateway"),
        virtual_service("a", """\
  hosts: [a.example.com]
  gateways: [gw-a]
  http: [{route: [{destination: {host: web, subset: v1}}]}]
"""),
        virtual_service("b", """\
  hosts: [b.example.com, c.example.com]
  gateways: [istio-system/gw-b, egress]
  http: [{route: [{destination: {host: httpbin}}]}]
"""),
    )
    with router(config, addr) as proc:
        base = f"http://{addr}:8080/p"
        status, body = await http(base, "-H", "Host: a.example.com")
        assert status == 200 and '"up": "v1"' in body, proc.stderr()
        status, body = await http(base, "-H", "Host: b.example.com")
        assert status == 200 and '"up": "httpbin"' in body
        assert await status_of(base, "-H", "Host: c.example.com") == 404  # not a server host
        code, _, _ = await curl("-s", f"http://{addr}:8081/", timeout=10)
        assert code == 7  # the egress gateway's port is not this proxy's: connection refused
        _, listeners = proc.admin("GET", "/listeners")
        assert listeners.decode().split() == [f"{addr}_8080::{addr}:8080"]


async def test_https_simple_with_files_and_https_redirect_on_the_http_server(
    ups: dict[str, Upstream], tmp_path: Path
) -> None:
    addr = "127.0.91.6"
    cert, key = self_signed(tmp_path, "shop.example.com")
    config = join(
        apps(ups),
        gateway("shop-gw", NS, f"""\
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["shop.example.com"]
    tls: {{httpsRedirect: true}}
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: ["shop.example.com"]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
"""),
        virtual_service("shop", """\
  hosts: [shop.example.com]
  gateways: [shop-gw]
  http:
  - name: moved
    match: [{uri: {exact: /old}}]
    redirect: {uri: /new}
  - name: shop
    route: [{destination: {host: web, subset: v2}}]
"""),
    )
    with router(config, addr) as proc:
        for host, location in [
            ("shop.example.com", "https://shop.example.com/buy?x=1"),
            ("shop.example.com:80", "https://shop.example.com/buy?x=1"),  # http's port dropped
            ("shop.example.com:8080", "https://shop.example.com:8080/buy?x=1"),
        ]:
            code, out, _ = await curl(
                "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                "-H", f"Host: {host}", f"http://{addr}:8080/buy?x=1", timeout=10,
            )
            assert (code, out.decode()) == (0, f"301 {location}"), proc.stderr()
        assert await status_of(f"http://{addr}:8080/", "-H", "Host: else.example.com") == 404
        tls = ["--cacert", str(cert), "--resolve", f"shop.example.com:8443:{addr}"]
        for version in ("--http1.1", "--http2"):
            status, body = await http("https://shop.example.com:8443/buy", version, *tls)
            assert status == 200 and '"up": "v2"' in body, proc.stderr()
        code, out, _ = await curl(
            "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", *tls,
            "https://shop.example.com:8443/old", timeout=10,
        )
        assert out.decode() == "301 https://shop.example.com:8443/new"
        status, _ = await http("https://shop.example.com:8443/buy", *tls, "-H", "Host: x.test")
        assert status == 404
        log = await access_log(proc, '"x.test"')
    lines = log.splitlines()
    assert [line.split()[-1] for line in lines[:3]] == ["https_redirect"] * 3
    cluster = f"outbound|9080|v2|web.{NS}.svc.cluster.local"
    assert '"GET /buy HTTP/2" 200' in log and cluster in log, log


async def _tls_upstream(cert: Path, key: Path, name: str) -> tuple[asyncio.Server, int]:
    """A TLS server answering each request with its own name (it owns the certificate)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ok(name.encode()))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1]


async def _tls_get(addr: str, port: int, sni: str, cafile: Path) -> bytes:
    """One HTTPS request by Python's ssl, verifying `sni` against `cafile`; the response."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(addr, port, ssl=ctx, server_hostname=sni)
        writer.write(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()
    writer.close()
    return data


async def _echo_tcp() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(1024)
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_passthrough_routes_two_sni_hosts_and_a_tcp_server_routes_by_tcp_vs(
    tmp_path: Path,
) -> None:
    addr = "127.0.91.7"
    for n in ("a", "b"):
        (tmp_path / n).mkdir()
    certs = {n: self_signed(tmp_path / n, f"{n}.tls.test") for n in ("a", "b")}
    servers = {n: await _tls_upstream(*certs[n], n) for n in ("a", "b")}
    echo_server, echo_port = await _echo_tcp()
    config = join(
        service("nginx-a", ("https", 443)),
        workload("nginx-a", "v1", {"https": servers["a"][1]}),
        service("nginx-b", ("https", 443)),
        workload("nginx-b", "v1", {"https": servers["b"][1]}),
        service("tcp-echo", ("tcp", 9000)),
        workload("tcp-echo", "v1", {"tcp": echo_port}),
        gateway("edge", NS, """\
  - port: {number: 8443, name: tls, protocol: TLS}
    hosts: [a.tls.test, b.tls.test]
    tls: {mode: PASSTHROUGH}
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
"""),
        virtual_service("nginx", """\
  hosts: [a.tls.test, b.tls.test]
  gateways: [edge]
  tls:
  - match: [{port: 8443, sniHosts: [a.tls.test]}]
    route: [{destination: {host: nginx-a, port: {number: 443}}}]
  - match: [{port: 8443, sniHosts: [b.tls.test]}]
    route: [{destination: {host: nginx-b, port: {number: 443}}}]
"""),
        virtual_service("tcp-echo", """\
  hosts: ["*"]
  gateways: [edge]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: tcp-echo, port: {number: 9000}}}]
"""),
    )
    try:
        with router(config, addr) as proc:
            for n in ("a", "b"):
                # The certificate verified is the upstream's own: TLS went through untouched.
                answer = await _tls_get(addr, 8443, f"{n}.tls.test", certs[n][0])
                assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(n.encode())
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await _tls_get(addr, 8443, "c.tls.test", certs["a"][0])
            reader, writer = await asyncio.open_connection(addr, 31400)
            writer.write(b"ping")
            async with asyncio.timeout(5):
                assert await reader.read() == b"echo:ping"
            writer.close()
            log = await access_log(proc, "tcp-echo")
    finally:
        for server, _ in servers.values():
            server.close()
        echo_server.close()
    for n in ("a", "b"):
        cluster = f"outbound|443||nginx-{n}.{NS}.svc.cluster.local"
        assert any(cluster in line and f" {n}.tls.test " in line for line in log.splitlines())
    assert f"outbound|9000||tcp-echo.{NS}.svc.cluster.local" in log
