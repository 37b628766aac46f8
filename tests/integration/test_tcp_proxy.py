"""L4 proxying through real sockets: relay, half-close, back-pressure, failures, idle timeout."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from sidecar.config.snapshot import TcpProxy
from sidecar.outcome import ResponseFlag
from sidecar.tcp.relay import HIGH_WATER
from sidecar.tcp.tcp_proxy import TcpProxyProtocol

from .proxy_fixtures import RunningProxy, free_port, start_proxy, static_cluster


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def echo_server() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def _proxy_to(port: int, idle: float = 3600.0) -> RunningProxy:
    return await start_proxy(
        TcpProxy(cluster="up", stat_prefix="test", idle_timeout=idle),
        (static_cluster("up", ("127.0.0.1", port), connect_timeout=2.0),),
    )


async def test_bytes_relay_both_ways_and_are_counted(echo_server: int) -> None:
    proxy = await _proxy_to(echo_server)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        payload = b"x" * 300_000
        writer.write(payload)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 5)
        assert got == payload
        writer.close()
        (info,) = await proxy.log.wait_for(1)
        assert info.bytes_received == len(payload)
        assert info.bytes_sent == len(payload)
        assert info.upstream_host == f"127.0.0.1:{echo_server}"
        assert info.upstream_cluster == "up"
        assert info.response_flags == ResponseFlag.NONE
        state = proxy.clusters.get("up")
        assert state is not None and state.counters.upstream_cx_total == 1
    finally:
        proxy.close()


async def test_half_close_lets_the_upstream_answer_after_client_eof() -> None:
    async def answer_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's EOF
        writer.write(b"got " + str(len(request)).encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_after_eof, "127.0.0.1", 0)
    proxy = await _proxy_to(server.sockets[0].getsockname()[1])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"hello world")
        await writer.drain()
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"got 11"
        writer.close()
    finally:
        proxy.close()
        server.close()


async def test_slow_reader_pauses_the_upstream_instead_of_buffering() -> None:
    total = 50 * 1024 * 1024
    upstream_writer: list[asyncio.StreamWriter] = []

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer.append(writer)
        chunk = b"y" * 65536
        sent = 0
        while sent < total:
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(firehose, "127.0.0.1", 0)
    proxy = await _proxy_to(server.sockets[0].getsockname()[1])
    try:
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.setblocking(False)
        await asyncio.sleep(1.0)  # the client reads nothing for a second
        (conn,) = [c for c in proxy.runtime.connections if isinstance(c, TcpProxyProtocol)]
        relay = conn._relay
        assert relay is not None
        # The proxy holds at most about one high-water mark per direction ...
        assert relay.a.transport.get_write_buffer_size() <= HIGH_WATER + 256 * 1024
        # ... so the upstream, not the proxy, is where the unsent bytes wait.
        assert upstream_writer[0].transport.get_write_buffer_size() > 0
        assert relay.b_to_a < total / 4
        # Now read everything; every byte arrives.
        loop = asyncio.get_running_loop()
        received = 0
        async with asyncio.timeout(30):
            while received < total:
                data = await loop.sock_recv(sock, 1 << 20)
                if not data:
                    break
                received += len(data)
        assert received == total
        sock.close()
    finally:
        proxy.close()
        server.close()


async def test_connect_failure_closes_downstream_with_UF() -> None:
    proxy = await _proxy_to(free_port())  # nothing listens there
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        (info,) = await proxy.log.wait_for(1)
        assert ResponseFlag.UF in info.response_flags
        assert "connect" in info.upstream_transport_failure_reason
        writer.close()
    finally:
        proxy.close()


async def test_missing_cluster_is_NC_and_empty_cluster_is_UH() -> None:
    for clusters, flag in (((), ResponseFlag.NC), ((static_cluster("up"),), ResponseFlag.UH)):
        proxy = await start_proxy(TcpProxy(cluster="up", stat_prefix="t"), clusters)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            (info,) = await proxy.log.wait_for(1)
            assert info.response_flags == flag
            writer.close()
        finally:
            proxy.close()


async def test_idle_timeout_closes_both_sides(echo_server: int) -> None:
    proxy = await _proxy_to(echo_server, idle=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.2 < loop.time() - t0 < 2.0
        writer.close()
    finally:
        proxy.close()


async def test_server_first_protocol_greets_without_client_bytes() -> None:
    async def greeter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mail ready\r\n")  # server speaks first, like SMTP or MySQL
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(greeter, "127.0.0.1", 0)
    proxy = await _proxy_to(server.sockets[0].getsockname()[1])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.readline(), 5) == b"220 mail ready\r\n"
        writer.close()
    finally:
        proxy.close()
        server.close()


async def test_bytes_sent_while_connecting_are_bounded() -> None:
    # An upstream whose accept queue is full: SYNs are dropped, so the connect hangs.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    await asyncio.sleep(0.2)
    proxy = await start_proxy(
        TcpProxy(cluster="up", stat_prefix="t"),
        (static_cluster("up", ("127.0.0.1", port), connect_timeout=3.0),),
    )
    try:
        client = socket.create_connection(("127.0.0.1", proxy.port))
        client.setblocking(False)
        chunk = b"z" * 65536
        deadline = asyncio.get_running_loop().time() + 1.0
        while asyncio.get_running_loop().time() < deadline:
            try:
                client.send(chunk)
            except BlockingIOError:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)
        (conn,) = [c for c in proxy.runtime.connections if isinstance(c, TcpProxyProtocol)]
        assert conn._relay is None  # still connecting
        assert len(conn._pending) <= 512 * 1024
        client.close()
    finally:
        proxy.close()
        full.close()
        for s in fillers:
            s.close()
