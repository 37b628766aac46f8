"""L4 routes through real sockets: weighted TCP destinations and TLS passthrough chosen by SNI.

The listener, chain selection, SNI sniffing and TCP proxy are the production ones over a
hand-built snapshot; the upstreams are real TCP and TLS servers that answer with their own name,
and the clients are real sockets (plain, and Python's ssl with server_hostname).
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sidecar.bootstrap import Bootstrap
from sidecar.config.snapshot import (
    Direction,
    FilterChain,
    FilterChainMatch,
    Listener,
    Snapshot,
    TcpProxy,
    WeightedCluster,
    Workload,
)
from sidecar.listener.accept import ListenerHandle, acceptor
from sidecar.runtime import Runtime
from sidecar.upstream.cluster import ClusterManager

from .certs import self_signed
from .proxy_fixtures import CollectingLog, static_cluster

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def named_server(name: bytes) -> Serve:
    """A server that reads one chunk, then answers `name:` + what it read, and closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(1024)
        writer.write(name + b":" + data)
        await writer.drain()
        writer.close()

    return serve


class L4Proxy:
    """A real listener with the given chains, on 127.0.0.1:<free>."""

    def __init__(self, handle: ListenerHandle, runtime: Runtime, log: CollectingLog,
                 cm: ClusterManager, port: int) -> None:
        self.handle = handle
        self.runtime = runtime
        self.log = log
        self.cm = cm
        self.port = port

    def close(self) -> None:
        self.handle.close()
        self.runtime.abort_all()
        self.cm.close()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., asyncio.Future[int]]]:
    started: list[asyncio.Server] = []

    async def start(name: bytes, ctx: ssl.SSLContext | None = None) -> int:
        server = await asyncio.start_server(named_server(name), "127.0.0.1", 0, ssl=ctx)
        started.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start  # type: ignore[misc]
    for s in started:
        s.close()


async def start_l4(chains: tuple[FilterChain, ...], ports: dict[str, int]) -> L4Proxy:
    listener = Listener(
        name="tcp_routes", address="127.0.0.1", port=0, direction=Direction.OUTBOUND,
        use_original_dst=False, filter_chains=chains, detection_timeout=1.0,
    )
    clusters = tuple(
        static_cluster(name, ("127.0.0.1", port), connect_timeout=2.0)
        for name, port in ports.items()
    )
    snapshot = Snapshot(
        version="test", workload=Workload(name="test", namespace="default"),
        listeners=(listener,), route_configs={}, clusters={c.name: c for c in clusters},
    )
    cm = ClusterManager()
    cm.update(snapshot)
    log = CollectingLog()
    runtime = Runtime(Bootstrap(), cm, log)
    handle = ListenerHandle(listener, snapshot)
    loop = asyncio.get_running_loop()
    handle.servers.append(await loop.create_server(acceptor(runtime, handle), "127.0.0.1", 0))
    return L4Proxy(handle, runtime, log, cm, int(handle.servers[0].sockets[0].getsockname()[1]))


async def tcp_ask(port: int, payload: bytes = b"hi") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


# -- weighted TCP routes ------------------------------------------------------------------------


async def test_weighted_tcp_route_splits_connections_80_20(
    servers: Callable[..., asyncio.Future[int]],
) -> None:
    a, b = await servers(b"A"), await servers(b"B")
    split = TcpProxy(
        cluster="", stat_prefix="split",
        weighted_clusters=(WeightedCluster("a", 80), WeightedCluster("b", 20)),
    )
    proxy = await start_l4((FilterChain("split", FilterChainMatch(), split),), {"a": a, "b": b})
    n = 600
    try:
        sem = asyncio.Semaphore(32)

        async def one() -> bytes:
            async with sem:
                return (await tcp_ask(proxy.port)).split(b":")[0]

        async with asyncio.timeout(8):
            answers = Counter(await asyncio.gather(*(one() for _ in range(n))))
        records = await proxy.log.wait_for(n)
        state_a = proxy.cm.get("a")
        assert state_a is not None
        connections_a = state_a.counters.upstream_cx_total
    finally:
        proxy.close()
    assert set(answers) == {b"A", b"B"} and sum(answers.values()) == n
    sigma = math.sqrt(n * 0.8 * 0.2)
    assert abs(answers[b"A"] - 0.8 * n) < 5 * sigma, answers
    # Every connection's log line names the cluster it went to, and agrees with the answer.
    logged = Counter(r.upstream_cluster for r in records)
    assert logged == {"a": answers[b"A"], "b": answers[b"B"]}
    assert connections_a == answers[b"A"]


async def test_zero_weight_destination_gets_nothing(
    servers: Callable[..., asyncio.Future[int]],
) -> None:
    a, b = await servers(b"A"), await servers(b"B")
    split = TcpProxy(
        cluster="", stat_prefix="split",
        weighted_clusters=(WeightedCluster("a", 0), WeightedCluster("b", 100)),
    )
    proxy = await start_l4((FilterChain("split", FilterChainMatch(), split),), {"a": a, "b": b})
    try:
        answers = {(await tcp_ask(proxy.port)).split(b":")[0] for _ in range(30)}
    finally:
        proxy.close()
    assert answers == {b"B"}


# -- TLS passthrough by SNI ---------------------------------------------------------------------


def server_ctx(tmp: Path, name: str) -> tuple[ssl.SSLContext, Path]:
    d = tmp / name
    d.mkdir()
    cert, key = self_signed(d, name)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx, cert


async def tls_ask(port: int, sni: str, ca: Path) -> bytes:
    """A real TLS client: verifies the certificate for `sni` against `ca`, asks, reads."""
    ctx = ssl.create_default_context(cafile=str(ca))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=sni
    )
    writer.write(b"hello " + sni.encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


def tls_chain(name: str, names: tuple[str, ...], transport: str = "tls") -> FilterChain:
    return FilterChain(
        name, FilterChainMatch(transport_protocol=transport, server_names=names),
        TcpProxy(cluster=name, stat_prefix=name),
    )


async def test_sni_picks_the_chain_and_passes_tls_through(
    tmp_path: Path, servers: Callable[..., asyncio.Future[int]],
) -> None:
    a_ctx, a_cert = server_ctx(tmp_path, "a.test")
    b_ctx, b_cert = server_ctx(tmp_path, "api.b.test")
    c_ctx, c_cert = server_ctx(tmp_path, "other.test")
    ports = {
        "a": await servers(b"A", a_ctx),
        "b": await servers(b"B", b_ctx),
        "rest": await servers(b"REST", c_ctx),
        "plain": await servers(b"PLAIN"),
    }
    chains = (
        tls_chain("a", ("a.test",)),
        tls_chain("b", ("*.b.test",)),
        tls_chain("rest", ()),  # TLS without a known name
        tls_chain("plain", (), transport="raw_buffer"),  # not TLS at all
    )
    proxy = await start_l4(chains, ports)
    try:
        async with asyncio.timeout(8):
            # Each client verified its own upstream's certificate: the proxy did not terminate.
            got_a, got_b = await asyncio.gather(
                tls_ask(proxy.port, "a.test", a_cert), tls_ask(proxy.port, "api.b.test", b_cert)
            )
            got_rest = await tls_ask(proxy.port, "other.test", c_cert)
            got_plain = await tcp_ask(proxy.port, b"\x00plain")
            records = await proxy.log.wait_for(4)
    finally:
        proxy.close()
    assert got_a == b"A:hello a.test"
    assert got_b == b"B:hello api.b.test"
    assert got_rest == b"REST:hello other.test"
    assert got_plain == b"PLAIN:\x00plain"
    by_sni = {r.requested_server_name: r.upstream_cluster for r in records}
    assert by_sni["a.test"] == "a" and by_sni["api.b.test"] == "b"
    assert by_sni["other.test"] == "rest"


async def test_unknown_sni_without_an_unnamed_chain_is_closed(
    tmp_path: Path, servers: Callable[..., asyncio.Future[int]],
) -> None:
    a_ctx, a_cert = server_ctx(tmp_path, "a.test")
    proxy = await start_l4((tls_chain("a", ("a.test",)),), {"a": await servers(b"A", a_ctx)})
    try:
        assert await tls_ask(proxy.port, "a.test", a_cert) == b"A:hello a.test"
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(tls_ask(proxy.port, "nope.test", a_cert), 5)
    finally:
        proxy.close()
