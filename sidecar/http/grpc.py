"""gRPC over the proxy: deadlines, outcomes, and failures answered as gRPC.

Theory of operation: a request is a gRPC call when its content-type is `application/grpc*` (the
HTTP/2 codec sets `RequestHead.grpc`). For such calls:

- `grpc-timeout` ("<digits><unit>", units H M S m u n) is the call's deadline; the stream arms it
  when the call starts, capped by the route's timeout when the route has one (Istio sets Envoy's
  max_grpc_timeout to the route timeout).
- The outcome is `grpc-status` from the trailers, or from the head of a trailers-only response;
  `status_of` finds it in a header list.
- When the proxy, not the server, ends the call, it answers as a gRPC server would: HTTP 200, a
  trailers-only response (one HEADERS frame with END_STREAM) carrying `grpc-status` and a
  percent-encoded `grpc-message`. The status follows Envoy's HTTP-to-gRPC mapping (503, 502, 429
  -> UNAVAILABLE; 404 -> UNIMPLEMENTED; ...), except that a timeout is DEADLINE_EXCEEDED, which is
  what the caller's deadline means.
"""

from __future__ import annotations

from urllib.parse import quote_from_bytes

from sidecar.http.stream import Headers
from sidecar.outcome import ResponseFlag

OK = 0
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}

# Envoy's Grpc::Utility::httpToGrpcStatus.
_FROM_HTTP = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    429: UNAVAILABLE,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: UNAVAILABLE,
}


def parse_timeout(value: bytes) -> float | None:
    """Seconds from a grpc-timeout value ("100m", "5S"); None when malformed (then ignored)."""
    if len(value) < 2 or len(value) > 9:
        return None
    unit = _UNITS.get(value[-1])
    digits = value[:-1]
    if unit is None or not digits.isdigit():
        return None
    return int(digits) * unit


def timeout_of(headers: Headers) -> float | None:
    for name, value in headers:
        if name == b"grpc-timeout":
            return parse_timeout(value)
    return None


def status_of(headers: Headers | None) -> int | None:
    """grpc-status in a header list (trailers, or the head of a trailers-only response)."""
    if headers:
        for name, value in headers:
            if name == b"grpc-status" or name.lower() == b"grpc-status":
                return int(value) if value.isdigit() else UNKNOWN
    return None


def status_for_failure(http_status: int, flags: ResponseFlag) -> int:
    """The grpc-status the proxy answers with when it ends a call itself."""
    if flags & ResponseFlag.UT:
        return DEADLINE_EXCEEDED
    return _FROM_HTTP.get(http_status, UNKNOWN)


def local_reply_headers(grpc_status: int, message: bytes) -> Headers:
    """A trailers-only gRPC response (without the :status pseudo-header)."""
    headers: Headers = [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"%d" % grpc_status),
    ]
    if message:
        # The spec's percent-encoding: unreserved ASCII stays, the rest is %XX.
        encoded = quote_from_bytes(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
        headers.append((b"grpc-message", encoded.encode("ascii")))
    return headers
