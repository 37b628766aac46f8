"""Request mirroring through real sockets: the copy reaches the mirror upstream intact, and a
slow, silent, failing or refusing mirror never changes the original's status or latency.

`start_mirrors` is driven two ways: directly (a real mirror upstream, the production pools and
cluster manager), and through a real proxy listener whose route mirrors to a second cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sidecar.bootstrap import Bootstrap
from sidecar.config.snapshot import (
    Mirror,
    Route,
    RouteConfig,
    RouteMatch,
    Snapshot,
    VirtualHost,
    Workload,
)
from sidecar.http.mirror import BUFFER_LIMIT, MirrorSet, shadow_authority, start_mirrors
from sidecar.http.stream import END, RequestHead
from sidecar.runtime import Runtime
from sidecar.upstream.cluster import ClusterManager, ClusterState

from .http_helpers import Handler, Request, Upstream, cluster, start_proxy, static_ok
from .proxy_fixtures import CollectingLog, free_port


class Mesh:
    """A runtime over real clusters (the production cluster manager and pools)."""

    def __init__(self, *ports: tuple[str, int], timeout: float = 2.0) -> None:
        clusters = {n: cluster(n, p, connect_timeout=timeout) for n, p in ports}
        snapshot = Snapshot(version="t", workload=Workload(name="t", namespace="default"),
                            listeners=(), route_configs={}, clusters=clusters)
        self.cm = ClusterManager()
        self.cm.update(snapshot)
        self.runtime = Runtime(Bootstrap(), self.cm, CollectingLog())

    def state(self, name: str) -> ClusterState:
        s = self.cm.get(name)
        assert s is not None
        return s


@contextlib.asynccontextmanager
async def mesh(*ports: tuple[str, int]) -> AsyncIterator[Mesh]:
    m = Mesh(*ports)
    try:
        yield m
    finally:
        m.cm.close()


def post_head(body_len: int) -> RequestHead:
    head = RequestHead(b"POST", b"/orders?id=7", [(b"x-custom", b"yes"), (b"user-agent", b"t")])
    head.authority = b"orders.default:8080"
    head.content_length = body_len
    head.forwarded_for = b"10.1.2.3"
    head.forwarded_proto = b"http"
    head.request_id = b"rid-123"
    return head


async def until(cond: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.005)


class _Silent(asyncio.Protocol):
    """Accepts, then reads and discards (or does not read at all), never answering."""

    def __init__(self, read: bool, held: list[asyncio.Transport]) -> None:
        self.read = read
        self.held = held

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = t
        self.held.append(t)
        if not self.read:
            t.pause_reading()

    def data_received(self, data: bytes) -> None:
        if not self.read:  # (uvloop may start reading after connection_made: pause again)
            self.transport.pause_reading()


async def silent_server(read: bool) -> tuple[asyncio.Server, int, list[asyncio.Transport]]:
    held: list[asyncio.Transport] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Silent(read, held), "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1]), held


def test_shadow_authority_keeps_the_port() -> None:
    assert shadow_authority(b"reviews") == b"reviews-shadow"
    assert shadow_authority(b"reviews:9080") == b"reviews-shadow:9080"
    assert shadow_authority(b"[::1]:80") == b"[::1]-shadow:80"


async def test_copy_has_the_request_with_a_shadow_host_and_a_1mib_body() -> None:
    up = await Upstream(static_ok(b"ignored")).start()
    body = bytes(range(256)) * 4096  # 1 MiB
    async with mesh(("mirror", up.port)) as m:
        mirrors = start_mirrors(m.runtime, post_head(len(body)), (Mirror("mirror"),), b"10.9.9.9")
        assert isinstance(mirrors, MirrorSet)
        for i in range(0, len(body), 65536):
            mirrors.data(body[i : i + 65536])
            await asyncio.sleep(0)
        mirrors.end(END)
        state = m.state("mirror")
        await until(lambda: state.counters.upstream_rq_2xx == 1)
        (req,) = up.requests
        assert (req.method, req.path) == ("POST", "/orders?id=7")
        assert req.header("host") == "orders.default-shadow:8080"
        assert req.header("x-custom") == "yes" and req.header("user-agent") == "t"
        assert req.header("x-forwarded-for") == "10.1.2.3"
        assert req.header("x-request-id") == "rid-123"
        assert req.body == body
        # The answer was read and dropped, and the connection went back to its pool.
        assert state.counters.upstream_rq_active == 0 and state.in_flight == 0
        pool = next(iter(state.pools.values()))
        await until(lambda: getattr(pool, "idle_count", 0) == 1)
    up.close()


async def test_missing_cluster_or_zero_percent_sends_nothing() -> None:
    up = await Upstream(static_ok()).start()
    async with mesh(("mirror", up.port)) as m:
        assert start_mirrors(m.runtime, post_head(0), (Mirror("nope"),), b"1.1.1.1") is None
        assert start_mirrors(m.runtime, post_head(0), (Mirror("mirror", 0.0),), b"1") is None
        await asyncio.sleep(0.05)
    assert up.accepts == 0
    up.close()


async def test_refused_connection_only_closes_the_copy() -> None:
    async with mesh(("mirror", free_port())) as m:
        ms = start_mirrors(m.runtime, post_head(5), (Mirror("mirror"),), b"1.1.1.1")
        assert ms is not None
        ms.data(b"hello")
        ms.end(END)
        state = m.state("mirror")
        await until(lambda: state.in_flight == 0)
        assert state.counters.upstream_cx_connect_fail == 1
        assert all(c.done for c in ms.copies)


async def test_mirror_that_does_not_read_is_abandoned_with_bounded_buffering() -> None:
    server, port, held = await silent_server(read=False)
    chunk = b"x" * 65536
    async with mesh(("mirror", port)) as m:
        head = post_head(0)
        head.content_length = -1
        head.chunked = True
        ms = start_mirrors(m.runtime, head, (Mirror("mirror"),), b"1.1.1.1")
        assert ms is not None
        (copy,) = ms.copies
        state = m.state("mirror")
        sent = 0
        async with asyncio.timeout(8):
            while not copy.done and sent < 256 * 1024 * 1024:
                ms.data(chunk)  # never blocks, never raises
                sent += len(chunk)
                assert copy._held <= BUFFER_LIMIT + len(chunk)  # what it holds back: bounded
                await asyncio.sleep(0)
        assert copy.done
        assert state.counters.upstream_rq_tx_reset == 1
        await until(lambda: state.counters.upstream_cx_active == 0)
        ms.end(END)  # after abandoning: a no-op
    server.close()
    for t in held:
        t.abort()


async def test_early_error_answer_and_reset_do_not_leak() -> None:
    def answer_500_then_close(req: Request, t: asyncio.Transport) -> None:
        t.write(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        t.close()

    up = await Upstream(answer_500_then_close).start()
    async with mesh(("mirror", up.port)) as m:
        state = m.state("mirror")
        for _ in range(3):
            ms = start_mirrors(m.runtime, post_head(3), (Mirror("mirror"),), b"1.1.1.1")
            assert ms is not None
            ms.data(b"abc")
            ms.end(END)
        await until(lambda: state.counters.upstream_rq_5xx == 3)
        assert state.in_flight == 0 and state.counters.upstream_rq_active == 0
        await until(lambda: state.counters.upstream_cx_active == 0)
    up.close()


# -- through a real proxy: the original is never slowed or failed ----------------------------


def mirrored_routes(mirror_percent: float = 100.0) -> RouteConfig:
    """Host "plain" goes to "app"; host "mirrored" goes to "app" and is mirrored to "shadow"."""
    def vhost(name: str, mirrors: tuple[Mirror, ...]) -> VirtualHost:
        route = Route(name=name, match=RouteMatch(prefix="/"), cluster="app", mirrors=mirrors)
        return VirtualHost(name=name, domains=(name,), routes=(route,))

    return RouteConfig(name="80", virtual_hosts=(
        vhost("plain", ()), vhost("mirrored", (Mirror("shadow", mirror_percent),)),
    ))


async def timed_posts(port: int, host: str, n: int) -> tuple[list[int], list[float]]:
    """`n` POSTs on one keep-alive connection: statuses and latencies (seconds)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses: list[int] = []
    latencies: list[float] = []
    body = b"payload-" * 128
    try:
        for i in range(n):
            t0 = time.perf_counter()
            writer.write(b"POST /p/%d HTTP/1.1\r\nhost: %s\r\ncontent-length: %d\r\n\r\n%s"
                         % (i, host.encode(), len(body), body))
            line = await reader.readline()
            length = 0
            while (h := await reader.readline()) != b"\r\n":
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            statuses.append(int(line.split()[1]))
    finally:
        writer.close()
    return statuses, latencies


MirrorTarget = Callable[[], Awaitable[tuple[int, Callable[[], int], Callable[[], None]]]]


async def _upstream_target(handler: Handler) -> tuple[int, Callable[[], int], Callable[[], None]]:
    up = await Upstream(handler).start()
    return up.port, lambda: len(up.requests), up.close


def _delayed(delay: float, status: int) -> Handler:
    async def answer(req: Request, t: asyncio.Transport) -> None:
        await asyncio.sleep(delay)
        if not t.is_closing():
            t.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % status)

    return answer


async def target_never_answers() -> tuple[int, Callable[[], int], Callable[[], None]]:
    return await _upstream_target(lambda req, t: None)


async def target_slow() -> tuple[int, Callable[[], int], Callable[[], None]]:
    return await _upstream_target(_delayed(2.0, 200))


async def target_500() -> tuple[int, Callable[[], int], Callable[[], None]]:
    return await _upstream_target(_delayed(0.0, 500))


async def target_refuses() -> tuple[int, Callable[[], int], Callable[[], None]]:
    return free_port(), lambda: -1, lambda: None


@pytest.mark.parametrize(
    "target", [target_never_answers, target_slow, target_500, target_refuses],
    ids=["never-answers", "answers-after-2s", "returns-500", "refuses"],
)
async def test_a_bad_mirror_leaves_the_original_status_and_latency(target: MirrorTarget) -> None:
    app = await Upstream(static_ok(b"original")).start()
    shadow_port, shadow_seen, shadow_close = await target()
    n = 30
    clusters = [cluster("app", app.port), cluster("shadow", shadow_port, connect_timeout=1.0)]
    async with start_proxy(mirrored_routes(), clusters) as proxy:
        await timed_posts(proxy.port, "plain", 5)  # warm up
        base_status, base = await timed_posts(proxy.port, "plain", n)
        mirrored_status, mirrored = await timed_posts(proxy.port, "mirrored", n)
        assert base_status == mirrored_status == [200] * n
        # The copies went out (or were refused), and the originals did not wait for them.
        if shadow_seen() >= 0:
            await until(lambda: shadow_seen() == n)
        slowest = max(mirrored)
        assert slowest < 0.5, mirrored
        assert statistics.median(mirrored) < statistics.median(base) + 0.005, (base, mirrored)
    app.close()
    shadow_close()


async def test_the_mirror_gets_the_same_request_as_the_original_through_the_proxy() -> None:
    app = await Upstream(static_ok(b"original")).start()
    shadow = await Upstream(static_ok(b"shadow")).start()
    clusters = [cluster("app", app.port), cluster("shadow", shadow.port)]
    async with start_proxy(mirrored_routes(), clusters) as proxy:
        statuses, _ = await timed_posts(proxy.port, "mirrored", 3)
        assert statuses == [200] * 3
        await until(lambda: len(shadow.requests) == 3)
    for orig, copy in zip(app.requests, shadow.requests, strict=True):
        assert (copy.method, copy.path, copy.body) == (orig.method, orig.path, orig.body)
        assert copy.header("host") == "mirrored-shadow"
        assert copy.header("x-forwarded-for") == orig.header("x-forwarded-for") is not None
        assert copy.header("x-request-id") == orig.header("x-request-id") is not None
    app.close()
    shadow.close()


async def test_fifty_percent_mirrors_about_half_of_the_requests() -> None:
    app = await Upstream(static_ok(b"original")).start()
    shadow = await Upstream(static_ok(b"shadow")).start()
    n = 500
    clusters = [cluster("app", app.port), cluster("shadow", shadow.port)]
    async with start_proxy(mirrored_routes(50.0), clusters) as proxy:
        statuses, _ = await timed_posts(proxy.port, "mirrored", n)
        assert statuses == [200] * n
        state = proxy.cm.get("shadow")
        assert state is not None
        await until(lambda: state.in_flight == 0)
        copies = state.counters.upstream_rq_total
        assert state.counters.upstream_rq_2xx == copies == len(shadow.requests)
    assert abs(copies - n / 2) < 5 * math.sqrt(n / 4), copies
    app.close()
    shadow.close()
