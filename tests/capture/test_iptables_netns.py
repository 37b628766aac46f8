"""apply / clean against the real iptables tools, inside a fresh network namespace."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.capture.iptables import Runner, apply, clean
from sidecar.capture.netns import Namespace, available
from sidecar.capture.options import CaptureOptions, injector_defaults
from sidecar.errors import CaptureError
from tests.conftest import require

pytestmark = [pytest.mark.capture, pytest.mark.timeout(60)]

CHAIN_ORDER = ["ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT"]


@pytest.fixture(scope="module")
def capture_ok() -> tuple[bool, str]:
    return available()


@pytest.fixture
def ns(capture_ok: tuple[bool, str]) -> Iterator[Namespace]:
    require(*capture_ok)
    with Namespace.create("ipt") as space:
        yield space


def saved(ns: Namespace, tool: str = "iptables-save") -> list[str]:
    """`iptables-save -t nat` without its timestamp comments."""
    out = ns.run([tool, "-t", "nat"]).stdout
    return [line for line in out.splitlines() if not line.startswith("#")]


def rule_lines(lines: list[str], chain: str) -> list[str]:
    return [line for line in lines if line.startswith(f"-A {chain} ")]


def test_apply_installs_istio_chains_in_order(ns: Namespace) -> None:
    apply(injector_defaults(), Runner.in_netns(ns.name))
    after = saved(ns)
    assert rule_lines(after, "PREROUTING") == ["-A PREROUTING -p tcp -j ISTIO_INBOUND"]
    assert rule_lines(after, "OUTPUT") == ["-A OUTPUT -j ISTIO_OUTPUT"]
    inbound = rule_lines(after, "ISTIO_INBOUND")
    assert [r.split(" -j ")[-1] for r in inbound] == ["RETURN", "RETURN", "ISTIO_IN_REDIRECT"]
    assert "--dports 15090,15021,15020" in inbound[1]
    output = rule_lines(after, "ISTIO_OUTPUT")
    assert len(output) == 9
    assert "-s 127.0.0.6/32" in output[0]
    assert output[-1] == "-A ISTIO_OUTPUT -j ISTIO_REDIRECT"
    assert rule_lines(after, "ISTIO_REDIRECT") == [
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"
    ]


def test_clean_restores_the_exact_previous_table(ns: Namespace) -> None:
    runner = Runner.in_netns(ns.name)
    ns.run(["iptables", "-t", "nat", "-A", "OUTPUT", "-d", "10.9.9.9/32", "-j", "RETURN"])
    before = saved(ns)
    opts = CaptureOptions.from_flags(
        inbound_ports="*", outbound_cidrs="*", kube_virt_interfaces="eth7",
        exclude_interfaces="eth8", outbound_ports_exclude="22,23",
    )
    apply(opts, runner)
    assert saved(ns) != before
    assert clean(opts, runner) == 1
    assert saved(ns) == before
    assert clean(opts, runner) == 0  # second clean: nothing to do, nothing changed
    assert saved(ns) == before


def test_clean_with_nothing_applied_changes_nothing(ns: Namespace) -> None:
    before = saved(ns)
    assert clean(injector_defaults(), Runner.in_netns(ns.name)) == 0
    assert saved(ns) == before


def test_apply_twice_does_not_duplicate_rules(ns: Namespace) -> None:
    runner = Runner.in_netns(ns.name)
    apply(injector_defaults(), runner)
    once = saved(ns)
    apply(injector_defaults(), runner)
    assert saved(ns) == once


def test_ipv6_apply_and_clean(ns: Namespace) -> None:
    require(ns.run(["ip6tables-save", "-t", "nat"], check=False).returncode == 0,
            "ip6tables nat table not usable")
    runner = Runner.in_netns(ns.name)
    before4, before6 = saved(ns), saved(ns, "ip6tables-save")
    opts = CaptureOptions.from_flags(inbound_ports="*", outbound_cidrs="*", ipv6=True)
    apply(opts, runner)
    after6 = saved(ns, "ip6tables-save")
    chains = [line[1:].split()[0] for line in after6 if line.startswith(":ISTIO")]
    assert chains == sorted(CHAIN_ORDER)
    assert "-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN" in after6
    assert "::6/128" in ns.run(["ip", "-6", "addr", "show", "dev", "lo"]).stdout
    clean(opts, runner)
    assert (saved(ns), saved(ns, "ip6tables-save")) == (before4, before6)


def test_restore_failure_is_a_capture_error_with_stderr(ns: Namespace) -> None:
    runner = Runner.in_netns(ns.name)
    bad = CaptureOptions.from_flags(exclude_interfaces="this-name-is-far-too-long-for-linux")
    with pytest.raises(CaptureError, match="iptables-restore"):
        apply(bad, runner)
    assert not any(line.startswith(":ISTIO") for line in saved(ns))  # nothing left behind


def test_cli_apply_and_clean_in_a_namespace(ns: Namespace) -> None:
    before = saved(ns)
    cli = [sys.executable, "-c", "from sidecar.capture.cli import register; import argparse, sys;"
           "p = argparse.ArgumentParser(); register(p.add_subparsers());"
           "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    flags = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
             "-b", "*", "-d", "15090,15021,15020", "--netns", ns.name]
    done = subprocess.run([*cli, "iptables", "apply", *flags], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert "-A OUTPUT -j ISTIO_OUTPUT" in saved(ns)
    done = subprocess.run([*cli, "iptables", "clean", *flags], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert saved(ns) == before


def test_istio_init_script_applies_the_injector_default(ns: Namespace) -> None:
    script = Path(__file__).resolve().parents[2] / "iptables" / "istio-init.sh"
    sidecar = Path(sys.executable).with_name("sidecar")
    require(sidecar.exists(), f"{sidecar} not installed")
    env = {**os.environ, "SIDECAR": str(sidecar)}
    done = ns.run([str(script)], check=False, env=env)
    assert done.returncode == 0, done.stderr
    assert saved(ns) == _applied_view(injector_defaults())


def _applied_view(opts: CaptureOptions) -> list[str]:
    """What `iptables-save` shows after our own apply in a second, fresh namespace."""
    with Namespace.create("iptref") as ref:
        apply(opts, Runner.in_netns(ref.name))
        return saved(ref)
