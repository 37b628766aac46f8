"""CORS, as Envoy's cors filter applies a route's (or its virtual host's) policy.

Theory of operation: a request carrying `Origin` is a CORS request. If the origin is allowed (a
matcher matches it, or matches "*"), then
- a preflight (OPTIONS with Access-Control-Request-Method) is answered by the proxy: 200 with
  Access-Control-Allow-Origin (the origin), -Allow-Credentials, -Allow-Methods, -Allow-Headers,
  -Max-Age, never reaching the upstream;
- any other request goes on, and its response gets Access-Control-Allow-Origin,
  -Allow-Credentials and -Expose-Headers.
A preflight from an origin that is not allowed is forwarded, or with
`forward_unmatched_preflights` false answered 200 without any allow header. Requests without
Origin are untouched.
"""

from __future__ import annotations

import re

from sidecar.config.snapshot_routes import Cors, StringMatcher
from sidecar.http.stream import Headers, RequestHead

FORWARD = 0  # not a preflight this policy answers: forward the request
ANSWER = 1  # answer the preflight with the returned headers (status 200)


class _Origin:
    __slots__ = ("exact", "prefix", "regex")

    def __init__(self, m: StringMatcher) -> None:
        self.exact = m.exact.encode("latin-1") if m.exact is not None else None
        self.prefix = m.prefix.encode("latin-1") if m.prefix is not None else None
        self.regex = re.compile(m.regex.encode("latin-1")) if m.regex is not None else None

    def matches(self, value: bytes) -> bool:
        if self.exact is not None:
            return value == self.exact
        if self.prefix is not None:
            return value.startswith(self.prefix)
        if self.regex is not None:
            return self.regex.fullmatch(value) is not None
        return True


class CorsPolicy:
    """A compiled CORS policy."""

    __slots__ = ("_actual", "_origins", "_preflight", "forward_unmatched")

    def __init__(self, cors: Cors) -> None:
        self._origins = tuple(_Origin(m) for m in cors.allow_origins)
        self.forward_unmatched = cors.forward_unmatched_preflights
        credentials: Headers = (
            [(b"access-control-allow-credentials", b"true")] if cors.allow_credentials else [])
        pre = list(credentials)
        for name, value in ((b"access-control-allow-methods", cors.allow_methods),
                            (b"access-control-allow-headers", cors.allow_headers),
                            (b"access-control-max-age", cors.max_age)):
            if value:
                pre.append((name, value.encode("latin-1")))
        self._preflight = tuple(pre)
        actual = list(credentials)
        if cors.expose_headers:
            actual.append((b"access-control-expose-headers", cors.expose_headers.encode("latin-1")))
        self._actual = tuple(actual)

    def allows(self, origin: bytes) -> bool:
        return any(o.matches(b"*") or o.matches(origin) for o in self._origins)

    def decide(self, head: RequestHead) -> tuple[int, Headers | None]:
        """(ANSWER, preflight headers) or (FORWARD, headers to add to the response or None)."""
        origin = head.header(b"origin")
        if not origin:
            return FORWARD, None
        preflight = head.method == b"OPTIONS" and bool(
            head.header(b"access-control-request-method"))
        allowed = self.allows(origin)
        if preflight:
            if allowed:
                return ANSWER, [(b"access-control-allow-origin", origin), *self._preflight]
            if not self.forward_unmatched:
                return ANSWER, []
            return FORWARD, None
        if not allowed:
            return FORWARD, None
        return FORWARD, [(b"access-control-allow-origin", origin), *self._actual]
