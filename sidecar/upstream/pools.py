"""Which HTTP connection pool a request uses: the protocol towards the upstream, then the
endpoint's pool for it (made on first use, kept in the cluster's state)."""

from __future__ import annotations

from sidecar.config.snapshot import Cluster, Endpoint
from sidecar.config.snapshot import Protocol as PortProtocol
from sidecar.http.stream import RequestHead
from sidecar.upstream.cluster import ClusterState
from sidecar.upstream.h2_pool import Http2Pool
from sidecar.upstream.http1_pool import Http1Pool

# Read on every request: module globals load fast, Enum members off their class do not (on
# Python 3.11 that goes through EnumType's __getattr__ hook).
_HTTP, _HTTP2, _GRPC = PortProtocol.HTTP, PortProtocol.HTTP2, PortProtocol.GRPC


def upstream_http2(cluster: Cluster, head: RequestHead) -> bool:
    """HTTP/2 upstream when the port says so (http2, grpc) or h2UpgradePolicy UPGRADE; HTTP/1.1
    when it says http; else, or with useClientProtocol, the client's protocol (Istio's
    USE_DOWNSTREAM_PROTOCOL for detected ports)."""
    proto = cluster.protocol
    if cluster.use_client_protocol:
        return head.version == "2"
    if proto is _HTTP2 or proto is _GRPC:
        return True
    if proto is _HTTP:
        return cluster.h2_upgrade
    return head.version == "2"


def http_pool(state: ClusterState, endpoint: Endpoint, h2: bool) -> Http1Pool | Http2Pool:
    """The endpoint's pool for the protocol, made on first use."""
    key = ("h2" if h2 else "h1", endpoint.address, endpoint.port)  # (cheaper than Endpoint)
    pool: Http1Pool | Http2Pool | None = state.pools.get(key)  # type: ignore[assignment]
    if pool is None:
        pool = (Http2Pool if h2 else Http1Pool)(state.cluster, endpoint, state.counters)
        state.pools[key] = pool
    return pool
