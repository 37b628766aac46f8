"""One VirtualService `http[]` route: matches, destinations and the per-route policies.

Theory of operation: `http_route` reads every field of an HTTPRoute into `HTTPRoute`, checking
what Istio's validation checks (pkg/config/validation/virtualservice.go): a route forwards
(`route`), redirects or answers directly, and these exclude each other (as do fault/rewrite with
redirect or directResponse); weights are non-negative and, with more than one destination,
must not all be zero (Istio's rule: weights are relative, a destination gets weight/sum; they
need not sum to 100); percentages are 0..100; status codes are in range; regexes compile.
The deprecated `mirror` + `mirrorPercentage`/`mirrorPercent` fold into `mirrors`. A route that
delegates (`delegate`) is not implemented: warned and dropped (returns None).
"""

from __future__ import annotations

import base64
import binascii

from sidecar.config import parse_routing_common as common
from sidecar.config.nodes import Fields, Node
from sidecar.config.parse_headers import (
    authority_set,
    header_matches,
    headers_policy,
    query_matches,
)
from sidecar.config.parse_http_policy import cors, fault, mirrors, retries, status
from sidecar.config.resources_routing import (
    HTTPDirectResponse,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRewrite,
    HTTPRoute,
    HTTPRouteDestination,
    RegexRewrite,
    StringMatch,
)

_DIRECT_BODY_MAX = 1024 * 1024
_DIRECT_BODY_WARN = 100 * 1024


def _optional_match(f: Fields, key: str, *, empty_prefix_ok: bool = False) -> StringMatch | None:
    child = f.get(key)
    return None if child is None else common.string_match(child, empty_prefix_ok=empty_prefix_ok)


def match_request(node: Node) -> HTTPMatchRequest | None:
    f = node.fields()
    if f is None:
        return None
    name = f.string("name")
    uri = _optional_match(f, "uri", empty_prefix_ok=True)
    scheme = _optional_match(f, "scheme")
    method = _optional_match(f, "method")
    authority = _optional_match(f, "authority")
    headers = common.opt(f, "headers", header_matches) or ()
    without = common.opt(f, "withoutHeaders", lambda n: header_matches(n, without=True)) or ()
    query = common.opt(f, "queryParams", query_matches) or ()
    port = f.read("port", Node.port, 0) or None
    labels = f.read("sourceLabels", common.source_labels, None)
    namespace = f.read("sourceNamespace", common.source_namespace, "")
    gateways = common.opt(f, "gateways", common.gateway_names) or ()
    ignore_case = f.read("ignoreUriCase", Node.boolean, False)
    f.finish()
    return HTTPMatchRequest(
        name,
        uri,
        scheme,
        method,
        authority,
        headers,
        without,
        query,
        port,
        labels,
        namespace,
        gateways,
        ignore_case,
    )


def route_destination(node: Node) -> HTTPRouteDestination | None:
    f = node.fields()
    if f is None:
        return None
    dest = f.read_required("destination", common.destination)
    weight = f.read("weight", _weight, None)
    headers = f.read("headers", headers_policy, None)
    f.finish()
    return None if dest is None else HTTPRouteDestination(dest, weight, headers)


def _weight(node: Node) -> int | None:
    value = node.integer()
    if value is not None and value < 0:
        node.error(f"weight {value} must not be negative")
        return None
    return value


def check_weights(node: Node, weights: list[int | None]) -> None:
    """Istio: with more than one destination, the weights must not all be zero (or unset)."""
    if len(weights) > 1 and sum(w or 0 for w in weights) == 0:
        node.error(
            "total destination weight is 0: with more than one destination, give them weights "
            "(relative: each gets weight/sum of the traffic)"
        )


def redirect(node: Node) -> HTTPRedirect | None:
    f = node.fields()
    if f is None:
        return None
    uri = f.read("uri", Node.string, None)
    authority = f.read("authority", Node.string, None)
    port = f.read("port", Node.port, None)
    derive = f.choice("derivePort", ("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"), "")
    scheme = f.read("scheme", Node.string, None)
    code = f.read("redirectCode", Node.integer, 301)
    f.finish()
    ok = True
    if port is not None and derive:
        common.error_at(f, "derivePort", "only one of port and derivePort may be set")
        ok = False
    if scheme is not None and scheme not in ("http", "https"):
        common.error_at(f, "scheme", f'invalid redirect scheme {scheme!r}: "http" or "https"')
        ok = False
    if "redirectCode" in f.values and not 300 <= code <= 399:
        common.error_at(f, "redirectCode", f"{code} is not a redirect code (300..399)")
        ok = False
    if not (uri or authority or port or derive or scheme):
        node.error("redirect must set at least one of uri, authority, scheme, port")
        ok = False
    return HTTPRedirect(uri, authority, port, derive, scheme, code) if ok else None


def direct_response(node: Node) -> HTTPDirectResponse | None:
    f = node.fields()
    if f is None:
        return None
    code = f.read_required("status", status)
    body = f.read("body", _body, b"")
    f.finish()
    if len(body) > _DIRECT_BODY_MAX:
        common.error_at(f, "body", f"body is {len(body)} bytes; at most 1 MiB")
        return None
    if len(body) > _DIRECT_BODY_WARN:
        common.warn_at(f, "body", "a body over 100 KiB is kept in memory with every snapshot")
    return None if code is None else HTTPDirectResponse(code, body)


def _body(node: Node) -> bytes | None:
    f = node.fields()
    if f is None:
        return None
    text = f.get("string")
    raw = f.get("bytes")
    f.finish()
    if text is not None and raw is not None:
        node.error("only one of string and bytes may be set")
        return None
    if raw is not None:
        data = raw.string()
        if data is None:
            return None
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raw.error("bytes must be base64")
            return None
    value = None if text is None else text.string()
    return b"" if value is None else value.encode()


def rewrite(node: Node) -> HTTPRewrite | None:
    f = node.fields()
    if f is None:
        return None
    uri = f.read("uri", Node.string, None)
    authority = f.read("authority", Node.string, None)
    regex = f.read("uriRegexRewrite", _regex_rewrite, None)
    f.finish()
    if uri and "uriRegexRewrite" in f.values:
        node.error("rewrite may set only one of uri and uriRegexRewrite")
        return None
    if not uri and not authority and "uriRegexRewrite" not in f.values:
        node.error("rewrite must set at least one of uri, uriRegexRewrite, authority")
        return None
    return HTTPRewrite(uri, authority, regex)


def _regex_rewrite(node: Node) -> RegexRewrite | None:
    f = node.fields()
    if f is None:
        return None
    match = f.read_required("match", Node.string)
    replace = f.read_required("rewrite", Node.string)
    f.finish()
    if not match or replace is None:
        if match == "":
            common.error_at(f, "match", "must not be empty")
        return None
    if not common.compiles(f.values["match"], match):
        return None
    return RegexRewrite(match, replace)


def _action_conflicts(node: Node, f: Fields) -> bool:
    """Istio's conflicts: redirect and directResponse exclude route, fault, rewrite, each other."""
    keys = ("route", "redirect", "directResponse", "fault", "rewrite")
    has = {k for k in keys if k in f.values and not f.values[k].is_null}
    for action in ("redirect", "directResponse"):
        if action in has:
            for other in sorted(has - {action}):
                common.error_at(f, action, f"{action} cannot be combined with {other}")
            return has <= {action}
    route = f.values.get("route")
    if route is None or not route.items():
        (node if route is None else route).error(
            "an http route needs one of route, redirect, directResponse"
        )
        return False
    return True


def http_route(node: Node) -> HTTPRoute | None:
    f = node.fields()
    if f is None:
        return None
    if f.get("delegate") is not None:
        common.warn_at(f, "delegate", "VirtualService delegation is not implemented; route ignored")
        f.finish(ignore_all=True)
        return None
    name = f.string("name")
    match_nodes = common.items(f, "match")
    matches = [match_request(m) for m in match_nodes]
    route_node = f.get("route")
    dests = [] if route_node is None else [route_destination(n) for n in route_node.items()]
    if route_node is not None:
        check_weights(route_node, [d.weight for d in dests if d is not None])
    redir = f.read("redirect", redirect, None)
    direct = f.read("directResponse", direct_response, None)
    rw = f.read("rewrite", rewrite, None)
    timeout = f.read("timeout", lambda n: common.duration(n, allow_zero=True), None)
    retry = f.read("retries", retries, None)
    flt = f.read("fault", fault, None)
    mirror_list = mirrors(f)
    cors_policy = f.read("corsPolicy", cors, None)
    headers = f.read("headers", headers_policy, None)
    f.finish()
    ok = _action_conflicts(node, f)
    twice = headers is not None and authority_set(headers.request) is not None
    if rw is not None and rw.authority and twice:
        common.error_at(f, "rewrite", "the authority is rewritten twice (rewrite and headers)")
        ok = False
    if not ok:
        return None
    return HTTPRoute(
        name,
        tuple(m for m in matches if m is not None),
        tuple(d for d in dests if d is not None),
        redir,
        direct,
        rw,
        timeout,
        retry,
        flt,
        mirror_list,
        cors_policy,
        headers,
    )
