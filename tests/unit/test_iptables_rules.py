"""The rule builder against Istio's own golden files, the injector default, and option parsing."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sidecar.capture.cli import register
from sidecar.capture.options import CaptureOptions, injector_defaults
from sidecar.capture.rules import render
from sidecar.errors import CaptureError

GOLDEN = Path(__file__).resolve().parents[3] / "shared" / "specs" / "istio-iptables"

IPV6_IPNETS: dict[str, str | bool] = {
    "inbound_ports": "4000,5000",
    "inbound_ports_exclude": "6000,7000,",
    "kube_virt_interfaces": "eth0,eth1",
    "outbound_cidrs_exclude": "2001:db8::/32",
    "outbound_cidrs": "2001:db8::/32",
    "ipv6": True,
}

# golden file -> istio-iptables options on top of the base (see the README beside the files)
CASES: dict[str, dict[str, str | bool]] = {
    "empty": {},
    "inbound-ports-include": {"inbound_ports": "32000,31000"},
    "inbound-ports-wildcard": {"inbound_ports": "*"},
    "ipnets": {"outbound_cidrs": "10.0.0.0/8"},
    "kube-virt-interfaces": {"kube_virt_interfaces": "eth1,eth2", "outbound_cidrs": "*"},
    "outbound-ports-include": {"outbound_ports_include": "32000,31000"},
    "ipv6-inbound-ports": {"inbound_ports": "4000,5000", "ipv6": True},
    "ipv6-outbound-ports": {"outbound_ports_include": "32000,31000", "ipv6": True},
    "ipv6-ipnets": IPV6_IPNETS,
    "ipv6-uid-gid": {**IPV6_IPNETS, "proxy_gid": "1,2", "proxy_uid": "3,4"},
    "basic-exclude-nic": {"exclude_interfaces": "not-istio-nic"},
}


def golden_rules(name: str) -> list[str]:
    """The golden file's restore blocks, without the `iptables-save` markers around them."""
    lines = (GOLDEN / f"{name}.golden").read_text().splitlines()
    return [line for line in lines if line not in ("iptables-save", "ip6tables-save")]


def test_every_golden_file_has_a_case() -> None:
    assert GOLDEN.is_dir(), f"golden files not found at {GOLDEN}"
    assert {p.stem for p in GOLDEN.glob("*.golden")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_file_reproduced_line_for_line(name: str) -> None:
    opts = CaptureOptions.from_flags(**CASES[name])  # type: ignore[arg-type]
    assert render(opts).splitlines() == golden_rules(name)


def test_injector_default() -> None:
    base = golden_rules("empty")
    head, tail = base[:8], base[8:-1]  # chains + the three base rules | OUTPUT... | COMMIT
    expected = [
        *head,
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15021,15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        *tail,
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "COMMIT",
    ]
    assert render(injector_defaults()).splitlines() == expected


def test_outbound_port_exclusions_cover_tcp_and_udp_before_the_owner_rules() -> None:
    lines = render(CaptureOptions.from_flags(outbound_ports_exclude="22")).splitlines()
    at = lines.index("-A OUTPUT -j ISTIO_OUTPUT")
    assert lines[at + 1 : at + 4] == [
        "-A ISTIO_OUTPUT -p tcp --dport 22 -j RETURN",
        "-A ISTIO_OUTPUT -p udp --dport 22 -j RETURN",
        "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
    ]


def test_multiport_split_in_chunks_of_fifteen() -> None:
    ports = ",".join(str(p) for p in range(1000, 1020))
    text = render(CaptureOptions.from_flags(inbound_ports="*", inbound_ports_exclude=ports))
    chunks = [line for line in text.splitlines() if "--dports" in line]
    assert len(chunks) == 2
    assert chunks[0].count(",") == 14 and chunks[1].count(",") == 4


def test_loopback_include_drops_the_lo_return_rules() -> None:
    text = render(CaptureOptions.from_flags(outbound_cidrs="127.0.0.1/32"))
    assert "! --uid-owner" not in text and "! --gid-owner" not in text
    assert "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j ISTIO_REDIRECT" in text


def test_gid_defaults_to_uid_list() -> None:
    opts = CaptureOptions.from_flags(proxy_uid="1000,1001")
    assert opts.proxy_gids == ("1000", "1001")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"mode": "TPROXY"}, "TPROXY"),
        ({"mode": "BOGUS"}, "-m"),
        ({"proxy_port": "70000"}, "-p"),
        ({"inbound_ports": "80,http"}, "-b"),
        ({"inbound_ports": "*,80"}, "-b"),
        ({"outbound_cidrs": "10.0.0.0/33"}, "-i"),
        ({"outbound_cidrs_exclude": "*"}, "-x"),
        ({"proxy_uid": "root"}, "-u"),
    ],
)
def test_bad_options_are_refused_with_the_flag_named(
    flags: dict[str, str], message: str
) -> None:
    with pytest.raises(CaptureError, match=message):
        CaptureOptions.from_flags(**flags)  # type: ignore[arg-type]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sidecar")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


def test_cli_render_with_istio_short_flags(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["iptables", "render", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT"]
    argv += ["-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"]
    assert run_cli(argv) == 0
    assert capsys.readouterr().out == render(injector_defaults())


def test_cli_render_with_long_flags_and_ipv6(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["iptables", "render", "--istio-inbound-ports", "4000,5000", "--ipv6"]
    assert run_cli(argv) == 0
    assert capsys.readouterr().out.splitlines() == golden_rules("ipv6-inbound-ports")


def test_cli_apply_dry_run_prints_without_running(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["iptables", "apply", "--dry-run", "-b", "*", "--netns", "nonexistent"]) == 0
    out = capsys.readouterr().out
    assert "iptables-restore --noflush" in out
    assert "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT" in out


def test_cli_reports_bad_flags_as_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["iptables", "render", "-m", "TPROXY"]) == 1
    assert "TPROXY" in capsys.readouterr().err
