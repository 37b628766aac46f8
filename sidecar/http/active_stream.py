"""One request/response exchange through the proxy: route, upstream, forwarding, outcome.

Theory of operation: the connection manager creates an `ActiveStream` per request head and feeds
it the request's events; the upstream connection feeds it the response's events (it is the
upstream's `ResponseSink`). The stream is protocol-neutral: it sees heads, body chunks and ends,
and calls its downstream (`DownstreamConn`) and upstream (`UpstreamH1Connection`) to send them, so
the same class can serve an HTTP/2 codec later.

Lifecycle: `start()` routes (vhost by authority, first matching route), picks the cluster and the
endpoint, and takes an idle pooled connection, or starts one connect task (the only await on the
request path; until it completes, request body is buffered up to a bound, then the downstream is
paused). The exchange completes when both the request and the response have ended; then the
upstream connection goes back to its pool if both sides kept it clean, the StreamInfo is logged,
and the connection manager moves on to the next (pipelined) request.

Route policies (CORS, fault injection, redirect, direct response: route_stage.py) run in `start`
before forwarding; forwarding picks the weighted destination, applies forwarding headers, header
edits and rewrite, chooses the endpoint (hashed when the cluster has a hash policy; released once
when the stream ends) and starts mirrors (mirror.py). Routes without policies skip the policy
stage with one test.

Failures become Envoy's local replies with response flags, in one place (`fail`): before the
response head was sent, a synthetic response (404 NR, 503 NC/UH/UF/UC, 502 UPE, 504 UT); after, a
reset of the downstream connection. The route timeout runs from the end of the request to the end
of the response.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING, Protocol

from sidecar.http import grpc, local_reply
from sidecar.http.grpc_messages import for_call
from sidecar.http.headers import apply_forwarding
from sidecar.http.mirror import MirrorSet
from sidecar.http.route_actions import CompiledOps, RouteActions, edit_response
from sidecar.http.route_stage import RouteStage
from sidecar.http.router import CompiledRoute, RouteTable
from sidecar.http.stream import (
    END,
    SERVICE_TIME,
    End,
    Headers,
    RequestHead,
    ResponseHead,
    UpstreamRequest,
)
from sidecar.http.stream_info import finish_request
from sidecar.outcome import DETAILS, DIRECT_RESPONSE, VIA_UPSTREAM, ResponseFlag
from sidecar.runtime import Downstream, Runtime, StreamInfo
from sidecar.upstream.connect import UpstreamConnectError
from sidecar.upstream.h2_pool import Http2Pool
from sidecar.upstream.http1_pool import Http1Pool
from sidecar.upstream.pools import http_pool, upstream_http2

if TYPE_CHECKING:
    from sidecar.config.snapshot import Endpoint
    from sidecar.upstream.cluster import ClusterState

PENDING_LIMIT = 64 * 1024  # request body buffered while the upstream connection is being made
PAUSE_UPSTREAM = 1  # reasons the downstream is paused (bits)
PAUSE_BUFFER = 2


class DownstreamConn(Protocol):
    """What a stream needs from the downstream connection that carries it."""

    runtime: Runtime
    downstream: Downstream
    remote_ip: bytes
    write_paused: bool

    @property
    def table(self) -> RouteTable | None:
        """The route table requests are routed by now (the current snapshot's)."""

    def send_head(self, stream: ActiveStream, head: ResponseHead) -> None: ...
    def send_data(self, data: bytes) -> None: ...
    def send_end(self, end: End) -> None: ...
    def send_continue(self) -> None: ...
    def flush(self) -> None: ...
    def schedule_flush(self) -> None: ...
    def send_local_reply(self, stream: ActiveStream, status: int, body: bytes,
                         headers: Headers | None = None) -> None: ...
    def reset(self) -> None: ...
    def pause_reading(self, reason: int) -> None: ...
    def resume_reading(self, reason: int) -> None: ...
    def stream_complete(self, stream: ActiveStream) -> None: ...
    def switch_to_relay(self, stream: ActiveStream, upstream: asyncio.Transport,
                        tail: bytes) -> None: ...


class ActiveStream(RouteStage):
    """One request and its response; also the upstream connection's ResponseSink."""

    __slots__ = (
        "_pending_bytes",
        "attached",
        "conn",
        "done",
        "endpoint",
        "grpc_msgs",
        "head",
        "info",
        "pool",
        "request_done",
        "resp_ops",
        "response_done",
        "response_started",
        "retried",
        "route",
        "state",
        "up_paused",
        "upgrading",
        "upstream",
    )

    def __init__(self, conn: DownstreamConn, head: RequestHead, info: StreamInfo) -> None:
        self.conn = conn
        self.head = head
        self.info = info
        self.route: CompiledRoute | None = None
        self.state: ClusterState | None = None
        self.endpoint: Endpoint | None = None  # released to the balancer once, at the end
        self.mirrors: MirrorSet | None = None
        self.resp_ops: tuple[CompiledOps | None, ...] | None = None  # response header edits
        self.resp_extra: Headers | None = None  # CORS, set-cookie: added to the response
        self.pool: Http1Pool | Http2Pool | None = None
        self.upstream: UpstreamRequest | None = None
        self._pending: list[bytes | End] | None = None  # set while connecting
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self.request_done = False
        self.response_started = False
        self.response_done = False
        self.done = False
        self.up_paused = False
        self.upgrading = False
        self.attached = False  # an upstream request was sent (upstream_rq_* counted)
        self.retried = False
        # gRPC calls count their messages each way (grpc_messages.py); None for the rest.
        self.grpc_msgs = info.grpc_messages = for_call(head) if head.grpc else None
        info.request_head = head

    # request side (called by the connection manager) ---------------------------------------

    def start(self) -> None:
        head = self.head
        conn = self.conn
        if head.request_id is not None:  # the caller's; local replies log it too
            self.info.request_id = head.request_id.decode("latin-1")
        table = conn.table
        r = table.route(head) if table is not None else None
        tracer = conn.runtime.tracer
        if tracer is not None:  # after routing, as Envoy: the span is named by the route
            if head.traced or not tracer.untraced:  # the caller's context, or sampled
                tracer.begin(head, self.info, r.route if r is not None else None)
            else:  # the usual request: not sampled (tracing.py: the countdown)
                tracer.untraced -= 1
                head.not_sampled = True
        if head.expect_continue:
            conn.send_continue()
        if r is None:
            self.fail(ResponseFlag.NR)
            return
        self.route = r
        route = r.route
        self.info.route_name = route.name
        acts = r.actions
        if acts is not None:
            self._filters(r, acts)
        elif route.direct_status is not None:
            self.info.response_code_details = DIRECT_RESPONSE
            self._local(route.direct_status, route.direct_body)
        else:
            self._forward(r, None)  # the connection manager flushes once the events are in

    def _forward(self, r: CompiledRoute, acts: RouteActions | None) -> None:
        """Pick the destination, edit the head, choose the endpoint, send upstream."""
        head = self.head
        conn = self.conn
        info = self.info
        route = r.route
        name = r.fixed_cluster
        dest = None
        if name is None:
            dest = r.destination()
            name = dest.cluster if dest is not None else ""
        info.upstream_cluster = name
        state = conn.runtime.cluster_manager.get(name)
        if state is None:
            self.fail(ResponseFlag.NC)
            return
        cluster = state.cluster
        if cluster.max_requests and state.in_flight >= cluster.max_requests:
            state.counters.upstream_rq_pending_overflow += 1
            self.fail(ResponseFlag.UO)  # the circuit breaker (http2MaxRequests) is open
            return
        self.state = state
        state.in_flight += 1
        if head.forwarded_proto is None:
            head.forwarded_proto = head.scheme
        apply_forwarding(head, conn.remote_ip)
        if acts is not None:
            dest_ops = acts.edit_request(head, dest, r.matched_prefix_len)
            if dest_ops is not None or acts.response_ops is not None:
                self.resp_ops = (dest_ops, acts.response_ops)
        if cluster.hash_policy is None:
            # Only a redirected connection has an original destination (Envoy: the local
            # address counts only when restored); a listener's own address would loop back here.
            endpoint = state.choose(conn.downstream.original_dst)
        else:
            (rip, rport), (lip, lport) = conn.downstream.remote, conn.downstream.local
            endpoint, cookie = state.choose_hashed(
                head, conn.remote_ip, f"{rip}:{rport}>{lip}:{lport}".encode())
            if cookie is not None:
                self.resp_extra = [*(self.resp_extra or ()), (b"set-cookie", cookie)]
        if endpoint is None:
            self.fail(ResponseFlag.UH)
            return
        self.endpoint = info.upstream_endpoint = endpoint
        pool = http_pool(state, endpoint, head.upgrade is None and upstream_http2(cluster, head))
        self.pool = pool
        info.upstream_host = pool.host
        if route.mirrors:
            self._start_mirrors(route.mirrors, route.timeout)
        if head.grpc:
            self._arm_deadline(route.timeout)
        if info.request_id == "-" and head.request_id is not None:  # generated just now
            info.request_id = head.request_id.decode("latin-1")
        self._dispatch(pool)

    def _dispatch(self, pool: Http1Pool | Http2Pool) -> UpstreamRequest | None:
        """Attach an idle upstream (returned; the caller flushes) or start connecting one."""
        up = pool.acquire()
        if up is not None:
            self._attach(up)
            return up
        if self._pending is None:
            self._pending = []
        asyncio.get_running_loop().create_task(self._connect())
        return None

    async def _connect(self) -> None:
        pool = self.pool
        assert pool is not None
        try:
            up = await pool.connect()
        except UpstreamConnectError as exc:
            if not self.done and not self.response_started:
                self.info.upstream_transport_failure_reason = exc.reason
                self.fail(ResponseFlag.UF)
            return
        if self.done or self.response_started:
            pool.release(up)  # unused and healthy: keep it for the next request
            return
        self._attach(up)
        up.flush()

    def _arm_deadline(self, route_timeout: float | None) -> None:
        """A gRPC call's grpc-timeout, capped by the route's timeout, runs from its start."""
        deadline = grpc.timeout_of(self.head.headers)
        if deadline is None:
            return
        if route_timeout:
            deadline = min(deadline, route_timeout)
        self._timer = asyncio.get_running_loop().call_later(deadline, self._on_timeout)

    def _attach(self, up: UpstreamRequest) -> None:
        self.upstream = up
        up.bind(self)
        self.info.upstream_local_address = up.local_address
        self.attached = True
        if self.state is not None:
            c = self.state.counters
            c.upstream_rq_total += 1
            c.upstream_rq_active += 1
        up.send_head(self.head)
        pending = self._pending
        if pending is not None:
            self._pending = None
            for ev in pending:
                if type(ev) is bytes:
                    up.send_data(ev)
                else:
                    up.send_end(ev)  # type: ignore[arg-type]
            if self._pending_bytes > PENDING_LIMIT:
                self.conn.resume_reading(PAUSE_BUFFER)
            self._pending_bytes = 0
        if self.conn.write_paused:
            self.up_paused = True
            up.pause_reading()

    def on_request_data(self, data: bytes) -> None:
        self.info.bytes_received += len(data)
        if self.grpc_msgs is not None:
            self.grpc_msgs.request.feed(data)
        if self.mirrors is not None:
            self.mirrors.data(data)
        up = self.upstream
        if up is not None:
            up.send_data(data)
            return
        pending = self._pending
        if pending is not None:
            pending.append(data)
            self._pending_bytes += len(data)
            if self._pending_bytes > PENDING_LIMIT:
                self.conn.pause_reading(PAUSE_BUFFER)

    def on_request_end(self, end: End) -> None:
        self.request_done = True
        self.info.request_end_mono = monotonic()
        if self.mirrors is not None:
            self.mirrors.end(end)
        up = self.upstream
        if up is not None:
            up.send_end(end)  # flushed by the connection manager after this read's events
        elif self._pending is not None:
            self._pending.append(end)
        if self.response_done:
            self._complete()
            return
        route = self.route
        if route is not None and route.route.timeout and self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(route.route.timeout, self._on_timeout)

    def flush(self) -> None:
        """The request's events of this read are in: send them (at the next loop turn)."""
        if self.upstream is not None:
            self.upstream.schedule_flush()

    def on_downstream_write_paused(self) -> None:
        if self.upstream is not None and not self.up_paused:
            self.up_paused = True
            self.upstream.pause_reading()

    def on_downstream_write_resumed(self) -> None:
        if self.upstream is not None and self.up_paused:
            self.up_paused = False
            self.upstream.resume_reading()

    def on_downstream_reset(self, error_status: int | None) -> None:
        """The downstream went away (DC), or broke the protocol mid-request (`error_status`)."""
        if self.done:
            return
        self._drop_upstream()
        if self.mirrors is not None and not self.request_done:
            self.mirrors.abort()
        if error_status is not None:
            self.info.response_flags |= ResponseFlag.DPE
            if not self.response_started:
                self._local(error_status, b"")
                return
        elif not self.response_done:
            self.info.response_flags |= ResponseFlag.DC
        self._complete()

    def relay_closed(self, downstream_bytes: int, upstream_bytes: int) -> None:
        """The upgraded connection's byte relay ended."""
        self.info.bytes_received += downstream_bytes
        self.info.bytes_sent += upstream_bytes
        self.response_done = self.request_done = True
        self._complete()

    # response side (ResponseSink, called by the upstream connection) -----------------------

    def on_response_head(self, head: ResponseHead) -> None:
        self.response_started = True
        info = self.info
        now = info.response_start_mono = monotonic()
        # Envoy's x-envoy-upstream-service-time: from the end of the request (its start while
        # the request still streams) to this head.
        t = info.upstream_service_time_ms = int(
            (now - (info.request_end_mono or info.start_mono)) * 1000.0
        )  # fmt: skip
        if self.resp_ops is not None or self.resp_extra is not None:
            head.headers.append((SERVICE_TIME, b"%d" % t))  # as Envoy: route edits apply to it
            edit_response(head, self.resp_ops or (), self.resp_extra)
        else:
            head.service_time = t
        info.response_code = head.status
        info.response_code_details = VIA_UPSTREAM
        info.response_head = head
        if self.head.grpc:
            self.info.grpc_status = grpc.status_of(head.headers)  # trailers-only responses
        if head.status == 101:
            if self.head.upgrade is None:
                self.on_upstream_reset(ResponseFlag.UPE)
                return
            self.upgrading = True
        self.conn.send_head(self, head)
        if not head.keep_alive and self.upstream is not None:
            self.upstream.reusable = False

    def on_response_data(self, data: bytes) -> None:
        self.info.bytes_sent += len(data)
        if self.grpc_msgs is not None:
            self.grpc_msgs.response.feed(data)
        self.conn.send_data(data)

    def on_response_end(self, end: End) -> None:
        if self.upgrading:
            return  # the switch follows in on_upgraded
        trailers = end.trailers
        if trailers is not None:
            self.info.response_trailers = trailers
            if self.head.grpc:
                self.info.grpc_status = grpc.status_of(trailers)
        self.conn.send_end(end)
        self.response_done = True
        if self.request_done:
            self._complete()

    def on_batch_end(self) -> None:
        self.conn.schedule_flush()

    def on_upgraded(self, tail: bytes) -> None:
        up = self.upstream
        if up is None or self.done:
            return
        self._cancel_timer()
        transport = up.detach()
        self.upstream = None
        if self.state is not None:
            self.state.counters.upstream_rq_active -= 1
        if transport is not None:
            self.conn.switch_to_relay(self, transport, tail)

    def on_upstream_reset(self, flag: ResponseFlag) -> None:
        self.upstream = None
        self.fail(flag)

    def on_upstream_refused(self) -> None:
        """The upstream never processed the request (GOAWAY below its id, REFUSED_STREAM): send
        it again on another connection, once, if no body went out (Envoy does the same)."""
        self.upstream = None
        pool = self.pool
        if (self.retried or self.response_started or self.done or pool is None
                or self.info.bytes_received or self.state is None):
            self.fail(ResponseFlag.UR)
            return
        self.retried = True
        c = self.state.counters
        c.upstream_rq_active -= 1
        c.upstream_rq_retry += 1
        self._pending = [END] if self.request_done else []  # (re-sent by _attach)
        up = self._dispatch(pool)
        if up is not None:
            up.schedule_flush()

    def on_upstream_write_paused(self) -> None:
        self.conn.pause_reading(PAUSE_UPSTREAM)

    def on_upstream_write_resumed(self) -> None:
        self.conn.resume_reading(PAUSE_UPSTREAM)

    # outcomes -------------------------------------------------------------------------------

    def _on_timeout(self) -> None:
        self._timer = None
        if self.state is not None:
            self.state.counters.upstream_rq_timeout += 1
        self.fail(ResponseFlag.UT)

    def fail(self, flag: ResponseFlag) -> None:
        """End the exchange with `flag`: a local reply if nothing was sent yet, else a reset."""
        if self.done:
            return
        info = self.info
        info.response_flags |= flag
        if info.response_code_details == "-":
            info.response_code_details = DETAILS.get(flag, "-")
        self._drop_upstream()
        if self.response_started:
            self.conn.reset()
            self._complete()
            return
        status, body = local_reply.for_flag(flag)
        self._local(status, body)

    def _local(self, status: int, body: bytes, headers: Headers | None = None) -> None:
        self.response_started = self.response_done = True
        self.info.response_code = 200 if self.head.grpc else status  # gRPC: status in trailers
        if self.head.method != b"HEAD":
            self.info.bytes_sent = len(body)
        if self.resp_extra:  # CORS headers go on local replies too
            headers = [*(headers or ()), *self.resp_extra]
        self.conn.send_local_reply(self, status, body, headers)  # closes if the request is unread
        # Failures also arrive outside any read (connect failure, upstream reset, timeout), when
        # nothing else would flush: schedule it here, or a keep-alive client waits forever.
        self.conn.schedule_flush()
        self._complete()

    def _drop_upstream(self) -> None:
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.close()
        self._pending = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _complete(self) -> None:
        if self.done:
            return
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        up = self.upstream
        if up is not None:
            self.upstream = None
            if self.up_paused:
                up.resume_reading()
            if self.pool is not None and self.request_done and self.response_done:
                self.pool.release(up)
            else:
                up.close()
        self.finish_log()
        self.conn.stream_complete(self)

    def finish_log(self) -> None:
        """Counters and the access log entry; once per stream."""
        info = self.info
        code = info.response_code
        state = self.state
        if state is not None:
            state.in_flight -= 1
            endpoint = self.endpoint
            if endpoint is not None:
                self.endpoint = None
                state.release(endpoint)
        if state is not None and self.attached:
            c = state.counters
            if not self.upgrading:
                c.upstream_rq_active -= 1
            if 200 <= code < 300:
                c.upstream_rq_2xx += 1
            elif code < 400:
                c.upstream_rq_3xx += 1
            elif code < 500:
                c.upstream_rq_4xx += 1
            else:
                c.upstream_rq_5xx += 1
        finish_request(self.conn.runtime, info)
