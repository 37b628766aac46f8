"""The per-endpoint pool of upstream HTTP/2 connections (h2_upstream.py) that requests share.

Theory of operation: `acquire` hands out a stream on the first connection with room (the
server's SETTINGS_MAX_CONCURRENT_STREAMS, and the cluster's max_requests_per_connection over the
connection's life); when none has room, `connect` opens another, and requests that arrive while
one is being opened share it. Idle connections close after the cluster's idle timeout.
"""

from __future__ import annotations

import asyncio
from typing import cast

from sidecar.config.snapshot import Cluster, Endpoint
from sidecar.http.stream import UpstreamRequest
from sidecar.runtime import format_address
from sidecar.upstream.cluster import ClusterCounters
from sidecar.upstream.connect import UpstreamConnectError, connect
from sidecar.upstream.h2_upstream import UpstreamH2Connection, UpstreamH2Stream


class Http2Pool:
    """The HTTP/2 connections to one endpoint of one cluster."""

    __slots__ = (
        "_connecting",
        "_conns",
        "_loop",
        "_sweep",
        "closed",
        "cluster",
        "counters",
        "endpoint",
        "host",
    )

    def __init__(self, cluster: Cluster, endpoint: Endpoint, counters: ClusterCounters) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        self.counters = counters
        self.host = format_address(endpoint.address, endpoint.port)
        self._conns: list[UpstreamH2Connection] = []
        self._connecting: asyncio.Task[UpstreamH2Connection] | None = None
        self._loop = asyncio.get_running_loop()
        self._sweep: asyncio.TimerHandle | None = None
        self.closed = False

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    def acquire(self) -> UpstreamH2Stream | None:
        """A stream on a connection with room, or None (then `connect()`)."""
        for conn in self._conns:
            if conn.has_room():
                return conn.new_stream()
        return None

    async def connect(self) -> UpstreamH2Stream:
        """A stream on a new connection (shared with other requests waiting for one)."""
        while True:
            task = self._connecting
            if task is None:
                task = self._connecting = self._loop.create_task(self._open())
            conn = await asyncio.shield(task)
            if conn.has_room():
                return conn.new_stream()
            if conn.closed:
                raise UpstreamConnectError("connection closed before use")

    async def _open(self) -> UpstreamH2Connection:
        try:
            _transport, conn = await connect(
                self.cluster, self.endpoint, lambda: UpstreamH2Connection(self)
            )
        except Exception:
            self.counters.upstream_cx_connect_fail += 1
            raise
        finally:
            self._connecting = None
        self._conns.append(conn)
        if self._sweep is None:
            self._sweep = self._loop.call_later(self.cluster.idle_timeout, self._sweep_idle)
        return conn

    def release(self, up: UpstreamRequest) -> None:
        """A stream whose exchange completed cleanly."""
        s = cast(UpstreamH2Stream, up)
        s.conn.stream_done(s, cancel=False)

    def forget(self, conn: UpstreamH2Connection) -> None:
        if conn in self._conns:
            self._conns.remove(conn)

    def _sweep_idle(self) -> None:
        self._sweep = None
        limit = self._loop.time() - self.cluster.idle_timeout
        for conn in [c for c in self._conns if not c.in_use and c.idle_since <= limit]:
            conn.close()
        if self._conns and not self.closed:
            self._sweep = self._loop.call_later(
                max(1.0, self.cluster.idle_timeout / 4), self._sweep_idle
            )

    def close(self) -> None:
        """Close idle connections now; busy ones close when their streams are done."""
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn in list(self._conns):
            if not conn.in_use:
                conn.close()
