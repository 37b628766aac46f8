"""The admin HTTP/1.1 server's protocol handling, through raw sockets.

Keep-alive, pipelining, connection close rules, bounded heads and bodies, malformed requests,
on both the default asyncio loop and uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop

from sidecar.admin.http import MAX_BODY_BYTES, MAX_HEAD_BYTES
from sidecar.admin.server import start_admin
from tests.integration.test_admin import FakeTarget

TIMEOUT = 5.0


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = await start_admin(FakeTarget(), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT) if length else b""
    return int(status_line.split()[1]), headers, body


async def _closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(1), TIMEOUT) == b""


async def test_keep_alive_and_pipelining(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /ready HTTP/1.1\r\nhost: a\r\n\r\n")
        assert (await _read_response(reader))[::2] == (200, b"LIVE\n")
        # the same connection again, then three pipelined requests in one write
        writer.write(
            b"GET /ready HTTP/1.1\r\nhost: a\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nhost: a\r\n\r\n"
            b"POST /healthcheck/fail HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"
            b"GET /ready HTTP/1.1\r\nhost: a\r\n\r\n"
        )
        statuses = [(await _read_response(reader))[0] for _ in range(4)]
        assert statuses == [200, 404, 200, 503]
    finally:
        writer.close()


async def test_connection_close_and_http10(port: int) -> None:
    for request in (
        b"GET /ready HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        b"GET /ready HTTP/1.0\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            status, headers, body = await _read_response(reader)
            assert (status, body) == (200, b"LIVE\n")
            assert headers["connection"] == "close"
            assert await _closed(reader)
        finally:
            writer.close()


async def test_head_has_length_but_no_body(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"HEAD /ready HTTP/1.1\r\nhost: a\r\n\r\nGET /ready HTTP/1.1\r\nhost: a\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert b"content-length: 5\r\n" in head
        # the next bytes are the second response, not a body for the first
        assert (await _read_response(reader))[::2] == (200, b"LIVE\n")
    finally:
        writer.close()


async def test_oversized_head_is_431_and_closes(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        big = b"x-big: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n"
        writer.write(b"GET /ready HTTP/1.1\r\nhost: a\r\n" + big + b"\r\n")
        assert (await _read_response(reader))[0] == 431
        assert await _closed(reader)
    finally:
        writer.close()


async def test_oversized_chunked_body_is_413(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /reload HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"a" * 65536
        for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        writer.write(b"0\r\n\r\n")
        assert (await _read_response(reader))[0] == 413
        assert await _closed(reader)
    finally:
        writer.close()


async def test_small_chunked_body_is_accepted(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /reload HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
        assert (await _read_response(reader))[::2] == (200, b"OK\n")
    finally:
        writer.close()


async def test_malformed_request_is_400_and_closes(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /ready HTTP/1.1\r\nbad header line\r\n\r\n")
        assert (await _read_response(reader))[0] == 400
        assert await _closed(reader)
    finally:
        writer.close()


async def test_bad_query_is_400_and_connection_lives(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # a query value that is not valid for the regex compiler is a 400, not a crash...
        writer.write(b"GET /stats?filter=%28 HTTP/1.1\r\nhost: a\r\n\r\n")
        assert (await _read_response(reader))[0] == 400
        # ...and the connection still answers
        writer.write(b"GET /ready HTTP/1.1\r\nhost: a\r\n\r\n")
        assert (await _read_response(reader))[0] == 200
    finally:
        writer.close()


class _BrokenTarget(FakeTarget):
    def reload(self) -> list[str]:
        raise RuntimeError("bug in reload")


async def test_handler_error_is_500_and_server_lives() -> None:
    server = await start_admin(_BrokenTarget(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /reload HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n")
        assert (await _read_response(reader))[0] == 500
        writer.write(b"GET /ready HTTP/1.1\r\nhost: a\r\n\r\n")
        assert (await _read_response(reader))[0] == 200
    finally:
        writer.close()
        server.close()


async def test_pipelined_answers_survive_a_slow_reader(port: int) -> None:
    """Many big answers to a client that reads late: all arrive, in order (write back-pressure)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        count = 3000  # ~12 MB of answers: past loopback socket buffers and the high-water mark
        for i in range(count):
            path = b"/config_dump" if i % 2 == 0 else b"/nope"
            writer.write(b"GET " + path + b" HTTP/1.1\r\nhost: a\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)  # let the server's write buffer fill up
        statuses = [(await _read_response(reader))[0] for _ in range(count)]
        assert statuses == [200, 404] * (count // 2)
    finally:
        writer.close()


ON_PORT = [
    test_keep_alive_and_pipelining,
    test_connection_close_and_http10,
    test_head_has_length_but_no_body,
    test_oversized_head_is_431_and_closes,
    test_oversized_chunked_body_is_413,
    test_malformed_request_is_400_and_closes,
    test_pipelined_answers_survive_a_slow_reader,
]


@pytest.mark.parametrize("scenario", ON_PORT, ids=lambda f: f.__name__.removeprefix("test_"))
def test_on_uvloop(scenario: Callable[[int], Awaitable[None]]) -> None:
    """The same scenarios on uvloop, which the proxy uses when installed (its transports differ)."""

    async def run() -> None:
        server = await start_admin(FakeTarget(), "127.0.0.1", 0)
        try:
            await asyncio.wait_for(scenario(server.sockets[0].getsockname()[1]), 30)
        finally:
            server.close()

    uvloop.run(run())
