"""What a matched route does to a request, compiled once per route.

Theory of operation: `compile_actions(route, vhost_cors)` turns a route's policies into a
`RouteActions` (or None when the route only forwards, so the common request pays one `is None`
test). The stream applies them in Envoy's filter order (active_stream.py): CORS (cors.py), fault
(fault.py), redirect, direct response, then forwarding with the destination picked by weight
(`WeightedPick`), the request header edits of the destination and then of the route (Envoy
applies the most specific first, so the route's `set` wins), the path and authority rewrite;
the response header edits go onto the upstream's response head the same way.

Header edits are remove, then set, then add (Envoy's order). Host and pseudo-headers cannot be
edited (Envoy refuses them); the end-to-end headers the codecs lift out of the list
(x-forwarded-for, x-forwarded-proto, x-request-id) are edited on their attributes.
"""

from __future__ import annotations

import bisect
import random
import re

from sidecar.config.snapshot import HeaderOps, Redirect, Rewrite, Route
from sidecar.config.snapshot_routes import Cors, WeightedCluster
from sidecar.http.cors import CorsPolicy
from sidecar.http.fault import FaultPolicy
from sidecar.http.stream import Headers, RequestHead, ResponseHead

_LIFTED = {
    b"x-forwarded-for": "forwarded_for",
    b"x-forwarded-proto": "forwarded_proto",
    b"x-request-id": "request_id",
}
_DEFAULT_PORT = {b"http": b"80", b"https": b"443"}


class WeightedPick:
    """A route's destination: one cluster, or a weighted split picked per request."""

    __slots__ = ("cumulative", "fixed_cluster", "route", "total_weight")

    def __init__(self, route: Route) -> None:
        self.route = route
        acc: list[int] = []
        total = 0
        for w in route.weighted_clusters:
            total += max(0, w.weight)
            acc.append(total)
        self.cumulative = acc
        self.total_weight = total
        self.fixed_cluster: str | None = route.cluster if route.cluster or not total else None

    def destination(self) -> WeightedCluster | None:
        """The destination of a split for this request (None when the route has one cluster)."""
        if self.fixed_cluster is not None:
            return None
        i = bisect.bisect_right(self.cumulative, random.randrange(self.total_weight))
        return self.route.weighted_clusters[i]

    def cluster(self) -> str:
        """The destination cluster name for this request ("" when the route names none)."""
        if self.fixed_cluster is not None:
            return self.fixed_cluster
        dest = self.destination()
        return dest.cluster if dest is not None else ""


class CompiledOps:
    """One direction's header edits as bytes: remove (incl. the names `set` replaces), set, add."""

    __slots__ = ("add", "drop", "set")

    def __init__(self, ops: HeaderOps) -> None:
        def ok(name: str) -> bool:
            return not name.startswith(":") and name.lower() != "host"

        self.set = tuple((n.lower().encode("latin-1"), v.encode("latin-1"))
                         for n, v in ops.set if ok(n))
        self.add = tuple((n.lower().encode("latin-1"), v.encode("latin-1"))
                         for n, v in ops.add if ok(n))
        self.drop = frozenset({n.lower().encode("latin-1") for n in ops.remove if ok(n)}
                              | {n for n, _ in self.set})

    def edit_request(self, head: RequestHead) -> None:
        drop = self.drop
        if drop:
            head.headers = [h for h in head.headers if h[0].lower() not in drop]
            for name in drop:
                attr = _LIFTED.get(name)
                if attr is not None:
                    setattr(head, attr, None)
        for pairs in (self.set, self.add):
            for name, value in pairs:
                attr = _LIFTED.get(name)
                if attr is None:
                    head.headers.append((name, value))
                else:
                    old: bytes | None = getattr(head, attr)
                    setattr(head, attr, value if old is None else old + b"," + value)

    def edit_response(self, headers: Headers) -> Headers:
        if self.drop:
            drop = self.drop
            headers = [h for h in headers if h[0].lower() not in drop]
        headers += self.set
        headers += self.add
        return headers


def _ops(ops: HeaderOps) -> CompiledOps | None:
    return CompiledOps(ops) if ops else None


class CompiledRewrite:
    """Path (prefix or regex substitution) and authority rewrite."""

    __slots__ = ("authority", "prefix", "regex", "substitution")

    def __init__(self, rw: Rewrite) -> None:
        self.prefix = rw.prefix.encode("utf-8") if rw.prefix is not None else None
        self.regex = re.compile(rw.regex.encode("utf-8")) if rw.regex is not None else None
        self.substitution = rw.substitution.encode("utf-8")
        self.authority = rw.authority.encode("latin-1") if rw.authority else None

    def apply(self, head: RequestHead, matched_len: int) -> None:
        """`matched_len`: the length of the matched prefix, or -1 (exact/regex: whole path)."""
        path = head.path
        new = path
        if self.prefix is not None:
            if matched_len >= 0:
                new = self.prefix + path[matched_len:]
            else:
                new = self.prefix + _query_part(path)
        elif self.regex is not None:
            bare = _bare(path)
            new = self.regex.sub(self.substitution, bare) + path[len(bare):]
        if new != path:
            if not new.startswith(b"/"):
                new = b"/" + new
            head.headers.append((b"x-envoy-original-path", path))
            head.path = new
        if self.authority is not None:
            head.authority = self.authority


def _bare(path: bytes) -> bytes:
    """The path without query or fragment."""
    for sep in (b"?", b"#"):
        i = path.find(sep)
        if i >= 0:
            path = path[:i]
    return path


def _query_part(path: bytes) -> bytes:
    """"?query" (or b"")."""
    i = path.find(b"?")
    return path[i:] if i >= 0 else b""


def split_host_port(authority: bytes) -> tuple[bytes, bytes | None]:
    """("host", b"port" or None), IPv6 literals in brackets understood."""
    if authority.startswith(b"["):
        end = authority.find(b"]")
        if end >= 0 and authority[end + 1 : end + 2] == b":":
            return authority[: end + 1], authority[end + 2 :]
        return authority, None
    host, sep, port = authority.rpartition(b":")
    if sep and port.isdigit():
        return host, port
    return authority, None


def redirect_location(head: RequestHead, rd: Redirect, local_port: int) -> bytes:
    """The Location of a redirect, built as Envoy builds it (the query kept unless the new path
    carries one); `local_port` is the port the request came in on (derivePort
    FROM_REQUEST_PORT when the Host names none)."""
    request_scheme = head.forwarded_proto or head.scheme
    scheme = rd.scheme.encode("ascii") if rd.scheme else request_scheme
    if rd.authority:
        host = rd.authority.encode("latin-1")
        port = None
    else:
        host, port = split_host_port(head.authority)
    if rd.port is not None:
        port = b"%d" % rd.port
    elif rd.derive_port == "FROM_PROTOCOL_DEFAULT":
        port = None
    elif rd.derive_port == "FROM_REQUEST_PORT":
        port = split_host_port(head.authority)[1] or b"%d" % local_port
    elif scheme != request_scheme and port == _DEFAULT_PORT.get(request_scheme):
        port = None  # http://h:80 -> https://h, not https://h:80
    path = head.path
    if rd.path is not None:
        new = rd.path.encode("utf-8")
        path = new if b"?" in new else new + _query_part(path)
    netloc = host if port is None else host + b":" + port
    return scheme + b"://" + netloc + path


class RouteActions:
    """A route's compiled policies (None on a route that only forwards)."""

    __slots__ = ("cors", "dest_ops", "fault", "redirect", "request_ops", "response_ops",
                 "rewrite")

    def __init__(self, route: Route, vhost_cors: Cors | None) -> None:
        cors = route.cors if route.cors is not None else vhost_cors
        self.cors = CorsPolicy(cors) if cors is not None else None
        self.fault = FaultPolicy(route.fault) if route.fault is not None else None
        self.redirect = route.redirect
        self.rewrite = CompiledRewrite(route.rewrite) if route.rewrite is not None else None
        self.request_ops = _ops(route.request_headers)
        self.response_ops = _ops(route.response_headers)
        # Per destination of a split: (request ops, response ops), by cluster and weight entry.
        self.dest_ops: dict[int, tuple[CompiledOps | None, CompiledOps | None]] = {
            id(w): (_ops(w.request_headers), _ops(w.response_headers))
            for w in route.weighted_clusters if w.request_headers or w.response_headers
        }

    def edit_request(self, head: RequestHead, dest: WeightedCluster | None,
                     matched_len: int) -> CompiledOps | None:
        """Header edits (destination's, then the route's) and rewrite; returns the
        destination's response edits, if any."""
        dest_response: CompiledOps | None = None
        if dest is not None and self.dest_ops:
            pair = self.dest_ops.get(id(dest))
            if pair is not None:
                if pair[0] is not None:
                    pair[0].edit_request(head)
                dest_response = pair[1]
        if self.request_ops is not None:
            self.request_ops.edit_request(head)
        if self.rewrite is not None:
            self.rewrite.apply(head, matched_len)
        return dest_response


def compile_actions(route: Route, vhost_cors: Cors | None) -> RouteActions | None:
    """The route's policies, or None when it has none beyond forwarding."""
    has_dest_ops = any(w.request_headers or w.response_headers for w in route.weighted_clusters)
    if (route.cors is None and vhost_cors is None and route.fault is None
            and route.redirect is None and route.rewrite is None and not route.request_headers
            and not route.response_headers and not has_dest_ops):
        return None
    return RouteActions(route, vhost_cors)


def edit_response(head: ResponseHead, ops: tuple[CompiledOps | None, ...],
                  extra: Headers | None) -> None:
    """Apply response edits (most specific first) and add `extra` (CORS, set-cookie)."""
    headers = head.headers
    for o in ops:
        if o is not None:
            headers = o.edit_response(headers)
    if extra:
        headers = headers + extra
    head.headers = headers
