"""DNS clusters: resolve a cluster's name in the background and keep its endpoints current.

Theory of operation: a STRICT_DNS cluster has every resolved address as an endpoint, a
LOGICAL_DNS cluster the first one. Resolution never blocks the event loop; a failure keeps the
endpoints already known. Refreshes every `DNS_REFRESH_SECONDS` (Envoy's dns_refresh_rate).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from sidecar.config.snapshot import DiscoveryType, Endpoint

if TYPE_CHECKING:
    from sidecar.upstream.cluster import ClusterState

log = logging.getLogger(__name__)

DNS_REFRESH_SECONDS = 5.0  # Envoy's dns_refresh_rate default


async def resolve_once(state: ClusterState) -> None:
    """Resolve the cluster's DNS name once and install the addresses as endpoints."""
    c = state.cluster
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            c.dns_name, c.dns_port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except OSError as exc:
        log.warning("cluster %s: resolving %s failed: %s", c.name, c.dns_name, exc)
        return
    addrs: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        addr = str(sockaddr[0])
        if addr not in addrs:
            addrs.append(addr)
    if c.discovery is DiscoveryType.LOGICAL_DNS:
        addrs = addrs[:1]
    template = c.endpoints[0] if c.endpoints else Endpoint(address="", port=c.dns_port)
    state.set_endpoints(
        tuple(
            Endpoint(
                address=a,
                port=c.dns_port,
                labels=template.labels,
                locality=template.locality,
                workload=c.dns_name,
            )
            for a in addrs
        )
    )


async def refresh_forever(state: ClusterState) -> None:
    """Resolve now and then every DNS_REFRESH_SECONDS until cancelled."""
    while True:
        await resolve_once(state)
        await asyncio.sleep(DNS_REFRESH_SECONDS)
