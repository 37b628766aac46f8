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


# -- server names (SNI): after port and prefix, before the transport protocol -----------------


def sni_chain(
    name: str, names: tuple[str, ...], port: int | None = 443, transport: str = "tls",
    prefix: str | None = None,
) -> FilterChain:
    nets = (ipaddress.ip_network(prefix),) if prefix else ()
    return FilterChain(
        name=name,
        match=FilterChainMatch(port, nets, transport, (), names),
        filter=TcpProxy(cluster=name, stat_prefix=name),
    )


SNI = Listener(
    name="virtualOutbound",
    address="0.0.0.0",
    port=15001,
    direction=Direction.OUTBOUND,
    use_original_dst=True,
    filter_chains=(
        sni_chain("wild-example", ("*.example.com",)),
        sni_chain("exact-api", ("api.example.com", "API2.example.com")),
        sni_chain("wild-eu", ("*.eu.example.com",)),
        sni_chain("no-names-tls", ()),
        sni_chain("no-names-raw", (), transport="raw_buffer"),
        sni_chain("only-named", ("db.internal",), port=5432),
        sni_chain("named-raw-only", ("x.test",), port=8443, transport="raw_buffer"),
        sni_chain("tls-8443", (), port=8443),
    ),
    default_filter_chain=DEFAULT,
)


def pick_sni(port: int, found: Detection | None) -> str | None:
    c = ChainSelector(SNI).select("192.0.2.1", port, found)
    return c.name if c else None


def test_exact_server_name_beats_wildcards() -> None:
    assert pick_sni(443, Detection("tls", "api.example.com")) == "exact-api"
    assert pick_sni(443, Detection("tls", "api2.example.com")) == "exact-api"  # case-folded


def test_longest_wildcard_wins_and_matches_any_depth() -> None:
    assert pick_sni(443, Detection("tls", "web.example.com")) == "wild-example"
    assert pick_sni(443, Detection("tls", "a.b.example.com")) == "wild-example"
    assert pick_sni(443, Detection("tls", "paris.eu.example.com")) == "wild-eu"
    assert pick_sni(443, Detection("tls", "x.paris.eu.example.com")) == "wild-eu"
    # "*.example.com" does not match the bare domain.
    assert pick_sni(443, Detection("tls", "example.com")) == "no-names-tls"


def test_unknown_or_missing_server_name_takes_the_chains_without_names() -> None:
    assert pick_sni(443, Detection("tls", "other.org")) == "no-names-tls"
    assert pick_sni(443, Detection("tls")) == "no-names-tls"
    assert pick_sni(443, Detection("tcp")) == "no-names-raw"
    assert pick_sni(443, None) == "no-names-raw"


def test_unmatched_server_name_without_unnamed_chains_gets_the_default() -> None:
    assert pick_sni(5432, Detection("tls", "db.internal")) == "only-named"
    assert pick_sni(5432, Detection("tls", "other.internal")) == "passthrough"


def test_server_name_is_decided_before_transport_no_backtracking() -> None:
    # The name selects the raw-only chain; TLS finds no TLS chain there, and Envoy does not go
    # back to the chains without names: the default chain.
    assert pick_sni(8443, Detection("tls", "x.test")) == "passthrough"
    assert pick_sni(8443, Detection("tls", "y.test")) == "tls-8443"


def test_groups_differing_only_by_server_name_need_detection() -> None:
    listener = Listener(
        name="l", address="0.0.0.0", port=15001, direction=Direction.OUTBOUND,
        use_original_dst=True,
        filter_chains=(
            sni_chain("a", ("a.test",), transport=""),
            sni_chain("b", ("b.test",), transport=""),
        ),
    )
    group = ChainSelector(listener).group("192.0.2.1", 443)
    assert group is not None and group.needs_detection and group.only is None
    assert group.pick(Detection("tls", "b.test")) is listener.filter_chains[1]
    assert group.pick(Detection("tls", "c.test")) is None  # no default chain: close
