"""Capture options: what istio-iptables' flags say, parsed once into typed values.

Istio passes every list as a comma-separated string (`-b 32000,31000`, `-i '*'`, `-x ""`). This
module turns those strings into typed, frozen values and refuses what cannot work (a bad port, a
bad CIDR, `*` as an exclusion, TPROXY mode) with a `CaptureError` that names the flag. Empty list
items are dropped, as Istio's `config.Split` does (`-d 6000,7000,` is two ports).

Where this differs from istio-iptables on purpose: Istio skips CIDRs it cannot parse ("for bug
compatibility"); here they are an error, because a silently dropped exclusion captures traffic
the user asked to leave alone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from sidecar.errors import CaptureError

Cidr = ipaddress.IPv4Interface | ipaddress.IPv6Interface

WILDCARD = "*"
MODE_REDIRECT = "REDIRECT"
MODE_TPROXY = "TPROXY"


def split_list(value: str) -> tuple[str, ...]:
    """Split a comma list the way Istio does: trim items, drop empty ones."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def parse_port(text: str, flag: str) -> int:
    """One TCP port number (1-65535), or CaptureError naming the flag."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise CaptureError(f"{flag}: {text!r} is not a port number (1-65535)")
    return int(text)


def parse_ports(value: str, flag: str) -> tuple[int, ...]:
    """A comma list of ports; `*` is refused here (callers that allow it check first)."""
    return tuple(parse_port(item, flag) for item in split_list(value))


def parse_ids(value: str, flag: str) -> tuple[str, ...]:
    """A comma list of numeric uids or gids, kept as text (they go into rules as written)."""
    ids = split_list(value)
    for item in ids:
        if not item.isdigit():
            raise CaptureError(f"{flag}: {item!r} is not a numeric id")
    return ids


def parse_cidr(text: str, flag: str) -> Cidr:
    """A CIDR (`10.0.0.0/8`) or a bare address (taken as /32 or /128)."""
    try:
        return ipaddress.ip_interface(text)
    except ValueError as exc:
        raise CaptureError(f"{flag}: {text!r} is not a CIDR or IP address") from exc


def cidr_text(cidr: Cidr) -> str:
    """The CIDR as iptables is given it: the address as written, then the prefix length."""
    return f"{cidr.ip}/{cidr.network.prefixlen}"


@dataclass(frozen=True, slots=True)
class PortSelection:
    """Inbound ports to capture: all (`*`), some, or none (empty)."""

    wildcard: bool = False
    ports: tuple[int, ...] = ()

    @classmethod
    def parse(cls, value: str, flag: str) -> PortSelection:
        items = split_list(value)
        if WILDCARD in items:
            if len(items) > 1:
                raise CaptureError(f"{flag}: '*' cannot be combined with other ports")
            return cls(wildcard=True)
        return cls(ports=parse_ports(value, flag))

    @property
    def enabled(self) -> bool:
        return self.wildcard or bool(self.ports)


@dataclass(frozen=True, slots=True)
class CidrSelection:
    """Outbound destinations to capture: all (`*`) or a list of CIDRs of both families."""

    wildcard: bool = False
    cidrs: tuple[Cidr, ...] = ()

    @classmethod
    def parse(cls, value: str, flag: str) -> CidrSelection:
        items = split_list(value)
        if WILDCARD in items:
            return cls(wildcard=True)
        return cls(cidrs=tuple(parse_cidr(item, flag) for item in items))

    def of_version(self, version: int) -> tuple[Cidr, ...]:
        return tuple(c for c in self.cidrs if c.version == version)

    def has_loopback(self) -> bool:
        """True when a CIDR's address is a loopback address (Istio then keeps lo traffic)."""
        return any(c.ip.is_loopback for c in self.cidrs)


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    """Everything the rule builder needs; defaults are istio-iptables' test base config."""

    proxy_port: int = 15001
    inbound_capture_port: int = 15006
    inbound_tunnel_port: int = 15008
    proxy_uids: tuple[str, ...] = ("1337",)
    proxy_gids: tuple[str, ...] = ("1337",)
    inbound_ports: PortSelection = field(default_factory=PortSelection)
    inbound_ports_exclude: tuple[int, ...] = ()
    outbound_include: CidrSelection = field(default_factory=CidrSelection)
    outbound_exclude: tuple[Cidr, ...] = ()
    outbound_ports_include: tuple[int, ...] = ()
    outbound_ports_exclude: tuple[int, ...] = ()
    kube_virt_interfaces: tuple[str, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    ipv6: bool = False

    @classmethod
    def from_flags(
        cls,
        *,
        proxy_port: str = "15001",
        inbound_capture_port: str = "15006",
        inbound_tunnel_port: str = "15008",
        proxy_uid: str = "1337",
        proxy_gid: str | None = None,
        mode: str = MODE_REDIRECT,
        inbound_ports: str = "",
        inbound_ports_exclude: str = "",
        outbound_cidrs: str = "",
        outbound_cidrs_exclude: str = "",
        outbound_ports_include: str = "",
        outbound_ports_exclude: str = "",
        kube_virt_interfaces: str = "",
        exclude_interfaces: str = "",
        ipv6: bool = False,
    ) -> CaptureOptions:
        """Build options from istio-iptables' string flags (the gid list defaults to the uids)."""
        if mode.upper() == MODE_TPROXY:
            raise CaptureError(
                "-m TPROXY: inbound interception mode TPROXY is not supported; use REDIRECT"
            )
        if mode.upper() != MODE_REDIRECT:
            raise CaptureError(f"-m: unknown inbound interception mode {mode!r} (use REDIRECT)")
        excluded = CidrSelection.parse(outbound_cidrs_exclude, "-x")
        if excluded.wildcard:
            raise CaptureError("-x: '*' is not a valid outbound exclusion")
        uids = parse_ids(proxy_uid, "-u")
        return cls(
            proxy_port=parse_port(proxy_port, "-p"),
            inbound_capture_port=parse_port(inbound_capture_port, "-z"),
            inbound_tunnel_port=parse_port(inbound_tunnel_port, "--inbound-tunnel-port"),
            proxy_uids=uids,
            proxy_gids=uids if proxy_gid is None else parse_ids(proxy_gid, "-g"),
            inbound_ports=PortSelection.parse(inbound_ports, "-b"),
            inbound_ports_exclude=parse_ports(inbound_ports_exclude, "-d"),
            outbound_include=CidrSelection.parse(outbound_cidrs, "-i"),
            outbound_exclude=excluded.cidrs,
            outbound_ports_include=parse_ports(outbound_ports_include, "-q"),
            outbound_ports_exclude=parse_ports(outbound_ports_exclude, "-o"),
            kube_virt_interfaces=split_list(kube_virt_interfaces),
            exclude_interfaces=split_list(exclude_interfaces),
            ipv6=ipv6,
        )


def injector_defaults() -> CaptureOptions:
    """What Istio's sidecar injector passes to istio-iptables by default."""
    return CaptureOptions.from_flags(
        proxy_port="15001",
        inbound_capture_port="15006",
        proxy_uid="1337",
        mode=MODE_REDIRECT,
        outbound_cidrs="*",
        outbound_cidrs_exclude="",
        inbound_ports="*",
        inbound_ports_exclude="15090,15021,15020",
    )
