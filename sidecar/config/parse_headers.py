"""Header names, header matches and header operations of VirtualService http routes.

Theory of operation: matches (`headers`, `withoutHeaders`, `queryParams`) are maps of name to
StringMatch; Istio requires header names in matches to be lower-case tokens (request pseudo
headers allowed), and a `withoutHeaders` regex "*" means "absent". Operations (`set`, `add`,
`remove`) may not touch pseudo headers; only a request's `set`/`add` may write the authority
(":authority" or "host"), and `authority_set` lets the route check it is written only once.
"""

from __future__ import annotations

import re

from sidecar.config.nodes import Node
from sidecar.config.parse_routing_common import keyed, string_match
from sidecar.config.resources_routing import (
    HeaderOperations,
    HeadersPolicy,
    StringMatch,
)

# RFC 7230 token characters, lower-case letters only (Istio: header keys must be lower-case).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_HEADER_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PSEUDO = frozenset({":method", ":scheme", ":authority", ":path"})
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_name_ok(node: Node, name: str, *, pseudo_ok: bool = False) -> bool:
    """A header name used in a match: a lower-case token (or a request pseudo header)."""
    if not name:
        node.error("header name must not be empty")
        return False
    if pseudo_ok and name in _PSEUDO:
        return True
    if _HEADER_NAME.fullmatch(name) is None:
        if _HEADER_TOKEN.fullmatch(name) is not None:
            node.error(f"header name {name!r} must be lower-case (Istio rejects upper case)")
        else:
            node.error(f"{name!r} is not a valid header name")
        return False
    return True


def header_matches(node: Node, *, without: bool = False) -> tuple[tuple[str, StringMatch], ...]:
    """headers / withoutHeaders: {name: StringMatch}, names lower-case."""

    def read(child: Node, name: str) -> StringMatch | None:
        if not header_name_ok(child, name, pseudo_ok=True):
            return None
        if child.is_null:
            child.error("header match must not be null (use {} to match any value)")
            return None
        if without and _is_star_regex(child):
            return StringMatch()  # Istio: regex "*" in withoutHeaders means "header absent"
        return string_match(child)

    return tuple(sorted((k, v) for k, v in keyed(node, read) if isinstance(v, StringMatch)))


def without_header_matches(node: Node) -> tuple[tuple[str, StringMatch], ...]:
    return header_matches(node, without=True)


def _is_star_regex(node: Node) -> bool:
    f = node.fields()
    if f is None or set(f.values) != {"regex"}:
        return False
    child = f.values["regex"]
    return child.node.tag.endswith(":str") and child.node.value == "*"


def query_matches(node: Node) -> tuple[tuple[str, StringMatch], ...]:
    """queryParams: {name: StringMatch}, names as written."""

    def read(child: Node, name: str) -> StringMatch | None:
        if not name:
            child.error("query parameter name must not be empty")
            return None
        if child.is_null:
            child.error("query parameter match must not be null (use {} to match any value)")
            return None
        return string_match(child)

    return tuple(sorted((k, v) for k, v in keyed(node, read) if isinstance(v, StringMatch)))


def _header_value(child: Node, _name: str) -> str | None:
    value = child.string()
    if value is not None and _BAD_VALUE.search(value):
        child.error("header value must not contain control characters")
        return None
    return value


def _op_name_ok(node: Node, name: str, *, authority_ok: bool) -> bool:
    if not name:
        node.error("header name must not be empty")
        return False
    lowered = name.lower()
    if authority_ok and lowered in (":authority", "host"):
        return True
    if lowered == "host":
        node.error(f"invalid header {name!r}: cannot set or remove the Host header here")
        return False
    if name.startswith(":"):
        node.error(f"invalid header {name!r}: header cannot have ':' prefix")
        return False
    if _HEADER_TOKEN.fullmatch(name) is None:
        node.error(f"{name!r} is not a valid header name")
        return False
    return True


def header_operations(node: Node, *, request: bool) -> HeaderOperations | None:
    """{set, add, remove} for one direction."""
    f = node.fields()
    if f is None:
        return None

    def read(c: Node, name: str) -> str | None:
        if not _op_name_ok(c, name, authority_ok=request):
            return None
        return _header_value(c, name)

    ops: dict[str, tuple[tuple[str, str], ...]] = {}
    for op in ("set", "add"):
        child = f.get(op)
        pairs = [] if child is None else keyed(child, read)
        ops[op] = tuple((k, str(v)) for k, v in pairs)
    remove: list[str] = []
    remove_node = f.get("remove")
    for item in [] if remove_node is None else remove_node.items():
        name = item.string()
        if name is not None and _op_name_ok(item, name, authority_ok=False):
            remove.append(name)
    f.finish()
    return HeaderOperations(ops["set"], ops["add"], tuple(remove))


def authority_set(ops: HeaderOperations) -> str | None:
    """The authority a request `set`/`add` writes (":authority" or "host"), if any."""
    for name, value in (*ops.set, *ops.add):
        if name.lower() in (":authority", "host"):
            return value
    return None


def headers_policy(node: Node) -> HeadersPolicy | None:
    """headers: {request: {set, add, remove}, response: {...}}."""
    f = node.fields()
    if f is None:
        return None
    request = f.read("request", lambda n: header_operations(n, request=True), HeaderOperations())
    response = f.read("response", lambda n: header_operations(n, request=False), HeaderOperations())
    f.finish()
    return HeadersPolicy(request, response)
