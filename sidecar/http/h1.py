"""HTTP/1.1 codec around httptools (llhttp), sans-I/O: bytes in, stream events out.

Theory of operation: each codec owns one httptools parser for the life of its connection and is
the parser's callback object. `feed(data)` runs the parser over `data`; the callbacks append
events (see stream.py) to a list that `feed` returns. Header callbacks lower-case each name once
and sort it: hop-by-hop and framing headers (RFC 9110 7.6.1) are consumed into attributes of the
head, a few end-to-end headers the proxy edits are lifted out, the rest stay in the list as the
peer sent them (original case, original bytes).

llhttp runs strict (no leniency flags): conflicting Content-Length, Content-Length with
Transfer-Encoding, bad chunk sizes and bad header bytes are parse errors. llhttp enforces no size
limits, so the server codec enforces Envoy's defaults itself on every feed: request line target at
most 16 KiB (414), headers at most 60 KiB and 100 fields (431), and a bound on bytes fed while a
head is still incomplete (so a never-ending header cannot grow memory). A parse error is reported
as a `ProtocolError` carrying the status to answer with; after it the codec is unusable.

Upgrades: llhttp stops at the end of an upgrade message; bytes after it are returned in
`upgrade_tail` and the codec stops parsing (the connection becomes a byte relay).

No asyncio here: the connection manager and the upstream pool do the I/O. The encoders that
write heads and chunks back are in h1_encode.py.
"""

from __future__ import annotations

import httptools

from sidecar.errors import ProtocolError
from sidecar.http.stream import (
    END,
    NO_LENGTH,
    SERVICE_TIME,
    TRACE_HEADERS,
    End,
    Headers,
    RequestEvent,
    RequestHead,
    ResponseEvent,
    ResponseHead,
)

MAX_URI = 16 * 1024  # longest request target accepted (414 above this)
MAX_HEADERS_BYTES = 60 * 1024  # Envoy: max_request_headers_kb default 60
MAX_HEADERS_COUNT = 100  # Envoy: max_headers_count default 100
MAX_RAW_HEAD = MAX_URI + MAX_HEADERS_BYTES + 8 * 1024  # bytes buffered for an unfinished head

# Headers that describe the connection or the framing: never forwarded as they are.
_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    )
)
_HOP_LENGTHS = frozenset(len(n) for n in _HOP)  # most names are no hop header: skip lower()
_RESPONSE_LIFTED_LENGTHS = _HOP_LENGTHS | {len(SERVICE_TIME)}
_REQUEST_SPECIAL = _HOP | {b"host", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
                           b"x-request-id"}
_CONN_BUILTIN = frozenset((b"close", b"keep-alive", b"upgrade", b""))


def _reject(status: int, reason: str) -> ProtocolError:
    return ProtocolError(reason, status)


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip() for t in value.lower().split(b",")]


def _content_length(value: bytes) -> int:
    """Parse Content-Length; a list of identical values is one value; anything else -> 400."""
    if value.isdigit() and len(value) <= 18:
        return int(value)
    first = -1
    for part in value.split(b","):
        part = part.strip()
        if not part.isdigit() or len(part) > 18:
            raise _reject(400, "invalid content-length")
        n = int(part)
        if first not in (-1, n):
            raise _reject(400, "conflicting content-length")
        first = n
    return first


def _strip_connection_named(headers: Headers, connection: bytes) -> Headers:
    """Drop the headers that the Connection header names (beyond the builtin tokens)."""
    if connection.lower() in _CONN_BUILTIN:
        return headers
    named = {t for t in _tokens(connection) if t not in _CONN_BUILTIN}
    if not named:
        return headers
    return [(n, v) for n, v in headers if n.lower() not in named]


def _error_from(exc: Exception) -> ProtocolError:
    ctx = exc.__context__
    if isinstance(ctx, ProtocolError):
        return ctx
    return _reject(400, str(exc) or type(exc).__name__)


class H1ServerCodec:
    """Parses requests from a downstream client; one per connection, reused for every request."""

    __slots__ = (
        "_events",
        "_hbytes",
        "_hcount",
        "_headers",
        "_host",
        "_in_head",
        "_parser",
        "_raw",
        "_special",
        "_traced",
        "_trailers",
        "_ua",
        "_url",
        "error",
        "upgrade_tail",
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._events: list[RequestEvent] = []
        self._url = b""
        self._headers: Headers = []
        self._special: dict[bytes, bytes] = {}  # lifted headers other than Host
        self._host: bytes | None = None  # (the one header nearly every request has)
        self._ua: bytes | None = None
        self._traced = False  # a trace header seen (RequestHead.traced)
        self._trailers: Headers | None = None
        self._hbytes = 0
        self._hcount = 0
        self._in_head = False
        self._raw = 0
        self.error: ProtocolError | None = None
        self.upgrade_tail: bytes | None = None

    @property
    def upgraded(self) -> bool:
        """True once an upgrade request ended: what follows is not HTTP."""
        return self.upgrade_tail is not None

    def feed(self, data: bytes) -> list[RequestEvent]:
        """Parse `data`; returns the events it completed. Check `error` and `upgrade_tail` after."""
        events: list[RequestEvent] = []
        self._events = events
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrade_tail = data[exc.args[0] :]
        except httptools.HttpParserError as exc:
            self.error = _error_from(exc)
        if self._in_head and self.error is None:
            self._raw += len(data)
            if self._raw > MAX_RAW_HEAD:  # (llhttp reports URL pieces per feed: on_url says 414)
                self.error = _reject(431, "request head too large")
        return events

    # httptools callbacks -------------------------------------------------------------------

    # (No on_message_begin: a request's first callback is on_url, which starts the new head;
    # one Python call less per request.)

    def on_url(self, url: bytes) -> None:
        if not self._in_head:  # the first piece of a new request's target
            self._headers = []
            if self._special:
                self._special = {}
            self._host = None
            self._ua = None
            self._traced = False
            self._trailers = None
            self._hbytes = 0
            self._hcount = 0
            self._in_head = True
            self._raw = 0
            self._url = url
        else:
            self._url += url
        if len(self._url) > MAX_URI:
            raise _reject(414, "uri too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hbytes += len(name) + len(value)
        self._hcount += 1
        if self._hbytes + len(self._url) > MAX_HEADERS_BYTES or self._hcount > MAX_HEADERS_COUNT:
            raise _reject(431, "headers too large")
        if not self._in_head:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))
            return
        lname = name.lower()
        if lname == b"host":
            host = self._host
            self._host = value if host is None else host + b", " + value
        elif lname in _REQUEST_SPECIAL:
            special = self._special
            old = special.get(lname)
            special[lname] = value if old is None else old + b", " + value
        else:
            self._headers.append((name, value))
            if lname == b"user-agent":
                self._ua = value
            elif lname in TRACE_HEADERS:
                self._traced = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        sp = self._special
        headers = self._headers
        head = RequestHead(parser.get_method(), self._url, headers)
        head.keep_alive = keep_alive = parser.should_keep_alive()
        # No Connection / Proxy-Connection header: llhttp keeps alive only HTTP/1.1 (and
        # get_http_version formats a new string each call, ~0.4 us).
        head.version = version = "1.1" if keep_alive and not sp else parser.get_http_version()
        host = self._host
        ua = self._ua
        if sp:
            connection = sp.get(b"connection")
            if connection is not None:
                head.headers = _strip_connection_named(headers, connection)
        if host is not None:
            if b"," in host:
                raise _reject(400, "multiple host headers")
            head.authority = host
        if sp:
            length = sp.get(b"content-length")
            if length is not None:
                head.content_length = _content_length(length)
            te = sp.get(b"transfer-encoding")
            if te is not None:
                if te.strip().lower() != b"chunked":
                    raise _reject(501, "unsupported transfer-encoding")
                head.chunked = True
        if (sp or host is not None or ua is not None) and parser.should_upgrade():
            upgrade = sp.get(b"upgrade")
            if upgrade is None:  # CONNECT
                raise _reject(405, "CONNECT is not supported")
            head.upgrade = upgrade
        if sp:
            tev = sp.get(b"te")
            if tev is not None:
                head.te_trailers = b"trailers" in _tokens(tev)
            expect = sp.get(b"expect")
            if expect is not None:
                if expect.strip().lower() == b"100-continue":
                    head.expect_continue = version == "1.1"
                else:
                    headers.append((b"expect", expect))
            head.forwarded_for = sp.get(b"x-forwarded-for")
            head.forwarded_proto = sp.get(b"x-forwarded-proto")
            head.request_id = sp.get(b"x-request-id")
        head.user_agent = ua
        head.traced = self._traced
        if not host:
            if self._url[:1] not in (b"/", b"*"):
                self._absolute_form(head)
            elif version == "1.1":
                raise _reject(400, "missing host header")
        self._events.append(head)

    def _absolute_form(self, head: RequestHead) -> None:
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError as exc:
            raise _reject(400, "invalid request target") from exc
        head.authority = url.host if not url.port else url.host + b":%d" % url.port
        head.path = (url.path or b"/") + (b"?" + url.query if url.query else b"")

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        trailers = self._trailers
        self._events.append(END if trailers is None else End(trailers))
        self._trailers = None


class H1ClientCodec:
    """Parses responses from an upstream server; one per upstream connection."""

    __slots__ = (
        "_eof_body",
        "_events",
        "_headers",
        "_in_head",
        "_informational",
        "_parser",
        "_reason",
        "_skip_body",
        "_special",
        "_trailers",
        "error",
        "expect_no_body",
        "upgrade_tail",
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._events: list[ResponseEvent] = []
        self._headers: Headers = []
        self._special: dict[bytes, bytes] = {}
        self._trailers: Headers | None = None
        self._reason = b""
        self._in_head = False
        self._informational = False
        self._skip_body = False
        self._eof_body = False
        self.expect_no_body = False  # set by the sender for HEAD requests
        self.error: ProtocolError | None = None
        self.upgrade_tail: bytes | None = None

    @property
    def in_message(self) -> bool:
        """True while a response has started and not ended."""
        return self._in_head or self._eof_body

    def feed(self, data: bytes) -> list[ResponseEvent]:
        events: list[ResponseEvent] = []
        self._events = events
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrade_tail = data[exc.args[0] :]
        except httptools.HttpParserError as exc:
            self.error = _error_from(exc)
        if self._skip_body:  # a HEAD response: start afresh for the next response
            self._skip_body = False
            self._parser = httptools.HttpResponseParser(self)
        elif self._in_head and len(self._headers) > 4 * MAX_HEADERS_COUNT:
            self.error = _reject(502, "upstream headers too large")
        return events

    def feed_eof(self) -> list[ResponseEvent]:
        """The upstream closed: ends a close-delimited body; otherwise nothing completes."""
        if self._eof_body:
            self._eof_body = False
            return [END]
        return []

    def on_message_begin(self) -> None:
        self._headers = []
        if self._special:
            self._special = {}
        self._trailers = None
        self._reason = b""
        self._in_head = True

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))
            return
        if len(name) in _RESPONSE_LIFTED_LENGTHS:
            lname = name.lower()
            if lname in _HOP:
                special = self._special
                old = special.get(lname)
                special[lname] = value if old is None else old + b", " + value
                return
            if lname == SERVICE_TIME:
                return  # replaced by this proxy's
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._informational = True  # 100 / 102 / 103: dropped, the final response follows
            return
        sp = self._special
        head = ResponseHead(status, self._reason, self._headers)
        head.keep_alive = parser.should_keep_alive()
        chunked = False
        if sp:
            connection = sp.get(b"connection")
            if connection is not None and connection.lower() not in _CONN_BUILTIN:
                head.headers = _strip_connection_named(self._headers, connection)
            length = sp.get(b"content-length")
            if length is not None:
                if length.isdigit() and len(length) <= 18:
                    head.content_length = int(length)
                else:
                    head.content_length = _content_length(length)
            chunked = b"transfer-encoding" in sp
            if status == 101:
                head.upgrade = sp.get(b"upgrade", b"")
        no_body = self.expect_no_body or status in (204, 304) or status == 101
        self.expect_no_body = False
        if no_body:
            if status != 101:
                self._skip_body = True
                self._events.append(head)
                self._events.append(END)
                return
        elif not chunked and head.content_length == NO_LENGTH:
            self._eof_body = True
            head.keep_alive = False
        self._events.append(head)

    def on_body(self, body: bytes) -> None:
        if not self._skip_body:
            self._events.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._skip_body:
            return
        self._eof_body = False
        trailers = self._trailers
        self._events.append(END if trailers is None else End(trailers))
        self._trailers = None

