"""RFC 9113 / RFC 7541 conformance of the proxy as an HTTP/2 server, one observable MUST a test.

Each test names its section. A raw client (h2_raw.py) sends exactly the frames the case needs to
the real in-process listener, in front of a real HTTP/1.1 upstream; the answer read back (GOAWAY
code and close, RST_STREAM code, or a real response) is what the RFC requires. Where the RFC lets
a malformed request be either a stream or a connection error, both are accepted.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
)

from .h2_raw import (
    COMPRESSION_ERROR,
    ENABLE_PUSH,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    HEADER_TABLE_SIZE,
    INITIAL_WINDOW_SIZE,
    MAX_FRAME_SIZE,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    STREAM_CLOSED,
    TYPE_DATA,
    TYPE_HEADERS,
    TYPE_PING,
    TYPE_SETTINGS,
    TYPE_WINDOW_UPDATE,
    H2Client,
    get_ok,
    ping,
    proxied,
    raw_frame,
    request_headers,
    settings_payload,
)

pytestmark = pytest.mark.timeout(30)

END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async with proxied() as proxy:
        yield proxy.port


async def client(port: int, settings: dict[int, int] | None = None) -> H2Client:
    return await H2Client.connect(port, settings=settings)


# 3.4 connection preface ------------------------------------------------------------------------


async def test_3_4_server_preface_is_settings_first_and_request_served(port: int) -> None:
    """3.4: the server's preface is a SETTINGS frame, its first frame; a good request is served."""
    c = await H2Client.connect(port, handshake=False)
    c.send_raw(PREFACE + raw_frame(TYPE_SETTINGS, 0, 0, b""))
    first = await c.read_frame()
    assert isinstance(first, SettingsFrame) and "ACK" not in first.flags
    await c.wait_for(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
    c.request(1, "/hello")
    resp = await c.expect_response(1)
    assert (resp.status, resp.body) == (200, b"ok /hello")


async def test_3_4_first_client_frame_not_settings_is_protocol_error(port: int) -> None:
    """3.4: the client preface is the magic then a SETTINGS frame; anything else is an invalid
    preface, a connection error of type PROTOCOL_ERROR."""
    c = await H2Client.connect(port, handshake=False)
    c.send_raw(PREFACE + ping().serialize())
    await c.expect_goaway(PROTOCOL_ERROR)


# 4.1 / 4.2 frame format and size ---------------------------------------------------------------


async def test_4_1_unknown_flags_ignored(port: int) -> None:
    """4.1: flags with no meaning for a frame type are ignored."""
    c = await client(port)
    c.send_raw(raw_frame(TYPE_PING, 0xFE & ~0x1, 0, b"abcdefgh"))
    seen = await c.wait_for(lambda f: isinstance(f, PingFrame))
    assert isinstance(seen[-1], PingFrame)
    assert "ACK" in seen[-1].flags and seen[-1].opaque_data == b"abcdefgh"


async def test_4_2_frame_larger_than_max_frame_size_is_frame_size_error(port: int) -> None:
    """4.2: a frame over SETTINGS_MAX_FRAME_SIZE (16384) is a FRAME_SIZE_ERROR."""
    c = await client(port)
    c.request(1, "/up", "POST", end_stream=False)
    c.send_raw(raw_frame(TYPE_DATA, 0, 1, b"x" * 16385))
    await c.expect_goaway(FRAME_SIZE_ERROR)


@pytest.mark.parametrize(("ftype", "stream_id", "payload"), [
    (TYPE_PING, 0, b"1234567"),
    (TYPE_WINDOW_UPDATE, 0, b"\0\0\1"),
    (0x3, 1, b"\0\0\0"),  # RST_STREAM
    (0x2, 1, b"\0\0\0\0"),  # PRIORITY
], ids=["ping", "window_update", "rst_stream", "priority"])
async def test_4_2_fixed_size_frame_with_wrong_length_is_frame_size_error(
        port: int, ftype: int, stream_id: int, payload: bytes) -> None:
    """4.2 with 6.3/6.4/6.7/6.9: a frame of fixed size with another length: FRAME_SIZE_ERROR."""
    c = await client(port)
    c.send_raw(raw_frame(ftype, 0, stream_id, payload))
    await c.expect_goaway(FRAME_SIZE_ERROR)


# 5.1 stream states -----------------------------------------------------------------------------


async def test_5_1_data_on_idle_stream_is_protocol_error(port: int) -> None:
    """5.1: DATA on an idle stream is a connection error of type PROTOCOL_ERROR."""
    c = await client(port)
    c.data(1, b"hello", end_stream=True)
    await c.expect_goaway(PROTOCOL_ERROR)


async def test_5_1_rst_stream_on_idle_stream_is_protocol_error(port: int) -> None:
    """5.1 / 6.4: RST_STREAM on an idle stream is a connection error PROTOCOL_ERROR."""
    c = await client(port)
    c.send(c.rst(1))
    await c.expect_goaway(PROTOCOL_ERROR)


async def test_5_1_data_on_half_closed_remote_stream_is_stream_closed(port: int) -> None:
    """5.1: on a half-closed (remote) stream any frame but WINDOW_UPDATE, PRIORITY, RST_STREAM
    is a stream error of type STREAM_CLOSED. (Zero windows keep the stream open.)"""
    c = await client(port, {INITIAL_WINDOW_SIZE: 0})
    c.request(1, "/bytes/100000")
    await c.wait_for(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1)
    c.data(1, b"late")
    await c.expect_rst(1, STREAM_CLOSED)


async def test_5_1_1_even_stream_id_is_protocol_error(port: int) -> None:
    """5.1.1: a client-initiated stream with an even id is a connection error PROTOCOL_ERROR."""
    c = await client(port)
    c.request(2, "/even")
    await c.expect_goaway(PROTOCOL_ERROR)


async def test_5_1_1_decreasing_stream_id_is_protocol_error(port: int) -> None:
    """5.1.1: a new stream id must exceed all the client opened before: PROTOCOL_ERROR."""
    c = await client(port)
    c.request(5, "/five")
    await c.expect_response(5)
    c.request(3, "/three")
    await c.expect_goaway(PROTOCOL_ERROR)


async def test_5_1_2_stream_over_max_concurrent_streams_is_refused(port: int) -> None:
    """5.1.2: a stream beyond the advertised MAX_CONCURRENT_STREAMS (100) is refused with
    REFUSED_STREAM (or PROTOCOL_ERROR); with REFUSED_STREAM the open streams still complete."""
    c = await client(port)
    assert c.server_settings.get(0x3) == 100
    for i in range(101):
        c.request(1 + 2 * i, "/count", "POST", end_stream=False)
    seen = await c.wait_for(lambda f: (f.stream_id == 201 and f.type == 0x3)
                            or isinstance(f, GoAwayFrame))
    last = seen[-1]
    assert isinstance(last, (RstStreamFrame, GoAwayFrame))
    assert last.error_code in (REFUSED_STREAM, PROTOCOL_ERROR), last
    if last.error_code == REFUSED_STREAM:
        c.data(1, b"abc", end_stream=True)
        resp = await c.expect_response(1)
        assert resp.status == 200 and resp.body.startswith(b"count=3 ")


async def test_5_3_1_stream_depending_on_itself_is_protocol_error(port: int) -> None:
    """5.3.1: a stream cannot depend on itself: stream error PROTOCOL_ERROR."""
    c = await client(port)
    c.request(1, "/up", "POST", end_stream=False)
    c.send(PriorityFrame(1, depends_on=1, stream_weight=16))
    await c.expect_stream_error_or_goaway(1, PROTOCOL_ERROR)


async def test_5_4_1_connection_error_ends_with_goaway_then_close(port: int) -> None:
    """5.4.1: after a connection error the server sends GOAWAY naming the last stream it
    processed, then closes the TCP connection."""
    c = await client(port)
    c.request(1, "/first")
    await c.expect_response(1)
    c.data(7, b"x")
    g = await c.expect_goaway(PROTOCOL_ERROR)  # also waits for the close
    assert g.last_stream_id == 1
    await get_ok(port)


# 5.5 extending HTTP/2 --------------------------------------------------------------------------


async def test_5_5_unknown_frame_types_are_ignored(port: int) -> None:
    """5.5: frames of unknown type are ignored and discarded (on stream 0 and on a stream)."""
    c = await client(port)
    c.send_raw(raw_frame(0xFA, 0, 0, b"whatever") + raw_frame(0xFB, 0xFF, 1, b"x" * 100))
    c.request(1, "/after-unknown")
    resp = await c.expect_response(1)
    assert resp.body == b"ok /after-unknown"


async def test_5_5_unknown_frame_inside_header_block_is_protocol_error(port: int) -> None:
    """5.5 / 6.10: an (unknown) frame between HEADERS and its CONTINUATION is PROTOCOL_ERROR."""
    c = await client(port)
    block = c.block(request_headers("/split"))
    c.send_raw(raw_frame(TYPE_HEADERS, END_STREAM, 1, block[:3]) + raw_frame(0xFA, 0, 0, b"z")
               + raw_frame(0x9, END_HEADERS, 1, block[3:]))
    await c.expect_goaway(PROTOCOL_ERROR)


async def test_6_5_2_unknown_setting_ignored(port: int) -> None:
    """6.5.2: an unknown SETTINGS identifier is ignored; the SETTINGS is acknowledged."""
    c = await client(port, {0x7777: 5})
    c.request(1, "/unknown-setting")
    assert (await c.expect_response(1)).status == 200


# 6.1 - 6.4, 6.10: frame rules ------------------------------------------------------------------


async def test_6_1_data_on_stream_zero_is_protocol_error(port: int) -> None:
    """6.1: DATA on stream 0 is a connection error PROTOCOL_ERROR."""
    c = await client(port)
    c.send_raw(raw_frame(TYPE_DATA, 0, 0, b"zero"))
    await c.expect_goaway(PROTOCOL_ERROR)


async def test_6_1_padding_not_shorter_than_payload_is_protocol_error(port: int) -> None:
    """6.1: a DATA pad length >= the payload length is a connection error PROTOCOL_ERROR."""
    c = await client(port)
    c.request(1, "/up", "POST", end_stream=False)
    c.send_raw(raw_frame(TYPE_DATA, PADDED, 1, bytes([10]) + b"abc"))
    await c.expect_goaway(PROTOCOL_ERROR)


async def test_6_2_headers_padding_too_long_is_protocol_error(port: int) -> None:
    """6.2: HEADERS padding as long as the rest is a connection error PROTOCOL_ERROR."""
    c = await client(port)
    block = c.block(request_headers("/pad"))
    c.send_raw(raw_frame(TYPE_HEADERS, END_STREAM | END_HEADERS | PADDED, 1,
                         bytes([len(block) + 5]) + block))
    await c.expect_goaway(PROTOCOL_ERROR)


async def test_6_2_headers_on_stream_zero_is_protocol_error(port: int) -> None:
    """6.2: HEADERS on stream 0 is a connection error PROTOCOL_ERROR."""
    c = await client(port)
    c.send_raw(raw_frame(TYPE_HEADERS, END_STREAM | END_HEADERS, 0,
                         c.block(request_headers("/zero"))))
    await c.expect_goaway(PROTOCOL_ERROR)


async def test_6_10_continuation_without_headers_is_protocol_error(port: int) -> None:
    """6.10: CONTINUATION not preceded by HEADERS without END_HEADERS: PROTOCOL_ERROR."""
    c = await client(port)
    c.send(ContinuationFrame(1, data=c.block(request_headers("/cont")), flags=["END_HEADERS"]))
    await c.expect_goaway(PROTOCOL_ERROR)


async def test_6_10_continuation_on_other_stream_is_protocol_error(port: int) -> None:
    """6.10: the header block continues only on its own stream: PROTOCOL_ERROR."""
    c = await client(port)
    block = c.block(request_headers("/cont"))
    c.send_raw(raw_frame(TYPE_HEADERS, END_STREAM, 1, block[:3])
               + raw_frame(0x9, END_HEADERS, 3, block[3:]))
    await c.expect_goaway(PROTOCOL_ERROR)


async def test_8_4_push_promise_from_client_is_protocol_error(port: int) -> None:
    """8.4: a server receiving PUSH_PROMISE treats it as connection error PROTOCOL_ERROR."""
    c = await client(port)
    c.request(1, "/up", "POST", end_stream=False)
    c.send_raw(raw_frame(0x5, END_HEADERS, 1, struct.pack(">L", 2)
                         + c.block(request_headers("/pushed"))))
    await c.expect_goaway(PROTOCOL_ERROR)


# 6.5 SETTINGS ----------------------------------------------------------------------------------


async def test_6_5_settings_acknowledged(port: int) -> None:
    """6.5.3: every SETTINGS (not only the first) is acknowledged with an empty ACK."""
    c = await client(port)
    before = c.settings_acked
    c.send_raw(raw_frame(TYPE_SETTINGS, 0, 0, settings_payload({HEADER_TABLE_SIZE: 1024})))
    seen = await c.wait_for(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
    assert isinstance(seen[-1], SettingsFrame)
    assert c.settings_acked == before + 1 and not seen[-1].settings


@pytest.mark.parametrize(("setting", "value", "code"), [
    (ENABLE_PUSH, 2, PROTOCOL_ERROR),
    (INITIAL_WINDOW_SIZE, 1 << 31, FLOW_CONTROL_ERROR),
    (MAX_FRAME_SIZE, 16383, PROTOCOL_ERROR),
    (MAX_FRAME_SIZE, 1 << 24, PROTOCOL_ERROR),
], ids=["enable_push_2", "initial_window_2e31", "max_frame_16383", "max_frame_2e24"])
async def test_6_5_2_invalid_setting_value_is_connection_error(
        port: int, setting: int, value: int, code: int) -> None:
    """6.5.2: out-of-range SETTINGS values are connection errors with the section's code."""
    c = await client(port)
    c.send_raw(raw_frame(TYPE_SETTINGS, 0, 0, settings_payload({setting: value})))
    await c.expect_goaway(code)


async def test_6_5_settings_ack_with_payload_is_frame_size_error(port: int) -> None:
    """6.5: a SETTINGS with ACK and a payload is a connection error FRAME_SIZE_ERROR."""
    c = await client(port)
    c.send_raw(raw_frame(TYPE_SETTINGS, 0x1, 0, settings_payload({ENABLE_PUSH: 0})))
    await c.expect_goaway(FRAME_SIZE_ERROR)


async def test_6_5_settings_length_not_multiple_of_6_is_frame_size_error(port: int) -> None:
    """6.5: a SETTINGS length that is not a multiple of 6 is a FRAME_SIZE_ERROR."""
    c = await client(port)
    c.send_raw(raw_frame(TYPE_SETTINGS, 0, 0, b"\0\x02\0\0\0\0\0"))
    await c.expect_goaway(FRAME_SIZE_ERROR)


async def test_6_5_settings_on_a_stream_is_protocol_error(port: int) -> None:
    """6.5: SETTINGS on a stream other than 0 is a connection error PROTOCOL_ERROR."""
    c = await client(port)
    c.send_raw(raw_frame(TYPE_SETTINGS, 0, 1, b""))
    await c.expect_goaway(PROTOCOL_ERROR)


# 6.7 PING --------------------------------------------------------------------------------------


async def test_6_7_ping_answered_with_ack_and_same_payload(port: int) -> None:
    """6.7: a PING gets a PING with ACK and the identical payload; a PING ACK is not answered."""
    c = await client(port)
    c.send(ping(b"\x00\xffpay\x01ld"))
    seen = await c.wait_for(lambda f: isinstance(f, PingFrame))
    assert isinstance(seen[-1], PingFrame)
    assert "ACK" in seen[-1].flags and seen[-1].opaque_data == b"\x00\xffpay\x01ld"
    c.send(ping(b"ackedack", ack=True))
    assert not [f for f in await c.expect_silence(0.5) if isinstance(f, PingFrame)]


async def test_6_7_ping_on_a_stream_is_protocol_error(port: int) -> None:
    """6.7: PING with a stream id other than 0 is a connection error PROTOCOL_ERROR."""
    c = await client(port)
    c.send_raw(raw_frame(TYPE_PING, 0, 1, b"12345678"))
    await c.expect_goaway(PROTOCOL_ERROR)


# 6.9 flow control ------------------------------------------------------------------------------


async def test_6_9_window_update_zero_on_connection_is_protocol_error(port: int) -> None:
    """6.9: a WINDOW_UPDATE of 0 on the connection is a connection error PROTOCOL_ERROR."""
    c = await client(port)
    c.window_update(0, 0)
    await c.expect_goaway(PROTOCOL_ERROR)


async def test_6_9_window_update_zero_on_stream_is_stream_error(port: int) -> None:
    """6.9: a WINDOW_UPDATE of 0 on a stream is a stream error PROTOCOL_ERROR."""
    c = await client(port)
    c.request(1, "/up", "POST", end_stream=False)
    c.window_update(1, 0)
    await c.expect_stream_error_or_goaway(1, PROTOCOL_ERROR)


async def test_6_9_1_connection_window_overflow_is_flow_control_error(port: int) -> None:
    """6.9.1: a connection window above 2^31-1 is a connection error FLOW_CONTROL_ERROR."""
    c = await client(port)
    c.window_update(0, (1 << 31) - 1)
    await c.expect_goaway(FLOW_CONTROL_ERROR)


async def test_6_9_1_stream_window_overflow_is_flow_control_error(port: int) -> None:
    """6.9.1: a stream window above 2^31-1 is a stream error FLOW_CONTROL_ERROR."""
    c = await client(port)
    c.request(1, "/up", "POST", end_stream=False)
    c.window_update(1, (1 << 31) - 1)
    await c.expect_stream_error_or_goaway(1, FLOW_CONTROL_ERROR)


async def test_6_9_2_initial_window_change_overflowing_stream_is_flow_control_error(
        port: int) -> None:
    """6.9.2: a SETTINGS_INITIAL_WINDOW_SIZE change that takes an open stream's window above
    2^31-1 is a connection error FLOW_CONTROL_ERROR."""
    c = await client(port)
    c.request(1, "/up", "POST", end_stream=False)
    c.window_update(1, (1 << 31) - 1 - 65535)
    c.send_raw(raw_frame(TYPE_SETTINGS, 0, 0, settings_payload({INITIAL_WINDOW_SIZE: 65536})))
    await c.expect_goaway(FLOW_CONTROL_ERROR)


async def _sink() -> tuple[socket.socket, list[socket.socket]]:
    """A listener that accepts and never reads (tiny receive buffer)."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    return lsock, []


async def test_6_9_1_data_beyond_advertised_window_is_flow_control_error() -> None:
    """6.9.1: DATA beyond the window the receiver advertised is FLOW_CONTROL_ERROR. The
    upstream never reads, so the proxy stops granting window; the client then sends one frame
    more than it was granted."""
    from sidecar.config.snapshot import HttpConnectionManager

    from .http_helpers import cluster, simple_routes
    from .proxy_fixtures import start_proxy

    lsock, accepted = await _sink()
    loop = asyncio.get_running_loop()

    async def accept_all() -> None:
        while True:
            conn, _ = await loop.sock_accept(lsock)
            accepted.append(conn)

    acceptor = loop.create_task(accept_all())
    routes = simple_routes("sink")
    proxy = await start_proxy(HttpConnectionManager(route_config="80", stat_prefix="t"),
                              (cluster("sink", lsock.getsockname()[1]),),
                              route_configs={"80": routes})
    try:
        c = await H2Client.connect(proxy.port)
        c.request(1, "/sink", "POST", end_stream=False)
        sent = 0

        def window() -> int:
            stream = c.server_settings.get(INITIAL_WINDOW_SIZE, 65535) + c.granted.get(1, 0)
            return min(stream, 65535 + c.granted.get(0, 0)) - sent

        for _ in range(20_000):  # at most ~320 MB
            # with no window left, wait a while for WINDOW_UPDATEs still on the way
            await c.expect_silence(1.0 if window() <= 0 else 0.001)
            n = min(16384, window())
            if n <= 0:
                break
            c.send(DataFrame(1, b"x" * n))
            await c.drain()
            sent += n
        assert window() <= 0, "the proxy never stopped granting window"
        c.send(DataFrame(1, b"y" * 16384))
        await c.expect_stream_error_or_goaway(1, FLOW_CONTROL_ERROR)
    finally:
        acceptor.cancel()
        proxy.close()
        for s in accepted:
            s.close()
        lsock.close()


# 8.1 / 8.2 / 8.3 malformed requests ------------------------------------------------------------


MALFORMED: dict[str, list[tuple[bytes, bytes]]] = {
    "8_2_1_uppercase_name": [*request_headers("/m"), (b"X-Upper", b"1")],
    "8_2_1_name_with_space": [*request_headers("/m"), (b"x bad", b"1")],
    "8_2_1_value_with_crlf": [*request_headers("/m"), (b"x-v", b"a\r\nb: c")],
    "8_2_1_value_with_nul": [*request_headers("/m"), (b"x-v", b"a\x00b")],
    "8_2_1_value_leading_space": [*request_headers("/m"), (b"x-v", b" a")],
    "8_2_2_connection": [*request_headers("/m"), (b"connection", b"keep-alive")],
    "8_2_2_keep_alive": [*request_headers("/m"), (b"keep-alive", b"timeout=5")],
    "8_2_2_proxy_connection": [*request_headers("/m"), (b"proxy-connection", b"keep-alive")],
    "8_2_2_transfer_encoding": [*request_headers("/m"), (b"transfer-encoding", b"chunked")],
    "8_2_2_upgrade": [*request_headers("/m"), (b"upgrade", b"websocket")],
    "8_2_2_te_gzip": [*request_headers("/m"), (b"te", b"gzip")],
    "8_3_1_missing_method": [h for h in request_headers("/m") if h[0] != b":method"],
    "8_3_1_missing_path": [h for h in request_headers("/m") if h[0] != b":path"],
    "8_3_1_missing_scheme": [h for h in request_headers("/m") if h[0] != b":scheme"],
    "8_3_1_empty_path": [(n, b"" if n == b":path" else v) for n, v in request_headers("/m")],
    "8_3_1_duplicate_path": [*request_headers("/m"), (b":path", b"/other")],
    "8_3_1_duplicate_method": [(b":method", b"GET"), *request_headers("/m")],
    "8_3_1_pseudo_after_regular": [*request_headers("/m")[:3], (b"x-a", b"1"), (b":path", b"/m")],
    "8_3_1_unknown_pseudo": [*request_headers("/m"), (b":foo", b"bar")],
    "8_3_1_response_pseudo_in_request": [*request_headers("/m"), (b":status", b"200")],
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_request_is_refused(port: int, case: str) -> None:
    """8.1.1 with 8.2.1 (field validity), 8.2.2 (connection-specific fields), 8.3.1 (request
    pseudo-headers): a malformed request is a stream error PROTOCOL_ERROR (a connection error
    is allowed too) and is not forwarded; another connection is still served."""
    c = await client(port)
    c.send(c.headers(1, MALFORMED[case]))
    await c.expect_stream_error_or_goaway(1, PROTOCOL_ERROR)
    await get_ok(port)


async def test_8_2_2_te_trailers_is_allowed(port: int) -> None:
    """8.2.2: TE may be present with the value "trailers": the request is served."""
    c = await client(port)
    c.request(1, "/te", extra=[("te", "trailers")])
    assert (await c.expect_response(1)).body == b"ok /te"


@pytest.mark.parametrize(("declared", "sent"), [(10, 5), (2, 5)], ids=["short", "long"])
async def test_8_1_1_content_length_not_matching_data_is_malformed(
        port: int, declared: int, sent: int) -> None:
    """8.1.1: a content-length that differs from the DATA payload sum makes the request
    malformed: PROTOCOL_ERROR (stream or connection)."""
    c = await client(port)
    c.request(1, "/count", "POST", extra=[("content-length", str(declared))], end_stream=False)
    c.data(1, b"x" * sent, end_stream=True)
    await c.expect_stream_error_or_goaway(1, PROTOCOL_ERROR)


async def test_8_1_trailers_without_end_stream_is_malformed(port: int) -> None:
    """8.1: a trailer section must end the stream; HEADERS after DATA without END_STREAM is
    malformed: PROTOCOL_ERROR."""
    c = await client(port)
    c.request(1, "/count", "POST", end_stream=False)
    c.data(1, b"abc")
    c.send(c.headers(1, [(b"x-trailer", b"1")], end_stream=False))
    await c.expect_stream_error_or_goaway(1, PROTOCOL_ERROR)


# RFC 7541 HPACK --------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [
    b"\xbe",  # 2.3.3: index 62, the dynamic table is empty
    b"\xff\x80\x80\x80\x80\x80\x01",  # 2.3.3 / 5.1: an index far beyond both tables
    b"\x3f\xe1\x3f" + b"\x82\x86\x84",  # 4.2/6.3: table size update 8192 > SETTINGS 4096
    b"\x82\x20\x86\x84",  # 4.2: table size update not at the start of the block
    b"\x40\x81\xff\x81\xff",  # 5.2: Huffman string that decodes to EOS
    b"\x00\x85abc",  # 5.2: string length beyond the block
], ids=["index_62_empty_table", "index_huge", "size_update_too_large",
        "size_update_not_first", "huffman_eos", "truncated_string"])
async def test_rfc7541_invalid_header_block_is_compression_error(port: int, block: bytes) -> None:
    """RFC 7541 (with RFC 9113 4.3): a header block that cannot be decoded is a connection
    error of type COMPRESSION_ERROR."""
    c = await client(port)
    c.send_raw(raw_frame(TYPE_HEADERS, END_STREAM | END_HEADERS, 1, block))
    await c.expect_goaway(COMPRESSION_ERROR)
    await get_ok(port)


async def test_6_8_client_goaway_lets_open_stream_finish(port: int) -> None:
    """6.8: after the client's GOAWAY the streams it opened still complete."""
    c = await client(port)
    c.request(1, "/bytes/200000")
    c.send(GoAwayFrame(0, last_stream_id=0))
    resp = await c.expect_response(1)
    assert resp.status == 200 and len(resp.body) == 200000
