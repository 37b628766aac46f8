"""The rule builder: Istio's nat-table capture rules, in Istio's order, per address family.

Theory of operation. istio-iptables builds one ordered list of rules per family and feeds it to
`iptables-restore` (and `ip6tables-restore`) as one `* nat ... COMMIT` block that first declares
its four chains. The order matters twice: rules in a chain are matched in order, and `-I PREROUTING
1` lines insert at the head in the order they are applied (so the last inserted ends up first).
`build()` follows istio-iptables' `Run()` step by step:

  1. excluded interfaces: RETURN in PREROUTING (-i) and OUTPUT (-o)
  2. kube virtual interfaces: RETURN inserted at the head of PREROUTING
  3. ISTIO_INBOUND returns the inbound tunnel (HBONE) port untouched
  4. ISTIO_REDIRECT -> proxy port; ISTIO_IN_REDIRECT -> inbound capture port
  5. inbound ports: PREROUTING -> ISTIO_INBOUND; `*` minus exclusions, or the listed ports
  6. OUTPUT -> ISTIO_OUTPUT, then in ISTIO_OUTPUT: excluded outbound ports (tcp and udp),
     inbound passthrough source (127.0.0.6 / ::6) on lo, per uid then per gid the three owner
     rules (proxy to a local non-loopback address goes to inbound; app traffic on lo returns;
     proxy traffic returns), loopback destination returns, excluded CIDRs return,
     included outbound ports and CIDRs (or `*`) go to ISTIO_REDIRECT.

`render()` gives the restore text; `Rule` keeps the pieces apart so `clean` can recognise what
`apply` added.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from sidecar.capture.options import CaptureOptions, Cidr, cidr_text

INBOUND = "ISTIO_INBOUND"
REDIRECT = "ISTIO_REDIRECT"
IN_REDIRECT = "ISTIO_IN_REDIRECT"
OUTPUT_CHAIN = "ISTIO_OUTPUT"
CHAINS: tuple[str, ...] = (INBOUND, REDIRECT, IN_REDIRECT, OUTPUT_CHAIN)
BUILTIN_CHAINS: tuple[str, ...] = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")

MULTIPORT_MAX = 15  # the kernel's xt_multiport limit per rule


class Family(Enum):
    """An address family with the tools and the addresses that differ between v4 and v6."""

    V4 = 4
    V6 = 6

    @property
    def restore(self) -> str:
        return "iptables-restore" if self is Family.V4 else "ip6tables-restore"

    @property
    def save(self) -> str:
        return "iptables-save" if self is Family.V4 else "ip6tables-save"

    @property
    def loopback(self) -> str:
        return "127.0.0.1/32" if self is Family.V4 else "::1/128"

    @property
    def passthrough(self) -> str:
        """Source address of the proxy's inbound passthrough connections to the app."""
        return "127.0.0.6/32" if self is Family.V4 else "::6/128"


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: `-A chain spec` or, with `insert`, `-I chain 1 spec`."""

    chain: str
    spec: tuple[str, ...]
    insert: bool = False

    def line(self) -> str:
        head = f"-I {self.chain} 1" if self.insert else f"-A {self.chain}"
        return " ".join((head, *self.spec))

    @property
    def in_builtin_chain(self) -> bool:
        return self.chain in BUILTIN_CHAINS


@dataclass(frozen=True, slots=True)
class FamilyRules:
    """The ordered nat-table rules for one family."""

    family: Family
    chains: tuple[str, ...]
    rules: tuple[Rule, ...]

    def restore_text(self) -> str:
        """The block `iptables-restore --noflush` takes."""
        lines = ["* nat", *(f"-N {c}" for c in self.chains), *(r.line() for r in self.rules)]
        return "\n".join([*lines, "COMMIT"]) + "\n"


def _ports_match(ports: Sequence[int]) -> Iterable[tuple[str, ...]]:
    """`--dport P` for one port, `-m multiport --dports A,B` for several (in chunks of 15)."""
    if len(ports) == 1:
        yield ("--dport", str(ports[0]))
        return
    for start in range(0, len(ports), MULTIPORT_MAX):
        chunk = ports[start : start + MULTIPORT_MAX]
        yield ("-m", "multiport", "--dports", ",".join(str(p) for p in chunk))


class _Builder:
    """Accumulates rules for one family in the order they are added."""

    def __init__(self, opts: CaptureOptions, family: Family) -> None:
        self.opts = opts
        self.family = family
        self.rules: list[Rule] = []

    def add(self, chain: str, *spec: str) -> None:
        self.rules.append(Rule(chain, spec))

    def insert(self, chain: str, *spec: str) -> None:
        self.rules.append(Rule(chain, spec, insert=True))

    def cidrs(self, cidrs: Iterable[Cidr]) -> list[str]:
        return [cidr_text(c) for c in cidrs if c.version == self.family.value]

    def interfaces(self) -> None:
        for name in self.opts.exclude_interfaces:
            self.add("PREROUTING", "-i", name, "-j", "RETURN")
            self.add("OUTPUT", "-o", name, "-j", "RETURN")
        for name in self.opts.kube_virt_interfaces:
            self.insert("PREROUTING", "-i", name, "-j", "RETURN")

    def base_chains(self) -> None:
        o = self.opts
        self.add(INBOUND, "-p", "tcp", "--dport", str(o.inbound_tunnel_port), "-j", "RETURN")
        self.add(REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(o.proxy_port))
        self.add(
            IN_REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(o.inbound_capture_port)
        )

    def inbound(self) -> None:
        sel = self.opts.inbound_ports
        if not sel.enabled:
            return
        self.add("PREROUTING", "-p", "tcp", "-j", INBOUND)
        if sel.wildcard:
            if self.opts.inbound_ports_exclude:
                for match in _ports_match(self.opts.inbound_ports_exclude):
                    self.add(INBOUND, "-p", "tcp", *match, "-j", "RETURN")
            self.add(INBOUND, "-p", "tcp", "-j", IN_REDIRECT)
            return
        for port in sel.ports:
            self.add(INBOUND, "-p", "tcp", "--dport", str(port), "-j", IN_REDIRECT)

    def owner(self, kind: str, ident: str, keep_lo_return: bool) -> None:
        fam = self.family
        tunnel = str(self.opts.inbound_tunnel_port)
        owner = f"--{kind}-owner"
        lo_not_loopback = ("-o", "lo", "!", "-d", fam.loopback)
        not_tunnel = ("-p", "tcp", "!", "--dport", tunnel)
        self.add(OUTPUT_CHAIN, *lo_not_loopback, *not_tunnel, "-m", "owner", owner, ident,
                 "-j", IN_REDIRECT)
        if keep_lo_return:
            self.add(OUTPUT_CHAIN, "-o", "lo", "-m", "owner", "!", owner, ident, "-j", "RETURN")
        self.add(OUTPUT_CHAIN, "-m", "owner", owner, ident, "-j", "RETURN")

    def outbound(self) -> None:
        o = self.opts
        self.add("OUTPUT", "-j", OUTPUT_CHAIN)
        for match in _ports_match(o.outbound_ports_exclude) if o.outbound_ports_exclude else ():
            self.add(OUTPUT_CHAIN, "-p", "tcp", *match, "-j", "RETURN")
            self.add(OUTPUT_CHAIN, "-p", "udp", *match, "-j", "RETURN")
        self.add(OUTPUT_CHAIN, "-o", "lo", "-s", self.family.passthrough, "-j", "RETURN")
        keep_lo_return = not o.outbound_include.has_loopback()
        for uid in o.proxy_uids:
            self.owner("uid", uid, keep_lo_return)
        for gid in o.proxy_gids:
            self.owner("gid", gid, keep_lo_return)
        self.add(OUTPUT_CHAIN, "-d", self.family.loopback, "-j", "RETURN")
        for cidr in self.cidrs(o.outbound_exclude):
            self.add(OUTPUT_CHAIN, "-d", cidr, "-j", "RETURN")
        for port in o.outbound_ports_include:
            self.add(OUTPUT_CHAIN, "-p", "tcp", "--dport", str(port), "-j", REDIRECT)
        self.outbound_include()

    def outbound_include(self) -> None:
        o = self.opts
        if o.outbound_include.wildcard:
            self.add(OUTPUT_CHAIN, "-j", REDIRECT)
            for name in o.kube_virt_interfaces:
                self.insert("PREROUTING", "-i", name, "-j", REDIRECT)
            return
        for cidr in self.cidrs(o.outbound_include.cidrs):
            for name in o.kube_virt_interfaces:
                self.insert("PREROUTING", "-i", name, "-d", cidr, "-j", REDIRECT)
            self.add(OUTPUT_CHAIN, "-d", cidr, "-j", REDIRECT)

    def build(self) -> FamilyRules:
        self.interfaces()
        self.base_chains()
        self.inbound()
        self.outbound()
        return FamilyRules(self.family, CHAINS, tuple(self.rules))


def build(opts: CaptureOptions) -> tuple[FamilyRules, ...]:
    """The rules for IPv4, and for IPv6 when enabled, in the order they are applied."""
    families = (Family.V4, Family.V6) if opts.ipv6 else (Family.V4,)
    return tuple(_Builder(opts, fam).build() for fam in families)


def render(opts: CaptureOptions) -> str:
    """All restore blocks, IPv4 first, as `istio-iptables --dry-run` shows them."""
    return "".join(fr.restore_text() for fr in build(opts))
