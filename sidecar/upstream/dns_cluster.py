"""DNS clusters: resolve a cluster's host names in the background and keep its endpoints current.

Theory of operation: a DNS cluster names its hosts as endpoints whose `address` is a host name
(a DNS ServiceEntry's endpoints, each with its labels, locality and weight), or, without
endpoints, as `dns_name`/`dns_port` (an ExternalName service, a ServiceEntry without endpoints).
STRICT_DNS makes every resolved address of every host an endpoint that inherits its host's
labels, locality and weight; LOGICAL_DNS uses the first host's first address (Envoy's rules).
Resolution goes through the process's shared `Resolver`, never blocking the event loop.

Refresh follows what Istio asks of Envoy (`respect_dns_ttl: true`, `dns_refresh_rate` =
meshConfig.dnsRefreshRate, 60 s by default): the next refresh comes when the shortest TTL among
the answers runs out (at least `MIN_REFRESH`), or after `DNS_REFRESH_RATE` when an answer has no
TTL (/etc/hosts, IP literals, TTL 0). A host whose lookup fails (timeout, SERVFAIL) keeps the
addresses it had and is asked again with exponential backoff (1 s doubling to the refresh rate);
a host the DNS says does not exist (NXDOMAIN / NODATA) has no addresses until it does, and is
asked again when the negative answer expires.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from sidecar.config.snapshot import DiscoveryType, Endpoint
from sidecar.upstream.dns import NEGATIVE, DnsResult, DnsStatus, Resolver

if TYPE_CHECKING:
    from sidecar.upstream.cluster import ClusterState

log = logging.getLogger(__name__)

DNS_REFRESH_RATE = 60.0  # Istio's meshConfig.dnsRefreshRate default (Envoy's dns_refresh_rate)
MIN_REFRESH = 1.0  # never ask again sooner than this, whatever the TTL
MAX_REFRESH = 86400.0
BACKOFF_BASE = 1.0


def dns_hosts(state: ClusterState) -> list[Endpoint]:
    """The cluster's hosts to resolve, each as the endpoint template its addresses inherit."""
    c = state.cluster
    hosts = list(c.endpoints) or [Endpoint(address=c.dns_name, port=c.dns_port)]
    if c.discovery is DiscoveryType.LOGICAL_DNS:
        hosts = hosts[:1]
    return [h for h in hosts if h.address]


class DnsRefresher:
    """Keeps one DNS cluster's endpoints current; `run` until cancelled."""

    def __init__(self, state: ClusterState, resolver: Resolver) -> None:
        self.state = state
        self.resolver = resolver
        self.hosts = dns_hosts(state)
        self.known: list[tuple[Endpoint, ...]] = [() for _ in self.hosts]
        self.failures = 0

    async def refresh(self) -> float:
        """Resolve every host once, install the endpoints; seconds until the next refresh."""
        results = await asyncio.gather(*(self.resolver.resolve(h.address) for h in self.hosts))
        waits: list[float] = []
        failed = False
        for i, (host, result) in enumerate(zip(self.hosts, results, strict=True)):
            if result.status is DnsStatus.OK:
                self.known[i] = self._endpoints(host, result)
                waits.append(result.ttl or DNS_REFRESH_RATE)
            elif result.status in NEGATIVE:
                if self.known[i]:
                    log.warning("cluster %s: %s: %s", self.state.cluster.name, host.address,
                                result.status.value)
                self.known[i] = ()
                if result.ttl:
                    waits.append(result.ttl)
                else:
                    failed = True
            else:
                failed = True
                log.warning(
                    "cluster %s: resolving %s failed (%s); keeping %d known address(es)",
                    self.state.cluster.name, host.address, result.status.value,
                    len(self.known[i]),
                )  # fmt: skip
        self.failures = self.failures + 1 if failed else 0
        if failed:
            waits.append(min(BACKOFF_BASE * 2 ** min(self.failures - 1, 16), DNS_REFRESH_RATE))
        self.state.set_endpoints(tuple(ep for eps in self.known for ep in eps))
        wait = min(waits) if waits else DNS_REFRESH_RATE
        return min(max(wait, MIN_REFRESH), MAX_REFRESH)

    def _endpoints(self, host: Endpoint, result: DnsResult) -> tuple[Endpoint, ...]:
        addrs = result.addresses
        if self.state.cluster.discovery is DiscoveryType.LOGICAL_DNS:
            addrs = addrs[:1]
        return tuple(
            replace(host, address=a, workload=host.address) for a in addrs
        )

    async def run(self) -> None:
        """Refresh now (the cluster is then warmed: it has its first answer, or a failure),
        then whenever the answers expire, until cancelled."""
        wait = await self.refresh()
        self.state.warmed.set()
        while True:
            await asyncio.sleep(wait)
            wait = await self.refresh()


async def resolve_once(state: ClusterState, resolver: Resolver) -> None:
    """Resolve the cluster's host names once and install the addresses as endpoints."""
    await DnsRefresher(state, resolver).refresh()


async def refresh_forever(state: ClusterState, resolver: Resolver) -> None:
    """Keep the cluster's endpoints current until cancelled."""
    await DnsRefresher(state, resolver).run()
