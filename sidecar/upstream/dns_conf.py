"""Where names are looked up: /etc/resolv.conf settings and the /etc/hosts table.

Theory of operation: `resolver_config` reads resolv.conf the way glibc does (the last `search`
or `domain` line wins, `options ndots:N timeout:N attempts:N`, defaults 1 / 5 s / 2, at most
three nameservers, 127.0.0.1 when none is listed); nameservers given on the command line replace
the file's, its other settings still apply. `HostsTable` answers from /etc/hosts and re-reads the
file when its modification time or size changes (a stat per lookup; lookups happen at refresh
rate, not per request).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from sidecar.errors import BootstrapError

DNS_PORT = 53
MAX_NAMESERVERS = 3  # glibc's MAXNS


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """Nameservers and the search rules for one resolver."""

    nameservers: tuple[tuple[str, int], ...] = (("127.0.0.1", DNS_PORT),)
    search: tuple[str, ...] = ()
    ndots: int = 1
    timeout: float = 5.0  # seconds per try
    attempts: int = 2  # rounds over all nameservers

    def candidates(self, name: str) -> list[str]:
        """The names to try for `name`, in order (search list and ndots, as glibc)."""
        if name.endswith("."):
            return [name.rstrip(".")]
        searched = [f"{name}.{domain}" for domain in self.search]
        if name.count(".") >= self.ndots:
            return [name, *searched]
        return [*searched, name]


def parse_server(text: str) -> tuple[str, int]:
    """ "ip", "ip:port", "[v6]:port" or a bare IPv6 address -> (ip, port)."""
    host, port = text.strip(), DNS_PORT
    if host.startswith("["):
        inside, _, rest = host[1:].partition("]")
        host = inside
        if rest.startswith(":"):
            port = _port(text, rest[1:])
    elif host.count(":") == 1:
        host, _, port_text = host.partition(":")
        port = _port(text, port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise BootstrapError(f"DNS resolver {text!r}: not an IP address") from exc
    return host, port


def _port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BootstrapError(f"DNS resolver {text!r}: bad port")
    return int(port_text)


def _option(value: str, low: int, high: int) -> int | None:
    return min(max(int(value), low), high) if value.isdigit() else None


def resolver_config(
    servers: tuple[str, ...] = (), path: Path = Path("/etc/resolv.conf")
) -> ResolverConfig:
    """Settings from resolv.conf, with `servers` ("ip" / "ip:port") replacing its nameservers."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    nameservers: list[tuple[str, int]] = []
    search: tuple[str, ...] = ()
    ndots, timeout, attempts = 1, 5, 2
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        key, args = words[0], words[1:]
        if key == "nameserver" and len(nameservers) < MAX_NAMESERVERS:
            try:
                nameservers.append(parse_server(args[0]))
            except BootstrapError:
                continue
        elif key in ("search", "domain"):
            search = tuple(a.rstrip(".") for a in args if a != ".")
        elif key == "options":
            for opt in args:
                k, _, v = opt.partition(":")
                got = {"ndots": (0, 15), "timeout": (1, 30), "attempts": (1, 5)}.get(k)
                value = _option(v, *got) if got else None
                if value is None:
                    continue
                if k == "ndots":
                    ndots = value
                elif k == "timeout":
                    timeout = value
                else:
                    attempts = value
    if servers:
        nameservers = [parse_server(s) for s in servers]
    return ResolverConfig(
        tuple(nameservers) or (("127.0.0.1", DNS_PORT),), search, ndots, float(timeout), attempts
    )


class HostsTable:
    """/etc/hosts: name -> addresses (IPv4 first), re-read when the file changes."""

    def __init__(self, path: Path = Path("/etc/hosts")) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._table: dict[str, tuple[str, ...]] = {}

    def lookup(self, name: str) -> tuple[str, ...]:
        """The addresses /etc/hosts gives `name` (lower case, no trailing dot); () if none."""
        self._refresh()
        return self._table.get(name, ())

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            self._stamp, self._table = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            text = self.path.read_text(errors="replace")
        except OSError:
            text = ""
        v4: dict[str, list[str]] = {}
        v6: dict[str, list[str]] = {}
        for raw in text.splitlines():
            words = raw.split("#", 1)[0].split()
            if len(words) < 2:
                continue
            try:
                ip = ipaddress.ip_address(words[0].split("%", 1)[0])
            except ValueError:
                continue
            table = v4 if ip.version == 4 else v6
            for host in words[1:]:
                addrs = table.setdefault(host.rstrip(".").lower(), [])
                if str(ip) not in addrs:
                    addrs.append(str(ip))
        self._table = {
            name: (*v4.get(name, ()), *v6.get(name, ())) for name in {*v4, *v6}
        }
