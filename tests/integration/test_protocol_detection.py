"""Protocol detection through the real listener on an auto port: HTTP, TCP, server-first, TLS.

The listener has the chains the translator builds for an auto port (detected HTTP -> HCM, other
plain text -> TCP, TLS -> TCP); each chain points at its own cluster name, all on the test's one
upstream, so the access log's upstream_cluster says which chain took the connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sidecar.bootstrap import Bootstrap
from sidecar.config.snapshot import (
    HTTP_DETECTED,
    Direction,
    FilterChain,
    FilterChainMatch,
    HttpConnectionManager,
    Listener,
    Route,
    RouteConfig,
    RouteMatch,
    Snapshot,
    TcpProxy,
    VirtualHost,
    Workload,
)
from sidecar.listener.accept import ListenerHandle, acceptor
from sidecar.runtime import Runtime
from sidecar.upstream.cluster import ClusterManager

from .certs import self_signed
from .proxy_fixtures import CollectingLog, RunningProxy, start_proxy, static_cluster
from .upstreams import start_streaming_upstream

pytestmark = pytest.mark.timeout(30)

DETECTION_TIMEOUT = 0.1
MARGIN = 0.4  # scheduling slack on a loaded 2-core machine


async def start_auto_proxy(upstream_port: int, timeout: float = DETECTION_TIMEOUT) -> RunningProxy:
    """A listener whose only port is auto: the three chains Istio builds for it."""
    hcm = HttpConnectionManager("rc", "auto_http")
    chains = (
        FilterChain("auto_http", FilterChainMatch(None, (), "raw_buffer", HTTP_DETECTED), hcm),
        FilterChain("auto", FilterChainMatch(None, (), "raw_buffer"), TcpProxy("tcp_up", "t")),
        FilterChain("auto_tls", FilterChainMatch(None, (), "tls"), TcpProxy("tls_up", "tls")),
    )
    listener = Listener(
        "auto", "127.0.0.1", 0, Direction.OUTBOUND, False, chains, detection_timeout=timeout
    )
    route = Route("default", RouteMatch(prefix="/"), cluster="http_up")
    clusters = tuple(
        static_cluster(name, ("127.0.0.1", upstream_port), connect_timeout=2.0)
        for name in ("http_up", "tcp_up", "tls_up")
    )
    snapshot = Snapshot(
        version="test",
        workload=Workload(name="test", namespace="default"),
        listeners=(listener,),
        route_configs={"rc": RouteConfig("rc", (VirtualHost("all", ("*",), (route,)),))},
        clusters={c.name: c for c in clusters},
    )
    manager = ClusterManager()
    manager.update(snapshot)
    log = CollectingLog()
    runtime = Runtime(Bootstrap(), manager, log)
    handle = ListenerHandle(listener, snapshot)
    loop = asyncio.get_running_loop()
    handle.servers.append(await loop.create_server(acceptor(runtime, handle), "127.0.0.1", 0))
    port = handle.servers[0].sockets[0].getsockname()[1]
    return RunningProxy(runtime=runtime, handle=handle, log=log, port=port, clusters=manager)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _greeter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server-first protocol (MySQL, SMTP): the server speaks before the client."""
    writer.write(b"220 greetings from upstream\r\n")
    await writer.drain()
    await _echo(reader, writer)


@pytest.fixture
async def tcp_upstream(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    handler: Handler = request.param
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_http1_on_an_auto_port_is_proxied_as_http() -> None:
    server, up_port = await start_streaming_upstream()
    proxy = await start_auto_proxy(up_port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GE")  # the request line arrives in pieces: detection waits for it
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"T /detected HTTP/1.1\r\nHost: web\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
        body = await asyncio.wait_for(reader.read(100), 5)
        assert body.endswith(b"ok /detected")
        writer.close()
        (info,) = await proxy.log.wait_for(1)
        assert (info.protocol, info.method, info.path) == ("HTTP/1.1", "GET", "/detected")
        assert info.upstream_cluster == "http_up" and info.response_code == 200
    finally:
        proxy.close()
        server.close()


@pytest.mark.parametrize("tcp_upstream", [_echo], indirect=True)
async def test_opaque_client_first_bytes_are_relayed_as_tcp(tcp_upstream: int) -> None:
    proxy = await start_auto_proxy(tcp_upstream)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        payload = b"\x00\x01\x02 not http at all \xff" * 100
        writer.write(payload)
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 5)
        assert got == payload
        writer.close()
        (info,) = await proxy.log.wait_for(1)
        assert info.upstream_cluster == "tcp_up" and info.protocol == "-"
        assert info.bytes_received == len(payload)
    finally:
        proxy.close()


@pytest.mark.parametrize("tcp_upstream", [_greeter], indirect=True)
async def test_server_first_protocol_falls_back_to_tcp_after_the_timeout(
    tcp_upstream: int,
) -> None:
    proxy = await start_auto_proxy(tcp_upstream)
    try:
        start = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        greeting = await asyncio.wait_for(reader.readline(), DETECTION_TIMEOUT + MARGIN)
        elapsed = time.monotonic() - start
        assert greeting == b"220 greetings from upstream\r\n"
        assert DETECTION_TIMEOUT * 0.9 <= elapsed < DETECTION_TIMEOUT + MARGIN
        writer.write(b"HELO client\r\n")  # the connection is a plain relay from now on
        assert await asyncio.wait_for(reader.readline(), 5) == b"HELO client\r\n"
        writer.close()
        (info,) = await proxy.log.wait_for(1)
        assert info.upstream_cluster == "tcp_up"
    finally:
        proxy.close()


@pytest.mark.parametrize("tcp_upstream", [_greeter], indirect=True)
async def test_declared_tcp_port_never_waits(tcp_upstream: int) -> None:
    proxy = await start_proxy(
        TcpProxy("tcp_up", "tcp-db"),
        (static_cluster("tcp_up", ("127.0.0.1", tcp_upstream), connect_timeout=2.0),),
    )
    try:
        start = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        greeting = await asyncio.wait_for(reader.readline(), 2)
        assert greeting.startswith(b"220 ")
        assert time.monotonic() - start < 0.05
        writer.close()
    finally:
        proxy.close()


async def test_tls_client_hello_goes_to_tcp_passthrough_end_to_end(tmp_path: Path) -> None:
    name = "secure.example.test"
    cert, key = self_signed(tmp_path, name)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server_ctx.set_alpn_protocols(["http/1.1"])
    seen_sni: list[str | None] = []

    def remember_sni(sock: ssl.SSLObject, sni: str | None, ctx: ssl.SSLContext) -> None:
        seen_sni.append(sni)

    server_ctx.sni_callback = remember_sni
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=server_ctx)
    proxy = await start_auto_proxy(server.sockets[0].getsockname()[1])
    try:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        client_ctx.set_alpn_protocols(["http/1.1"])  # offers an HTTP ALPN: still TLS -> TCP
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", proxy.port, ssl=client_ctx, server_hostname=name),
            5,
        )
        tls = writer.get_extra_info("ssl_object")
        assert tls.selected_alpn_protocol() == "http/1.1"  # negotiated with the real server
        assert tls.getpeercert()["subject"] == ((("commonName", name),),)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")  # encrypted: the proxy must not parse it
        assert await asyncio.wait_for(reader.readexactly(18), 5) == b"GET / HTTP/1.1\r\n\r\n"
        writer.close()
        (info,) = await proxy.log.wait_for(1)
        assert info.upstream_cluster == "tls_up" and info.protocol == "-"
        assert seen_sni == [name]
    finally:
        proxy.close()
        server.close()


@pytest.mark.parametrize("tcp_upstream", [_echo], indirect=True)
async def test_client_that_leaves_during_detection_leaks_nothing(tcp_upstream: int) -> None:
    proxy = await start_auto_proxy(tcp_upstream, timeout=5.0)
    try:
        for _ in range(3):
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            await asyncio.sleep(0.05)
            assert len(proxy.runtime.connections) == 1  # held by detection, drainable
            writer.close()
            async with asyncio.timeout(2):
                while proxy.runtime.connections:
                    await asyncio.sleep(0.01)
        assert proxy.log.records == []  # never reached a network filter
    finally:
        proxy.close()


@pytest.mark.parametrize("tcp_upstream", [_echo], indirect=True)
async def test_half_close_during_detection_hands_the_bytes_to_tcp(tcp_upstream: int) -> None:
    proxy = await start_auto_proxy(tcp_upstream, timeout=5.0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET /unfinished")  # could still become HTTP: undecided
        writer.write_eof()  # ... until the client says it is done
        got = await asyncio.wait_for(reader.readexactly(15), 2)  # well before the 5 s timeout
        assert got == b"GET /unfinished"
        writer.close()
        (info,) = await proxy.log.wait_for(1)
        assert info.upstream_cluster == "tcp_up"
    finally:
        proxy.close()
