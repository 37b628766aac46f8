"""HTTP/1.1 proxying through real sockets: keep-alive, pipelining, headers, local replies."""

from __future__ import annotations

import asyncio
import re

from sidecar.config.snapshot import (
    Cluster,
    DiscoveryType,
    Protocol,
    Route,
    RouteConfig,
    RouteMatch,
    VirtualHost,
)
from sidecar.outcome import ResponseFlag
from tests.integration.http_helpers import (
    Request,
    Upstream,
    cluster,
    curl,
    ok,
    raw_exchange,
    simple_routes,
    start_proxy,
    static_ok,
)

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


async def test_keep_alive_reuses_one_upstream_connection() -> None:
    up = await Upstream(static_ok(b"hi")).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        urls = [f"http://127.0.0.1:{p.port}/{i}" for i in range(5)]
        for _ in range(3):  # three client connections, five requests each
            rc, out, _ = await curl(*urls)
            assert rc == 0 and out == b"hi" * 5
        assert up.accepts == 1
        entries = await p.log.wait_for(15)
        assert {e.response_code for e in entries} == {200}
        assert p.cm.get("c").counters.upstream_cx_total == 1  # type: ignore[union-attr]
    up.close()


async def test_max_requests_per_connection_and_idle_timeout() -> None:
    up = await Upstream(static_ok()).start()
    c = cluster("c", up.port, max_requests_per_connection=2, idle_timeout=0.3)
    async with start_proxy(simple_routes("c"), [c]) as p:
        rc, _, _ = await curl(*[f"http://127.0.0.1:{p.port}/{i}" for i in range(5)])
        assert rc == 0
        assert up.accepts == 3
        await asyncio.sleep(0.8)  # idle connection expires
        rc, _, _ = await curl(f"http://127.0.0.1:{p.port}/")
        assert rc == 0 and up.accepts == 4
    up.close()


async def test_upstream_closing_idle_connection_is_not_reused() -> None:
    up = await Upstream(static_ok()).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        url = f"http://127.0.0.1:{p.port}/"
        assert (await curl(url))[0] == 0
        for conn in up.conns:  # the upstream closes its idle keep-alive connection
            assert conn.transport is not None
            conn.transport.close()
        await asyncio.sleep(0.1)
        rc, out, _ = await curl(url)
        assert rc == 0 and out == b"hello"
        assert up.accepts == 2
        assert [e.response_code for e in p.log.records] == [200, 200]
    up.close()


async def test_pipelined_requests_answered_in_order() -> None:
    async def slow_echo(req: Request, t: asyncio.Transport) -> None:
        await asyncio.sleep(0.05 if req.path.endswith("0") else 0.001)
        t.write(ok(req.path.encode()))

    up = await Upstream(slow_echo).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        reqs = b"".join(b"GET /r%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(10))
        last = b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        out = await raw_exchange(p.port, reqs + last)
        bodies = re.findall(rb"\r\n\r\n(/r\d|/last)", out)
        assert bodies == [b"/r%d" % i for i in range(10)] + [b"/last"]
        assert out.count(b"HTTP/1.1 200") == 11
    up.close()


async def test_forwarding_headers_added() -> None:
    up = await Upstream(static_ok()).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        await raw_exchange(
            p.port,
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\n"
            b"X-Forwarded-Proto: https\r\nX-Request-Id: abc\r\nConnection: close\r\n\r\n",
        )
        first, second = up.requests
        assert first.header("x-forwarded-for") == "127.0.0.1"
        assert first.header("x-forwarded-proto") == "http"
        rid = first.header("x-request-id")
        assert rid is not None and UUID4.match(rid)
        assert second.header("x-forwarded-for") == "10.0.0.1, 127.0.0.1"
        assert second.header("x-forwarded-proto") == "https"
        assert second.header("x-request-id") == "abc"
        entries = await p.log.wait_for(2)
        assert entries[0].request_id == rid and entries[1].request_id == "abc"
    up.close()


async def test_hop_by_hop_headers_removed_both_ways() -> None:
    def handle(req: Request, t: asyncio.Transport) -> None:
        t.write(ok(b"x", b"Connection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
                        b"Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n"))

    up = await Upstream(handle).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        out = await raw_exchange(
            p.port,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Foo\r\nX-Foo: 1\r\n"
            b"Keep-Alive: timeout=3\r\nProxy-Connection: keep-alive\r\nTE: gzip, trailers\r\n"
            b"Upgrade: h2c\r\nX-Bar: 2\r\n\r\n",
            until_close=False,
        )
        req = up.requests[0]
        names = {n.lower() for n, _ in req.headers}
        for hop in ("x-foo", "keep-alive", "proxy-connection", "upgrade"):
            assert hop not in names, hop
        assert req.header("te") == "trailers"
        assert req.header("x-bar") == "2"
        head = out.split(b"\r\n\r\n")[0].lower()
        assert b"x-secret" not in head and b"keep-alive" not in head
        assert b"proxy-connection" not in head and b"x-kept: yes" in head
    up.close()


async def test_expect_100_continue_answered_by_proxy() -> None:
    up = await Upstream(lambda r, t: t.write(ok(r.body))).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        async with asyncio.timeout(5):
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"hello")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(5) == b"hello"
        writer.close()
        assert up.requests[0].header("expect") is None
        rc, out, _ = await curl("-H", "Expect: 100-continue", "--data-binary", "x" * 2000,
                                f"http://127.0.0.1:{p.port}/c")
        assert rc == 0 and out == b"x" * 2000
    up.close()


async def test_chunked_both_ways_with_trailers() -> None:
    def handle(req: Request, t: asyncio.Transport) -> None:
        t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n" + b"%x\r\n%s\r\n" % (len(req.body), req.body)
                + b"0\r\nX-Trailer: t\r\n\r\n")

    up = await Upstream(handle).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        out = await raw_exchange(
            p.port,
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"2\r\nxy\r\n1\r\nz\r\n0\r\n\r\n",
        )
        assert up.requests[0].body == b"xyz"
        assert up.requests[0].header("transfer-encoding") == "chunked"
        assert b"transfer-encoding: chunked" in out.lower()
        assert out.endswith(b"3\r\nabc\r\n3\r\nxyz\r\n0\r\nX-Trailer: t\r\n\r\n")
    up.close()


async def test_whole_requests_in_single_reads_keep_their_trailers() -> None:
    # Each read holds one whole request without body data (the connection manager's fast path),
    # the first ending with trailers; a pipelined pair in one read takes the general path.
    up = await Upstream(lambda r, t: t.write(ok(r.path.encode()))).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        async with asyncio.timeout(5):
            writer.write(b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"0\r\nX-Trailer: t\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(2) == b"/t"
            writer.write(b"GET /g HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(2) == b"/g"
            writer.write(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
            for path in (b"/1", b"/2"):
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                assert await reader.readexactly(2) == path
        writer.close()
        assert [r.path for r in up.requests] == ["/t", "/g", "/1", "/2"]
        assert up.requests[0].header("x-trailer") == "t" and up.requests[0].body == b""
        assert up.accepts == 1
    up.close()


async def test_http10_client_gets_close_delimited_response() -> None:
    def handle(req: Request, t: asyncio.Transport) -> None:
        t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")

    up = await Upstream(handle).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        out = await raw_exchange(p.port, b"GET / HTTP/1.0\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200")
        assert out.endswith(b"\r\n\r\nhello")
        assert b"connection: close" in out
    up.close()


async def test_head_request_keeps_connection_usable() -> None:
    def handle(req: Request, t: asyncio.Transport) -> None:
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n" +
                (b"" if req.method == "HEAD" else b"hello world"))

    up = await Upstream(handle).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        rc, out, _ = await curl("-I", f"http://127.0.0.1:{p.port}/a", "--next",
                                f"http://127.0.0.1:{p.port}/b")
        assert rc == 0 and out.endswith(b"hello world")
        assert b"content-length: 11" in out
        assert up.accepts == 1
    up.close()


async def test_direct_response_route() -> None:
    routes = RouteConfig(name="80", virtual_hosts=(VirtualHost(
        name="v", domains=("*",),
        routes=(Route(name="d", match=RouteMatch(prefix="/"), direct_status=418,
                      direct_body=b"teapot"),)),))
    async with start_proxy(routes, []) as p:
        rc, out, _err = await curl("-i", f"http://127.0.0.1:{p.port}/")
        assert rc == 0 and out.startswith(b"HTTP/1.1 418") and out.endswith(b"teapot")


async def _expect_local(
    routes: RouteConfig, clusters: list[Cluster], status: int, flag: ResponseFlag,
    request: bytes = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
) -> bytes:
    async with start_proxy(routes, clusters) as p:
        out = await raw_exchange(p.port, request)
        assert out.startswith(b"HTTP/1.1 %d" % status), out
        entries = await p.log.wait_for(1)
        assert entries[0].response_code == status
        assert flag in entries[0].response_flags
        # The same reply must reach a keep-alive client that sends nothing more.
        kept = await _keep_alive_exchange(p.port, request.replace(b"Connection: close\r\n", b""))
        # (status line and body; the date header may tick between the two)
        assert kept.split(b"\r\n", 1)[0] == out.split(b"\r\n", 1)[0], (kept, out)
        assert kept.split(b"\r\n\r\n", 1)[1] == out.split(b"\r\n\r\n", 1)[1], (kept, out)
        return out


async def _keep_alive_exchange(port: int, request: bytes) -> bytes:
    """One request on a connection kept open; the response is read by its content-length."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(3):
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            return head + await reader.readexactly(length)
    finally:
        writer.close()


async def test_no_route_404_nr() -> None:
    routes = RouteConfig(name="80", virtual_hosts=(VirtualHost(
        name="v", domains=("only.example",),
        routes=(Route(name="r", match=RouteMatch(prefix="/"), cluster="c"),)),))
    await _expect_local(routes, [], 404, ResponseFlag.NR)


async def test_cluster_not_found_503_nc() -> None:
    await _expect_local(simple_routes("missing"), [], 503, ResponseFlag.NC)


async def test_no_healthy_upstream_503_uh() -> None:
    empty = Cluster(name="c", discovery=DiscoveryType.STATIC, protocol=Protocol.HTTP)
    out = await _expect_local(simple_routes("c"), [empty], 503, ResponseFlag.UH)
    assert out.endswith(b"no healthy upstream")


async def test_connect_failure_503_uf() -> None:
    up = await Upstream(static_ok()).start()
    port = up.port
    up.close()
    await asyncio.sleep(0.05)
    out = await _expect_local(simple_routes("c"), [cluster("c", port)], 503, ResponseFlag.UF)
    assert b"connection failure" in out


async def test_upstream_closes_before_headers_503_uc() -> None:
    up = await Upstream(lambda r, t: t.close()).start()
    out = await _expect_local(simple_routes("c"), [cluster("c", up.port)], 503, ResponseFlag.UC)
    assert b"connection termination" in out
    up.close()


async def test_malformed_upstream_response_502_upe() -> None:
    up = await Upstream(lambda r, t: t.write(b"HTTP/1.1 2xx nonsense\r\n\r\n")).start()
    await _expect_local(simple_routes("c"), [cluster("c", up.port)], 502, ResponseFlag.UPE)
    up.close()


async def test_route_timeout_504_ut() -> None:
    up = await Upstream(lambda r, t: None).start()  # never answers
    out = await _expect_local(simple_routes("c", timeout=0.3), [cluster("c", up.port)], 504,
                              ResponseFlag.UT)
    assert out.endswith(b"upstream request timeout")
    up.close()


async def test_upstream_closes_mid_response_resets_downstream_uc() -> None:
    def handle(req: Request, t: asyncio.Transport) -> None:
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        t.close()

    up = await Upstream(handle).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        got = b""
        async with asyncio.timeout(5):
            try:
                while chunk := await reader.read(1000):
                    got += chunk
            except ConnectionResetError:
                pass
        writer.close()
        assert got.startswith(b"HTTP/1.1 200") and len(got.split(b"\r\n\r\n", 1)[1]) < 100
        entries = await p.log.wait_for(1)
        assert ResponseFlag.UC in entries[0].response_flags
    up.close()


async def test_downstream_disconnect_mid_request_closes_upstream_dc() -> None:
    up = await Upstream(lambda r, t: None).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        _reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        await writer.drain()
        async with asyncio.timeout(5):
            while up.accepts == 0:
                await asyncio.sleep(0.01)
        writer.close()
        entries = await p.log.wait_for(1)
        assert ResponseFlag.DC in entries[0].response_flags
        async with asyncio.timeout(5):  # the upstream connection is closed, not pooled
            while not up.conns[0].transport.is_closing():  # type: ignore[union-attr]
                await asyncio.sleep(0.01)
            state = p.cm.get("c")
            assert state is not None
            while state.counters.upstream_cx_active:
                await asyncio.sleep(0.01)
    up.close()


async def test_request_end_after_early_response_reaches_upstream_at_once() -> None:
    """The upstream answers before the chunked body ends: the last chunk still goes out at once,
    and the connection is reused for the next request."""
    seen = bytearray()
    accepts = 0

    class Early(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            nonlocal accepts
            accepts += 1
            self.t = transport

        def data_received(self, data: bytes) -> None:
            before = bytes(seen)
            seen.extend(data)
            if before.count(b"\r\n\r\n") == 0 and b"\r\n\r\n" in seen:
                self.t.write(ok(b"early"))  # type: ignore[attr-defined]
            elif b"GET /second" in data:
                self.t.write(ok(b"second"))  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Early, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with start_proxy(simple_routes("c"), [cluster("c", port)]) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(b"POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(5) == b"early"
            writer.write(b"0\r\n\r\n")
            while not seen.endswith(b"0\r\n\r\n"):  # not held back until the next request
                await asyncio.sleep(0.01)
            writer.write(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(6) == b"second"
        writer.close()
        assert accepts == 1
    server.close()
