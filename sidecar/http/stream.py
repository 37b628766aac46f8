"""Protocol-neutral HTTP stream events: what a codec produces and the connection manager consumes.

Theory of operation: a codec (HTTP/1.1 today, HTTP/2 later) turns bytes into a flat sequence of
events per message: one head (`RequestHead` or `ResponseHead`), zero or more body chunks (plain
`bytes` objects, never copied or joined), then one `End` (carrying trailers, if any). Codecs
remove everything that is about the connection rather than the message (HTTP/1 hop-by-hop headers,
framing headers, HTTP/2 pseudo-headers) and expose it as attributes instead, so the layers above
see the same shape whichever protocol carried the message.

A few end-to-end headers the proxy edits or reads on every request (x-forwarded-for,
x-forwarded-proto, x-request-id) are lifted out of the header list by the codec into attributes;
the encoder writes them back. That saves a second scan of the headers per request. The same
goes for the one header the tracer adds to nearly every request, `x-b3-sampled: 0`.

Heads are plain slotted classes (not dataclasses): one allocation and attribute stores, nothing
more, because one is built per message on the hot path.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from sidecar.outcome import ResponseFlag

Header = tuple[bytes, bytes]
Headers = list[Header]

NO_LENGTH = -1  # content_length when the body is not delimited by a Content-Length

# The headers the tracer reads and replaces (observability/tracing_context.py): B3 multi and
# single, W3C traceparent, and Envoy's span name from the caller's proxy. The codecs note their
# presence in `RequestHead.traced` as they sort the headers anyway, so a request without any
# (nearly all that are not sampled) costs the tracer no scan of its headers.
TRACE_HEADERS = frozenset({
    b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags",
    b"b3", b"traceparent", b"x-envoy-decorator-operation",
})  # fmt: skip


# Envoy's router header on responses from upstream: ms from the end of the downstream request
# to the upstream's response head. A value from further upstream is replaced by this proxy's.
SERVICE_TIME = b"x-envoy-upstream-service-time"


class RequestHead:
    """A request's head; `headers` holds only end-to-end headers the codec did not lift out."""

    __slots__ = (
        "authority",
        "chunked",
        "content_length",
        "expect_continue",
        "forwarded_for",
        "forwarded_proto",
        "grpc",
        "headers",
        "keep_alive",
        "method",
        "not_sampled",
        "path",
        "request_id",
        "scheme",
        "te_trailers",
        "traced",
        "upgrade",
        "user_agent",
        "version",
    )

    def __init__(self, method: bytes, path: bytes, headers: Headers) -> None:
        self.method = method
        self.path = path  # request target as received (origin-form)
        self.headers = headers
        self.authority = b""  # Host / :authority
        self.scheme = b"http"  # b"https" over TLS (HTTP/1.1) or as :scheme said (HTTP/2)
        self.version = "1.1"
        self.keep_alive = True
        self.content_length = NO_LENGTH
        self.chunked = False  # body of unknown length follows (H1 chunked, H2 DATA)
        self.upgrade: bytes | None = None  # protocol asked for with Upgrade (e.g. b"websocket")
        self.expect_continue = False
        self.te_trailers = False  # the client accepts trailers ("TE: trailers")
        self.forwarded_for: bytes | None = None
        self.forwarded_proto: bytes | None = None
        self.request_id: bytes | None = None
        self.user_agent: bytes | None = None  # also still in `headers`
        self.grpc = False  # content-type application/grpc* (set by the HTTP/2 codec)
        # A trace header (TRACE_HEADERS) was received: only then does the tracer read them.
        self.traced = False
        # The tracer's "not sampled" for a request that came without trace headers, which the
        # encoders write as `x-b3-sampled: 0` (lifted like x-request-id: no list edit).
        self.not_sampled = False

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length > 0

    def header(self, lname: bytes) -> bytes | None:
        """Value of a header by lower-case name (repeated headers joined by ","); not hot."""
        lifted = _LIFTED_REQUEST.get(lname)
        if lifted is not None:
            value: bytes | None = getattr(self, lifted)
            return value
        return find_header(self.headers, lname)


def find_header(headers: Headers, lname: bytes) -> bytes | None:
    """Value of a header in `headers` by lower-case name (repeated headers joined by ",");
    not hot."""
    found = [v for n, v in headers if n.lower() == lname]
    return b",".join(found) if found else None


_LIFTED_REQUEST = {
    b"host": "authority",
    b":authority": "authority",
    b":method": "method",
    b":path": "path",
    b":scheme": "scheme",
    b"x-forwarded-for": "forwarded_for",
    b"x-forwarded-proto": "forwarded_proto",
    b"x-request-id": "request_id",
}


class ResponseHead:
    """A response's head; `headers` holds only end-to-end headers."""

    __slots__ = (
        "content_length", "headers", "keep_alive", "reason", "service_time", "status", "upgrade",
    )  # fmt: skip

    def __init__(self, status: int, reason: bytes, headers: Headers) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = NO_LENGTH  # NO_LENGTH: chunked or delimited by close (or no body)
        self.keep_alive = True
        self.upgrade: bytes | None = None  # set on 101 Switching Protocols
        # x-envoy-upstream-service-time (ms) this proxy adds to a response from upstream, which
        # the encoders write (lifted like x-request-id); -1: none (the proxy's own replies).
        self.service_time = -1

    def header(self, lname: bytes) -> bytes | None:
        """Value of a header by lower-case name, the lifted content-length included; not hot."""
        if lname == b"content-length":
            n = self.content_length
            return None if n == NO_LENGTH else b"%d" % n
        return find_header(self.headers, lname)


class End:
    """End of a message, with its trailers (None when there were none)."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: Headers | None) -> None:
        self.trailers = trailers


END = End(None)  # the shared end-of-message without trailers

RequestEvent = RequestHead | bytes | End
ResponseEvent = ResponseHead | bytes | End


class ResponseSink(Protocol):
    """What an upstream connection reports to the stream it is serving."""

    def on_response_head(self, head: ResponseHead) -> None: ...

    def on_response_data(self, data: bytes) -> None: ...

    def on_response_end(self, end: End) -> None: ...

    def on_upgraded(self, tail: bytes) -> None:
        """The upstream switched protocols; `tail` is raw data that followed the 101."""

    def on_upstream_reset(self, flag: ResponseFlag) -> None:
        """The upstream closed (UC), reset the stream (UR) or broke the protocol (UPE) before
        the response ended."""

    def on_batch_end(self) -> None:
        """The events of one read have been delivered (a good time to flush writes)."""

    def on_upstream_refused(self) -> None:
        """The upstream refused the request unprocessed (HTTP/2 GOAWAY or REFUSED_STREAM)."""

    def on_upstream_write_paused(self) -> None: ...

    def on_upstream_write_resumed(self) -> None: ...


class UpstreamRequest(Protocol):
    """One request's upstream side: an HTTP/1.1 connection, or a stream of an HTTP/2 one."""

    local_address: str
    reusable: bool

    def bind(self, sink: ResponseSink) -> None: ...
    def send_head(self, head: RequestHead) -> None: ...
    def send_data(self, data: bytes) -> None: ...
    def send_end(self, end: End) -> None: ...
    def flush(self) -> None: ...
    def schedule_flush(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def detach(self) -> asyncio.Transport | None:
        """Take the socket away for a protocol upgrade (HTTP/1.1 only)."""

    def close(self) -> None:
        """Abandon the request (close the connection, or cancel the stream)."""
