"""Pick the filter chain for a connection, the way Envoy's filter chain manager does.

Compiled once per listener per snapshot. Envoy matches level by level and does not backtrack: the
most specific destination port bucket that exists (an exact port, else the chains without a port),
then within that bucket the longest destination prefix (chains without prefixes match any
address). The chains sharing that (port, prefix) form a `ChainGroup`; within it the TLS server
name (SNI) decides first: an exact name beats the longest matching "*.suffix" wildcard, which
beats the chains that list no server names; then the transport protocol ("tls" | "raw_buffer")
and then the application protocols, an exact match beating a chain that leaves the field empty.
Each level narrows to one set and never falls back to a less specific one. A group whose chains
set none of these fields needs no protocol detection at all (declared-protocol ports: zero cost).
No match means the listener's default chain.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import TYPE_CHECKING

from sidecar.config.snapshot import FilterChain, IPNetwork, Listener, TcpProxy
from sidecar.tcp.tcp_proxy import ClusterSplit

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
    """The chains sharing one (destination port, prefix): SNI and protocol detection pick."""

    __slots__ = ("_by_name", "_unnamed", "_wildcards", "chains", "default", "needs_detection",
                 "only")

    def __init__(self, chains: tuple[FilterChain, ...], default: FilterChain | None) -> None:
        self.chains = chains
        self.default = default
        # Server names, compiled once: exact name -> chains, ".suffix" of "*.suffix" -> chains.
        by_name: dict[str, list[FilterChain]] = {}
        wildcards: dict[str, list[FilterChain]] = {}
        for c in chains:
            for name in c.match.server_names:
                name = name.lower().rstrip(".")
                if name.startswith("*."):
                    wildcards.setdefault(name[1:], []).append(c)
                elif name:
                    by_name.setdefault(name, []).append(c)
        self._by_name = {k: tuple(v) for k, v in by_name.items()}
        self._wildcards = {k: tuple(v) for k, v in wildcards.items()}
        self._unnamed = tuple(c for c in chains if not c.match.server_names)
        self.needs_detection = any(
            c.match.transport_protocol or c.match.application_protocols or c.match.server_names
            for c in chains
        )
        # Without detection the group's answer is fixed: its first chain.
        self.only: FilterChain | None = None if self.needs_detection else chains[0]

    def _named(self, server_name: str) -> tuple[FilterChain, ...]:
        """The chains for a server name: exact, else the longest wildcard, else unnamed ones."""
        if server_name:
            exact = self._by_name.get(server_name)
            if exact is not None:
                return exact
            if self._wildcards:
                dot = server_name.find(".")
                while dot != -1:  # "a.b.c": ".b.c", then ".c" (longest suffix first)
                    found = self._wildcards.get(server_name[dot:])
                    if found is not None:
                        return found
                    dot = server_name.find(".", dot + 1)
        return self._unnamed

    def pick(self, detection: Detection | None) -> FilterChain | None:
        """The chain for what detection found (None: nothing detected, a raw connection)."""
        if self.only is not None:
            return self.only
        if detection is None:
            named = self._unnamed
            transport = "raw_buffer"
            apps: tuple[str, ...] = ()
        else:
            named = self._named(detection.server_name)
            transport = detection.transport_protocol
            apps = detection.application_protocols
        chains = [c for c in named if c.match.transport_protocol == transport] or [
            c for c in named if not c.match.transport_protocol
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

    __slots__ = ("_buckets", "_default", "_default_group", "_exact", "_splits")

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
        # Weighted TCP routes, compiled once (keyed by identity: the listener keeps them alive).
        self._splits: dict[int, ClusterSplit] = {}
        for filt in (c.filter for c in (*listener.filter_chains, self._default) if c is not None):
            if isinstance(filt, TcpProxy) and filt.weighted_clusters:
                self._splits[id(filt)] = ClusterSplit(filt.weighted_clusters)

    def split(self, filt: TcpProxy) -> ClusterSplit | None:
        """The compiled weighted clusters of one of this listener's TCP proxies, if any."""
        return self._splits.get(id(filt)) if self._splits else None

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
