"""The upstream HTTP/2 pool through real sockets: streams multiplexed on few connections, another
connection when the server's SETTINGS_MAX_CONCURRENT_STREAMS is reached, maxRequestsPerConnection,
http2MaxRequests (circuit breaker -> 503 UO), h2UpgradePolicy and useClientProtocol.

The upstream is an h2c server built on the `h2` library that answers each request after a delay
and records, per connection, how many streams were open at once.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from sidecar.config.snapshot import Cluster, Protocol
from tests.conftest import require

from .http_helpers import cluster, simple_routes, start_proxy


@dataclass
class Stats:
    connections: int = 0
    peak_streams: list[int] = field(default_factory=list)  # per connection
    versions: list[str] = field(default_factory=list)


class SlowH2(asyncio.Protocol):
    """h2c server: answers each request 200 after `delay` seconds."""

    def __init__(self, stats: Stats, max_streams: int, delay: float) -> None:
        self.stats = stats
        self.delay = delay
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams},
        )
        self.open = 0
        self.index = len(stats.peak_streams)
        stats.connections += 1
        stats.peak_streams.append(0)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.open += 1
                peak = self.stats.peak_streams
                peak[self.index] = max(peak[self.index], self.open)
                self.stats.versions.append("2")
            elif isinstance(ev, h2.events.StreamEnded):
                asyncio.get_running_loop().call_later(self.delay, self._answer, ev.stream_id)
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        if self.transport is not None:
            self.transport.write(self.conn.data_to_send())

    def _answer(self, stream_id: int) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.open -= 1
        self.conn.send_headers(stream_id, [(b":status", b"200"), (b"content-length", b"2")])
        self.conn.send_data(stream_id, b"ok", end_stream=True)
        self.transport.write(self.conn.data_to_send())


@pytest.fixture
async def slow_h2() -> AsyncIterator[tuple[Stats, int]]:
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SlowH2(stats, 2, 0.2), "127.0.0.1", 0)
    try:
        yield stats, server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def h2load(port: int, n: int, streams: int, *extra: str) -> str:
    require(shutil.which("h2load") is not None, "h2load (nghttp2-client) is not installed")
    proc = await asyncio.create_subprocess_exec(
        "h2load", "-n", str(n), "-c", "1", "-m", str(streams), *extra,
        f"http://127.0.0.1:{port}/",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    return out.decode()


def statuses(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("status codes:"))


def h2_cluster(port: int, **kw: object) -> Cluster:
    return cluster("up", port, **{"protocol": Protocol.HTTP2, **kw})


async def test_streams_beyond_the_servers_limit_open_another_connection(
    slow_h2: tuple[Stats, int],
) -> None:
    stats, port = slow_h2
    async with start_proxy(simple_routes("up"), [h2_cluster(port)]) as proxy:
        out = await h2load(proxy.port, 12, 12)
    assert "status codes: 12 2xx" in out, out
    # 12 requests at once, at most 2 streams per connection: at least 6 connections, each
    # holding the server's limit and never more.
    assert stats.connections >= 6, stats
    assert max(stats.peak_streams) == 2, stats


async def test_streams_share_one_connection_while_there_is_room(
    slow_h2: tuple[Stats, int],
) -> None:
    stats, port = slow_h2
    async with start_proxy(simple_routes("up"), [h2_cluster(port)]) as proxy:
        out = await h2load(proxy.port, 10, 1)  # one at a time
    assert "status codes: 10 2xx" in out, out
    assert stats.connections == 1, stats


async def test_max_requests_per_connection_retires_connections(
    slow_h2: tuple[Stats, int],
) -> None:
    stats, port = slow_h2
    clusters = [h2_cluster(port, max_requests_per_connection=3)]
    async with start_proxy(simple_routes("up"), clusters) as proxy:
        out = await h2load(proxy.port, 9, 1)
    assert "status codes: 9 2xx" in out, out
    assert stats.connections == 3, stats


async def test_http2_max_requests_is_a_circuit_breaker(slow_h2: tuple[Stats, int]) -> None:
    _, port = slow_h2
    clusters = [h2_cluster(port, max_requests=2)]
    async with start_proxy(simple_routes("up"), clusters) as proxy:
        out = await h2load(proxy.port, 6, 6)
        flags = [r.response_flags.code() for r in proxy.log.records]
        state = proxy.cm.get("up")
        assert state is not None
        overflow = state.counters.upstream_rq_pending_overflow
    assert "status codes: 2 2xx, 0 3xx, 0 4xx, 4 5xx" in out, statuses(out)
    assert flags.count("UO") == 4 and overflow == 4


async def test_h2_upgrade_policy_sends_http11_clients_over_http2(
    slow_h2: tuple[Stats, int],
) -> None:
    stats, port = slow_h2
    clusters = [cluster("up", port, h2_upgrade=True)]  # an HTTP port, UPGRADE
    async with start_proxy(simple_routes("up"), clusters) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(2)
        writer.close()
    assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
    assert stats.versions == ["2"]


async def test_use_client_protocol_follows_the_client(slow_h2: tuple[Stats, int]) -> None:
    stats, port = slow_h2
    clusters = [h2_cluster(port, use_client_protocol=True)]
    async with start_proxy(simple_routes("up"), clusters) as proxy:
        out = await h2load(proxy.port, 2, 1)
    assert "status codes: 2 2xx" in out, out
    assert stats.versions == ["2", "2"]  # an h2c client: HTTP/2 upstream although the port is
