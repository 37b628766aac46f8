"""The DNS resolver against a real test DNS server over real sockets (UDP and TCP).

Proxy-level behaviour (ExternalName, DNS ServiceEntries through `sidecar run`) is in
test_dns_clusters.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from sidecar.upstream.dns import DnsStatus, Resolver
from sidecar.upstream.dns_conf import HostsTable, ResolverConfig, resolver_config
from sidecar.upstream.dns_wire import TYPE_A, TYPE_AAAA

from .dns_server import TestDns

NAME = "backend.test.internal"


def resolver(*servers: TestDns | tuple[str, int], timeout: float = 0.5, attempts: int = 2,
             hosts: Path | None = None, search: tuple[str, ...] = (), ndots: int = 1) -> Resolver:
    addrs = tuple((s.host, s.port) if isinstance(s, TestDns) else s for s in servers)
    config = ResolverConfig(addrs, search, ndots, timeout, attempts)
    return Resolver(config, HostsTable(hosts or Path("/nonexistent/hosts")))


async def test_a_and_aaaa_ipv4_first_with_ttl() -> None:
    async with TestDns("127.0.0.53") as dns:
        dns.set_aaaa(NAME, "::1", ttl=30)
        dns.set_a(NAME, "127.0.0.41", "127.0.0.42", ttl=7)
        r = await resolver(dns).resolve(NAME)
        assert r.status is DnsStatus.OK
        assert r.addresses == ("127.0.0.41", "127.0.0.42", "::1")
        assert 6 < r.ttl <= 7  # the shorter of the two answers
        assert dns.count(NAME, TYPE_A) == 1 and dns.count(NAME, TYPE_AAAA) == 1
        v4 = await resolver(dns).resolve(NAME.upper() + ".", ipv6=False)
        assert v4.addresses == ("127.0.0.41", "127.0.0.42")


async def test_answers_are_cached_until_the_ttl_runs_out() -> None:
    async with TestDns("127.0.0.53") as dns:
        dns.set_a(NAME, "127.0.0.41", ttl=1)
        res = resolver(dns)
        assert (await res.resolve(NAME, ipv6=False)).addresses == ("127.0.0.41",)
        dns.set_a(NAME, "127.0.0.42", ttl=1)
        again = await res.resolve(NAME, ipv6=False)
        assert again.addresses == ("127.0.0.41",) and 0 < again.ttl <= 1
        assert dns.count(NAME) == 1
        await asyncio.sleep(1.1)
        assert (await res.resolve(NAME, ipv6=False)).addresses == ("127.0.0.42",)
        assert dns.count(NAME) == 2


async def test_cname_chain_inside_the_answer_and_by_asking_again() -> None:
    async with TestDns("127.0.0.53") as dns:
        dns.set_cname(NAME, "alias1.test.internal", ttl=20)
        dns.set_cname("alias1.test.internal", "real.test.internal", ttl=3)
        dns.set_a("real.test.internal", "127.0.0.43", ttl=10)
        r = await resolver(dns).resolve(NAME, ipv6=False)
        assert (r.status, r.addresses) == (DnsStatus.OK, ("127.0.0.43",))
        assert 2 < r.ttl <= 3  # the minimum over the chain
        dns.partial_cname = True  # the server stops at each CNAME: the resolver must re-ask
        r = await resolver(dns).resolve(NAME, ipv6=False)
        assert (r.status, r.addresses) == (DnsStatus.OK, ("127.0.0.43",))
        assert dns.count("real.test.internal") == 1 and dns.count("alias1.test.internal") == 1


async def test_cname_loop_is_bounded() -> None:
    async with TestDns("127.0.0.53") as dns:
        dns.set_cname(NAME, "loop.test.internal")
        dns.set_cname("loop.test.internal", NAME)
        dns.partial_cname = True
        started = time.monotonic()
        r = await resolver(dns).resolve(NAME, ipv6=False)
        assert r.status is not DnsStatus.OK and time.monotonic() - started < 2


async def test_truncated_udp_answer_is_asked_again_over_tcp() -> None:
    async with TestDns("127.0.0.53") as dns:
        dns.set_a(NAME, "127.0.0.44")
        dns.truncate = True
        r = await resolver(dns).resolve(NAME, ipv6=False)
        assert r.addresses == ("127.0.0.44",)
        assert dns.count(NAME, transport="udp") == 1 and dns.count(NAME, transport="tcp") == 1


async def test_nxdomain_and_nodata_are_distinct_and_cached() -> None:
    async with TestDns("127.0.0.53") as dns:
        dns.negative_ttl = 5
        dns.set_aaaa("v6only.test.internal", "::1")
        res = resolver(dns)
        nx = await res.resolve("missing.test.internal", ipv6=False)
        nodata = await res.resolve("v6only.test.internal", ipv6=False)
        assert nx.status is DnsStatus.NXDOMAIN and nodata.status is DnsStatus.NODATA
        assert 4 < nx.ttl <= 5
        await res.resolve("missing.test.internal", ipv6=False)
        assert dns.count("missing.test.internal") == 1  # the negative answer was cached
        dns.negative_ttl = 100000
        far = await res.resolve("other.test.internal", ipv6=False)
        assert far.status is DnsStatus.NXDOMAIN and far.ttl <= 30  # capped


async def test_spoofed_datagram_with_wrong_id_is_ignored() -> None:
    async with TestDns("127.0.0.53") as dns:
        dns.set_a(NAME, "127.0.0.45")
        dns.spoof_first = True
        r = await resolver(dns).resolve(NAME, ipv6=False)
        assert r.addresses == ("127.0.0.45",)


async def test_silent_server_times_out_then_next_server_answers() -> None:
    async with TestDns("127.0.0.53") as silent, TestDns("127.0.0.54") as good:
        silent.silent = True
        good.set_a(NAME, "127.0.0.46")
        started = time.monotonic()
        r = await resolver(silent, good, timeout=0.3).resolve(NAME, ipv6=False)
        assert r.addresses == ("127.0.0.46",)
        assert 0.3 <= time.monotonic() - started < 1.5
        started = time.monotonic()
        r = await resolver(silent, timeout=0.2, attempts=3).resolve("x.test.internal")
        elapsed = time.monotonic() - started
        assert r.status is DnsStatus.TIMEOUT and 0.55 < elapsed < 1.5
        assert silent.count("x.test.internal") == 3  # A: one try per attempt


async def test_a_closed_port_fails_fast_and_other_lookups_keep_going() -> None:
    async with TestDns("127.0.0.53") as slow:
        slow.set_a(NAME, "127.0.0.47")
        slow.delay = 0.5
        res = resolver(slow, timeout=2)
        task = asyncio.ensure_future(res.resolve(NAME, ipv6=False))
        ticks = 0
        started = time.monotonic()
        while not task.done():  # the event loop keeps running while the answer is slow
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks > 20 and (await task).addresses == ("127.0.0.47",)
        assert time.monotonic() - started >= 0.5
    closed = await resolver(("127.0.0.53", 9), timeout=2).resolve(NAME, ipv6=False)
    assert closed.status is DnsStatus.TIMEOUT  # port unreachable: no answer, reported quickly


async def test_hosts_file_first_and_reread_when_changed(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.48 pinned.test.internal pinned\n::1 localhost\n")
    async with TestDns("127.0.0.53") as dns:
        res = resolver(dns, hosts=hosts)
        r = await res.resolve("pinned.test.internal")
        assert r.addresses == ("127.0.0.48",) and dns.queries == []
        assert (await res.resolve("LOCALHOST")).addresses == ("127.0.0.1", "::1")
        hosts.write_text("127.0.0.49 pinned.test.internal\n")
        os.utime(hosts, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        assert (await res.resolve("pinned.test.internal")).addresses == ("127.0.0.49",)
        assert (await res.resolve("127.0.0.50")).addresses == ("127.0.0.50",)
        assert (await res.resolve("bad..name")).status is DnsStatus.BADNAME


async def test_search_list_and_ndots() -> None:
    async with TestDns("127.0.0.53") as dns:
        dns.set_a("backend.svc.test.internal", "127.0.0.51")
        res = resolver(dns, search=("svc.test.internal", "test.internal"), ndots=2)
        r = await res.resolve("backend", ipv6=False)
        assert r.addresses == ("127.0.0.51",)
        assert [q[1] for q in dns.queries] == ["backend.svc.test.internal"]
        dns.queries.clear()
        r = await res.resolve("gone", ipv6=False)
        assert r.status is DnsStatus.NXDOMAIN
        assert [q[1] for q in dns.queries] == [
            "gone.svc.test.internal", "gone.test.internal", "gone"
        ]


def test_resolv_conf_parsing(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nnameserver 10.0.0.10\nnameserver ::1\nsearch default.svc.cluster.local "
        "svc.cluster.local\noptions ndots:5 timeout:2 attempts:3 rotate\n"
    )
    c = resolver_config((), conf)
    assert c.nameservers == (("10.0.0.10", 53), ("::1", 53))
    assert c.search == ("default.svc.cluster.local", "svc.cluster.local")
    assert (c.ndots, c.timeout, c.attempts) == (5, 2.0, 3)
    assert c.candidates("a.b.c.d.e")[0] == "a.b.c.d.e.default.svc.cluster.local"
    assert c.candidates("a.b.c.d.e.f") == [
        "a.b.c.d.e.f", "a.b.c.d.e.f.default.svc.cluster.local", "a.b.c.d.e.f.svc.cluster.local"
    ]
    assert c.candidates("abs.name.") == ["abs.name"]
    given = resolver_config(("127.0.0.53:5353", "[::1]:54"), conf)
    assert given.nameservers == (("127.0.0.53", 5353), ("::1", 54)) and given.ndots == 5
    assert resolver_config((), tmp_path / "none").nameservers == (("127.0.0.1", 53),)
