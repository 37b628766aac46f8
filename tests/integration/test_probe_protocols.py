"""VirtualService routing as users meet it over HTTP/2, gRPC, WebSocket and L4 (tcp/tls routes),
through a real client-side `sidecar run` (Sidecar egress listeners bound on 127.0.93.x) with real
clients (curl, h2load, grpcio, websockets, ssl) and real upstreams."""

from __future__ import annotations

import asyncio
import collections
import shutil
import socket
import ssl
import time
from collections.abc import AsyncIterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest
import websockets

from tests.conftest import require

from .certs import self_signed
from .grpc_service import CHANNEL_OPTIONS, EchoServer, channel, method, wait_channel_ready
from .http_helpers import Upstream, curl
from .istio_tasks import NS, egress_sidecar, join, running, service, subsets_rule, workload
from .routing_helpers import echo


def vs(name: str, hosts: str, body: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {NS}}}
spec:
  hosts: {hosts}
{body}"""


# --- L4: tcp routes on a bound TCP egress listener ---------------------------------------------


async def named_server(name: bytes, ctx: ssl.SSLContext | None = None) -> asyncio.Server:
    """Answers the first bytes it reads with `name:` + them, then closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.read(100)
            writer.write(name + b":" + data)
            await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)


def port_of(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


async def ask(host: str, port: int, ctx: ssl.SSLContext | None = None, sni: str = "") -> bytes:
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=sni or None)
        writer.write(b"hi")
        await writer.drain()
        data = await reader.read(100)
        writer.close()
    return data


@pytest.fixture
async def db() -> AsyncIterator[tuple[int, int]]:
    v1, v2 = await named_server(b"v1"), await named_server(b"v2")
    yield port_of(v1), port_of(v2)
    v1.close()
    v2.close()


def db_mesh(bind: str, ports: tuple[int, int], tcp_routes: str) -> str:
    return join(
        service("db", ("tcp-db", 5000)),
        workload("db", "v1", {"tcp-db": ports[0]}),
        workload("db", "v2", {"tcp-db": ports[1]}),
        subsets_rule("db", "v1", "v2"),
        egress_sidecar(bind, (5000, "TCP")),
        vs("db", "[db]", tcp_routes),
    )


SPLIT = """\
  tcp:
  - match: [{port: 5000}]
    route:
    - {destination: {host: db, subset: v1}, weight: 80}
    - {destination: {host: db, subset: v2}, weight: 20}
"""


async def test_weighted_tcp_split_applies_on_a_bound_tcp_egress_listener(
    db: tuple[int, int],
) -> None:
    bind = "127.0.93.10"
    with running(db_mesh(bind, db, SPLIT)):
        seen = collections.Counter([await ask(bind, 5000) for _ in range(200)])
    # 80/20 of 200: mean 40 v2, sd 5.7; 5 sigma either side. Round robin would give 100.
    assert set(seen) <= {b"v1:hi", b"v2:hi"}, seen
    assert 12 <= seen[b"v2:hi"] <= 68, seen


def subnet_routes(subnet: str) -> str:
    return f"""\
  tcp:
  - match: [{{destinationSubnets: ["{subnet}"]}}]
    route: [{{destination: {{host: db, subset: v2}}}}]
  - route: [{{destination: {{host: db, subset: v1}}}}]
"""


async def test_destination_subnets_match_the_bound_address(db: tuple[int, int]) -> None:
    bind = "127.0.93.11"
    with running(db_mesh(bind, db, subnet_routes("127.0.93.0/24"))) as m:
        assert [await ask(bind, 5000) for _ in range(4)] == [b"v2:hi"] * 4
        m.apply(db_mesh(bind, db, subnet_routes("10.9.0.0/16")))
        assert [await ask(bind, 5000) for _ in range(4)] == [b"v1:hi"] * 4


# --- L4: tls routes by SNI, passed through ------------------------------------------------------


def tls_server_ctx(tmp: Path, name: str) -> tuple[ssl.SSLContext, Path]:
    folder = tmp / name
    folder.mkdir()
    cert, key = self_signed(folder, name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx, cert


SNI_ROUTES = """\
  tls:
  - match: [{port: 8443, sniHosts: [a.example.com]}]
    route: [{destination: {host: secure, subset: a}}]
  - match: [{port: 8443, sniHosts: [b.example.com]}]
    route: [{destination: {host: secure, subset: b}}]
"""


@pytest.mark.parametrize(("port_name", "protocol"), [("tls", "TLS"), ("https-web", "HTTPS")])
async def test_tls_routes_by_sni_pass_through_and_unknown_sni_takes_the_default(
    tmp_path: Path, port_name: str, protocol: str,
) -> None:
    bind = "127.0.93.12"
    names = ("a.example.com", "b.example.com", "secure.shop.svc.cluster.local")
    made = [tls_server_ctx(tmp_path, n) for n in names]
    servers = [await named_server(n.encode(), ctx) for n, (ctx, _) in zip(names, made, strict=True)]
    try:
        config = join(
            service("secure", (port_name, 8443)),
            *(workload("secure", v, {port_name: port_of(s)})
              for v, s in zip("abd", servers, strict=True)),
            subsets_rule("secure", "a", "b", "d"),
            egress_sidecar(bind, (8443, protocol)),
            vs("secure", '[secure, "*.example.com"]', SNI_ROUTES),
        )
        with running(config) as m:
            for name, (_, cert) in zip(names[:2], made[:2], strict=True):
                verify = ssl.create_default_context(cafile=str(cert))
                for _ in range(3):  # every time: the client checks that upstream's own cert
                    assert await ask(bind, 8443, verify, name) == name.encode() + b":hi"
            trust_all = ssl.create_default_context()
            for _, cert in made:
                trust_all.load_verify_locations(cafile=str(cert))
            trust_all.check_hostname = False  # the default cluster is any of the three
            for _ in range(3):
                assert (await ask(bind, 8443, trust_all, "other.example.org")).endswith(b":hi")
            await asyncio.sleep(0.2)  # the access log is written by a thread
            log = m.proc.stdout()
    finally:
        for s in servers:
            s.close()
    lines = log.splitlines()
    assert sum("outbound|8443|a|secure.shop" in ln for ln in lines) == 3, log
    assert sum("outbound|8443|b|secure.shop" in ln for ln in lines) == 3, log
    assert sum("outbound|8443||secure.shop" in ln for ln in lines) == 3, log


# --- HTTP/2 clients through VirtualService routes -----------------------------------------------

WEB_ROUTES = """\
  http:
  - match: [{headers: {x-user: {exact: jason}}}]
    route: [{destination: {host: web, subset: v2}}]
  - match: [{uri: {prefix: /old/}}]
    rewrite: {uri: /new/}
    route: [{destination: {host: web, subset: v1}}]
  - match: [{uri: {exact: /moved}}]
    redirect: {uri: /here, redirectCode: 308}
  - match: [{uri: {exact: /secure}}]
    redirect: {scheme: https, port: 8443}
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: short and stout}}
  - match: [{uri: {prefix: /api}}]
    corsPolicy:
      allowOrigins: [{exact: "https://app.example"}]
      allowMethods: [GET, PUT]
      allowHeaders: [x-token]
      maxAge: 1h
    route: [{destination: {host: web, subset: v1}}]
  - route:
    - {destination: {host: web, subset: v1}, weight: 90}
    - {destination: {host: web, subset: v2}, weight: 10}
"""


@pytest.fixture
async def web() -> AsyncIterator[tuple[Upstream, Upstream]]:
    v1, v2 = await echo("v1").start(), await echo("v2").start()
    yield v1, v2
    v1.close()
    v2.close()


def web_mesh(bind: str, v1: Upstream, v2: Upstream) -> str:
    return join(
        service("web", ("http", 80)),
        workload("web", "v1", {"http": v1.port}),
        workload("web", "v2", {"http": v2.port}),
        subsets_rule("web", "v1", "v2"),
        egress_sidecar(bind, (80, "HTTP")),
        vs("web", "[web]", WEB_ROUTES),
    )


async def h2(url: str, *args: str) -> tuple[str, dict[str, str], str]:
    """curl over HTTP/2 without upgrade: (status line, headers, body)."""
    code, out, err = await curl("--http2-prior-knowledge", "-s", "-i", *args, url, timeout=10)
    assert code == 0, err.decode()
    head, _, body = out.decode().partition("\r\n\r\n")
    status, *lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    return status.strip(), headers, body


async def test_http2_clients_get_matches_rewrite_redirect_direct_response_and_cors(
    web: tuple[Upstream, Upstream],
) -> None:
    bind = "127.0.93.20"
    v1, v2 = web
    base = f"http://{bind}:80"
    with running(web_mesh(bind, v1, v2)):
        status, hdrs, _ = await h2(base + "/x", "-H", "Host: web", "-H", "x-user: jason")
        assert (status, hdrs["x-up"]) == ("HTTP/2 200", "v2")
        status, hdrs, body = await h2(base + "/old/page?q=1", "-H", "Host: web")
        assert (status, hdrs["x-up"]) == ("HTTP/2 200", "v1")
        assert '"path": "/new/page?q=1"' in body, body
        status, hdrs, _ = await h2(base + "/moved?a=b", "-H", "Host: web:80")
        assert (status, hdrs["location"]) == ("HTTP/2 308", "http://web:80/here?a=b")
        status, hdrs, _ = await h2(base + "/secure", "-H", "Host: web")
        assert (status, hdrs["location"]) == ("HTTP/2 301", "https://web:8443/secure")
        status, hdrs, body = await h2(base + "/teapot", "-H", "Host: web")
        assert (status, body) == ("HTTP/2 418", "short and stout")
        status, hdrs, _ = await h2(
            base + "/api/items", "-X", "OPTIONS", "-H", "Host: web",
            "-H", "Origin: https://app.example", "-H", "Access-Control-Request-Method: PUT")
        assert status == "HTTP/2 200" and "x-up" not in hdrs, hdrs
        assert hdrs["access-control-allow-origin"] == "https://app.example"
        assert hdrs["access-control-allow-methods"] == "GET,PUT"
        assert hdrs["access-control-max-age"] == "3600"


async def test_h2load_through_a_weighted_route_and_a_header_match(
    web: tuple[Upstream, Upstream],
) -> None:
    require(shutil.which("h2load") is not None, "h2load is not installed")
    bind = "127.0.93.21"
    v1, v2 = web

    async def h2load(n: int, *headers: str) -> None:
        args = [a for h in (":authority: web", *headers) for a in ("-H", h)]
        proc = await asyncio.create_subprocess_exec(
            "h2load", "-n", str(n), "-c", "2", "-m", "10", *args, f"http://{bind}:80/",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(20):
            out, _ = await proc.communicate()
        assert f"{n} succeeded, 0 failed" in out.decode(), out.decode()

    with running(web_mesh(bind, v1, v2)):
        await h2load(400)
        # 90/10 of 400: mean 40 to v2, sd 6; 5 sigma either side.
        assert len(v1.requests) + len(v2.requests) == 400
        assert 10 <= len(v2.requests) <= 70, (len(v1.requests), len(v2.requests))
        before = len(v1.requests)
        await h2load(100, "x-user: jason")
        assert len(v1.requests) == before


# --- gRPC -----------------------------------------------------------------------------------------

GRPC_ROUTES = """\
  http:
  - match: [{headers: {x-fault: {exact: abort}}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: echo}}]
  - match: [{headers: {x-fault: {exact: delay}}}]
    fault: {delay: {fixedDelay: 3s, percentage: {value: 100}}}
    route: [{destination: {host: echo}}]
  - match: [{uri: {prefix: /test.Echo/Download}}]
    timeout: 0.5s
    route: [{destination: {host: echo}}]
  - route: [{destination: {host: echo}}]
"""


def grpc_mesh(bind: str, port: int, routes: str, *docs: str) -> str:
    return join(
        service("echo", ("grpc", 7070)),
        workload("echo", "v1", {"grpc": port}),
        egress_sidecar(bind, (7070, "GRPC")),
        vs("echo", "[echo]", routes),
        *docs,
    )


def _grpc_faults(target: str, authority: str) -> dict[str, Any]:
    ch = channel(target, authority=authority)
    out: dict[str, Any] = {}
    try:
        wait_channel_ready(ch)
        unary: Any = ch.unary_unary(method("Unary"))
        out["plain"] = unary(b"hello", timeout=5)
        for fault in ("abort", "delay"):
            start = time.monotonic()
            try:
                unary(b"x", timeout=0.5, metadata=(("x-fault", fault),))
            except grpc.RpcError as err:
                out[fault] = (err.code(), err.details(), time.monotonic() - start)
        got = 0
        start = time.monotonic()
        try:
            download: Any = ch.unary_stream(method("Download"))
            for _ in download(b"500000,16", timeout=8):
                got += 1
        except grpc.RpcError as err:
            out["stream"] = (err.code(), got, time.monotonic() - start)
        return out
    finally:
        ch.close()


@pytest.mark.parametrize("authority", ["echo:7070", f"echo.{NS}.svc.cluster.local:7070"])
async def test_grpc_fault_abort_delay_and_a_route_timeout_on_a_server_stream(
    authority: str,
) -> None:
    bind = "127.0.93.30"
    with EchoServer() as server, running(grpc_mesh(bind, server.port, GRPC_ROUTES)) as m:
        out = await asyncio.to_thread(_grpc_faults, f"{bind}:7070", authority)
        await asyncio.sleep(0.2)
        log = m.proc.stdout()
    assert out["plain"] == b"hello"
    code, details, elapsed = out["abort"]
    assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "fault filter abort")
    assert elapsed < 0.4
    code, _, elapsed = out["delay"]
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and 0.4 < elapsed < 1.5, out["delay"]
    code, got, elapsed = out["stream"]
    assert code != grpc.StatusCode.OK and got > 0 and 0.4 < elapsed < 2.0, out["stream"]
    assert any("/test.Echo/Download" in ln and " UT " in ln for ln in log.splitlines()), log


class _Seen(grpc.ServerInterceptor):  # type: ignore[misc, unused-ignore]
    """Records the method of every call a server receives."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.methods.append(details.method)
        return continuation(details)


async def test_grpc_mirror_gets_every_call_and_a_slow_mirror_does_not_slow_the_client() -> None:
    bind = "127.0.93.31"
    seen = _Seen()
    mirror = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[seen],
                         options=CHANNEL_OPTIONS)

    def slow(request: bytes, context: Any) -> bytes:
        time.sleep(2.0)
        return b"mirror"

    mirror.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(slow)}),))
    mirror_port = mirror.add_insecure_port("127.0.0.1:0")
    mirror.start()
    routes = """\
  http:
  - route: [{destination: {host: echo}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 100}
"""
    docs = (service("shadow", ("grpc", 7070)), workload("shadow", "v1", {"grpc": mirror_port}))

    def calls() -> tuple[list[bytes], float]:
        ch = channel(f"{bind}:7070", authority="echo:7070")
        try:
            wait_channel_ready(ch)
            start = time.monotonic()
            unary: Any = ch.unary_unary(method("Unary"))
            got: list[bytes] = [unary(b"c%d" % i, timeout=1) for i in range(5)]
            return got, time.monotonic() - start
        finally:
            ch.close()

    try:
        with EchoServer() as server, running(grpc_mesh(bind, server.port, routes, *docs)):
            got, elapsed = await asyncio.to_thread(calls)
            deadline = time.monotonic() + 5
            while len(seen.methods) < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    finally:
        mirror.stop(None)
    assert got == [b"c%d" % i for i in range(5)] and elapsed < 1.0, elapsed
    assert seen.methods == ["/test.Echo/Unary"] * 5


# --- WebSocket ------------------------------------------------------------------------------------


async def test_websocket_upgrade_through_a_route_with_rewrite() -> None:
    bind = "127.0.93.40"
    seen: list[tuple[str, str | None]] = []

    async def handler(ws: Any) -> None:
        seen.append((ws.request.path, ws.request.headers.get("host")))
        async for msg in ws:
            await ws.send(f"echo:{msg}")

    server = await websockets.serve(handler, "127.0.0.1", 0)
    routes = """\
  http:
  - match: [{uri: {prefix: /ws/}}]
    rewrite: {uri: /socket/, authority: chat-internal}
    route: [{destination: {host: chat}}]
"""
    config = join(
        service("chat", ("http-ws", 8080)),
        workload("chat", "v1", {"http-ws": next(iter(server.sockets)).getsockname()[1]}),
        egress_sidecar(bind, (8080, "HTTP")),
        vs("chat", "[chat]", routes),
    )
    try:
        with running(config):
            sock = socket.create_connection((bind, 8080), timeout=5)
            async with asyncio.timeout(5), websockets.connect(
                "ws://chat:8080/ws/room1", sock=sock) as ws:
                answers = []
                for i in range(3):
                    await ws.send(f"m{i}")
                    answers.append(await ws.recv())
    finally:
        server.close()
    assert answers == ["echo:m0", "echo:m1", "echo:m2"]
    assert seen == [("/socket/room1", "chat-internal")]
