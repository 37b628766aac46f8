"""In-process proxy pieces for integration tests: a real listener on loopback over a snapshot.

The listener, filter chains, cluster manager and network filters are the production ones; only
the snapshot is built by hand instead of from YAML, so each test states exactly the config it
exercises. `CollectingLog` is a real AccessLogger that keeps records for assertions.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sidecar.bootstrap import Bootstrap
from sidecar.config.snapshot import (
    Cluster,
    Direction,
    DiscoveryType,
    Endpoint,
    FilterChain,
    FilterChainMatch,
    Listener,
    NetworkFilter,
    Snapshot,
    Workload,
)
from sidecar.listener.accept import ListenerHandle, acceptor
from sidecar.runtime import Runtime, StreamInfo
from sidecar.upstream.cluster import ClusterManager


class CollectingLog:
    """An access logger that keeps every finished StreamInfo and lets tests wait for them."""

    def __init__(self) -> None:
        self.records: list[StreamInfo] = []
        self._event = asyncio.Event()

    def log(self, info: StreamInfo) -> None:
        self.records.append(info)
        self._event.set()

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[StreamInfo]:
        async with asyncio.timeout(timeout):
            while len(self.records) < n:
                self._event.clear()
                await self._event.wait()
        return self.records


@dataclass
class RunningProxy:
    """A bound listener with its runtime; `port` is where clients connect."""

    runtime: Runtime
    handle: ListenerHandle
    log: CollectingLog
    port: int
    clusters: ClusterManager = field(repr=False)

    def close(self) -> None:
        self.handle.close()
        self.runtime.abort_all()
        self.clusters.close()


def static_cluster(name: str, *addrs: tuple[str, int], **kw: object) -> Cluster:
    eps = tuple(Endpoint(address=a, port=p) for a, p in addrs)
    return Cluster(name=name, discovery=DiscoveryType.STATIC, endpoints=eps, **kw)  # type: ignore[arg-type]


async def start_proxy(
    filt: NetworkFilter,
    clusters: tuple[Cluster, ...],
    *,
    route_configs: dict[str, object] | None = None,
    bootstrap: Bootstrap | None = None,
) -> RunningProxy:
    """Bind a listener on 127.0.0.1:<free> with one filter chain using `filt`."""
    chain = FilterChain(name="test", match=FilterChainMatch(), filter=filt)
    listener = Listener(
        name="test_listener",
        address="127.0.0.1",
        port=0,
        direction=Direction.OUTBOUND,
        use_original_dst=False,
        filter_chains=(chain,),
    )
    snapshot = Snapshot(
        version="test",
        workload=Workload(name="test", namespace="default"),
        listeners=(listener,),
        route_configs=route_configs or {},  # type: ignore[arg-type]
        clusters={c.name: c for c in clusters},
    )
    manager = ClusterManager()
    manager.update(snapshot)
    log = CollectingLog()
    runtime = Runtime(bootstrap or Bootstrap(), manager, log)
    handle = ListenerHandle(listener, snapshot)
    loop = asyncio.get_running_loop()
    handle.servers.append(await loop.create_server(acceptor(runtime, handle), "127.0.0.1", 0))
    port = handle.servers[0].sockets[0].getsockname()[1]
    return RunningProxy(runtime=runtime, handle=handle, log=log, port=port, clusters=manager)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
