"""Responses the proxy writes itself (Envoy's local replies), in Envoy's shape.

Theory of operation: one function renders the whole response (status line, headers, body) to
bytes. Failures map to a response flag; the flag gives the status and body text
(outcome.SYNTHETIC_STATUS / SYNTHETIC_BODY), so the access log, metrics and the client all see
the same outcome. Local replies are off the hot path; the Date header is formatted per call.
"""

from __future__ import annotations

from email.utils import formatdate
from http import HTTPStatus

from sidecar.http.stream import Headers
from sidecar.outcome import SYNTHETIC_BODY, SYNTHETIC_STATUS, ResponseFlag


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("latin-1")
    except ValueError:
        return b"Unknown"


def render(status: int, body: bytes, close: bool, head_only: bool = False,
           headers: Headers | None = None) -> bytes:
    """A complete HTTP/1.1 response with a text body (omitted for HEAD requests) and any extra
    `headers` (Location, CORS, gRPC status...)."""
    extra = b"".join(n + b": " + v + b"\r\n" for n, v in headers) if headers else b""
    parts = [
        b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status)),
        b"content-length: %d\r\n" % len(body),
        b"content-type: text/plain\r\n" if body else b"",
        extra,
        b"date: " + formatdate(usegmt=True).encode("ascii") + b"\r\n",
        b"server: envoy\r\n",
        b"connection: close\r\n" if close else b"",
        b"\r\n",
        b"" if head_only else body,
    ]
    return b"".join(parts)


def for_flag(flag: ResponseFlag) -> tuple[int, bytes]:
    """The (status, body) Envoy answers with when a request ends with `flag`."""
    return SYNTHETIC_STATUS.get(flag, 500), SYNTHETIC_BODY.get(flag, b"")
