"""Small syntaxes shared by the VirtualService, DestinationRule and Gateway parsers.

Theory of operation: like `names.py`, each reader takes a `Node` and returns the typed value or
None after recording the problem at the node's own line and path, so the kind parsers stay a
list of field reads. The rules are Istio's validation rules (pkg/config/validation), phrased for
a user: durations in Go/protobuf form ("1.5s", "100ms", "1m") to millisecond precision,
`Percent` messages ({value: 0..100}), StringMatch (one of exact/prefix/regex; regexes must
compile), header names (lower-case, as Istio documents and requires for matches), header
operations (no pseudo headers; Host only through the request's authority), destinations, gateway
names and exportTo lists.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from fractions import Fraction
from typing import TypeVar

from sidecar.config import names
from sidecar.config.nodes import Fields, Node
from sidecar.config.resources_routing import (
    Destination,
    StringMatch,
)
from sidecar.errors import Severity

T = TypeVar("T")

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
MAX_REGEX = 1024  # Istio's limit on a regex's length (Envoy's RE2 program size, approximated)
# Python `re` syntax RE2 refuses (Istio validates with Go's regexp, Envoy compiles with RE2).
_NOT_RE2 = (
    ("(?=", "lookahead"),
    ("(?!", "negative lookahead"),
    ("(?<=", "lookbehind"),
    ("(?<!", "negative lookbehind"),
    ("(?>", "atomic group"),
    ("(?P=", "backreference"),
    ("(?(", "conditional group"),
)


def error_at(f: Fields, key: str, reason: str) -> None:
    """An error on field `key` of `f` (on the mapping itself when the key is absent)."""
    child = f.values.get(key)
    if child is None:
        f.node.doc.add(Severity.ERROR, f.node.line, f.node.child_path(key), reason)
    else:
        child.error(reason)


def warn_at(f: Fields, key: str, reason: str) -> None:
    child = f.values.get(key)
    (child or f.node).warn(reason)


def opt(f: Fields, key: str, conv: Callable[[Node], T]) -> T | None:
    """The field read with `conv`, or None when absent (for collection-valued fields)."""
    child = f.get(key)
    return None if child is None else conv(child)


def items(f: Fields, key: str) -> list[Node]:
    """The field's list items ([] when absent)."""
    child = f.get(key)
    return [] if child is None else child.items()


def number(node: Node) -> float | None:
    """An integer or a decimal number."""
    tag = node.node.tag
    if tag == _INT:
        value = node.integer()
        return None if value is None else float(value)
    if tag == _FLOAT:
        try:
            return float(node.doc.constructor.construct_yaml_float(node.node))  # type: ignore[arg-type]
        except ValueError:
            node.error(f"{node.node.value!r} is not a number")
            return None
    node.error("expected a number")
    return None


def _in_percent_range(node: Node, value: float) -> float | None:
    if not 0.0 <= value <= 100.0:
        node.error(f"percentage {value:g} is not in 0..100")
        return None
    return value


def percent(node: Node) -> float | None:
    """Istio's Percent message: {value: 0..100} (a float)."""
    f = node.fields()
    if f is None:
        return None
    child = f.get("value")
    f.finish()
    if child is None:
        return 0.0  # an empty Percent message is 0 %
    value = number(child)
    return None if value is None else _in_percent_range(child, value)


def int_percent(node: Node) -> float | None:
    """A deprecated integer percentage (mirrorPercent, fault percent): 0..100."""
    value = node.integer()
    return None if value is None else _in_percent_range(node, float(value))


def duration(node: Node, *, allow_zero: bool = False, whole_seconds: bool = False) -> float | None:
    """A duration ("1.5s", "100ms", "1m", "1h30m") in seconds; at least 1ms unless `allow_zero`."""
    text = node.string()
    if text is None:
        return None
    pos, total = 0, Fraction(0)
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += Fraction(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        node.error(f'{text!r} is not a duration (for example "1.5s", "100ms", "1m")')
        return None
    if total.denominator != 1 or total % 1_000_000:
        node.error(f"{text!r}: only durations to millisecond precision are supported")
        return None
    if whole_seconds and total % 1_000_000_000:
        node.error(f"{text!r}: only durations to whole seconds are supported here")
        return None
    if total < 1_000_000 and not (allow_zero and total == 0):
        node.error(f"{text!r}: a duration must be at least 1ms")
        return None
    return float(total / 1_000_000_000)


def compiles(node: Node, pattern: str) -> bool:
    """The regex compiles (Python `re`; Istio documents RE2 syntax) and is not too long."""
    if len(pattern) > MAX_REGEX:
        node.error(f"regex is too long ({len(pattern)} characters; at most {MAX_REGEX})")
        return False
    try:
        re.compile(pattern)
    except re.error as exc:
        where = "" if exc.pos is None else f" at position {exc.pos}"
        node.error(f"invalid regex {pattern!r}: {exc.msg}{where}")
        return False
    unsupported = _not_re2(pattern)
    if unsupported is not None:
        what, pos = unsupported
        node.error(f"invalid regex {pattern!r}: RE2 has no {what} (at position {pos})")
        return False
    return True


def _not_re2(pattern: str) -> tuple[str, int] | None:
    """The first construct of a (compiling) Python regex that RE2 lacks, and where."""
    i, in_class, n = 0, False, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if not in_class and pattern[i + 1:i + 2] in tuple("123456789"):
                return "backreference", i
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 1 + pattern.startswith("^", i + 1)  # skip "[" and a negating "^"
            if pattern.startswith("]", i):  # a leading "]" is literal
                i += 1
            continue
        elif c == "(":
            for prefix, what in _NOT_RE2:
                if pattern.startswith(prefix, i):
                    return what, i
        elif c in "*+?}" and pattern[i + 1:i + 2] == "+":
            return "possessive quantifier", i
        i += 1
    return None


def string_match(node: Node, *, empty_prefix_ok: bool = False) -> StringMatch | None:
    """StringMatch: at most one of exact, prefix, regex ({} matches any value)."""
    f = node.fields()
    if f is None:
        return None
    found = [(k, f.get(k)) for k in ("exact", "prefix", "regex")]
    given = [(k, child) for k, child in found if child is not None]
    f.finish()
    if len(given) > 1:
        node.error(
            f"only one of exact, prefix, regex may be set (got {', '.join(k for k, _ in given)})"
        )
        return None
    if not given:
        return StringMatch()
    key, child = given[0]
    value = child.string()
    if value is None:
        return None
    if key == "prefix":
        if not value and not empty_prefix_ok:
            child.error("prefix string match must not be empty")
            return None
        return StringMatch(prefix=value)
    if key == "regex":
        if not value:
            child.error("regex string match must not be empty")
            return None
        return StringMatch(regex=value) if compiles(child, value) else None
    return StringMatch(exact=value)


def keyed(node: Node, read: Callable[[Node, str], object | None]) -> list[tuple[str, object]]:
    """A mapping whose keys are user data (header names, labels): read each value with its key."""
    f = node.fields()
    if f is None:
        return []
    out: list[tuple[str, object]] = []
    for key, child in f.values.items():
        f.get(key)
        value = read(child, key)
        if value is not None:
            out.append((key, value))
    return out


def count(node: Node) -> int | None:
    """A non-negative integer (a count or a limit)."""
    value = node.integer()
    if value is not None and value < 0:
        node.error(f"{value} must not be negative")
        return None
    return value


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def host_or_ip(node: Node) -> str | None:
    """A host as VirtualService hosts write it: name, FQDN, "*", "*.suffix", or an IP."""
    text = node.string()
    if text is not None and is_ip(text):
        return str(ipaddress.ip_address(text))
    return None if text is None else names.host(node)


def host_covers(general: str, specific: str) -> bool:
    """`specific` is the same host as `general` or inside its wildcard."""
    if general == "*" or general == specific:
        return True
    if general.startswith("*."):
        suffix = general[1:]
        return specific.endswith(suffix) and (
            not specific.startswith("*.") or len(specific) >= len(general)
        )
    return False


def port_selector(node: Node) -> int | None:
    """PortSelector: {number}."""
    f = node.fields()
    if f is None:
        return None
    number_ = f.read_required("number", Node.port)
    f.finish()
    return number_


def subset_name(node: Node) -> str | None:
    text = node.string()
    if text is None:
        return None
    if not names.is_dns_label(text):
        node.error(f"subset name {text!r} is invalid: it must be a DNS label (lower-case, '-')")
        return None
    return text


def destination(node: Node) -> Destination | None:
    """Destination: host (required; not "*"), subset, port {number}."""
    f = node.fields()
    if f is None:
        return None
    host_node = f.require("host")
    host = None if host_node is None else host_or_ip(host_node)
    if host == "*" and host_node is not None:
        host_node.error('"*" is not a valid destination host')
        host = None
    subset = f.read("subset", subset_name, "")
    port = f.read("port", port_selector, 0) or None
    f.finish()
    return None if host is None else Destination(host, subset, port)


def gateway_names(node: Node) -> tuple[str, ...]:
    """gateways: "mesh", "name" (the object's namespace), "ns/name" or a legacy FQDN."""
    out: list[str] = []
    for item in node.items():
        text = item.string()
        if text is None:
            continue
        ns, sep, name = text.partition("/")
        if sep:
            if not names.is_dns_label(ns) or not names.is_dns_label(name):
                item.error(f"{text!r} is not namespace/name (both DNS labels)")
                continue
        elif not names.is_dns_subdomain(text):
            item.error(f"{text!r} is not a gateway name")
            continue
        elif "." in text:
            name, _, ns = text.partition(".")
            ns = ns.split(".")[0]
            item.warn(f'legacy gateway name format {text!r}; prefer "{ns}/{name}"')
        out.append(text)
    return tuple(out)


def export_to(node: Node) -> tuple[str, ...]:
    """exportTo: ".", "*" or namespaces; no duplicates; "*" alone."""
    out: list[str] = []
    for item in node.items():
        text = item.string()
        if text is None:
            continue
        if text not in (".", "*") and not names.is_dns_label(text):
            item.error(f'{text!r} is not ".", "*" or a namespace')
            continue
        if text in out:
            item.error(f"duplicate exportTo entry {text!r}")
            continue
        out.append(text)
    if "*" in out and len(out) > 1:
        node.error('"*" (every namespace) cannot be combined with other exportTo entries')
    return tuple(out)


def source_labels(node: Node) -> frozenset[tuple[str, str]] | None:
    return names.labels(node)


def source_namespace(node: Node) -> str | None:
    return names.dns_label(node)
