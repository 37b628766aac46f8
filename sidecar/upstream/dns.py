"""An asynchronous DNS stub resolver that reports TTLs (what getaddrinfo cannot).

Theory of operation: `Resolver.resolve(name)` answers IP literals at once, then /etc/hosts, then
asks the nameservers (the bootstrap's, else resolv.conf's) for each search-list candidate in
glibc's order. For one candidate the A and AAAA questions go out in parallel; IPv4 addresses come
first in the result. Each question is a fresh connected UDP socket (the kernel picks a random
source port) with a random 16-bit id; a datagram is taken only if it parses and echoes the id and
the question (name, type, class), so a stale or spoofed one is ignored and the wait goes on. A
truncated answer is asked again over TCP. Each try waits `timeout`; `attempts` rounds go over
every nameserver; SERVFAIL and REFUSED move to the next server. CNAME chains are followed inside
the answer and, when the answer stops at a CNAME without an SOA, by asking again for the target
(bounded). The TTL of an answer is the minimum over the chain; NXDOMAIN and NODATA are distinct
results, cached for the SOA minimum (RFC 2308), at most `NEGATIVE_TTL_CAP`. Answers are cached
per (name, type) until they expire (bounded size) and identical questions in flight are shared.
Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import secrets
import struct
import time
from dataclasses import dataclass

from sidecar.upstream.dns_conf import HostsTable, ResolverConfig, resolver_config
from sidecar.upstream.dns_wire import (
    CLASS_IN,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    Message,
    Soa,
    WireError,
    encode_query,
    name_labels,
    normalize,
    parse_message,
)

NEGATIVE_TTL_CAP = 30.0  # seconds a NXDOMAIN / NODATA answer is cached at most
MAX_CNAME_HOPS = 16  # CNAMEs followed inside one answer
MAX_REQUERIES = 8  # questions asked again for a chain's target
CACHE_SIZE = 1024


class DnsStatus(enum.Enum):
    """The outcome of a lookup."""

    OK = "ok"
    NXDOMAIN = "NXDOMAIN"  # the name does not exist
    NODATA = "NODATA"  # the name exists, without addresses of the asked family
    TIMEOUT = "timeout"  # no nameserver answered in time
    SERVFAIL = "SERVFAIL"  # nameservers failed or refused
    BADNAME = "bad name"  # not a host name that can be asked


NEGATIVE = (DnsStatus.NXDOMAIN, DnsStatus.NODATA)


@dataclass(frozen=True, slots=True)
class DnsResult:
    """Addresses for a name (IPv4 first) and how long they may be used (0: no TTL known)."""

    name: str
    status: DnsStatus
    addresses: tuple[str, ...] = ()
    ttl: float = 0.0


class _Udp(asyncio.DatagramProtocol):
    """One UDP question: resolves `done` with the first matching answer, None on error."""

    def __init__(self, check: _Check) -> None:
        self.check = check
        self.done: asyncio.Future[Message | None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not self.done.done():
            msg = self.check.accept(data)
            if msg is not None:
                self.done.set_result(msg)

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, ConnectionRefusedError) and not self.done.done():
            self.done.set_result(None)  # ICMP port unreachable: nobody serves DNS there

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _Tcp(asyncio.Protocol):
    """One TCP question (RFC 7766): a 2-octet length, then the message, both ways."""

    def __init__(self, check: _Check) -> None:
        self.check = check
        self.buf = bytearray()
        self.done: asyncio.Future[Message | None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= 2 and not self.done.done():
            (size,) = struct.unpack_from("!H", self.buf)
            if len(self.buf) >= 2 + size:
                self.done.set_result(self.check.accept(bytes(self.buf[2 : 2 + size])))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


@dataclass(frozen=True, slots=True)
class _Check:
    """What an answer must echo to be taken: the id and the question."""

    qid: int
    name: str
    qtype: int

    def accept(self, data: bytes) -> Message | None:
        msg = parse_message(data)
        if msg is None or msg.id != self.qid or not msg.is_response or len(msg.questions) != 1:
            return None
        q = msg.questions[0]
        if q.name != self.name or q.qtype != self.qtype or q.qclass != CLASS_IN:
            return None
        return msg


def _negative_ttl(msg: Message) -> float:
    for r in msg.authority:
        if isinstance(r.value, Soa):
            return float(min(r.ttl, r.value.minimum, NEGATIVE_TTL_CAP))
    return 0.0


class Resolver:
    """A stub resolver with a cache; one per process, shared by every DNS cluster."""

    def __init__(
        self,
        config: ResolverConfig | None = None,
        hosts: HostsTable | None = None,
        cache_size: int = CACHE_SIZE,
        ipv6: bool = True,
    ) -> None:
        self.ipv6 = ipv6  # ask AAAA as well as A (Istio: only when the proxy has IPv6)
        self.config = config if config is not None else resolver_config()
        self.hosts = hosts if hosts is not None else HostsTable()
        self.cache_size = cache_size
        self._cache: dict[tuple[str, int], tuple[float, DnsResult]] = {}
        self._inflight: dict[tuple[str, int], asyncio.Task[DnsResult]] = {}

    @classmethod
    def from_servers(cls, servers: tuple[str, ...], ipv6: bool = True) -> Resolver:
        """resolv.conf's settings with `servers` ("ip" / "ip:port") as nameservers if given."""
        return cls(resolver_config(servers), ipv6=ipv6)

    def close(self) -> None:
        for task in self._inflight.values():
            task.cancel()
        self._inflight.clear()

    async def resolve(self, name: str, ipv6: bool | None = None) -> DnsResult:
        """Addresses of `name`: A (and AAAA when `ipv6`), IPv4 first, with their TTL."""
        ipv6 = self.ipv6 if ipv6 is None else ipv6
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            return DnsResult(name, DnsStatus.OK, (str(ip),))
        try:
            name_labels(name)
        except WireError:
            return DnsResult(name, DnsStatus.BADNAME)
        qname = normalize(name)
        listed = self.hosts.lookup(qname)
        if not ipv6:
            listed = tuple(a for a in listed if ":" not in a)
        if listed:
            return DnsResult(qname, DnsStatus.OK, listed)
        types = (TYPE_A, TYPE_AAAA) if ipv6 else (TYPE_A,)
        as_written: DnsResult | None = None
        for candidate in self.config.candidates(name):
            result = await self._resolve_types(normalize(candidate), types)
            if result.status not in NEGATIVE:
                return result
            if normalize(candidate) == qname:
                as_written = result
        return as_written or DnsResult(qname, DnsStatus.NXDOMAIN)

    async def _resolve_types(self, name: str, types: tuple[int, ...]) -> DnsResult:
        results = await asyncio.gather(*(self.lookup(name, t) for t in types))
        found = [r for r in results if r.status is DnsStatus.OK]
        if found:
            addrs = tuple(a for r in found for a in r.addresses)
            return DnsResult(name, DnsStatus.OK, addrs, min(r.ttl for r in found))
        for status in (DnsStatus.NXDOMAIN, DnsStatus.NODATA):
            if any(r.status is status for r in results) and all(
                r.status in NEGATIVE for r in results
            ):
                return DnsResult(name, status, (), min(r.ttl for r in results))
        failed = next(r for r in results if r.status not in NEGATIVE)
        return DnsResult(name, failed.status)

    async def lookup(self, name: str, qtype: int) -> DnsResult:
        """One (name, type) question, from the cache or the nameservers."""
        key = (name, qtype)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None:
            expires, result = cached
            if expires > now:
                return DnsResult(result.name, result.status, result.addresses, expires - now)
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._ask(name, qtype))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._finished(key, _t))
        return await asyncio.shield(task)

    def _finished(self, key: tuple[str, int], task: asyncio.Task[DnsResult]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled() or task.exception() is not None:
            return
        result = task.result()
        if result.ttl > 0 and result.status in (DnsStatus.OK, *NEGATIVE):
            while len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = (time.monotonic() + result.ttl, result)

    async def _ask(self, name: str, qtype: int) -> DnsResult:
        """Ask, following CNAMEs inside answers and by asking again for the target."""
        target, ttl = name, float("inf")
        for _ in range(MAX_REQUERIES):
            msg = await self._exchange(target, qtype)
            if isinstance(msg, DnsStatus):
                return DnsResult(name, msg)
            current = target
            for _hop in range(MAX_CNAME_HOPS):
                recs = [r for r in msg.answers if r.name == current and r.rclass == CLASS_IN]
                addrs = tuple(str(r.value) for r in recs if r.rtype == qtype)
                if addrs:
                    ttl = min([ttl, *(r.ttl for r in recs if r.rtype == qtype)])
                    return DnsResult(name, DnsStatus.OK, tuple(dict.fromkeys(addrs)), ttl)
                cname = next((r for r in recs if r.rtype == TYPE_CNAME), None)
                if cname is None:
                    break
                ttl, current = min(ttl, cname.ttl), str(cname.value)
            negative = min(ttl, _negative_ttl(msg))
            if msg.rcode == RCODE_NXDOMAIN:
                return DnsResult(name, DnsStatus.NXDOMAIN, (), negative)
            if current == target or any(isinstance(r.value, Soa) for r in msg.authority):
                return DnsResult(name, DnsStatus.NODATA, (), negative)
            target = current  # the answer stopped at a CNAME: ask for its target
        return DnsResult(name, DnsStatus.SERVFAIL)

    async def _exchange(self, name: str, qtype: int) -> Message | DnsStatus:
        """The nameservers' answer to one question (NOERROR or NXDOMAIN), or why there is none."""
        failure = DnsStatus.TIMEOUT
        for _attempt in range(self.config.attempts):
            for server in self.config.nameservers:
                msg = await self._udp(server, name, qtype)
                if msg is not None and msg.truncated:
                    msg = await self._tcp(server, name, qtype)
                if msg is None:
                    continue
                if msg.rcode in (RCODE_NOERROR, RCODE_NXDOMAIN):
                    return msg
                failure = DnsStatus.SERVFAIL  # SERVFAIL, REFUSED, ...: try the next server
        return failure

    async def _udp(self, server: tuple[str, int], name: str, qtype: int) -> Message | None:
        check = _Check(secrets.randbelow(0x10000), name, qtype)
        loop = asyncio.get_running_loop()
        try:
            transport, proto = await loop.create_datagram_endpoint(
                lambda: _Udp(check), remote_addr=server
            )
        except OSError:
            return None
        try:
            transport.sendto(encode_query(check.qid, name, qtype))
            async with asyncio.timeout(self.config.timeout):
                return await proto.done
        except TimeoutError:
            return None
        finally:
            transport.close()

    async def _tcp(self, server: tuple[str, int], name: str, qtype: int) -> Message | None:
        check = _Check(secrets.randbelow(0x10000), name, qtype)
        loop = asyncio.get_running_loop()
        query = encode_query(check.qid, name, qtype)
        transport: asyncio.Transport | None = None
        try:
            async with asyncio.timeout(self.config.timeout):
                transport, proto = await loop.create_connection(lambda: _Tcp(check), *server)
                transport.write(struct.pack("!H", len(query)) + query)
                return await proto.done
        except (TimeoutError, OSError):
            return None
        finally:
            if transport is not None:
                transport.close()
