"""Istio's routing kinds as users write them: VirtualService and Gateway (DestinationRule is in
`resources_destination.py`).

Theory of operation: same contract as `resources.py`: the parsers (`parse_virtual_service.py`,
`parse_http_route.py`, `parse_gateway.py`) fill these frozen dataclasses and nothing else reads
YAML; the translators (`translate_routes.py`, `translate_gateway.py`) read only these. Field names
are Istio's in snake case. Durations are float seconds; percentages are floats in 0..100. A field
the user did not write is None (or empty), so the translator can tell "unset" (take the default, or
the enclosing level's value) from a written zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sidecar.config.resources import Resource
from sidecar.config.snapshot import Labels

# --- shared ------------------------------------------------------------------------------------

# gRPC status code names in code order (fault.abort.grpcStatus is written by name).
GRPC_STATUS = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)



@dataclass(frozen=True, slots=True)
class StringMatch:
    """Istio's StringMatch: one of exact, prefix, regex (RE2 full match). All None: any value
    (for header and query matches: the key must be present)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


@dataclass(frozen=True, slots=True)
class Destination:
    """destination: a registry host (short name, FQDN or ServiceEntry host), subset, port."""

    host: str
    subset: str = ""
    port: int | None = None


@dataclass(frozen=True, slots=True)
class HeaderOperations:
    """set / add / remove for one direction; names as written (compared lower-case)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HeadersPolicy:
    """headers: request and response manipulation."""

    request: HeaderOperations = HeaderOperations()
    response: HeaderOperations = HeaderOperations()


# --- VirtualService ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HTTPMatchRequest:
    """http[].match[]: every condition written must hold."""

    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()  # names lower-cased
    without_headers: tuple[tuple[str, StringMatch], ...] = ()
    query_params: tuple[tuple[str, StringMatch], ...] = ()
    port: int | None = None
    source_labels: Labels | None = None
    source_namespace: str = ""
    gateways: tuple[str, ...] = ()
    ignore_uri_case: bool = False


@dataclass(frozen=True, slots=True)
class HTTPRouteDestination:
    """http[].route[]: a destination with its weight (None: not written) and headers."""

    destination: Destination
    weight: int | None = None
    headers: HeadersPolicy | None = None


@dataclass(frozen=True, slots=True)
class RegexRewrite:
    """uriRegexRewrite: RE2 `match`, replaced by `rewrite` (\\1 style groups)."""

    match: str
    rewrite: str


@dataclass(frozen=True, slots=True)
class HTTPRewrite:
    """rewrite: uri replaces the matched prefix (or the whole path on exact/regex matches)."""

    uri: str | None = None
    authority: str | None = None
    uri_regex_rewrite: RegexRewrite | None = None


@dataclass(frozen=True, slots=True)
class HTTPRedirect:
    """redirect: answered by the proxy with a 3xx and a Location built from these."""

    uri: str | None = None
    authority: str | None = None
    port: int | None = None
    derive_port: str = ""  # "" | "FROM_PROTOCOL_DEFAULT" | "FROM_REQUEST_PORT"
    scheme: str | None = None
    redirect_code: int = 301


@dataclass(frozen=True, slots=True)
class HTTPDirectResponse:
    """directResponse: status and an optional body (string, or bytes decoded from base64)."""

    status: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class FaultDelay:
    """fault.delay: hold the request `fixed_delay` seconds for `percentage` % of requests."""

    fixed_delay: float
    percentage: float = 100.0


@dataclass(frozen=True, slots=True)
class FaultAbort:
    """fault.abort: answer `http_status` (or gRPC `grpc_status`, a code name) for `percentage` %."""

    http_status: int | None = None
    grpc_status: str | None = None  # "UNAVAILABLE", ...
    percentage: float = 100.0


@dataclass(frozen=True, slots=True)
class HTTPFaultInjection:
    """fault: delay and/or abort."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """corsPolicy, as Envoy's CORS filter applies it."""

    allow_origins: tuple[StringMatch, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: float | None = None
    allow_credentials: bool | None = None
    unmatched_preflights: str = "FORWARD"  # "FORWARD" | "IGNORE"


@dataclass(frozen=True, slots=True)
class HTTPRetry:
    """retries (applied by the resilience work; parsed and carried here)."""

    attempts: int = 0
    per_try_timeout: float | None = None
    retry_on: str = ""
    retry_remote_localities: bool | None = None


@dataclass(frozen=True, slots=True)
class HTTPMirrorPolicy:
    """mirrors[] (and the older mirror + mirrorPercentage): copy requests to `destination`."""

    destination: Destination
    percentage: float | None = None  # None: 100 %


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    """http[]: ordered; the first route whose match list matches (or that has none) applies."""

    name: str = ""
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[HTTPRouteDestination, ...] = ()
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    rewrite: HTTPRewrite | None = None
    timeout: float | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirrors: tuple[HTTPMirrorPolicy, ...] = ()  # mirror/mirrorPercentage folded in here
    cors_policy: CorsPolicy | None = None
    headers: HeadersPolicy | None = None


@dataclass(frozen=True, slots=True)
class L4MatchAttributes:
    """tcp[].match[]."""

    destination_subnets: tuple[str, ...] = ()
    port: int | None = None
    source_labels: Labels | None = None
    source_namespace: str = ""
    gateways: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TLSMatchAttributes:
    """tls[].match[]: sni_hosts is required by Istio."""

    sni_hosts: tuple[str, ...] = ()
    destination_subnets: tuple[str, ...] = ()
    port: int | None = None
    source_labels: Labels | None = None
    source_namespace: str = ""
    gateways: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteDestination:
    """tcp[].route[] / tls[].route[]."""

    destination: Destination
    weight: int | None = None


@dataclass(frozen=True, slots=True)
class TCPRoute:
    """tcp[]."""

    match: tuple[L4MatchAttributes, ...] = ()
    route: tuple[RouteDestination, ...] = ()


@dataclass(frozen=True, slots=True)
class TLSRoute:
    """tls[]."""

    match: tuple[TLSMatchAttributes, ...] = ()
    route: tuple[RouteDestination, ...] = ()


@dataclass(frozen=True, slots=True)
class VirtualService(Resource):
    """networking.istio.io VirtualService."""

    kind: ClassVar[str] = "VirtualService"
    hosts: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()  # () = "mesh"
    http: tuple[HTTPRoute, ...] = ()
    tls: tuple[TLSRoute, ...] = ()
    tcp: tuple[TCPRoute, ...] = ()
    export_to: tuple[str, ...] = ()


# --- Gateway -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayPort:
    """servers[].port."""

    number: int
    protocol: str  # HTTP | HTTPS | GRPC | HTTP2 | MONGO | TCP | TLS (upper-cased)
    name: str = ""
    target_port: int | None = None


@dataclass(frozen=True, slots=True)
class GatewayTls:
    """servers[].tls (termination is the security work's; PASSTHROUGH routes by SNI here)."""

    mode: str = "SIMPLE"  # PASSTHROUGH | SIMPLE | MUTUAL | AUTO_PASSTHROUGH | ISTIO_MUTUAL
    https_redirect: bool = False
    server_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    credential_name: str = ""
    subject_alt_names: tuple[str, ...] = ()
    min_protocol_version: str = ""


@dataclass(frozen=True, slots=True)
class GatewayServer:
    """servers[]: a port, the hosts it serves ("ns/host" or "host"), TLS settings."""

    port: GatewayPort
    hosts: tuple[str, ...]
    bind: str = ""
    name: str = ""
    tls: GatewayTls | None = None
    default_endpoint: str = ""


@dataclass(frozen=True, slots=True)
class Gateway(Resource):
    """networking.istio.io Gateway: `selector` picks the router-mode proxies that serve it."""

    kind: ClassVar[str] = "Gateway"
    selector: Labels = frozenset()
    servers: tuple[GatewayServer, ...] = ()
