"""Validators for the small syntaxes inside Kubernetes objects: names, labels, IPs, hosts.

Each takes a `Node` so a bad value is reported at its own line and path, and returns the typed
value or None (after recording the error).
"""

from __future__ import annotations

import ipaddress
import re

from sidecar.config.nodes import Fields, Node
from sidecar.config.snapshot import Labels

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# A host as ServiceEntry and Sidecar write it: DNS name, optionally with a leading "*." wildcard.
_HOST_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?"
_HOST = re.compile(rf"\*|(\*\.)?{_HOST_LABEL}(\.{_HOST_LABEL})*\.?")


def is_dns_label(value: str) -> bool:
    return len(value) <= 63 and _DNS_LABEL.fullmatch(value) is not None


def is_dns_subdomain(value: str) -> bool:
    return len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value) is not None


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a valid label key, or None. Keys are [prefix/]name."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        return "empty prefix before '/'"
    if prefix and not is_dns_subdomain(prefix):
        return f"prefix {prefix!r} is not a DNS subdomain"
    if not name or len(name) > 63 or _LABEL_NAME.fullmatch(name) is None:
        return (
            "name must be 1-63 characters: alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return None


def label_value_problem(value: str) -> str | None:
    if value == "":
        return None
    if len(value) > 63 or _LABEL_NAME.fullmatch(value) is None:
        return (
            "value must be at most 63 characters: alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return None


def labels(node: Node) -> Labels:
    """A label map (metadata.labels, selector, workloadSelector.labels)."""
    fields = node.fields()
    if fields is None:
        return frozenset()
    out: set[tuple[str, str]] = set()
    for key, child in fields.values.items():
        fields.get(key)
        problem = label_key_problem(key)
        if problem is not None:
            child.error(f"invalid label key {key!r}: {problem}")
            continue
        value = "" if child.is_null else child.string()
        if value is None:
            continue
        problem = label_value_problem(value)
        if problem is not None:
            child.error(f"invalid label value {value!r}: {problem}")
            continue
        out.add((key, value))
    return frozenset(out)


def ip(node: Node) -> str | None:
    """An IPv4 or IPv6 address, normalised."""
    text = node.string()
    if text is None:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        node.error(f"{text!r} is not an IP address")
        return None


def ip_or_cidr(node: Node) -> str | None:
    """An address or a CIDR block (ServiceEntry.addresses)."""
    text = node.string()
    if text is None:
        return None
    try:
        if "/" in text:
            return str(ipaddress.ip_network(text, strict=False))
        return str(ipaddress.ip_address(text))
    except ValueError:
        node.error(f"{text!r} is not an IP address or CIDR block")
        return None


def host(node: Node) -> str | None:
    """A DNS host name, possibly with a leading wildcard label ("*.example.com")."""
    text = node.string()
    if text is None:
        return None
    if len(text) > 253 or _HOST.fullmatch(text) is None:
        node.error(f"{text!r} is not a valid host name")
        return None
    return text.lower()


def port_name(node: Node) -> str | None:
    """A port name (IANA_SVC_NAME-ish: lower-case alphanumerics and '-', at most 63)."""
    text = node.string()
    if text is None:
        return None
    if len(text) > 63 or _PORT_NAME.fullmatch(text) is None:
        node.error(f"invalid port name {text!r}: lower-case alphanumerics and '-' only")
        return None
    return text


def dns_subdomain(node: Node) -> str | None:
    text = node.string()
    if text is None:
        return None
    if not is_dns_subdomain(text):
        node.error(
            f"{text!r} is not a valid name: lower-case alphanumerics, '-' and '.', "
            "starting and ending with an alphanumeric"
        )
        return None
    return text


def dns_label(node: Node) -> str | None:
    text = node.string()
    if text is None:
        return None
    if not is_dns_label(text):
        node.error(
            f"{text!r} is not a valid name: at most 63 lower-case alphanumerics or '-', "
            "starting and ending with an alphanumeric"
        )
        return None
    return text


def selector_labels(fields: Fields, key: str = "labels") -> Labels:
    """The labels of a workloadSelector-shaped mapping."""
    child = fields.get(key)
    return frozenset() if child is None else labels(child)
