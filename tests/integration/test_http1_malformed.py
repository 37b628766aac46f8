"""Malformed requests get 400/414/431/501, a clean close, and the proxy keeps serving others."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.outcome import ResponseFlag
from tests.integration.http_helpers import (
    Upstream,
    cluster,
    curl,
    simple_routes,
    start_proxy,
    static_ok,
)

H = b"GET / HTTP/1.1\r\nHost: a\r\n"
CASES = [
    ("bad header name", H + b"Bad Name: x\r\n\r\n", 400),
    ("bad header value", H + b"X: a\x01b\r\n\r\n", 400),
    ("cl and te", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("conflicting cl", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                       b"Content-Length: 4\r\n\r\nabcd", 400),
    ("invalid chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"zz\r\nabc\r\n", 400),
    ("missing host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("garbage", b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
    ("unknown te", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    ("headers over 60KiB", H + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(62))
     + b"\r\n", 431),
    ("more than 100 headers", H + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n",
     431),
    ("one huge header", H + b"X: " + b"v" * (90 * 1024) + b"\r\n\r\n", 431),
    ("uri over 16KiB", b"GET /" + b"a" * (17 * 1024) + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
]


@pytest.mark.parametrize(("name", "request_bytes", "status"), CASES, ids=[c[0] for c in CASES])
async def test_malformed_request(name: str, request_bytes: bytes, status: int) -> None:
    up = await Upstream(static_ok()).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(request_bytes)
        out = b""
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):  # a reset would raise here
                out += chunk
        writer.close()
        assert out.startswith(b"HTTP/1.1 %d " % status), out[:100]
        assert b"connection: close" in out.lower()
        assert up.requests == []
        entries = await p.log.wait_for(1)
        assert entries[0].response_code == status
        assert ResponseFlag.DPE in entries[0].response_flags
        assert p.runtime.counters.downstream_cx_protocol_error == 1
        rc, body, _ = await curl(f"http://127.0.0.1:{p.port}/")  # still serving
        assert rc == 0 and body == b"hello"
    up.close()


async def test_error_in_pipelined_request_after_good_one() -> None:
    up = await Upstream(static_ok()).start()
    async with start_proxy(simple_routes("c"), [cluster("c", up.port)]) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(H + b"\r\n" + b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n")
        out = b""
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                out += chunk
        writer.close()
        assert out.startswith(b"HTTP/1.1 200")
        assert b"HTTP/1.1 400" in out and out.index(b"HTTP/1.1 400") > out.index(b"hello")
    up.close()
