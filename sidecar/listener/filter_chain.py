"""Pick the filter chain for a connection, the way Envoy's filter chain manager does.

Compiled once per listener per snapshot. Envoy matches level by level and does not backtrack: the
most specific destination port bucket that exists (an exact port, else the chains without a port),
then within that bucket the longest destination prefix (chains without prefixes match any
address). No match within the chosen bucket means the listener's default chain.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from sidecar.config.snapshot import FilterChain, IPNetwork, Listener

_ANY_V4 = ipaddress.ip_network("0.0.0.0/0")
_ANY_V6 = ipaddress.ip_network("::/0")


@lru_cache(maxsize=4096)
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


class ChainSelector:
    """Filter chain lookup for one listener: port bucket, then longest matching prefix."""

    __slots__ = ("_buckets", "_default", "_exact")

    def __init__(self, listener: Listener) -> None:
        buckets: dict[int | None, list[tuple[IPNetwork | None, FilterChain]]] = {}
        for chain in listener.filter_chains:
            entries = buckets.setdefault(chain.match.destination_port, [])
            if chain.match.prefix_ranges:
                entries.extend((net, chain) for net in chain.match.prefix_ranges)
            else:
                entries.append((None, chain))
        for entries in buckets.values():
            entries.sort(key=lambda e: -1 if e[0] is None else e[0].prefixlen, reverse=True)
        self._buckets = buckets
        self._default = listener.default_filter_chain
        # Fast path: a bucket whose best entry matches any address needs no IP parsing.
        self._exact: dict[tuple[str, int], FilterChain | None] = {}

    def select(self, address: str, port: int) -> FilterChain | None:
        key = (address, port)
        hit = self._exact.get(key, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        chain = self._lookup(address, port)
        if len(self._exact) < 65536:
            self._exact[key] = chain
        return chain

    def _lookup(self, address: str, port: int) -> FilterChain | None:
        entries = self._buckets.get(port)
        if entries is None:
            entries = self._buckets.get(None)
        if entries is None:
            return self._default
        ip = None
        for net, chain in entries:
            if net is None:
                return chain
            if ip is None:
                ip = _ip(address)
                if ip is None:
                    break
            if ip.version == net.version and ip in net:
                return chain
        return self._default
