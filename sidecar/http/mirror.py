"""Request mirroring (Envoy's request_mirror_policies; Istio's mirror, mirrors, mirrorPercentage).

Theory of operation: when a route has mirrors, the stream calls `start_mirrors` once the request
head is final (after rewrites, header edits and the forwarding headers), before the head goes
upstream. Each mirror is sampled by its percentage; for each one sampled whose cluster exists, a
`MirrorCopy` takes a copy of the head (the authority gets Envoy's "-shadow" suffix, before the
port), picks an endpoint with the cluster's balancer and takes a pooled upstream connection (or
connects in a task of its own). The stream passes the request body through `MirrorSet.data/end`.

Fire and forget: every call is synchronous and cannot raise into the stream; nothing here waits,
pauses the downstream or changes the original's outcome. The copy is its upstream's ResponseSink:
the answer is read and dropped (so the connection can go back to its pool when both sides ended
cleanly); connect failures, resets, timeouts and early answers only close the copy. Memory is
bounded: body data that the mirror does not take (while connecting, or while its upstream
connection is above its write high-water mark) may pile up to `BUFFER_LIMIT` bytes; past that the
copy is abandoned, closed and counted (`upstream_rq_tx_reset` of the mirror cluster). Each copy
has a deadline (the route's timeout, else `DEFAULT_TIMEOUT`) from the end of its request, so a
mirror that never answers holds its connection for a bounded time. The mirror cluster's
upstream_rq_* counters count the copies as any request.
"""

from __future__ import annotations

import asyncio
import random

from sidecar.config.snapshot import Endpoint, Mirror
from sidecar.http.stream import End, RequestHead, ResponseHead, UpstreamRequest
from sidecar.outcome import ResponseFlag
from sidecar.runtime import Runtime
from sidecar.upstream.cluster import ClusterState
from sidecar.upstream.connect import UpstreamConnectError
from sidecar.upstream.h2_pool import Http2Pool
from sidecar.upstream.http1_pool import Http1Pool, UpstreamH1Connection
from sidecar.upstream.pools import http_pool, upstream_http2

BUFFER_LIMIT = 1024 * 1024  # body bytes a copy may hold back before it is abandoned
DEFAULT_TIMEOUT = 30.0  # seconds from the request's end to the mirror's answer (no route timeout)


def shadow_authority(authority: bytes) -> bytes:
    """Envoy's shadow host: "-shadow" appended to the host name, before any port."""
    if authority.startswith(b"["):  # [v6]:port
        close = authority.find(b"]")
        if close != -1:
            return authority[: close + 1] + b"-shadow" + authority[close + 1 :]
    host, sep, port = authority.rpartition(b":")
    if sep and host and b":" not in host and port.isdigit():
        return host + b"-shadow:" + port
    return authority + b"-shadow"


def shadow_head(head: RequestHead) -> RequestHead:
    """A copy of a request head for a mirror (its own header list; never an upgrade)."""
    copy = RequestHead(head.method, head.path, list(head.headers))
    copy.authority = shadow_authority(head.authority)
    copy.version = head.version
    copy.content_length = head.content_length
    copy.chunked = head.chunked
    copy.te_trailers = head.te_trailers
    copy.forwarded_for = head.forwarded_for
    copy.forwarded_proto = head.forwarded_proto
    copy.request_id = head.request_id
    copy.user_agent = head.user_agent
    copy.grpc = head.grpc
    copy.traced = head.traced
    copy.not_sampled = head.not_sampled
    return copy


class MirrorCopy:
    """One mirrored request: sends the copy, drops the answer; also its upstream's ResponseSink."""

    __slots__ = (
        "_held",
        "_paused",
        "_pending",
        "_task",
        "_timeout",
        "_timer",
        "attached",
        "done",
        "endpoint",
        "head",
        "pool",
        "request_done",
        "state",
        "status",
        "up",
    )

    def __init__(
        self,
        state: ClusterState,
        endpoint: Endpoint,
        pool: Http1Pool | Http2Pool,
        head: RequestHead,
        timeout: float,
    ) -> None:
        self.state = state
        self.endpoint = endpoint
        self.pool = pool
        self.head = head
        self.up: UpstreamRequest | None = None
        self._pending: list[bytes | End] | None = None  # set while connecting
        self._held = 0  # body bytes not taken by the mirror (connecting, or its socket full)
        self._paused = False
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = timeout
        self.request_done = False
        self.attached = False
        self.done = False
        self.status = 0
        state.in_flight += 1

    def start(self) -> None:
        up = self.pool.acquire()
        if up is not None:
            self._attach(up)
            up.schedule_flush()
            return
        self._pending = []
        self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            up = await self.pool.connect()
        except UpstreamConnectError:
            self._task = None
            self._finish(clean=False)  # (the pool counted the connect failure)
            return
        self._task = None  # (held only to keep the task alive; never cancelled)
        if self.done:
            self.pool.release(up)  # unused and healthy
            return
        self._attach(up)
        up.flush()

    def _attach(self, up: UpstreamRequest) -> None:
        self.up = up
        self.attached = True
        up.bind(self)
        c = self.state.counters
        c.upstream_rq_total += 1
        c.upstream_rq_active += 1
        up.send_head(self.head)
        pending, self._pending = self._pending, None
        if pending:
            for ev in pending:
                if type(ev) is bytes:
                    up.send_data(ev)
                else:
                    up.send_end(ev)  # type: ignore[arg-type]
        self._held = 0

    # request side (the original stream calls these through MirrorSet) -----------------------

    def data(self, data: bytes) -> None:
        if self.done:
            return
        up = self.up
        if up is None:
            assert self._pending is not None
            self._pending.append(data)
            self._held += len(data)
        else:
            up.send_data(data)
            if self._paused:
                self._held += len(data)
            up.schedule_flush()
        if self._held > BUFFER_LIMIT:
            self.state.counters.upstream_rq_tx_reset += 1
            self._finish(clean=False)

    def end(self, end: End) -> None:
        if self.done:
            return
        self.request_done = True
        up = self.up
        if up is None:
            assert self._pending is not None
            self._pending.append(end)
        else:
            up.send_end(end)
            up.schedule_flush()
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._on_timeout)

    def abort(self) -> None:
        """The original request was abandoned before its end: so is the copy."""
        if not self.done:
            self._finish(clean=False)

    # ResponseSink: the answer is dropped ------------------------------------------------------

    def on_response_head(self, head: ResponseHead) -> None:
        self.status = head.status
        if (head.status == 101 or not head.keep_alive) and self.up is not None:
            self.up.reusable = False

    def on_response_data(self, data: bytes) -> None:
        pass

    def on_response_end(self, end: End) -> None:
        # An answer before the request ended: stop sending rather than wait for the rest.
        self._finish(clean=self.request_done)

    def on_batch_end(self) -> None:
        pass

    def on_upgraded(self, tail: bytes) -> None:
        self._finish(clean=False)

    def on_upstream_reset(self, flag: ResponseFlag) -> None:
        self.up = None
        self._finish(clean=False)

    def on_upstream_refused(self) -> None:
        self.up = None
        self._finish(clean=False)

    def on_upstream_write_paused(self) -> None:
        self._paused = True

    def on_upstream_write_resumed(self) -> None:
        self._paused = False
        self._held = 0

    # ending ----------------------------------------------------------------------------------

    def _on_timeout(self) -> None:
        self._timer = None
        if not self.done:
            self.state.counters.upstream_rq_timeout += 1
            self._finish(clean=False)

    def _finish(self, clean: bool) -> None:
        if self.done:
            return
        self.done = True
        self._pending = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        up = self.up
        if up is not None:
            self.up = None
            if clean:
                self.pool.release(up)
            elif isinstance(up, UpstreamH1Connection):
                up.abort()  # not close(): a socket the mirror does not read would never drain
            else:
                up.close()  # an HTTP/2 stream: cancelled, its queued data dropped
        state = self.state
        state.in_flight -= 1
        if self.attached:
            c = state.counters
            c.upstream_rq_active -= 1
            code = self.status or 503  # no answer: as Envoy charges a reset or timeout
            if code < 300:
                c.upstream_rq_2xx += 1
            elif code < 400:
                c.upstream_rq_3xx += 1
            elif code < 500:
                c.upstream_rq_4xx += 1
            else:
                c.upstream_rq_5xx += 1
        state.release(self.endpoint)


class MirrorSet:
    """The copies of one request; the stream passes the body on with `data`/`end`."""

    __slots__ = ("copies",)

    def __init__(self, copies: list[MirrorCopy]) -> None:
        self.copies = copies

    def data(self, data: bytes) -> None:
        for c in self.copies:
            c.data(data)

    def end(self, end: End) -> None:
        for c in self.copies:
            c.end(end)

    def abort(self) -> None:
        for c in self.copies:
            c.abort()


def start_mirrors(
    runtime: Runtime,
    head: RequestHead,
    mirrors: tuple[Mirror, ...],
    remote_ip: bytes,
    timeout: float | None = None,
) -> MirrorSet | None:
    """Start a copy of the request for each mirror sampled; None when none was.

    Call with the head as it goes upstream (after apply_forwarding: the copy carries the same
    x-forwarded-for and x-request-id). `remote_ip` keys hash-balanced mirror clusters;
    `timeout` (the route's) bounds each copy from its request's end (default DEFAULT_TIMEOUT).
    The request head is not changed. Upgrade requests (WebSocket) are not mirrored.
    """
    if head.upgrade is not None:
        return None
    copies: list[MirrorCopy] | None = None
    for m in mirrors:
        if m.percent < 100.0 and random.random() * 100.0 >= m.percent:
            continue
        state = runtime.cluster_manager.get(m.cluster)
        if state is None:
            continue
        cluster = state.cluster
        if cluster.max_requests and state.in_flight >= cluster.max_requests:
            state.counters.upstream_rq_pending_overflow += 1
            continue
        copy_head = shadow_head(head)
        if cluster.hash_policy is not None:
            endpoint, _cookie = state.choose_hashed(copy_head, remote_ip)
        else:
            endpoint = state.choose(None)
        if endpoint is None:
            continue
        pool = http_pool(state, endpoint, upstream_http2(cluster, copy_head))
        copy = MirrorCopy(state, endpoint, pool, copy_head, timeout or DEFAULT_TIMEOUT)
        copy.start()
        if copies is None:
            copies = []
        copies.append(copy)
    return MirrorSet(copies) if copies else None
