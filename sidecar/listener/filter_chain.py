"""Pick the filter chain for a connection, the way Envoy's filter chain manager does.

Compiled once per listener per snapshot. Envoy matches level by level and does not backtrack: the
most specific destination port bucket that exists (an exact port, else the chains without a port),
then within that bucket the longest destination prefix (chains without prefixes match any
address). The chains sharing that (port, prefix) form a `ChainGroup`; within it the transport
protocol ("tls" | "raw_buffer") and then the application protocols decide, an exact match beating
a chain that leaves the field empty. A group whose chains set neither field needs no protocol
detection at all (declared-protocol ports: zero cost). No match means the listener's default chain.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import TYPE_CHECKING

from sidecar.config.snapshot import FilterChain, IPNetwork, Listener

if TYPE_CHECKING:
    from sidecar.listener.sniff import Detection

_ANY_V4 = ipaddress.ip_network("0.0.0.0/0")
_ANY_V6 = ipaddress.ip_network("::/0")


@lru_cache(maxsize=4096)
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


class ChainGroup:
    """The chains sharing one (destination port, prefix): protocol detection picks among them."""

    __slots__ = ("chains", "default", "needs_detection", "only")

    def __init__(self, chains: tuple[FilterChain, ...], default: FilterChain | None) -> None:
        self.chains = chains
        self.default = default
        self.needs_detection = any(
            c.match.transport_protocol or c.match.application_protocols for c in chains
        )
        # Without detection the group's answer is fixed: its first chain.
        self.only: FilterChain | None = None if self.needs_detection else chains[0]

    def pick(self, detection: Detection | None) -> FilterChain | None:
        """The chain for what detection found (None: nothing detected, a raw connection)."""
        if self.only is not None:
            return self.only
        transport = "raw_buffer" if detection is None else detection.transport_protocol
        apps = () if detection is None else detection.application_protocols
        chains = [c for c in self.chains if c.match.transport_protocol == transport] or [
            c for c in self.chains if not c.match.transport_protocol
        ]
        listed = [c for c in chains if any(a in c.match.application_protocols for a in apps)]
        if listed:
            return listed[0]
        for c in chains:
            if not c.match.application_protocols:
                return c
        return self.default


class ChainSelector:
    """Filter chain lookup for one listener: port bucket, longest prefix, then protocol."""

    __slots__ = ("_buckets", "_default", "_default_group", "_exact")

    def __init__(self, listener: Listener) -> None:
        self._default = listener.default_filter_chain
        grouped: dict[int | None, dict[IPNetwork | None, list[FilterChain]]] = {}
        for chain in listener.filter_chains:
            by_net = grouped.setdefault(chain.match.destination_port, {})
            for net in chain.match.prefix_ranges or (None,):
                by_net.setdefault(net, []).append(chain)
        buckets: dict[int | None, list[tuple[IPNetwork | None, ChainGroup]]] = {}
        for port, by_net in grouped.items():
            entries = [(net, ChainGroup(tuple(cs), self._default)) for net, cs in by_net.items()]
            entries.sort(key=lambda e: -1 if e[0] is None else e[0].prefixlen, reverse=True)
            buckets[port] = entries
        self._buckets = buckets
        self._default_group = (
            ChainGroup((self._default,), None) if self._default is not None else None
        )
        # Fast path: a bucket whose best entry matches any address needs no IP parsing.
        self._exact: dict[tuple[str, int], ChainGroup | None] = {}

    def group(self, address: str, port: int) -> ChainGroup | None:
        """The chains a connection to address:port chooses among (None: close it)."""
        key = (address, port)
        hit = self._exact.get(key, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        found = self._lookup(address, port)
        if len(self._exact) < 65536:
            self._exact[key] = found
        return found

    def select(
        self, address: str, port: int, detection: Detection | None = None
    ) -> FilterChain | None:
        """The chain for a connection to address:port, given what detection found."""
        found = self.group(address, port)
        return found.pick(detection) if found is not None else None

    def _lookup(self, address: str, port: int) -> ChainGroup | None:
        entries = self._buckets.get(port)
        if entries is None:
            entries = self._buckets.get(None)
        if entries is None:
            return self._default_group
        ip = None
        for net, group in entries:
            if net is None:
                return group
            if ip is None:
                ip = _ip(address)
                if ip is None:
                    break
            if ip.version == net.version and ip in net:
                return group
        return self._default_group
