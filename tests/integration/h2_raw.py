"""A small raw HTTP/2 client for conformance and attack tests, and the proxy setup they share.

Theory of operation: `H2Client` speaks HTTP/2 frame by frame over one asyncio stream connection.
Frames are built with `hyperframe` and header blocks with an `hpack.Encoder`, but nothing checks
what is sent: a test may write any bytes (`send_raw`), so it can send what a conforming client
never would (bad padding, wrong stream ids, uppercase names, bad HPACK indexes). Frames read back
are parsed with hyperframe after a 9-byte header read; every read has a deadline and every loop a
frame count limit, so a proxy that never answers makes a test fail, not hang. The client ACKs the
server's SETTINGS itself (RFC 9113 6.5.3), which is also what makes the server's own settings
(MAX_CONCURRENT_STREAMS, header list size) take effect.

`expect_goaway`, `expect_rst` and `expect_response` read until the frame they want (skipping the
rest) and fail with what they saw instead. `proxied()` starts the setup every test uses: a real
HTTP/1.1 upstream (tests/integration/upstreams.py) behind the real in-process proxy listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from sidecar.config.snapshot import HttpConnectionManager

from .http_helpers import cluster, simple_routes
from .proxy_fixtures import RunningProxy, start_proxy
from .upstreams import start_streaming_upstream

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FRAMES = 200_000  # frames one expect_* call reads at most

# Error codes and frame types (RFC 9113 sections 7 and 6).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB
TYPE_DATA, TYPE_HEADERS, TYPE_SETTINGS, TYPE_PING, TYPE_WINDOW_UPDATE = 0x0, 0x1, 0x4, 0x6, 0x8

# SETTINGS identifiers (RFC 9113 6.5.2).
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5

Headers = list[tuple[bytes, bytes]]


def raw_frame(ftype: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """Any frame, valid or not: the 9-byte header (RFC 9113 4.1) and the payload as given."""
    n = len(payload)
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, ftype, flags, stream_id) + payload


def settings_payload(values: dict[int, int]) -> bytes:
    return b"".join(struct.pack(">HL", k, v) for k, v in values.items())


def request_headers(path: str = "/", method: str = "GET", extra: Iterable[tuple[str, str]] = ()
                    ) -> Headers:
    """A valid request header list (extra headers appended as given, not lower-cased)."""
    out: Headers = [(b":method", method.encode()), (b":scheme", b"http"),
                    (b":authority", b"svc"), (b":path", path.encode())]
    out.extend((n.encode(), v.encode()) for n, v in extra)
    return out


@dataclass
class Response:
    """A response as read off one stream."""

    status: int
    headers: Headers
    body: bytes = b""
    trailers: Headers = field(default_factory=list)
    reset: int | None = None  # RST_STREAM code if the stream was reset after the head


class H2Client:
    """One raw HTTP/2 client connection to 127.0.0.1:`port`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        # Every header block the server sends is decoded as it arrives, read by a test or not:
        # HPACK's dynamic table is shared by the connection's blocks, so skipping one would
        # break the next. Decoded blocks wait here by stream id (and an unfinished one's bytes).
        self.blocks: dict[int, list[Headers]] = {}
        self._partial: dict[int, bytes] = {}
        self.server_settings: dict[int, int] = {}
        self.settings_acked = 0  # SETTINGS ACKs the server sent us
        self.got_settings = False  # the server's (non-ACK) SETTINGS arrived
        self.granted: dict[int, int] = {}  # WINDOW_UPDATE increments received, by stream id
        self.auto_ack = True
        self.closed = False

    @classmethod
    async def connect(cls, port: int, settings: dict[int, int] | None = None,
                      handshake: bool = True, timeout: float = 5.0) -> H2Client:
        """Open, send the preface and our SETTINGS; with `handshake`, wait for the server's
        SETTINGS (and ACK them) and for the ACK of ours."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, limit=1 << 20), timeout)
        c = cls(reader, writer)
        if handshake:
            c.send_raw(PREFACE + raw_frame(TYPE_SETTINGS, 0, 0, settings_payload(settings or {})))
            await c.wait_for(lambda f: (c.settings_acked > 0 and c.got_settings)
                             or isinstance(f, GoAwayFrame), timeout)
        return c

    # sending -----------------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def send(self, *frames: Frame) -> None:
        self.send_raw(b"".join(f.serialize() for f in frames))

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    def block(self, headers: Headers) -> bytes:
        """An HPACK header block for `headers`, names exactly as given."""
        return bytes(self.encoder.encode(headers))

    def headers(self, stream_id: int, headers: Headers, end_stream: bool = True,
                end_headers: bool = True) -> HeadersFrame:
        f = HeadersFrame(stream_id)
        f.data = self.block(headers)
        if end_stream:
            f.flags.add("END_STREAM")
        if end_headers:
            f.flags.add("END_HEADERS")
        return f

    def request(self, stream_id: int, path: str = "/", method: str = "GET",
                extra: Iterable[tuple[str, str]] = (), end_stream: bool = True) -> None:
        self.send(self.headers(stream_id, request_headers(path, method, extra), end_stream))

    def data(self, stream_id: int, payload: bytes, end_stream: bool = False) -> None:
        f = DataFrame(stream_id, payload)
        if end_stream:
            f.flags.add("END_STREAM")
        self.send(f)

    def rst(self, stream_id: int, code: int = CANCEL) -> RstStreamFrame:
        return RstStreamFrame(stream_id, error_code=code)

    def window_update(self, stream_id: int, increment: int) -> None:
        self.send_raw(raw_frame(TYPE_WINDOW_UPDATE, 0, stream_id, struct.pack(">L", increment)))

    def close(self) -> None:
        self.writer.close()

    # receiving ---------------------------------------------------------------------------------

    async def read_frame(self, timeout: float = 5.0) -> Frame | None:
        """The next frame, or None at EOF (or reset); TimeoutError after `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                head = await self.reader.readexactly(9)
                frame, length = Frame.parse_frame_header(memoryview(head))
                body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed = True
            return None
        frame.parse_body(memoryview(body))
        self._auto(frame)
        return frame

    def _auto(self, frame: Frame) -> None:
        if isinstance(frame, (HeadersFrame, ContinuationFrame)):
            sid = frame.stream_id
            block = self._partial.pop(sid, b"") + frame.data
            if "END_HEADERS" not in frame.flags:
                self._partial[sid] = block
                return
            fields = [(bytes(n), bytes(v)) for n, v in self.decoder.decode(block, raw=True)]
            self.blocks.setdefault(sid, []).append(fields)
        elif isinstance(frame, WindowUpdateFrame):
            sid = frame.stream_id
            self.granted[sid] = self.granted.get(sid, 0) + frame.window_increment
        elif isinstance(frame, SettingsFrame):
            if "ACK" in frame.flags:
                self.settings_acked += 1
            else:
                self.got_settings = True
                self.server_settings.update(frame.settings)
                if self.auto_ack:
                    self.send_raw(raw_frame(TYPE_SETTINGS, 0x1, 0, b""))

    async def wait_for(self, want: object, timeout: float = 5.0) -> list[Frame]:
        """Read frames until `want(frame)` is true (returns all read); fails at EOF or deadline."""
        seen: list[Frame] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for _ in range(MAX_FRAMES):
            left = deadline - loop.time()
            try:
                f = await self.read_frame(max(left, 0.001))
            except TimeoutError:
                raise AssertionError(f"timed out; saw {_names(seen)}") from None
            if f is None:
                raise AssertionError(f"connection closed; saw {_names(seen)}")
            seen.append(f)
            if want(f):  # type: ignore[operator]
                return seen
        raise AssertionError(f"no wanted frame in {MAX_FRAMES} frames")

    async def expect_goaway(self, code: int | tuple[int, ...], timeout: float = 5.0
                            ) -> GoAwayFrame:
        """A GOAWAY with `code` (or one of them) arrives, then the server closes."""
        seen = await self.wait_for(lambda f: isinstance(f, GoAwayFrame), timeout)
        g = seen[-1]
        assert isinstance(g, GoAwayFrame)
        codes = code if isinstance(code, tuple) else (code,)
        assert g.error_code in codes, f"GOAWAY code {g.error_code:#x}, wanted {codes}"
        await self.expect_closed(timeout)
        return g

    async def expect_rst(self, stream_id: int, code: int, timeout: float = 5.0) -> None:
        """RST_STREAM on `stream_id` with `code` (a GOAWAY first fails the test)."""
        seen = await self.wait_for(
            lambda f: isinstance(f, GoAwayFrame)
            or (isinstance(f, RstStreamFrame) and f.stream_id == stream_id), timeout)
        f = seen[-1]
        assert isinstance(f, RstStreamFrame), f"{f} instead of RST_STREAM"
        assert f.error_code == code, f"RST_STREAM code {f.error_code:#x}, wanted {code:#x}"

    async def expect_stream_error_or_goaway(self, stream_id: int, code: int,
                                            timeout: float = 5.0) -> None:
        """The request on `stream_id` is refused with `code`: by RST_STREAM on it, or by a
        connection error GOAWAY (RFC 9113 8.1.1: malformed is a stream error at least)."""
        seen = await self.wait_for(
            lambda f: isinstance(f, GoAwayFrame)
            or (isinstance(f, (RstStreamFrame, HeadersFrame)) and f.stream_id == stream_id),
            timeout)
        f = seen[-1]
        assert not isinstance(f, HeadersFrame), "the malformed request got a response"
        assert isinstance(f, (RstStreamFrame, GoAwayFrame))
        assert f.error_code == code, f"{type(f).__name__} code {f.error_code:#x}, want {code:#x}"

    async def expect_response(self, stream_id: int, timeout: float = 5.0,
                              ack_data: bool = True) -> Response:
        """The whole response on `stream_id` (WINDOW_UPDATEs sent for its DATA)."""
        resp: Response | None = None
        body: list[bytes] = []
        blocks = self.blocks.setdefault(stream_id, [])
        blocks.clear()  # blocks of an earlier use of this stream id's frames (none in practice)

        def step(f: Frame) -> bool:
            nonlocal resp
            if isinstance(f, GoAwayFrame):
                raise AssertionError(f"GOAWAY {f.error_code:#x} while waiting for {stream_id}")
            if f.stream_id != stream_id:
                return False
            if isinstance(f, (HeadersFrame, ContinuationFrame)):
                if "END_HEADERS" not in f.flags:
                    return False
                fields = blocks.pop(0)  # decoded by _auto
                if resp is None:
                    resp = Response(int(dict(fields)[b":status"]), fields)
                else:
                    resp.trailers = fields
            elif isinstance(f, DataFrame):
                body.append(f.data)
                if ack_data and f.flow_controlled_length:
                    self.window_update(0, f.flow_controlled_length)
                    self.window_update(stream_id, f.flow_controlled_length)
            elif isinstance(f, RstStreamFrame):
                if resp is None:
                    raise AssertionError(f"RST_STREAM {f.error_code:#x} before a response")
                resp.reset = f.error_code
                return True
            return "END_STREAM" in f.flags and resp is not None and stream_id not in self._partial

        await self.wait_for(step, timeout)
        assert resp is not None
        resp.body = b"".join(body)
        return resp

    async def expect_closed(self, timeout: float = 5.0) -> None:
        """The server closes the connection (frames before the close are skipped)."""
        for _ in range(MAX_FRAMES):
            try:
                f = await self.read_frame(timeout)
            except TimeoutError:
                raise AssertionError("the server did not close the connection") from None
            if f is None:
                return
        raise AssertionError("the server kept sending")

    async def expect_silence(self, seconds: float) -> list[Frame]:
        """Frames that arrive within `seconds` (the connection must stay open)."""
        seen: list[Frame] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        for _ in range(MAX_FRAMES):
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                f = await self.read_frame(left)
            except TimeoutError:
                break
            assert f is not None, f"connection closed; saw {_names(seen)}"
            assert not isinstance(f, GoAwayFrame), f"GOAWAY {f.error_code:#x}"
            seen.append(f)
        return seen


def _names(frames: list[Frame]) -> str:
    tail = frames[-8:]
    return ", ".join(
        f"{type(f).__name__}({f.stream_id}"
        + (f", code={f.error_code:#x}" if isinstance(f, (GoAwayFrame, RstStreamFrame)) else "")
        + ")" for f in tail) + (f" (+{len(frames) - 8} before)" if len(frames) > 8 else "")


async def get_ok(port: int, path: str = "/served", timeout: float = 5.0) -> Response:
    """A fresh connection's GET answered 200 by the upstream (another client still served)."""
    c = await H2Client.connect(port, timeout=timeout)
    try:
        c.request(1, path)
        resp = await c.expect_response(1, timeout)
    finally:
        c.close()
    assert resp.status == 200, resp
    assert resp.body == f"ok {path}".encode(), resp.body[:200]
    return resp


def ping(payload: bytes = b"12345678", ack: bool = False) -> PingFrame:
    f = PingFrame(0, opaque_data=payload)
    if ack:
        f.flags.add("ACK")
    return f


def goaway_frame(code: int = NO_ERROR) -> GoAwayFrame:
    return GoAwayFrame(0, last_stream_id=0, error_code=code)


@contextlib.asynccontextmanager
async def proxied(stream_idle_timeout: float = 300.0) -> AsyncIterator[RunningProxy]:
    """The real proxy listener (in process) in front of a real HTTP/1.1 upstream that answers
    `GET /bytes/N` with N bytes and anything else with `ok <path>`."""
    server, up_port = await start_streaming_upstream()
    routes = simple_routes("up")
    hcm = HttpConnectionManager(route_config=routes.name, stat_prefix="h2",
                                stream_idle_timeout=stream_idle_timeout)
    proxy = await start_proxy(hcm, (cluster("up", up_port),), route_configs={"80": routes})
    try:
        yield proxy
    finally:
        proxy.close()
        server.close()
        await asyncio.sleep(0)
