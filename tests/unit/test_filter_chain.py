"""Filter chain selection follows Envoy: port, longest prefix, then protocol; no backtracking."""

from __future__ import annotations

import ipaddress

from sidecar.config.snapshot import (
    HTTP_DETECTED,
    Direction,
    FilterChain,
    FilterChainMatch,
    Listener,
    TcpProxy,
)
from sidecar.listener.filter_chain import ChainSelector
from sidecar.listener.sniff import Detection


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


# -- protocol: transport, then application protocols, within one (port, prefix) ---------------


def proto_chain(
    name: str, port: int, prefix: str | None, transport: str = "", apps: tuple[str, ...] = ()
) -> FilterChain:
    nets = (ipaddress.ip_network(prefix),) if prefix else ()
    return FilterChain(
        name=name,
        match=FilterChainMatch(port, nets, transport, apps),
        filter=TcpProxy(cluster=name, stat_prefix=name),
    )


AUTO = Listener(
    name="virtualOutbound",
    address="0.0.0.0",
    port=15001,
    direction=Direction.OUTBOUND,
    use_original_dst=True,
    filter_chains=(
        proto_chain("auto-http", 8000, "10.96.0.9/32", "raw_buffer", HTTP_DETECTED),
        proto_chain("auto-tcp", 8000, "10.96.0.9/32", "raw_buffer"),
        proto_chain("auto-tls", 8000, "10.96.0.9/32", "tls"),
        proto_chain("http-only", 8080, None, "raw_buffer", HTTP_DETECTED),
        proto_chain("any-transport", 8080, None),
        proto_chain("subnet-tls", 8000, "10.96.0.0/16", "tls"),
        proto_chain("h2-alpn", 443, None, "tls", ("h2",)),
        proto_chain("tls-any", 443, None, "tls"),
        proto_chain("declared-tcp", 3306, "10.96.0.3/32"),
    ),
    default_filter_chain=DEFAULT,
)


def pick_detected(ip: str, port: int, found: Detection | None) -> str | None:
    c = ChainSelector(AUTO).select(ip, port, found)
    return c.name if c else None


def test_detected_http_takes_the_chain_listing_it_else_the_one_without() -> None:
    for kind in ("http/1.1", "http/1.0", "h2c"):
        assert pick_detected("10.96.0.9", 8000, Detection(kind)) == "auto-http"
    assert pick_detected("10.96.0.9", 8000, Detection("tcp")) == "auto-tcp"
    assert pick_detected("10.96.0.9", 8000, Detection("tcp", timed_out=True)) == "auto-tcp"
    # TLS goes to the TLS chain, whatever ALPN it offers.
    assert pick_detected("10.96.0.9", 8000, Detection("tls", "a", ("http/1.1",))) == "auto-tls"


def test_transport_is_decided_before_application_protocols() -> None:
    # Envoy does not backtrack: raw TCP takes the raw_buffer level, where no chain leaves the
    # application protocols open, so the default chain; TLS finds no "tls" chain and takes the
    # one that names no transport.
    assert pick_detected("192.0.2.1", 8080, Detection("http/1.1")) == "http-only"
    assert pick_detected("192.0.2.1", 8080, Detection("tcp")) == "passthrough"
    assert pick_detected("192.0.2.1", 8080, Detection("tls")) == "any-transport"


def test_prefix_is_decided_before_protocol_no_backtracking() -> None:
    # 10.96.1.1 falls in the /16, whose only chain wants TLS: plain HTTP gets the default
    # chain, not the /32 group's HTTP chain (Envoy never backtracks to a shorter match).
    assert pick_detected("10.96.1.1", 8000, Detection("tls")) == "subnet-tls"
    assert pick_detected("10.96.1.1", 8000, Detection("http/1.1")) == "passthrough"


def test_alpn_listed_beats_any_within_the_transport() -> None:
    assert pick_detected("192.0.2.1", 443, Detection("tls", "x", ("h2", "http/1.1"))) == "h2-alpn"
    assert pick_detected("192.0.2.1", 443, Detection("tls", "x", ("http/1.1",))) == "tls-any"
    assert pick_detected("192.0.2.1", 443, Detection("http/1.1")) == "passthrough"


def test_groups_say_whether_detection_is_needed() -> None:
    sel = ChainSelector(AUTO)
    auto = sel.group("10.96.0.9", 8000)
    declared = sel.group("10.96.0.3", 3306)
    default = sel.group("192.0.2.1", 9999)
    assert auto is not None and auto.needs_detection and auto.only is None
    assert declared is not None and not declared.needs_detection
    assert declared.only is not None and declared.only.name == "declared-tcp"
    assert default is not None and not default.needs_detection
    assert default.only is DEFAULT
    # The plain listener above never needs detection: zero cost for declared ports.
    plain = ChainSelector(LISTENER).group("10.96.0.7", 3306)
    assert plain is not None and not plain.needs_detection
