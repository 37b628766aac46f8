"""Filter chain selection follows Envoy: port bucket first, then longest prefix, no backtracking."""

from __future__ import annotations

import ipaddress

from sidecar.config.snapshot import (
    Direction,
    FilterChain,
    FilterChainMatch,
    Listener,
    TcpProxy,
)
from sidecar.listener.filter_chain import ChainSelector


def chain(name: str, port: int | None = None, *prefixes: str) -> FilterChain:
    nets = tuple(ipaddress.ip_network(p) for p in prefixes)
    return FilterChain(
        name=name,
        match=FilterChainMatch(destination_port=port, prefix_ranges=nets),
        filter=TcpProxy(cluster=name, stat_prefix=name),
    )


DEFAULT = chain("passthrough")
LISTENER = Listener(
    name="virtualOutbound",
    address="0.0.0.0",
    port=15001,
    direction=Direction.OUTBOUND,
    use_original_dst=True,
    filter_chains=(
        chain("http-9080", 9080),
        chain("mysql-vip", 3306, "10.96.0.7/32"),
        chain("vip-3306-subnet", 3306, "10.96.0.0/16"),
        chain("any-port-subnet", None, "10.1.0.0/16"),
        chain("v6", 443, "fd00::/64"),
    ),
    default_filter_chain=DEFAULT,
)


def pick(ip: str, port: int) -> str | None:
    c = ChainSelector(LISTENER).select(ip, port)
    return c.name if c else None


def test_exact_port_without_prefix_matches_any_address() -> None:
    assert pick("10.96.0.1", 9080) == "http-9080"
    assert pick("192.0.2.1", 9080) == "http-9080"


def test_longest_prefix_wins_within_the_port_bucket() -> None:
    assert pick("10.96.0.7", 3306) == "mysql-vip"
    assert pick("10.96.3.3", 3306) == "vip-3306-subnet"


def test_no_backtracking_to_portless_chains_once_the_port_bucket_exists() -> None:
    # 10.1.0.5 matches the port-less chain's prefix, but port 3306 has its own bucket,
    # and nothing in it matches: Envoy uses the default chain.
    assert pick("10.1.0.5", 3306) == "passthrough"


def test_portless_chains_serve_ports_without_a_bucket() -> None:
    assert pick("10.1.0.5", 5432) == "any-port-subnet"
    assert pick("192.0.2.9", 5432) == "passthrough"


def test_ipv6_prefixes() -> None:
    assert pick("fd00::1", 443) == "v6"
    assert pick("fd01::1", 443) == "passthrough"
    assert pick("not-an-ip", 443) == "passthrough"


def test_repeated_lookups_are_cached_and_stable() -> None:
    sel = ChainSelector(LISTENER)
    first = sel.select("10.96.0.7", 3306)
    assert sel.select("10.96.0.7", 3306) is first
