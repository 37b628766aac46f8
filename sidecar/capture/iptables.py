"""Apply and clean Istio's capture rules with the real iptables tools.

Theory of operation. `apply` feeds each family's `* nat ... COMMIT` block to
`iptables-restore --noflush` (and `ip6tables-restore --noflush`): one atomic transaction per
family that adds the ISTIO_* chains and the jumps into them without touching other rules. If ISTIO_*
chains already exist, `apply` cleans first and then applies, which is what istio-iptables does
when it finds rules that are not the ones it would write: a second `apply` never duplicates rules.
If the IPv6 block fails after IPv4 went in, IPv4 is cleaned again so nothing is left half done.

`clean` reads `iptables-save -t nat`, and in one restore transaction per family deletes exactly
what `apply` added: the rules in PREROUTING/OUTPUT that jump to an ISTIO_* chain, the interface
RETURN rules the options produce (as many as `apply` added), then flushes and deletes the four
ISTIO_* chains. With nothing present it runs nothing, so it is idempotent.

Every command goes through a `Runner`, whose prefix can put it in a network namespace
(`ip netns exec NAME`); tests never touch the host's own tables. Failures raise `CaptureError`
with the tool's stderr.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

from sidecar.capture.options import CaptureOptions
from sidecar.capture.rules import CHAINS, Family, FamilyRules, build
from sidecar.errors import CaptureError

TOOL_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Runner:
    """Runs the iptables tools, optionally under a prefix such as `ip netns exec NAME`."""

    prefix: tuple[str, ...] = ()

    @classmethod
    def in_netns(cls, name: str) -> Runner:
        return cls(("ip", "netns", "exec", name))

    def run(
        self, argv: Sequence[str], stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [*self.prefix, *argv]
        try:
            return subprocess.run(
                cmd,
                input=stdin,
                text=True,
                capture_output=True,
                timeout=TOOL_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CaptureError(f"{' '.join(cmd)}: {exc}") from exc

    def check(self, argv: Sequence[str], stdin: str | None = None) -> str:
        """Run and return stdout, or raise CaptureError with the command and its stderr."""
        done = self.run(argv, stdin)
        if done.returncode != 0:
            detail = done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}"
            raise CaptureError(f"{' '.join([*self.prefix, *argv])} failed: {detail}")
        return done.stdout


@dataclass(frozen=True, slots=True)
class NatState:
    """The parts of `iptables-save -t nat` that matter here: chain names and rule lines."""

    chains: frozenset[str]
    rules: tuple[tuple[str, str], ...]  # (chain, spec) for each `-A chain spec` line

    @classmethod
    def parse(cls, text: str) -> NatState:
        chains: set[str] = set()
        rules: list[tuple[str, str]] = []
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
            elif table != "nat":
                continue
            elif line.startswith(":"):
                chains.add(line[1:].split()[0])
            elif line.startswith("-A "):
                _, chain, *spec = line.split()
                rules.append((chain, " ".join(spec)))
        return cls(frozenset(chains), tuple(rules))

    @property
    def has_istio_chains(self) -> bool:
        return any(c in self.chains for c in CHAINS)


def read_nat(runner: Runner, family: Family) -> NatState:
    """The current nat table of one family."""
    return NatState.parse(runner.check([family.save, "-t", "nat"]))


def _jumps_to_ours(spec: str) -> bool:
    words = spec.split()
    return any(a == "-j" and b in CHAINS for a, b in pairwise(words))


def cleanup_text(state: NatState, ours: FamilyRules) -> str:
    """The restore block that removes what `ours` added from `state`, or "" if nothing is there."""
    budget = Counter(" ".join(r.spec) for r in ours.rules if r.in_builtin_chain)
    deletes: list[str] = []
    for chain, spec in state.rules:
        if chain not in ("PREROUTING", "OUTPUT"):
            continue
        if _jumps_to_ours(spec):
            deletes.append(f"-D {chain} {spec}")
        elif budget[spec] > 0:
            budget[spec] -= 1
            deletes.append(f"-D {chain} {spec}")
    present = [c for c in CHAINS if c in state.chains]
    lines = deletes + [f"-F {c}" for c in present] + [f"-X {c}" for c in present]
    if not lines:
        return ""
    return "\n".join(["*nat", *lines, "COMMIT"]) + "\n"


def _families(opts: CaptureOptions, runner: Runner) -> tuple[Family, ...]:
    """IPv4, plus IPv6 when enabled or when its tools work here (clean looks at both)."""
    if opts.ipv6:
        return (Family.V4, Family.V6)
    probe = runner.run([Family.V6.save, "-t", "nat"])
    return (Family.V4, Family.V6) if probe.returncode == 0 else (Family.V4,)


def clean(opts: CaptureOptions, runner: Runner | None = None) -> int:
    """Remove what `apply` added; returns how many restore transactions ran (0: nothing to do)."""
    runner = runner or Runner()
    ran = 0
    for family in _families(opts, runner):
        ours = build_family(opts, family)
        text = cleanup_text(read_nat(runner, family), ours)
        if text:
            runner.check([family.restore, "--noflush"], stdin=text)
            ran += 1
    return ran


def build_family(opts: CaptureOptions, family: Family) -> FamilyRules:
    """The rules of one family, even if the options leave that family off."""
    if family is Family.V6 and not opts.ipv6:
        return build(replace(opts, ipv6=True))[1]
    return next(fr for fr in build(opts) if fr.family is family)


def _already_there(stderr: str) -> bool:
    text = stderr.lower()
    return "exists" in text or "already assigned" in text


def _ensure_ipv6_passthrough_address(runner: Runner) -> None:
    """Istio adds ::6/128 to lo so the proxy can bind its inbound passthrough source there."""
    done = runner.run(["ip", "-6", "addr", "add", "::6/128", "dev", "lo"])
    if done.returncode != 0 and not _already_there(done.stderr):
        raise CaptureError(f"ip -6 addr add ::6/128 dev lo failed: {done.stderr.strip()}")


def apply(opts: CaptureOptions, runner: Runner | None = None) -> tuple[FamilyRules, ...]:
    """Install the rules (cleaning any previous ISTIO_* rules first); returns what was applied."""
    runner = runner or Runner()
    wanted = build(opts)
    if any(read_nat(runner, fr.family).has_istio_chains for fr in wanted):
        clean(opts, runner)
    if opts.ipv6:
        _ensure_ipv6_passthrough_address(runner)
    for fr in wanted:
        try:
            runner.check([fr.family.restore, "--noflush"], stdin=fr.restore_text())
        except CaptureError:
            clean(opts, runner)
            raise
    return wanted


def dry_run_text(opts: CaptureOptions) -> str:
    """What `apply` would run, as a shell-readable transcript."""
    parts = []
    for fr in build(opts):
        parts.append(f"# {fr.family.restore} --noflush <<EOF\n{fr.restore_text()}# EOF\n")
    return "".join(parts)
