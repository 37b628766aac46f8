"""WebSocket (HTTP/1.1 Upgrade) through the proxy with the websockets library on both ends."""

from __future__ import annotations

import asyncio
import os

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tests.integration.http_helpers import (
    Upstream,
    cluster,
    raw_exchange,
    simple_routes,
    start_proxy,
    static_ok,
)


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def test_websocket_echo_through_proxy() -> None:
    async with serve(_echo, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with start_proxy(simple_routes("ws"), [cluster("ws", port)]) as p:
            async with asyncio.timeout(10), connect(f"ws://127.0.0.1:{p.port}/chat") as ws:
                for msg in ("hello", os.urandom(200_000), b"\x00\x01binary"):
                    await ws.send(msg)
                    assert await ws.recv() == msg
            entries = await p.log.wait_for(1)
            assert entries[0].response_code == 101
            assert entries[0].bytes_received > 200_000 and entries[0].bytes_sent > 200_000


async def test_upgrade_refused_by_upstream_is_forwarded_and_closed() -> None:
    up = await Upstream(static_ok(b"no upgrade here")).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        out = await raw_exchange(
            p.port,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"no upgrade here")
        assert up.requests[0].header("upgrade") == "websocket"
        assert websockets is not None
    up.close()
