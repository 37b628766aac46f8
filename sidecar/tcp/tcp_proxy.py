"""L4 network filter: connect to the chain's cluster and relay bytes both ways.

Theory of operation: the listener hands over an accepted downstream transport. Reading is paused
while the upstream connection is made (so nothing is buffered without a bound; bytes that already
arrived are kept and sent first). On success both transports are spliced into a `Relay`; on failure
the downstream is closed and the outcome (UF, UH, NC) recorded. One `StreamInfo` per connection
goes to the access log when the relay ends, with the bytes each way.

A TcpProxy with `weighted_clusters` (VirtualService tcp/tls routes with weights) picks one cluster
per connection by weight; the cumulative weights are compiled once per snapshot into a
`ClusterSplit` (the listener's chain selector keeps one per TcpProxy), so a pick is one random
draw and a bisect. The endpoint the balancer chose is released once when the connection ends.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
from typing import cast

from sidecar.config.snapshot import Endpoint, TcpProxy, WeightedCluster
from sidecar.outcome import ResponseFlag
from sidecar.runtime import Downstream, Runtime, StreamInfo, format_address
from sidecar.tcp.relay import Relay, splice
from sidecar.upstream.cluster import ClusterState
from sidecar.upstream.connect import UpstreamConnectError, connect

log = logging.getLogger(__name__)


class ClusterSplit:
    """A TcpProxy's weighted clusters, compiled once: a pick is a draw and a bisect."""

    __slots__ = ("_clusters", "_cumulative", "_total")

    def __init__(self, weighted: tuple[WeightedCluster, ...]) -> None:
        total = 0
        cumulative: list[int] = []
        clusters: list[str] = []
        for w in weighted:
            if w.weight > 0:
                total += w.weight
                cumulative.append(total)
                clusters.append(w.cluster)
        self._total = total
        self._cumulative = cumulative
        self._clusters = tuple(clusters)

    def pick(self) -> str | None:
        """A cluster drawn by weight; None when every weight is zero."""
        if not self._total:
            return None
        return self._clusters[bisect.bisect_right(self._cumulative, random.randrange(self._total))]


class _Upstream(asyncio.Protocol):
    """Placeholder protocol while connecting; the relay replaces it at once."""

    __slots__ = ("early", "lost")

    def __init__(self) -> None:
        self.early = bytearray()
        self.lost = False

    def data_received(self, data: bytes) -> None:  # pragma: no cover - server-first, before splice
        self.early += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class TcpProxyProtocol(asyncio.Protocol):
    """One downstream connection of an L4 filter chain, until it is spliced to its upstream."""

    __slots__ = (
        "_config",
        "_downstream",
        "_endpoint",
        "_eof",
        "_info",
        "_pending",
        "_relay",
        "_runtime",
        "_state",
        "_task",
        "_transport",
    )

    def __init__(
        self,
        runtime: Runtime,
        downstream: Downstream,
        config: TcpProxy,
        split: ClusterSplit | None = None,
    ) -> None:
        """`split`: the compiled form of `config.weighted_clusters` (compiled here if absent)."""
        self._runtime = runtime
        self._downstream = downstream
        self._config = config
        self._transport: asyncio.Transport | None = None
        self._pending = bytearray()
        self._eof = False
        self._relay: Relay | None = None
        self._task: asyncio.Task[None] | None = None
        self._state: ClusterState | None = None
        self._endpoint: Endpoint | None = None
        info = StreamInfo()
        info.downstream_remote_address = format_address(*downstream.remote)
        info.downstream_direct_remote_address = info.downstream_remote_address
        info.downstream_remote_ip = downstream.remote[0]
        info.downstream_local_address = format_address(*downstream.local)
        info.listener_name = downstream.listener.name
        info.direction = downstream.listener.direction.value
        cluster = config.cluster
        if config.weighted_clusters:
            picked = (split or ClusterSplit(config.weighted_clusters)).pick()
            if picked is not None:
                cluster = picked
        info.upstream_cluster = cluster
        if downstream.server_name:
            info.requested_server_name = downstream.server_name
        self._info = info

    # -- downstream, before the splice -------------------------------------------------------
    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transports are not subclasses
        self._transport = transport
        self._runtime.connection_opened(self)
        transport.pause_reading()
        info, metrics = self._info, self._runtime.metrics
        state = self._runtime.cluster_manager.get(info.upstream_cluster)
        if state is None:
            metrics.tcp_opened(info, self._runtime)
            self._fail(ResponseFlag.NC, "cluster_not_found")
            return
        self._state = state
        endpoint = state.choose(self._downstream.original_dst)  # None unless redirected
        if endpoint is not None:
            self._endpoint = info.upstream_endpoint = endpoint
            info.upstream_host = format_address(endpoint.address, endpoint.port)
        metrics.tcp_opened(info, self._runtime)  # Istio's metrics: opened once the host is known
        if endpoint is None:
            self._fail(ResponseFlag.UH, "no_healthy_upstream")
            return
        self._task = asyncio.get_running_loop().create_task(self._connect(state, endpoint))

    def data_received(self, data: bytes) -> None:
        # Bytes that arrive while connecting. uvloop starts reading after connection_made, so
        # the pause there may not hold: pause again here, which does. At most one read is held.
        self._pending += data
        if self._transport is not None:
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True  # half-close before the splice: keep going; the relay forwards it
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._relay is None and not self._info.end_mono:
            if self._task is not None and not self._task.done():
                self._task.cancel()
            self._info.response_flags |= ResponseFlag.DC
            self._end()

    # -- upstream -----------------------------------------------------------------------------
    async def _connect(self, state: ClusterState, endpoint: Endpoint) -> None:
        counters = state.counters
        counters.upstream_cx_total += 1
        try:
            upstream, proto = await connect(state.cluster, endpoint, _Upstream)
        except UpstreamConnectError as exc:
            counters.upstream_cx_connect_fail += 1
            if "timeout" in exc.reason:
                counters.upstream_cx_connect_timeout += 1
            self._info.upstream_transport_failure_reason = exc.reason
            self._fail(exc.flag, "upstream_connect_failed")
            return
        down = self._transport
        if down is None or down.is_closing():
            upstream.close()
            return
        if proto.lost:
            self._fail(ResponseFlag.UC, "upstream_closed")
            return
        counters.upstream_cx_active += 1
        local = upstream.get_extra_info("sockname")
        if local:
            self._info.upstream_local_address = format_address(local[0], local[1])
        upstream.pause_reading()
        self._relay = splice(
            down,
            upstream,
            on_close=self._relay_closed,
            a_pending=bytes(self._pending),
            b_pending=bytes(proto.early),
            idle_timeout=self._config.idle_timeout,
            a_eof=self._eof,
        )
        self._pending.clear()

    def _relay_closed(self, relay: Relay, exc: Exception | None) -> None:
        info = self._info
        info.bytes_received = relay.a_to_b
        info.bytes_sent = relay.b_to_a
        if self._state is not None:
            c = self._state.counters
            c.upstream_cx_active -= 1
            c.upstream_cx_destroy += 1
            c.upstream_cx_tx_bytes_total += relay.a_to_b
            c.upstream_cx_rx_bytes_total += relay.b_to_a
        if exc is not None:
            info.response_flags |= ResponseFlag.UC
        self._end()

    # -- ending -------------------------------------------------------------------------------
    def _fail(self, flag: ResponseFlag, details: str) -> None:
        self._info.response_flags |= flag
        self._info.response_code_details = details
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._end()

    def _end(self) -> None:
        info = self._info
        if info.end_mono:
            return
        info.finish()
        endpoint = self._endpoint
        if endpoint is not None and self._state is not None:
            self._endpoint = None
            self._state.release(endpoint)
        self._runtime.connection_closed(self)
        self._runtime.metrics.tcp_closed(info, self._runtime)
        self._runtime.access_log.log(info)

    # -- Drainable ----------------------------------------------------------------------------
    def drain(self) -> None:
        """L4 has no request boundary: let the relay run until it ends or drain time is up."""

    def abort(self) -> None:
        if self._relay is not None:
            self._relay.close()
        elif self._transport is not None:
            self._transport.abort()
