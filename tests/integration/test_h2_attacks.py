"""The known HTTP/2 attacks against the proxy: each is answered as Envoy answers it, costs the
proxy bounded memory, and does not stop other clients from being served.

Each test runs the real `sidecar run` process (so its peak RSS is its own: VmHWM) in front of a
real HTTP/1.1 upstream in the test's loop, attacks it over one raw connection (h2_raw.py), reads
the answer, and meanwhile / afterwards has a fresh connection's GET answered 200. The zero-window
case that needs a short stream idle timeout uses the in-process listener with a hand-made
HttpConnectionManager, since the YAML cannot set that timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from hyperframe.frame import GoAwayFrame, HeadersFrame, RstStreamFrame

from .h2_raw import (
    CANCEL,
    COMPRESSION_ERROR,
    ENHANCE_YOUR_CALM,
    INITIAL_WINDOW_SIZE,
    PROTOCOL_ERROR,
    TYPE_SETTINGS,
    H2Client,
    get_ok,
    ping,
    proxied,
    raw_frame,
    request_headers,
)
from .proxy_fixtures import free_port
from .sidecar_process import SidecarProcess, ingress_sidecar_yaml
from .upstreams import start_streaming_upstream

pytestmark = pytest.mark.timeout(60)

CONTINUATION = 0x9
END_HEADERS = 0x4
RSS_BOUND_KIB = 32 * 1024  # peak RSS growth one attack may cause (seen: <= 15 MiB)


class Target:
    """The sidecar process under attack and its listener port."""

    def __init__(self, sc: SidecarProcess, port: int) -> None:
        self.sc = sc
        self.port = port
        self.rss_before = 0

    async def warm(self) -> None:
        await get_ok(self.port)
        self.rss_before = self.sc.rss_peak_kib()

    def rss_growth_kib(self) -> int:
        return self.sc.rss_peak_kib() - self.rss_before


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    server, up = await start_streaming_upstream()
    port = free_port()
    sc = SidecarProcess(ingress_sidecar_yaml(port, up, "HTTP"), "--no-watch")
    try:
        await asyncio.to_thread(sc.start)
        t = Target(sc, port)
        await t.warm()
        yield t
    finally:
        sc.__exit__(None)
        server.close()


async def send_all(c: H2Client, data: bytes, chunk: int = 64 * 1024) -> None:
    """Write `data` in pieces; the proxy may close mid-way (that is its answer)."""
    for i in range(0, len(data), chunk):
        if c.writer.is_closing():
            return
        c.send_raw(data[i:i + chunk])
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(c.writer.drain(), 5)


async def test_rapid_reset_cve_2023_44487(target: Target) -> None:
    """Rapid reset: 2000 HEADERS each followed at once by RST_STREAM -> GOAWAY
    ENHANCE_YOUR_CALM; a client on another connection is served during and after."""
    c = await H2Client.connect(target.port)
    blob = b"".join(
        c.headers(sid, request_headers(f"/r{sid}")).serialize()
        + c.rst(sid, CANCEL).serialize() for sid in range(1, 4001, 2))
    await asyncio.gather(send_all(c, blob), get_ok(target.port))  # served during the attack
    await c.expect_goaway(ENHANCE_YOUR_CALM, timeout=10)
    await get_ok(target.port)
    assert target.rss_growth_kib() < RSS_BOUND_KIB


@pytest.mark.parametrize("fragment", [0, 16384], ids=["empty", "full"])
async def test_continuation_flood(target: Target, fragment: int) -> None:
    """CONTINUATION flood: HEADERS without END_HEADERS, then up to 10,000 CONTINUATION frames
    that never end the block -> a connection error (GOAWAY, then close), memory bounded."""
    c = await H2Client.connect(target.port)
    block = c.block(request_headers("/flood"))
    head = raw_frame(0x1, 0x1, 1, block)  # END_STREAM, no END_HEADERS
    cont = raw_frame(CONTINUATION, 0, 1, b"\x00" * fragment)
    sender = asyncio.create_task(send_all(c, head + cont * 10_000, 256 * 1024))
    await c.expect_goaway((PROTOCOL_ERROR, ENHANCE_YOUR_CALM, COMPRESSION_ERROR), timeout=15)
    sender.cancel()
    await get_ok(target.port)
    assert target.rss_growth_kib() < RSS_BOUND_KIB


def hpack_bomb(references: int) -> bytes:
    """One 4000-byte literal added to the dynamic table (RFC 7541 6.2.1), then referenced
    `references` times by index 62: ~4 KB per byte on the wire once decoded."""
    value_len = 4000
    length = bytes([0x7F]) + bytes([((value_len - 127) & 0x7F) | 0x80, (value_len - 127) >> 7])
    literal = b"\x40\x06x-bomb" + length + b"a" * value_len
    return b"\x82\x86\x84\x41\x03svc" + literal + b"\xbe" * references


async def test_hpack_bomb(target: Target) -> None:
    """HPACK bomb: a header block that decodes to ~64 MB (far beyond the 60 KiB header list
    limit) is refused while decoding: a connection error (or RST_STREAM), memory bounded."""
    c = await H2Client.connect(target.port)
    block = hpack_bomb(16_000)
    frames = raw_frame(0x1, 0x1, 1, block[:16384])
    rest = block[16384:]
    while rest:
        piece, rest = rest[:16384], rest[16384:]
        frames += raw_frame(CONTINUATION, END_HEADERS if not rest else 0, 1, piece)
    c.send_raw(frames)
    seen = await c.wait_for(lambda f: f.type in (0x7, 0x3) or isinstance(f, HeadersFrame), 10)
    last = seen[-1]
    assert not isinstance(last, HeadersFrame), "the bomb was answered as a request"
    if isinstance(last, RstStreamFrame):
        assert last.stream_id == 1 and last.error_code != 0
    else:
        assert isinstance(last, GoAwayFrame)
        assert last.error_code in (ENHANCE_YOUR_CALM, COMPRESSION_ERROR, PROTOCOL_ERROR)
        await c.expect_closed()
    await get_ok(target.port)
    assert target.rss_growth_kib() < RSS_BOUND_KIB


@pytest.mark.parametrize("kind", ["settings", "ping"])
async def test_control_frame_flood(target: Target, kind: str) -> None:
    """SETTINGS / PING flood: 12,000 in well under a second -> GOAWAY ENHANCE_YOUR_CALM;
    another connection is served."""
    c = await H2Client.connect(target.port)
    one = raw_frame(TYPE_SETTINGS, 0, 0, b"") if kind == "settings" else ping().serialize()
    await send_all(c, one * 12_000)
    await c.expect_goaway(ENHANCE_YOUR_CALM, timeout=10)
    await get_ok(target.port)
    assert target.rss_growth_kib() < RSS_BOUND_KIB


async def test_zero_window_streams_bounded_memory(target: Target) -> None:
    """Streams held open on a zero window: INITIAL_WINDOW_SIZE 0 and 40 streams each asking for
    20 MB. The proxy holds a bounded amount per stream (the upstream is paused), its RSS stays
    bounded, and another connection is served meanwhile."""
    c = await H2Client.connect(target.port, settings={INITIAL_WINDOW_SIZE: 0})
    for i in range(40):
        c.request(1 + 2 * i, f"/bytes/{20_000_000}")
    await c.wait_for(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 79, 10)
    frames = await c.expect_silence(3.0)  # the connection stays open, no data can flow
    assert not [f for f in frames if f.type == 0x0 and f.body_len > 0]
    await get_ok(target.port)
    assert target.rss_growth_kib() < RSS_BOUND_KIB, target.rss_growth_kib()
    c.close()


async def test_zero_window_streams_reset_after_stream_idle_timeout() -> None:
    """Zero window with a 1 s stream idle timeout: every stream stuck behind the client's
    window is reset (RST_STREAM CANCEL), while a second connection is served."""
    async with proxied(stream_idle_timeout=1.0) as proxy:
        c = await H2Client.connect(proxy.port, settings={INITIAL_WINDOW_SIZE: 0})
        ids = list(range(1, 21, 2))
        for sid in ids:
            c.request(sid, f"/bytes/{5_000_000}")
        await get_ok(proxy.port)
        reset: dict[int, int] = {}
        await c.wait_for(lambda f: isinstance(f, RstStreamFrame)
                         and reset.setdefault(f.stream_id, f.error_code) is not None
                         and len(reset) == len(ids), timeout=8)
        assert sorted(reset) == ids and set(reset.values()) == {CANCEL}
        await get_ok(proxy.port)
        c.request(41, "/still-open")  # the connection itself is still usable
        c.window_update(41, 65535)
        resp = await c.expect_response(41)
        assert (resp.status, resp.body, resp.reset) == (200, b"ok /still-open", None), resp
