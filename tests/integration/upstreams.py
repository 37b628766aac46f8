"""Real upstream servers for tests, on asyncio + httptools (independent of the proxy's codec).

`StreamingUpstream` serves:
- `GET /bytes/N`: N bytes of a repeating pattern, chunked, written as the client takes them;
- `POST|PUT /count`: reads the whole body (chunked or content-length) without keeping it and
  answers `count=<n> sha256=<hex>`;
- anything else: 200 "ok <path>".
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import cast

import httptools

PATTERN = bytes(range(256)) * 256  # 64 KiB


def pattern_digest(n: int) -> str:
    h = hashlib.sha256()
    full, rest = divmod(n, len(PATTERN))
    for _ in range(full):
        h.update(PATTERN)
    h.update(PATTERN[:rest])
    return h.hexdigest()


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.count = 0
        self.hash = hashlib.sha256()
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transports are not subclasses
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_begin(self) -> None:
        self.url = b""
        self.count = 0
        self.hash = hashlib.sha256()

    def on_body(self, body: bytes) -> None:
        self.count += len(body)
        self.hash.update(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        path = self.url.decode()
        if path.startswith("/bytes/"):
            asyncio.get_running_loop().create_task(self._stream(int(path.split("/")[2])))
            return
        if path.startswith("/count"):
            body = f"count={self.count} sha256={self.hash.hexdigest()}".encode()
        else:
            body = f"ok {path}".encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )

    async def _stream(self, n: int) -> None:
        t = self.transport
        assert t is not None
        t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        left = n
        while left > 0 and not t.is_closing():
            piece = PATTERN[: min(left, len(PATTERN))]
            t.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            left -= len(piece)
            await self.can_write.wait()
        if not t.is_closing():
            t.write(b"0\r\n\r\n")


async def start_streaming_upstream(host: str = "127.0.0.1") -> tuple[asyncio.Server, int]:
    server = await asyncio.get_running_loop().create_server(_Conn, host, 0)
    return server, server.sockets[0].getsockname()[1]
