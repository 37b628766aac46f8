"""SIGTERM on the real `sidecar run` with an HTTP/2 client mid-request: GOAWAY (NO_ERROR, last
stream id = the open stream) first, the open stream still gets its whole response, then the
connection closes and the proxy exits 0 (RFC 9113 section 6.8 graceful shutdown)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hyperframe.frame import GoAwayFrame

from .h2_raw import NO_ERROR, H2Client
from .proxy_fixtures import free_port
from .sidecar_process import SidecarProcess, ingress_sidecar_yaml

DELAY = 0.8  # the upstream answers after this long


async def _slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(DELAY)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
    await writer.drain()
    writer.close()


@pytest.fixture
async def sidecar() -> AsyncIterator[tuple[SidecarProcess, int]]:
    server = await asyncio.start_server(_slow, "127.0.0.1", 0)
    up = server.sockets[0].getsockname()[1]
    port = free_port()
    sc = SidecarProcess(ingress_sidecar_yaml(port, up))
    await asyncio.to_thread(sc.start)
    try:
        yield sc, port
    finally:
        sc.__exit__(None)
        server.close()


@pytest.mark.timeout(30)
async def test_sigterm_sends_goaway_and_finishes_the_open_stream(
    sidecar: tuple[SidecarProcess, int],
) -> None:
    sc, port = sidecar
    c = await H2Client.connect(port)
    c.request(1, "/slow")
    await c.drain()
    await asyncio.sleep(0.2)  # the request is upstream now
    assert sc.proc is not None
    sc.proc.terminate()
    seen = await c.wait_for(lambda f: isinstance(f, GoAwayFrame), timeout=5)
    goaway = seen[-1]
    assert isinstance(goaway, GoAwayFrame)
    assert goaway.error_code == NO_ERROR and goaway.last_stream_id == 1
    resp = await c.expect_response(1, timeout=5)
    assert resp.status == 200 and resp.body == b"slow"
    await c.expect_closed(timeout=5)
    assert await asyncio.to_thread(sc.terminate) == 0
