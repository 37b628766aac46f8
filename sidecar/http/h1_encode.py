"""HTTP/1.1 encoding: request and response heads, chunks, trailers (sans-I/O, bytes out).

Theory of operation: the codecs (h1.py) lift framing and hop-by-hop headers out of a message;
these functions write a head back with the framing the proxy chose (Content-Length, chunked, or
close-delimited) and the lifted end-to-end headers it edits (x-forwarded-*, x-request-id). Each
returns one bytes object built with a single join; body chunks are returned as pieces for
`writelines` so the data is never copied.
"""

from __future__ import annotations

from sidecar.http.stream import SERVICE_TIME, Headers, RequestHead, ResponseHead

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
UNSAMPLED_END = b"x-b3-sampled: 0\r\n\r\n"  # the last header line and the blank line


_STATUS_LINE = {code: b"HTTP/1.1 %d " % code for code in range(100, 600)}  # read-only
# x-envoy-upstream-service-time and the blank line, preformatted for the usual times (ms).
_SERVICE_TIME_LINE = SERVICE_TIME + b": %d\r\n\r\n"
_SERVICE_TIME_END = [_SERVICE_TIME_LINE % ms for ms in range(1024)]


def _put_headers(parts: list[bytes], headers: Headers) -> None:
    for name, value in headers:
        parts += (name, b": ", value, CRLF)


def encode_request_head(head: RequestHead) -> bytes:
    """The request line and headers to send upstream (HTTP/1.1), framing re-computed."""
    parts = [head.method, b" ", head.path, b" HTTP/1.1\r\nhost: ", head.authority, CRLF]
    for name, value in head.headers:  # (_put_headers, inline: once per request)
        parts += (name, b": ", value, CRLF)
    if head.forwarded_for is not None:
        parts += (b"x-forwarded-for: ", head.forwarded_for, CRLF)
    if head.forwarded_proto is not None:
        parts += (b"x-forwarded-proto: ", head.forwarded_proto, CRLF)
    if head.request_id is not None:
        parts += (b"x-request-id: ", head.request_id, CRLF)
    if head.chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    elif head.content_length >= 0:
        parts.append(b"content-length: %d\r\n" % head.content_length)
    if head.te_trailers:
        parts.append(b"te: trailers\r\n")
    if head.upgrade is not None:
        parts += (b"connection: upgrade\r\nupgrade: ", head.upgrade, CRLF)
    # The tracer's "not sampled" (stream.py) rides on the blank line: one part, not two.
    parts.append(UNSAMPLED_END if head.not_sampled else CRLF)
    return b"".join(parts)


def encode_response_head(head: ResponseHead, chunked: bool, close: bool) -> bytes:
    """The status line and headers to send downstream."""
    status = head.status
    line = _STATUS_LINE.get(status)
    parts = [b"HTTP/1.1 %d " % status if line is None else line, head.reason, CRLF]
    for name, value in head.headers:  # (_put_headers, inline: once per response)
        parts += (name, b": ", value, CRLF)
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    elif head.content_length >= 0:
        parts.append(b"content-length: %d\r\n" % head.content_length)
    if head.upgrade is not None:
        parts += (b"connection: upgrade\r\nupgrade: ", head.upgrade, CRLF)
    elif close:
        parts.append(b"connection: close\r\n")
    # This proxy's x-envoy-upstream-service-time rides on the blank line: one part, not two.
    t = head.service_time
    if t < 0:
        parts.append(CRLF)
    else:
        parts.append(_SERVICE_TIME_END[t] if t < 1024 else _SERVICE_TIME_LINE % t)
    return b"".join(parts)


def chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body, as pieces for writelines (the data is not copied)."""
    return [b"%x\r\n" % len(data), data, CRLF]


def last_chunk(trailers: Headers | None) -> bytes:
    """The end of a chunked body, with trailers when there are any."""
    if not trailers:
        return LAST_CHUNK
    parts = [b"0\r\n"]
    _put_headers(parts, trailers)
    parts.append(CRLF)
    return b"".join(parts)
