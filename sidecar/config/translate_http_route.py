"""One VirtualService's http[] routes -> snapshot `Route`s, as Istio's translateRoute builds them.

Theory of operation: routes are built for one `Binding`: the proxy's workload, the port the
listener serves and the gateway it serves for ("mesh" for the sidecar, "ns/name" for a gateway).
Each http[] entry becomes one Envoy route per match entry (an entry with no match is a
catch-all), all sharing the entry's action. Match conditions Envoy cannot see per request
(`port`, `sourceLabels`, `sourceNamespace`, `gateways`) are evaluated here: a match entry that
cannot apply to this binding is dropped, and a route whose entries all drop disappears. Routes
after a catch-all are unreachable and not emitted. Destination cluster names come from a
`Destinations` (the RouteBuilder), which warns about unknown hosts and subsets but still names
the cluster, so requests there get 503 NC as in Envoy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from sidecar.config.resources_routing import (
    GRPC_STATUS,
    CorsPolicy,
    Destination,
    HeaderOperations,
    HeadersPolicy,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRewrite,
    HTTPRoute,
    L4MatchAttributes,
    StringMatch,
    TLSMatchAttributes,
    VirtualService,
)
from sidecar.config.snapshot import (
    Cors,
    Fault,
    HeaderMatch,
    HeaderOps,
    Mirror,
    QueryParamMatch,
    Redirect,
    Rewrite,
    Route,
    RouteMatch,
    StringMatcher,
    WeightedCluster,
    Workload,
)
from sidecar.config.snapshot_routes import NO_HEADER_OPS, RetryPolicy

MESH = "mesh"

GRPC_CODES = {name: code for code, name in enumerate(GRPC_STATUS)}


class Destinations(Protocol):
    """What route translation needs from its builder: cluster names and a place to warn."""

    def cluster(self, dest: Destination, vs: VirtualService, port: int, path: str) -> str: ...

    def warn(self, vs: VirtualService, path: str, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Binding:
    """Whom routes are built for: the proxy's workload, the listener port, the gateway."""

    workload: Workload
    port: int
    gateway: str = MESH  # "mesh" (sidecar) or "ns/name" of a Gateway


def gateway_ref(name: str, namespace: str) -> str:
    """A `gateways` entry as "ns/name" ("mesh" stays itself; a bare name is in `namespace`)."""
    if name == MESH or "/" in name:
        return name
    return f"{namespace}/{name}"


def binds(gateways: Sequence[str], namespace: str, gateway: str) -> bool:
    """Whether a `gateways` list (empty: the mesh) names `gateway`."""
    return any(gateway_ref(g, namespace) == gateway for g in (gateways or (MESH,)))


def match_applies(
    m: HTTPMatchRequest | L4MatchAttributes | TLSMatchAttributes, b: Binding, namespace: str
) -> bool:
    """The conditions of a match entry that are fixed for this proxy and port."""
    if m.port is not None and m.port != b.port:
        return False
    if m.source_labels is not None and not m.source_labels <= b.workload.labels:
        return False
    if m.source_namespace and m.source_namespace != b.workload.namespace:
        return False
    return not m.gateways or binds(m.gateways, namespace, b.gateway)


def http_routes(vs: VirtualService, b: Binding, dests: Destinations) -> list[Route]:
    """The Envoy routes of `vs.http` for binding `b`, in order."""
    out: list[Route] = []
    for i, r in enumerate(vs.http):
        entries: list[HTTPMatchRequest | None] = [
            m for m in r.match if match_applies(m, b, vs.meta.namespace)
        ]
        if r.match and not entries:
            continue  # no entry of this route can apply to this proxy / port
        action = _action(vs, i, r, b.port, dests)
        if action is None:
            continue
        for m in entries or [None]:
            match = RouteMatch() if m is None else route_match(m)
            op = route_operation(action, match, vs.meta.name, b.port)
            out.append(replace(action, name=_route_name(r, m), match=match, operation=op))
            if match == RouteMatch():
                return out  # a catch-all: what follows can never match
    return out


def route_operation(route: Route, match: RouteMatch, vs_name: str, port: int) -> str:
    """Istio's decorator operation (the span name): "host:port" of a lone destination cluster,
    else "vs-name:listener-port"; then the path: prefix + "*", the exact path, or the regex."""
    if match.path is not None:
        path = match.path
    elif match.regex is not None:
        path = match.regex
    else:
        path = (match.prefix or "/") + "*"
    parts = route.cluster.split("|")
    if len(parts) == 4 and parts[1].isdigit() and parts[3]:  # outbound|PORT|SUBSET|HOST
        return f"{parts[3]}:{parts[1]}{path}"
    return f"{vs_name}:{port}{path}"


def _route_name(r: HTTPRoute, m: HTTPMatchRequest | None) -> str:
    if m is not None and m.name:
        return f"{r.name}.{m.name}" if r.name else m.name
    return r.name


# --- match -----------------------------------------------------------------------------------


def route_match(m: HTTPMatchRequest) -> RouteMatch:
    """An HTTPMatchRequest's per-request conditions as Envoy's RouteMatch."""
    prefix: str | None = "/"
    path = regex = None
    if m.uri is not None:
        if m.uri.exact is not None:
            prefix, path = None, m.uri.exact
        elif m.uri.prefix is not None:
            prefix = m.uri.prefix
        elif m.uri.regex is not None:
            # Envoy's case_sensitive does not reach regexes; Istio adds RE2's (?i) flag.
            prefix, regex = None, ("(?i)" if m.ignore_uri_case else "") + m.uri.regex
    headers = [
        header_match(f":{name}", sm)
        for name, sm in (("scheme", m.scheme), ("method", m.method), ("authority", m.authority))
        if sm is not None
    ]
    headers += [header_match(name.lower(), sm) for name, sm in m.headers]
    headers += [header_match(name.lower(), sm, invert=True) for name, sm in m.without_headers]
    params = [_query_match(name, sm) for name, sm in m.query_params]
    return RouteMatch(prefix, path, regex, not m.ignore_uri_case, tuple(headers), tuple(params))


def header_match(name: str, sm: StringMatch, invert: bool = False) -> HeaderMatch:
    """A StringMatch on a header; no criterion (or an empty prefix) tests presence."""
    if sm.exact is not None:
        return HeaderMatch(name, exact=sm.exact, invert=invert)
    if sm.prefix:
        return HeaderMatch(name, prefix=sm.prefix, invert=invert)
    if sm.regex is not None:
        return HeaderMatch(name, regex=sm.regex, invert=invert)
    return HeaderMatch(name, present=True, invert=invert)


def _query_match(name: str, sm: StringMatch) -> QueryParamMatch:
    if sm.exact is not None:
        return QueryParamMatch(name, exact=sm.exact)
    if sm.prefix:
        return QueryParamMatch(name, prefix=sm.prefix)
    if sm.regex is not None:
        return QueryParamMatch(name, regex=sm.regex)
    return QueryParamMatch(name, present=True)


# --- actions ---------------------------------------------------------------------------------


def _action(
    vs: VirtualService, i: int, r: HTTPRoute, port: int, dests: Destinations
) -> Route | None:
    """The route's action and policies, with a placeholder name and match."""
    path = f"spec.http[{i}]"
    headers = r.headers or HeadersPolicy()
    base = Route(
        name="",
        match=RouteMatch(),
        timeout=r.timeout or None,  # 0 disables the timeout, as unset does
        rewrite=_rewrite(r.rewrite) if r.rewrite is not None else None,
        request_headers=header_ops(headers.request),
        response_headers=header_ops(headers.response),
        fault=_fault(vs, path, r.fault, dests) if r.fault is not None else None,
        cors=cors(r.cors_policy) if r.cors_policy is not None else None,
        retry=(
            RetryPolicy(r.retries.attempts, r.retries.per_try_timeout, r.retries.retry_on)
            if r.retries is not None
            else None
        ),
    )
    if r.redirect is not None:
        return replace(base, redirect=_redirect(r.redirect))
    if r.direct_response is not None:
        d = r.direct_response
        return replace(base, direct_status=d.status, direct_body=d.body)
    if not r.route:
        dests.warn(vs, path, "no route, redirect or directResponse; route skipped")
        return None
    split = weighted(
        dests,
        vs,
        f"{path}.route",
        port,
        [(d.destination, d.weight, d.headers) for d in r.route],
    )
    if not split:
        return None
    mirrors = tuple(
        Mirror(
            dests.cluster(mp.destination, vs, port, f"{path}.mirrors[{j}]"),
            100.0 if mp.percentage is None else mp.percentage,
        )
        for j, mp in enumerate(r.mirrors)
    )
    one = split[0]
    if len(split) == 1 and not one.request_headers and not one.response_headers:
        return replace(base, cluster=one.cluster, mirrors=mirrors)
    return replace(base, weighted_clusters=split, mirrors=mirrors)


def weighted(
    dests: Destinations,
    vs: VirtualService,
    path: str,
    port: int,
    items: Sequence[tuple[Destination, int | None, HeadersPolicy | None]],
) -> tuple[WeightedCluster, ...]:
    """Destinations as a split: a lone destination weighs 100; weight 0 (or unset among
    several) drops one. Empty (warned) when nothing is left."""
    out: list[WeightedCluster] = []
    for j, (dest, weight, headers) in enumerate(items):
        w = 100 if len(items) == 1 else (weight or 0)
        if w <= 0:
            continue
        h = headers or HeadersPolicy()
        cluster = dests.cluster(dest, vs, port, f"{path}[{j}].destination")
        out.append(WeightedCluster(cluster, w, header_ops(h.request), header_ops(h.response)))
    if not out:
        dests.warn(vs, path, "every destination has weight 0; route skipped")
    return tuple(out)


def header_ops(h: HeaderOperations) -> HeaderOps:
    """set/add/remove with lower-cased names."""
    if not (h.set or h.add or h.remove):
        return NO_HEADER_OPS
    return HeaderOps(
        tuple((k.lower(), v) for k, v in h.set),
        tuple((k.lower(), v) for k, v in h.add),
        tuple(k.lower() for k in h.remove),
    )


def _redirect(r: HTTPRedirect) -> Redirect:
    return Redirect(r.scheme, r.authority, r.port, r.derive_port, r.uri, r.redirect_code)


def _rewrite(r: HTTPRewrite) -> Rewrite:
    rr = r.uri_regex_rewrite
    if rr is not None:
        return Rewrite(None, rr.match, python_template(rr.rewrite), r.authority)
    return Rewrite(r.uri, None, "", r.authority)


def python_template(re2: str) -> str:
    """An RE2 rewrite string ("\\1" groups, "\\\\" a backslash) as a Python re.sub template."""
    out: list[str] = []
    i = 0
    while i < len(re2):
        c = re2[i]
        nxt = re2[i + 1] if i + 1 < len(re2) else ""
        if c == "\\" and nxt.isdigit():
            out.append(f"\\g<{nxt}>")
            i += 2
        elif c == "\\" and nxt == "\\":
            out.append("\\\\")
            i += 2
        else:
            out.append("\\\\" if c == "\\" else c)
            i += 1
    return "".join(out)


def _fault(
    vs: VirtualService, path: str, f: HTTPFaultInjection, dests: Destinations
) -> Fault | None:
    delay, abort = f.delay, f.abort
    status = grpc = None
    if abort is not None:
        status = abort.http_status
        if abort.grpc_status is not None:
            name = abort.grpc_status.upper()
            grpc = int(name) if name.isdigit() else GRPC_CODES.get(name)
            if grpc is None:
                reason = f"unknown gRPC status {abort.grpc_status!r}; abort skipped"
                dests.warn(vs, f"{path}.fault.abort.grpcStatus", reason)
    if delay is None and status is None and grpc is None:
        return None
    return Fault(
        delay=delay.fixed_delay if delay is not None else None,
        delay_percent=delay.percentage if delay is not None else 100.0,
        abort_status=status,
        abort_grpc_status=grpc,
        abort_percent=abort.percentage if abort is not None else 100.0,
    )


def cors(c: CorsPolicy) -> Cors:
    """corsPolicy as Envoy's: lists comma-joined, maxAge in whole seconds."""
    return Cors(
        allow_origins=tuple(StringMatcher(o.exact, o.prefix, o.regex) for o in c.allow_origins),
        allow_methods=",".join(c.allow_methods),
        allow_headers=",".join(c.allow_headers),
        expose_headers=",".join(c.expose_headers),
        max_age="" if c.max_age is None else str(int(c.max_age)),
        allow_credentials=c.allow_credentials,
        forward_unmatched_preflights=c.unmatched_preflights != "IGNORE",
    )
