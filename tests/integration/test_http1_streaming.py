"""50 MB bodies through the proxy both ways, with back-pressure keeping its buffers bounded."""

from __future__ import annotations

import asyncio
import time
from typing import cast

import httptools

from sidecar.http.connection_manager import HttpConnectionManagerProtocol
from tests.integration.http_helpers import cluster, simple_routes, start_proxy

SIZE = 50 * 1024 * 1024
BLOCK = b"0123456789abcdef" * 4096  # 64 KiB


class _Sampler:
    """Samples the proxy's downstream write buffers while a transfer runs."""

    def __init__(self, runtime_connections: set[object]) -> None:
        self.conns = runtime_connections
        self.max_buffered = 0
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            for c in list(self.conns):
                if isinstance(c, HttpConnectionManagerProtocol) and c.transport is not None:
                    self.max_buffered = max(self.max_buffered, c.transport.get_write_buffer_size())
            await asyncio.sleep(0.005)


class SlowReaderUpstream(asyncio.Protocol):
    """Reads nothing for `pause` seconds, then counts the body and answers with its size."""

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.parser = httptools.HttpRequestParser(self)
        self.received = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)  # uvloop: not a subclass
        loop = asyncio.get_running_loop()
        loop.call_soon(t.pause_reading)  # uvloop starts reading after connection_made
        loop.call_later(self.pause, t.resume_reading)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.received += len(body)

    def on_message_complete(self) -> None:
        body = b"%d" % self.received
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


async def test_50mb_chunked_upload_with_slow_upstream_is_paused() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SlowReaderUpstream(1.5), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with start_proxy(simple_routes("c"), [cluster("c", port)]) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        sent_while_paused = 0
        start = time.monotonic()
        async with asyncio.timeout(60):
            while sent < SIZE:
                writer.write(b"10000\r\n" + BLOCK + b"\r\n")
                sent += len(BLOCK)
                await writer.drain()
                if time.monotonic() - start < 1.2:
                    sent_while_paused = sent
            writer.write(b"0\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.read(100)
        writer.close()
        assert head.startswith(b"HTTP/1.1 200")
        assert body == b"%d" % SIZE
        # Without back-pressure the whole 50 MB would be accepted while the upstream sleeps;
        # with it, only socket buffers and the proxy's bounded buffers fill.
        assert sent_while_paused < 24 * 1024 * 1024, sent_while_paused
    server.close()


class FastWriterUpstream(asyncio.Protocol):
    """Answers with a 50 MB chunked body as fast as the proxy takes it; records pauses."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.times_paused = 0
        self.left = SIZE
        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop: not a subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        self._pump()

    def _pump(self) -> None:
        assert self.transport is not None
        while self.left > 0 and not self.paused:
            self.transport.write(b"10000\r\n" + BLOCK + b"\r\n")
            self.left -= len(BLOCK)
        if self.left <= 0 and not self.paused:
            self.transport.write(b"0\r\n\r\n")
            self.left = -1

    def pause_writing(self) -> None:
        self.paused = True
        self.times_paused += 1

    def resume_writing(self) -> None:
        self.paused = False
        if self.left >= 0:
            self._pump()


class _Counter:
    def __init__(self) -> None:
        self.body = 0
        self.done = False

    def on_body(self, b: bytes) -> None:
        self.body += len(b)

    def on_message_complete(self) -> None:
        self.done = True


async def test_50mb_chunked_download_to_slow_client_pauses_upstream() -> None:
    loop = asyncio.get_running_loop()
    upstream = FastWriterUpstream()
    server = await loop.create_server(lambda: upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with start_proxy(simple_routes("c"), [cluster("c", port)]) as p:
        sampler = _Sampler(p.runtime.connections)  # type: ignore[arg-type]
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port, limit=1 << 16)
        writer.write(b"GET /down HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.sleep(1.0)  # the client reads nothing for a second
        assert upstream.times_paused >= 1
        assert upstream.left > 0  # the upstream could not push everything into the proxy
        counter = _Counter()
        parser = httptools.HttpResponseParser(counter)
        async with asyncio.timeout(60):
            while not counter.done:
                chunk = await reader.read(1 << 20)
                assert chunk
                parser.feed_data(chunk)
        writer.close()
        sampler.task.cancel()
        assert counter.body == SIZE
        assert sampler.max_buffered <= 2 * 1024 * 1024, sampler.max_buffered
        entries = await p.log.wait_for(1)
        assert entries[0].bytes_sent == SIZE
    server.close()
