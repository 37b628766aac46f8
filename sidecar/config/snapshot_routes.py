"""The routing and load-balancing parts of the snapshot, in Envoy's vocabulary.

Theory of operation: see `snapshot.py` (which re-exports these). A `RouteConfig` holds virtual
hosts; a virtual host holds ordered routes; a route is a match plus one action: forward (to one
cluster or a weighted split), redirect, or a direct response, with the per-route policies Envoy
applies around forwarding (header edits, rewrite, fault injection, CORS, mirroring, timeout).
The cluster-side policy types (`LbPolicy`, `HashPolicy`, `LocalityPolicy`) live here too, because
Istio writes them in the same resources. All frozen: compiled once per snapshot by
`http/router.py` and `upstream/lb*.py`, never read field by field per request.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StringMatcher:
    """exact, prefix or regex (full match); all None matches any value."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """Match one request header (name is lower-case); exactly one of the criteria is set.

    Pseudo-header names address the request line: ":method", ":scheme", ":authority", ":path".
    """

    name: str
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None  # True: must be present; False: must be absent
    invert: bool = False  # VirtualService withoutHeaders


@dataclass(frozen=True, slots=True)
class QueryParamMatch:
    """Match one query parameter (name as written); criteria as HeaderMatch."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """What a request must look like for a route to apply; default matches every request."""

    prefix: str | None = "/"
    path: str | None = None  # exact path
    regex: str | None = None  # full-match regex on the path (no query)
    case_sensitive: bool = True
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[QueryParamMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderOps:
    """Header edits for one direction, applied remove, then set, then add (names lower-case)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


NO_HEADER_OPS = HeaderOps()


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    """One destination of a weighted split, with the header edits of that destination."""

    cluster: str
    weight: int
    request_headers: HeaderOps = NO_HEADER_OPS
    response_headers: HeaderOps = NO_HEADER_OPS


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Before forwarding: replace the matched prefix (`prefix`; on an exact or regex match the
    whole path) or apply `regex` -> `substitution` to the path; replace the authority."""

    prefix: str | None = None
    regex: str | None = None
    substitution: str = ""
    authority: str | None = None


@dataclass(frozen=True, slots=True)
class Redirect:
    """Answer with `code` and a Location: each part replaced when set, else the request's."""

    scheme: str | None = None
    authority: str | None = None  # host (and port, if written there)
    port: int | None = None
    derive_port: str = ""  # "FROM_PROTOCOL_DEFAULT" | "FROM_REQUEST_PORT" | ""
    path: str | None = None  # replaces the whole path (the query is kept)
    code: int = 301


@dataclass(frozen=True, slots=True)
class Mirror:
    """Send a copy of matching requests to `cluster` for `percent` % of them; answers dropped."""

    cluster: str
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class Fault:
    """Fault injection: a delay and/or an abort, each for a share of requests (percent)."""

    delay: float | None = None  # seconds
    delay_percent: float = 100.0
    abort_status: int | None = None  # HTTP status
    abort_grpc_status: int | None = None  # gRPC status code (answered trailers-only)
    abort_percent: float = 100.0


@dataclass(frozen=True, slots=True)
class Cors:
    """Envoy's CORS policy for a route."""

    allow_origins: tuple[StringMatcher, ...] = ()
    allow_methods: str = ""  # comma-joined, as sent in Access-Control-Allow-Methods
    allow_headers: str = ""
    expose_headers: str = ""
    max_age: str = ""  # seconds, as sent
    allow_credentials: bool | None = None
    forward_unmatched_preflights: bool = True


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Istio's retries, kept for the resilience work (not applied yet)."""

    attempts: int = 0
    per_try_timeout: float | None = None
    retry_on: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """Where a matching request goes, and under what policy."""

    name: str
    match: RouteMatch
    cluster: str = ""  # single destination; or
    weighted_clusters: tuple[WeightedCluster, ...] = ()  # a split (weights sum > 0)
    timeout: float | None = None  # seconds; None = no route timeout (Istio's default)
    direct_status: int | None = None  # directResponse / synthetic answer instead of forwarding
    direct_body: bytes = b""
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    request_headers: HeaderOps = NO_HEADER_OPS
    response_headers: HeaderOps = NO_HEADER_OPS
    mirrors: tuple[Mirror, ...] = ()
    fault: Fault | None = None
    cors: Cors | None = None
    retry: RetryPolicy | None = None
    # Envoy's route decorator: the span name, as Istio builds it ("host:port/path*"); "" = none
    operation: str = ""


@dataclass(frozen=True, slots=True)
class VirtualHost:
    """A set of domains (Host/:authority values) and the ordered routes for them."""

    name: str  # "reviews.default.svc.cluster.local:9080"
    domains: tuple[str, ...]  # exact names, "*.suffix", "prefix*" or "*"; with and without ":port"
    routes: tuple[Route, ...]
    cors: Cors | None = None  # applies to routes without their own


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """Virtual hosts for one HTTP listener or outbound port (named like Istio: "9080")."""

    name: str
    virtual_hosts: tuple[VirtualHost, ...]


# --- cluster policy ------------------------------------------------------------------------------


class LbPolicy(enum.Enum):
    """How a cluster picks an endpoint (Envoy's lb_policy; Istio's default is LEAST_REQUEST)."""

    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"  # power of two choices
    RANDOM = "RANDOM"
    RING_HASH = "RING_HASH"
    MAGLEV = "MAGLEV"


@dataclass(frozen=True, slots=True)
class HashPolicy:
    """Where a consistent-hash key comes from; exactly one source is set."""

    header: str = ""  # lower-case header name
    cookie: str = ""  # cookie name; generated with Set-Cookie when absent
    cookie_path: str = ""
    cookie_ttl: float | None = None
    source_ip: bool = False
    query_parameter: str = ""


@dataclass(frozen=True, slots=True)
class LocalityPolicy:
    """Locality-aware balancing: priorities by closeness to the proxy, failover, distribute."""

    distribute: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()  # from -> (to, weight)
    failover: tuple[tuple[str, str], ...] = ()  # (from region, to region)
    failover_priority: tuple[str, ...] = ()  # label keys
