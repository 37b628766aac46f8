"""Open one upstream TCP connection for a cluster: timeout, source address, failure mapping."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TypeVar

from sidecar.config.snapshot import Cluster, Endpoint
from sidecar.errors import SidecarError
from sidecar.outcome import ResponseFlag

P = TypeVar("P", bound=asyncio.BaseProtocol)


class UpstreamConnectError(SidecarError):
    """The upstream could not be reached; `flag` is UF (failure) or UF with a timeout reason."""

    def __init__(self, reason: str, flag: ResponseFlag = ResponseFlag.UF) -> None:
        self.reason = reason
        self.flag = flag
        super().__init__(reason)


async def connect(
    cluster: Cluster,
    endpoint: Endpoint,
    factory: Callable[[], P],
) -> tuple[asyncio.Transport, P]:
    """Connect to `endpoint` within the cluster's connect timeout; TCP_NODELAY on."""
    loop = asyncio.get_running_loop()
    local: tuple[str, int] | None = None
    if cluster.source_address:
        # 127.0.0.6 for IPv4 endpoints, ::6 for IPv6, as Istio's inbound passthrough does.
        if ":" in endpoint.address and ":" not in cluster.source_address:
            local = ("::6", 0)
        elif ":" not in endpoint.address and ":" in cluster.source_address:
            local = ("127.0.0.6", 0)
        else:
            local = (cluster.source_address, 0)
    try:
        async with asyncio.timeout(cluster.connect_timeout):
            transport, protocol = await loop.create_connection(
                factory, endpoint.address, endpoint.port, local_addr=local
            )
    except TimeoutError as exc:
        raise UpstreamConnectError("connection timeout") from exc
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UpstreamConnectError(f"delayed connect error: {exc.errno} {reason}") from exc
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return transport, protocol
