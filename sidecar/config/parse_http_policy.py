"""The per-route policies of a VirtualService http route: retries, fault, mirrors, CORS.

Theory of operation: each reader takes the policy's node and returns its `resources_routing`
type, with Istio's checks: fault has a delay and/or an abort, an abort one status kind (HTTP
200..599, a gRPC code name; HTTP/2 errors are not implemented), percentages 0..100 with the
deprecated integer forms warned (a fault without any percentage applies to 0% of requests, as
Istio translates it); retries are off at 0 attempts and `retryOn` names Envoy's policies or
status codes; `mirror` and `mirrors` exclude each other; CORS methods are HTTP methods.
"""

from __future__ import annotations

from sidecar.config import parse_routing_common as common
from sidecar.config.nodes import Fields, Node
from sidecar.config.resources_routing import (
    GRPC_STATUS,
    CorsPolicy,
    FaultAbort,
    FaultDelay,
    HTTPFaultInjection,
    HTTPMirrorPolicy,
    HTTPRetry,
    StringMatch,
)

RETRY_ON = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)
CORS_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"}
)


def status(node: Node) -> int | None:
    """An HTTP status a proxy can answer with: 200..599 (Istio's range)."""
    value = node.integer()
    if value is not None and not 200 <= value <= 599:
        node.error(f"HTTP status {value} is not in 200..599")
        return None
    return value


def retries(node: Node) -> HTTPRetry | None:
    f = node.fields()
    if f is None:
        return None
    attempts = f.read("attempts", Node.integer, 0)
    per_try = f.read("perTryTimeout", common.duration, None)
    retry_on = f.string("retryOn")
    remote = f.read("retryRemoteLocalities", Node.boolean, None)
    f.finish()
    ok = True
    if attempts < 0:
        common.error_at(f, "attempts", "attempts must not be negative")
        ok = False
    elif attempts == 0 and ({"perTryTimeout", "retryOn", "retryRemoteLocalities"} & set(f.values)):
        common.error_at(f, "attempts", "retry policy set while attempts is 0 (retries disabled)")
        ok = False
    for policy in retry_on.split(",") if retry_on else []:
        policy = policy.strip()
        if policy not in RETRY_ON and not (policy.isdigit() and 100 <= int(policy) <= 599):
            common.error_at(f, "retryOn", f"{policy!r} is not a valid retryOn policy")
            ok = False
    return HTTPRetry(attempts, per_try, retry_on, remote) if ok else None


def _fault_percentage(f: Fields, what: str) -> float | None:
    """percentage {value}, else the deprecated integer percent; neither: 0 % (as Istio)."""
    pct = f.read("percentage", common.percent, None)
    old = f.read("percent", common.int_percent, None)
    if "percent" in f.values:
        common.warn_at(f, "percent", 'deprecated: use "percentage: {value: N}"')
    if pct is not None:
        return pct
    if old is not None:
        return old
    if "percentage" not in f.values and "percent" not in f.values:
        f.node.warn(f"no percentage: Istio {what} 0% of requests; set percentage.value")
        return 0.0
    return None


def _delay(node: Node) -> FaultDelay | None:
    f = node.fields()
    if f is None:
        return None
    if f.get("exponentialDelay") is not None:
        common.error_at(f, "exponentialDelay", "exponentialDelay is not supported (as in Istio)")
    fixed = f.read_required("fixedDelay", common.duration)
    pct = _fault_percentage(f, "delays")
    f.finish()
    return None if fixed is None or pct is None else FaultDelay(fixed, pct)


def _abort(node: Node) -> FaultAbort | None:
    f = node.fields()
    if f is None:
        return None
    http = f.read("httpStatus", status, None)
    grpc = f.read("grpcStatus", Node.string, None)
    kinds = [k for k in ("httpStatus", "grpcStatus", "http2Error") if k in f.values]
    if f.get("http2Error") is not None:
        common.warn_at(f, "http2Error", "HTTP/2 error aborts are not implemented; abort ignored")
    pct = _fault_percentage(f, "aborts")
    f.finish()
    if len(kinds) > 1:
        node.error(f"only one of httpStatus, grpcStatus, http2Error may be set (got {kinds})")
        return None
    if grpc is not None and grpc not in GRPC_STATUS:
        common.error_at(f, "grpcStatus", f"{grpc!r} is not a gRPC status name (e.g. UNAVAILABLE)")
        return None
    if not kinds:
        node.warn("abort has no httpStatus or grpcStatus; ignored")
    if pct is None or (http is None and grpc is None):
        return None
    return FaultAbort(http, grpc, pct)


def fault(node: Node) -> HTTPFaultInjection | None:
    f = node.fields()
    if f is None:
        return None
    delay = f.read("delay", _delay, None)
    abort = f.read("abort", _abort, None)
    f.finish()
    if "delay" not in f.values and "abort" not in f.values:
        node.error("fault must have a delay and/or an abort")
        return None
    return HTTPFaultInjection(delay, abort)


def _mirror_policy(node: Node) -> HTTPMirrorPolicy | None:
    f = node.fields()
    if f is None:
        return None
    dest = f.read_required("destination", common.destination)
    pct = f.read("percentage", common.percent, None)
    f.finish()
    return None if dest is None else HTTPMirrorPolicy(dest, pct)


def mirrors(f: Fields) -> tuple[HTTPMirrorPolicy, ...]:
    """mirrors[], or the older mirror + mirrorPercentage / mirrorPercent."""
    listed = f.get("mirrors")
    out = [] if listed is None else [_mirror_policy(n) for n in listed.items()]
    single = f.read("mirror", common.destination, None)
    pct = f.read("mirrorPercentage", common.percent, None)
    old = f.read("mirrorPercent", common.int_percent, None)
    if "mirrorPercent" in f.values:
        common.warn_at(f, "mirrorPercent", 'deprecated: use "mirrorPercentage: {value: N}"')
    if "mirror" in f.values and listed is not None:
        common.error_at(f, "mirror", "only one of mirror and mirrors may be set")
        return ()
    if single is not None:
        out.append(HTTPMirrorPolicy(single, pct if pct is not None else old))
    return tuple(m for m in out if m is not None)


def cors(node: Node) -> CorsPolicy | None:
    f = node.fields()
    if f is None:
        return None
    origins: list[StringMatch] = []
    for item in common.items(f, "allowOrigins"):
        sm = common.string_match(item)
        if sm is not None and sm == StringMatch():
            item.error("an allowed origin must set exact, prefix or regex")
        elif sm is not None:
            origins.append(sm)
    legacy = f.get("allowOrigin")
    if legacy is not None:
        legacy.warn('deprecated: use "allowOrigins" with exact matches')
        origins.extend(StringMatch(exact=o) for o in legacy.string_list())
    methods = common.opt(f, "allowMethods", Node.string_list) or ()
    for i, m in enumerate(methods):
        if m not in CORS_METHODS:
            common.error_at(f, "allowMethods", f"allowMethods[{i}]: {m!r} is not an HTTP method")
    allow_headers = common.opt(f, "allowHeaders", _cors_headers) or ()
    expose = common.opt(f, "exposeHeaders", _cors_headers) or ()
    max_age = f.read("maxAge", lambda n: common.duration(n, whole_seconds=True), None)
    creds = f.read("allowCredentials", Node.boolean, None)
    unmatched = f.choice("unmatchedPreflights", ("UNSPECIFIED", "FORWARD", "IGNORE"), "FORWARD")
    f.finish()
    return CorsPolicy(
        tuple(origins),
        methods,
        allow_headers,
        expose,
        max_age,
        creds,
        "FORWARD" if unmatched == "UNSPECIFIED" else unmatched,
    )


def _cors_headers(node: Node) -> tuple[str, ...]:
    out: list[str] = []
    for item in node.items():
        name = item.string()
        if name is None:
            continue
        if name != "*" and not name:
            item.error("header name must not be empty")
            continue
        out.append(name)
    return tuple(out)
