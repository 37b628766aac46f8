"""HTTP/1.1 upstream connections and the per-endpoint pool that keeps them alive between requests.

Theory of operation: an `UpstreamH1Connection` is the asyncio protocol of one upstream socket. It
serves one stream at a time: the stream sends its request through it (`send_head`, `send_data`,
`send_end`) and receives the response as callbacks (stream.ResponseSink). Between requests the
connection sits idle in its endpoint's `Http1Pool`.

The pool is a LIFO stack of idle connections (the most recently used is warmest). An idle
connection that the upstream closes removes itself at once (connection_lost), so a closed
connection is never handed out; one that has been idle longer than the cluster's idle_timeout is
closed when found, and a single timer per pool sweeps the rest (no timer per request).
`max_requests_per_connection` retires a connection after that many requests. New connections are
made by `connect()` (the only await on the request path), with the cluster's connect timeout and
source address (upstream.connect).

Writes: the stream queues the request and `schedule_flush` sends it at the start of the next
event-loop turn, together with every other request of this turn (see connection_manager.py);
bulk body data goes out at once. A connection is only returned to its pool with nothing queued.

Back-pressure: when the upstream socket's write buffer passes its high-water mark the stream is
told (it pauses reading the downstream); the stream pauses reading this connection when the
downstream cannot take more.
"""

from __future__ import annotations

import asyncio
from typing import cast

from sidecar.config.snapshot import Cluster, Endpoint
from sidecar.http.coalesce import CoalescedWrites
from sidecar.http.h1 import H1ClientCodec
from sidecar.http.h1_encode import chunk, encode_request_head, last_chunk
from sidecar.http.stream import End, RequestHead, ResponseHead, ResponseSink, UpstreamRequest
from sidecar.outcome import ResponseFlag
from sidecar.runtime import format_address
from sidecar.upstream.cluster import ClusterCounters
from sidecar.upstream.connect import connect

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class UpstreamH1Connection(CoalescedWrites, asyncio.Protocol):
    """One upstream HTTP/1.1 connection, serving one stream at a time."""

    __slots__ = (
        "_chunked",
        "_flush_pending",
        "_loop",
        "_out",
        "_out_bytes",
        "closed",
        "codec",
        "counters",
        "idle_since",
        "local_address",
        "pool",
        "requests",
        "reusable",
        "sink",
        "transport",
    )

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.counters = pool.counters
        self.codec = H1ClientCodec()
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.requests = 0
        self.idle_since = 0.0
        self.closed = False
        self.reusable = True
        self.local_address = "-"
        self._chunked = False
        self._out: list[bytes] = []  # corked writes, sent by flush() in one call
        self._out_bytes = 0  # body bytes in _out
        self._flush_pending = False
        self._loop = asyncio.get_running_loop()

    # asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        sockname = transport.get_extra_info("sockname")
        if sockname:
            self.local_address = format_address(sockname[0], sockname[1])
        c = self.pool.counters
        c.upstream_cx_total += 1
        c.upstream_cx_active += 1

    def data_received(self, data: bytes) -> None:
        self.counters.upstream_cx_rx_bytes_total += len(data)
        sink = self.sink
        if sink is None:  # nothing was asked: a broken or misbehaving upstream
            self.close()
            return
        codec = self.codec
        for ev in codec.feed(data):
            t = type(ev)
            if t is bytes:
                sink.on_response_data(ev)  # type: ignore[arg-type]
            elif t is ResponseHead:
                sink.on_response_head(ev)  # type: ignore[arg-type]
            else:
                sink.on_response_end(ev)  # type: ignore[arg-type]
            if self.sink is not sink:
                sink.on_batch_end()
                return
        sink.on_batch_end()
        if codec.error is not None:
            self.reusable = False
            self.sink = None
            sink.on_upstream_reset(ResponseFlag.UPE)
            self.close()
        elif codec.upgrade_tail is not None:
            self.reusable = False
            self.sink = None
            sink.on_upgraded(codec.upgrade_tail)

    def eof_received(self) -> bool:
        return False  # close; connection_lost finishes a close-delimited body

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.reusable = False
        c = self.pool.counters
        c.upstream_cx_active -= 1
        c.upstream_cx_destroy += 1
        self.pool.forget(self)
        sink = self.sink
        if sink is None:
            return
        for ev in self.codec.feed_eof():
            if isinstance(ev, End):
                self.sink = None
                sink.on_response_end(ev)
                return
        self.sink = None
        sink.on_upstream_reset(ResponseFlag.UC)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.on_upstream_write_paused()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.on_upstream_write_resumed()

    # what the stream calls -----------------------------------------------------------------

    def bind(self, sink: ResponseSink) -> None:
        self.sink = sink
        self.requests += 1

    def send_head(self, head: RequestHead) -> None:
        """Queue the request head; nothing is written until `flush()`."""
        self.codec.expect_no_body = head.method == b"HEAD"
        self._chunked = head.chunked
        data = encode_request_head(head)
        self.counters.upstream_cx_tx_bytes_total += len(data)
        self._out.append(data)

    def send_data(self, data: bytes) -> None:
        n = len(data)
        self.counters.upstream_cx_tx_bytes_total += n
        self._out_bytes += n
        if self._chunked:
            if data:
                self._out += chunk(data)
        else:
            self._out.append(data)

    def send_end(self, end: End) -> None:
        if self._chunked:
            self._out.append(last_chunk(end.trailers))

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def detach(self) -> asyncio.Transport | None:
        """Take the socket away from the pool for good (protocol upgrade)."""
        self.flush()  # anything queued goes before the relay's bytes
        self.sink = None
        self.reusable = False
        self.closed = True
        c = self.pool.counters
        c.upstream_cx_active -= 1
        c.upstream_cx_destroy += 1
        return self.transport

    def close(self) -> None:
        """Close the socket; an unfinished request on it is abandoned."""
        self.reusable = False
        self.sink = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.reusable = False
        self.sink = None
        if self.transport is not None:
            self.transport.abort()


class Http1Pool:
    """Idle keep-alive connections to one endpoint of one cluster."""

    __slots__ = ("_closed", "_idle", "_loop", "_sweep", "cluster", "counters", "endpoint", "host")

    def __init__(self, cluster: Cluster, endpoint: Endpoint, counters: ClusterCounters) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        self.counters = counters
        self.host = format_address(endpoint.address, endpoint.port)  # for the access log, made once
        self._idle: list[UpstreamH1Connection] = []
        self._loop = asyncio.get_running_loop()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def acquire(self) -> UpstreamH1Connection | None:
        """An idle connection ready for a request, or None (then `connect()`)."""
        idle = self._idle
        if not idle:
            return None
        limit = self._loop.time() - self.cluster.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if conn.idle_since < limit:
                conn.close()
                continue
            return conn
        return None

    async def connect(self) -> UpstreamH1Connection:
        """A new connection; raises UpstreamConnectError (counted as a connect failure)."""
        try:
            _transport, conn = await connect(
                self.cluster, self.endpoint, lambda: UpstreamH1Connection(self)
            )
        except Exception:
            self.counters.upstream_cx_connect_fail += 1
            raise
        return conn

    def release(self, up: UpstreamRequest) -> None:
        """Return a connection whose exchange completed cleanly; it is kept if it may be reused."""
        conn = cast(UpstreamH1Connection, up)
        conn.sink = None
        if conn._out:  # the end of the request, queued after the response had already ended
            conn.flush()
        max_rq = self.cluster.max_requests_per_connection
        if (
            self._closed
            or not conn.reusable
            or conn.closed
            or (max_rq and conn.requests >= max_rq)
        ):
            conn.close()
            return
        conn.idle_since = self._loop.time()
        self._idle.append(conn)
        if self._sweep is None:
            self._sweep = self._loop.call_later(self.cluster.idle_timeout, self._sweep_idle)

    def forget(self, conn: UpstreamH1Connection) -> None:
        """A connection closed: never hand it out again."""
        if conn in self._idle:
            self._idle.remove(conn)

    def _sweep_idle(self) -> None:
        self._sweep = None
        limit = self._loop.time() - self.cluster.idle_timeout
        for conn in [c for c in self._idle if c.idle_since <= limit]:
            self._idle.remove(conn)
            conn.close()
        if self._idle and not self._closed:
            oldest = min(c.idle_since for c in self._idle)
            delay = max(0.01, oldest + self.cluster.idle_timeout - self._loop.time())
            self._sweep = self._loop.call_later(delay, self._sweep_idle)

    def close(self) -> None:
        """Close idle connections now; busy ones close when their exchange ends."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
