"""HTTP/2 around the `h2` library, sans-I/O: connection settings, heads to and from header lists,
and flow-controlled sending per stream.

Theory of operation: `h2.H2Connection` does the framing, HPACK, stream states, SETTINGS, PING
and the checks of RFC 9113 it knows (frame sizes, stream id order, header validity on receipt).
This module adds what h2 leaves to its user and what the proxy needs on both sides:

- `new_connection(client)`: an H2Connection with the proxy's settings (RFC 9113 6.5.2): at most
  MAX_CONCURRENT_STREAMS streams from a client, a 1 MiB stream window and a 16 MiB connection
  window (enough for loopback speed, small enough to bound memory), a header list limit of 60 KiB
  (Envoy's max_request_headers_kb; larger header blocks are refused while they are being decoded,
  which also bounds an HPACK bomb), no server push.
- `request_head` / `response_head`: a received header list to the protocol-neutral heads of
  stream.py. Pseudo-headers become attributes, `host` falls back for `:authority`, the proxy's
  lifted headers are lifted as HTTP/1.1's codec lifts them, several `cookie` fields are joined
  into one (RFC 9113 8.2.3) so that either protocol can carry them on.
- `request_headers` / `response_headers`: the other way, names lower-cased (RFC 9113 8.2.1:
  HTTP/1.1 peers may send any case), framing recomputed (content-length when known).
- `SendQueue` + `pump`: data for one stream waits in its queue and goes out as far as the peer's
  stream and connection windows and the maximum frame size allow (RFC 9113 5.2, 6.9); what is
  left goes when a WINDOW_UPDATE arrives. The queue's byte count is what back-pressure reads:
  past HIGH_WATER the stream asks its source to stop reading.

Received data is acknowledged (a WINDOW_UPDATE eventually sent) only when the proxy passed it on
and the other side was not pushing back: the peer can never have more than one window of data
in the proxy per stream.
"""

from __future__ import annotations

from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack.exceptions
from h2.events import Event
from hyperframe.exceptions import InvalidDataError
from hyperframe.frame import Frame, GoAwayFrame

if TYPE_CHECKING:
    from typing_extensions import Buffer

from sidecar.http.stream import (
    END,
    NO_LENGTH,
    SERVICE_TIME,
    TRACE_HEADERS,
    End,
    Headers,
    RequestHead,
    ResponseHead,
)

MAX_CONCURRENT_STREAMS = 100  # downstream default (Envoy: 2147483647; Istio sets 100)
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 16 << 20
MAX_HEADER_LIST = 60 * 1024
HIGH_WATER = 256 * 1024  # queued bytes per stream before its source is paused
LOW_WATER = 64 * 1024

# Error codes (RFC 9113 section 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

_REASONS = {s.value: s.phrase.encode("latin-1") for s in HTTPStatus}
_STATUS_BYTES = {s.value: str(s.value).encode("ascii") for s in HTTPStatus}


class GracefulH2Connection(h2.connection.H2Connection):
    """h2's connection with two corrections a peer can observe.

    A GOAWAY with NO_ERROR lets the streams below its last stream id finish (RFC 9113 section
    6.8). h2 closes the whole connection on any GOAWAY and then fails on the frames of those
    streams still in flight: the last responses an upstream sends while it retires a connection
    (nginx does after 1000 requests) would be lost.

    Connection errors carry the code the RFCs name where h2 reports a generic PROTOCOL_ERROR:
    COMPRESSION_ERROR for a header block HPACK cannot decode (RFC 9113 section 4.3, RFC 7541),
    FRAME_SIZE_ERROR for a SETTINGS acknowledgement with a payload (RFC 9113 section 6.5).
    """

    def receive_data(self, data: Buffer) -> list[Event]:
        try:
            return super().receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            code = _specific_error(exc)
            if code is not None:
                self.clear_outbound_data_buffer()  # h2 queued GOAWAY PROTOCOL_ERROR: replace it
                self._terminate_connection(code)
                exc.error_code = code
            raise

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        if frame.error_code != NO_ERROR:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors._error_code_from_int(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


def _specific_error(exc: BaseException) -> h2.errors.ErrorCodes | None:
    cause = exc.__cause__
    if isinstance(cause, hpack.exceptions.HPACKError) and not isinstance(
        cause, hpack.exceptions.OversizedHeaderListError
    ):
        return h2.errors.ErrorCodes.COMPRESSION_ERROR
    if isinstance(cause, InvalidDataError) and str(cause).startswith("SETTINGS ack frame"):
        return h2.errors.ErrorCodes.FRAME_SIZE_ERROR
    return None


def new_connection(client: bool) -> h2.connection.H2Connection:
    """An H2Connection with the proxy's settings, preface and window increase queued."""
    config = h2.config.H2Configuration(
        client_side=client,
        header_encoding=None,
        validate_inbound_headers=True,
        normalize_inbound_headers=True,
        validate_outbound_headers=False,  # we build them valid; checking costs per request
        normalize_outbound_headers=False,
    )
    conn = GracefulH2Connection(config)
    settings = {
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        h2.settings.SettingCodes.ENABLE_PUSH: 0,
    }
    if not client:
        settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = MAX_CONCURRENT_STREAMS
    conn.local_settings = h2.settings.Settings(client=client, initial_values=settings)
    conn.initiate_connection()
    conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    # Refuse oversized header lists while decoding, before the SETTINGS are acknowledged too.
    conn.decoder.max_header_list_size = MAX_HEADER_LIST
    return conn


def goaway(last_stream_id: int, error_code: int = NO_ERROR) -> bytes:
    """A GOAWAY frame, written outside h2's state machine (h2 allows no stream after its own
    GOAWAY, but a graceful close lets the streams below `last_stream_id` finish)."""
    frame = GoAwayFrame(0)
    frame.last_stream_id = last_stream_id
    frame.error_code = error_code
    return bytes(frame.serialize())


# received header lists -> heads ----------------------------------------------------------------


def request_head(headers: Headers, end_stream: bool) -> RequestHead:
    """A request head from a validated header list (h2 checked pseudo-headers and names)."""
    head = RequestHead(b"GET", b"/", [])
    head.version = "2"
    out = head.headers
    cookies: list[bytes] | None = None
    host = b""
    for name, value in headers:
        if name[0] == 58:  # b":"
            if name == b":method":
                head.method = value
            elif name == b":path":
                head.path = value
            elif name == b":authority":
                head.authority = value
            elif name == b":scheme":
                head.scheme = value  # the client's: x-forwarded-proto says it on upstream
            continue
        if name == b"content-length":
            head.content_length = int(value) if value.isdigit() else NO_LENGTH
        elif name == b"x-forwarded-for":
            head.forwarded_for = value
        elif name == b"x-forwarded-proto":
            head.forwarded_proto = value
        elif name == b"x-request-id":
            head.request_id = value
        elif name == b"host":
            host = value
        elif name == b"te":
            head.te_trailers = True  # h2 let only "trailers" through (RFC 9113 8.2.2)
        elif name == b"cookie":
            if cookies is None:
                cookies = []
            cookies.append(value)
        else:
            if name == b"user-agent":
                head.user_agent = value
            elif name == b"content-type" and value.startswith(b"application/grpc"):
                head.grpc = True
            elif name in TRACE_HEADERS:
                head.traced = True
            elif name == b"expect" and value.lower() == b"100-continue":
                head.expect_continue = True
                continue
            out.append((name, value))
    if not head.authority:
        head.authority = host
    if cookies is not None:
        out.append((b"cookie", b"; ".join(cookies)))
    if not end_stream and head.content_length == NO_LENGTH:
        head.chunked = True  # a body of unknown length follows in DATA frames
    elif end_stream:
        head.content_length = 0 if head.content_length == NO_LENGTH else head.content_length
    return head


def response_head(headers: Headers, end_stream: bool) -> ResponseHead:
    """A response head from a validated header list."""
    status = 0
    out: Headers = []
    length = NO_LENGTH
    for name, value in headers:
        if name == b":status":
            status = int(value)
        elif name == b"content-length":
            length = int(value) if value.isdigit() else NO_LENGTH
        elif name != SERVICE_TIME:  # replaced by this proxy's
            out.append((name, value))
    head = ResponseHead(status, _REASONS.get(status, b""), out)
    head.content_length = 0 if end_stream and length == NO_LENGTH else length
    return head


def trailers(headers: Headers) -> End:
    return End(list(headers)) if headers else END


# heads -> header lists to send -----------------------------------------------------------------


def request_headers(head: RequestHead, scheme: bytes = b"http") -> Headers:
    """The header list for a request sent upstream over HTTP/2."""
    out: Headers = [
        (b":method", head.method),
        (b":scheme", scheme),
        (b":authority", head.authority),
        (b":path", head.path),
    ]
    for name, value in head.headers:
        out.append((name.lower(), value))
    if head.forwarded_for is not None:
        out.append((b"x-forwarded-for", head.forwarded_for))
    if head.forwarded_proto is not None:
        out.append((b"x-forwarded-proto", head.forwarded_proto))
    if head.request_id is not None:
        out.append((b"x-request-id", head.request_id))
    if head.not_sampled:
        out.append((b"x-b3-sampled", b"0"))
    if head.content_length >= 0 and not head.chunked:
        out.append((b"content-length", b"%d" % head.content_length))
    if head.te_trailers:
        out.append((b"te", b"trailers"))
    return out


def response_headers(head: ResponseHead) -> Headers:
    """The header list for a response sent downstream over HTTP/2."""
    status = head.status
    out: Headers = [(b":status", _STATUS_BYTES.get(status) or b"%d" % status)]
    for name, value in head.headers:
        out.append((name.lower(), value))
    if head.content_length >= 0:
        out.append((b"content-length", b"%d" % head.content_length))
    if head.service_time >= 0:
        out.append((SERVICE_TIME, b"%d" % head.service_time))
    return out


def trailer_headers(trailers: Headers) -> Headers:
    return [(name.lower(), value) for name, value in trailers]


# flow-controlled sending -----------------------------------------------------------------------


class SendQueue:
    """Data (and the end of the message) waiting for one stream's flow-control window."""

    __slots__ = ("chunks", "done", "end", "queued", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes | memoryview] = deque()
        self.queued = 0  # bytes in chunks
        self.end = False  # the message ends after the chunks
        self.trailers: Headers | None = None  # sent with the end, if any
        self.done = False  # END_STREAM was sent


def pump(conn: h2.connection.H2Connection, stream_id: int, q: SendQueue) -> int:
    """Send as much of `q` as the windows allow; returns the bytes sent."""
    if q.done:
        return 0
    chunks = q.chunks
    sent = 0
    try:
        while chunks:
            window = conn.local_flow_control_window(stream_id)
            if window <= 0:
                break
            size = min(window, conn.max_outbound_frame_size)
            data = chunks[0]
            n = len(data)
            if n <= size:
                chunks.popleft()
                last = not chunks and q.end and q.trailers is None
                conn.send_data(stream_id, data, end_stream=last)
                sent += n
                if last:
                    q.done = True
            else:
                view = data if type(data) is memoryview else memoryview(data)
                conn.send_data(stream_id, view[:size])
                chunks[0] = view[size:]
                sent += size
        if q.end and not q.done and not chunks:
            q.done = True
            if q.trailers is not None:
                conn.send_headers(stream_id, trailer_headers(q.trailers), end_stream=True)
            else:
                conn.end_stream(stream_id)
    except h2.exceptions.StreamClosedError:
        q.done = True  # the peer reset the stream meanwhile: drop what is left
        chunks.clear()
        q.queued = 0
        return sent
    q.queued -= sent
    return sent
