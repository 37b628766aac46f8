"""The consistent-hash key of a request, from the cluster's HashPolicy (DestinationRule
`consistentHash`: httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName).

Theory of operation: the key is hash64 of the chosen value; no value means no key, and the
balancer then picks at random, as Envoy does. A cookie policy with a `ttl` whose cookie is absent
generates the cookie as Envoy does: the value is derived from the downstream connection (client
address and port, and the address it reached; clients sharing an address, behind one gateway
or NAT, get sessions of their own; the caller passes only the client's IP when it has no
connection, e.g. a mirrored copy), the request is hashed by that value, and
the caller adds the returned Set-Cookie value to the response; from then on the client presents
the cookie and is hashed by the same value. ttl 0 makes it a session cookie (no Max-Age). A
cookie policy without a ttl never generates one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.config.snapshot import HashPolicy
from sidecar.upstream.lb_hash import hash64

if TYPE_CHECKING:
    from sidecar.http.stream import RequestHead


def cookie_value(cookie_header: bytes, name: bytes) -> bytes | None:
    """The value of cookie `name` in a Cookie header ("a=1; b=2"), without quotes. Repeated
    Cookie headers (HTTP/2 sends one per cookie) arrive joined by "," (never in a cookie)."""
    for part in cookie_header.replace(b",", b";").split(b";"):
        k, eq, v = part.partition(b"=")
        if eq and k.strip() == name:
            v = v.strip()
            if len(v) >= 2 and v[0] == 0x22 and v[-1] == 0x22:  # "quoted"
                v = v[1:-1]
            return v
    return None


def query_value(path: bytes, name: bytes) -> bytes | None:
    """The raw (undecoded) value of query parameter `name` in a request target."""
    _, q, query = path.partition(b"?")
    if not q:
        return None
    query = query.partition(b"#")[0]
    for part in query.split(b"&"):
        k, _, v = part.partition(b"=")
        if k == name:
            return v
    return None


def generated_cookie(connection: bytes) -> bytes:
    """A cookie value for a client without one: 16 hex digits derived from its connection."""
    return b"%016x" % hash64(b"cookie:" + connection)


def set_cookie(policy: HashPolicy, value: bytes) -> bytes:
    """The Set-Cookie header value for a generated cookie."""
    out = policy.cookie.encode() + b"=" + value
    ttl = policy.cookie_ttl
    if ttl:  # None never gets here; 0 is a session cookie
        out += b"; Max-Age=%d" % max(1, int(ttl))
    if policy.cookie_path:
        out += b"; Path=" + policy.cookie_path.encode()
    return out + b"; HttpOnly"


def request_key(
    policy: HashPolicy, head: RequestHead, remote_ip: bytes, connection: bytes | None = None
) -> tuple[int | None, bytes | None]:
    """(key, Set-Cookie value or None) for this request; key None: no value to hash by.
    `connection` identifies the downstream connection a generated cookie derives from
    (default: `remote_ip`)."""
    if policy.header:
        value = head.header(policy.header.encode())
        return (hash64(value) if value is not None else None), None
    if policy.cookie:
        name = policy.cookie.encode()
        header = head.header(b"cookie")
        value = cookie_value(header, name) if header is not None else None
        if value is not None:
            return hash64(value), None
        if policy.cookie_ttl is None:
            return None, None
        value = generated_cookie(remote_ip if connection is None else connection)
        return hash64(value), set_cookie(policy, value)
    if policy.source_ip:
        return hash64(remote_ip), None
    if policy.query_parameter:
        value = query_value(head.path, policy.query_parameter.encode())
        return (hash64(value) if value is not None else None), None
    return None, None
