"""The route's policies between routing and forwarding, in Envoy's HTTP filter order.

Theory of operation: a mixin of `ActiveStream` (active_stream.py), holding the part of an
exchange that runs only for routes with policies: CORS (cors.py: preflights answered here,
allowed origins noted for the response), fault delay (the request waits on a timer, its body
buffered as while connecting) and abort (fault.py), redirect and direct response
(route_actions.py), then forwarding, which is the stream's own. Mirrors start once the head is
final; body that arrived during a fault delay is replayed to them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sidecar.http import cors, grpc
from sidecar.http.fault import ABORT_BODY, FaultPolicy
from sidecar.http.mirror import MirrorSet, start_mirrors
from sidecar.http.route_actions import RouteActions, redirect_location
from sidecar.http.router import CompiledRoute
from sidecar.http.stream import End, Headers, RequestHead
from sidecar.outcome import DETAILS, DIRECT_RESPONSE, ResponseFlag
from sidecar.runtime import StreamInfo

if TYPE_CHECKING:
    from sidecar.config.snapshot import Mirror
    from sidecar.http.active_stream import DownstreamConn
    from sidecar.upstream.cluster import ClusterState


class RouteStage:
    """The policy stage of an `ActiveStream` (which provides the state and methods below)."""

    # The state the stage writes lives here; the rest is the stream's (see ActiveStream).
    __slots__ = ("_pending", "_timer", "mirrors", "resp_extra")

    if TYPE_CHECKING:
        conn: DownstreamConn
        head: RequestHead
        info: StreamInfo
        route: CompiledRoute | None
        state: ClusterState | None
        mirrors: MirrorSet | None
        resp_extra: Headers | None
        done: bool
        request_done: bool
        response_done: bool
        _pending: list[bytes | End] | None
        _timer: asyncio.TimerHandle | None

        def _local(self, status: int, body: bytes, headers: Headers | None = None) -> None: ...
        def _forward(self, r: CompiledRoute, acts: RouteActions | None) -> None: ...
        def _on_timeout(self) -> None: ...
        def flush(self) -> None: ...

    def _filters(self, r: CompiledRoute, acts: RouteActions) -> None:
        """CORS, then fault delay (Envoy's filter order); then the route's action."""
        policy = acts.cors
        if policy is not None:
            kind, extra = policy.decide(self.head)
            if kind == cors.ANSWER:
                self._local(200, b"", extra)
                return
            self.resp_extra = extra
        fault = acts.fault
        if fault is not None:
            delay = fault.delay()
            if delay is not None:
                self.info.response_flags |= ResponseFlag.DI
                self._pending = []  # the request body waits (bounded, then reading pauses)
                self._timer = asyncio.get_running_loop().call_later(delay, self._delay_over)
                return
        self._act(r, acts)

    def _delay_over(self) -> None:
        self._timer = None
        r = self.route
        if self.done or r is None or r.actions is None:
            return
        self._act(r, r.actions)
        timeout = r.route.timeout
        if self.state is not None and not self.response_done and self.request_done and timeout \
                and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._on_timeout)
        self.flush()

    def _act(self, r: CompiledRoute, acts: RouteActions) -> None:
        """Fault abort, redirect, direct response, or forwarding."""
        route = r.route
        fault = acts.fault
        if fault is not None and fault.abort():
            self._abort(fault)
            return
        rd = route.redirect
        if rd is not None or route.direct_status is not None:
            self.info.response_code_details = DIRECT_RESPONSE
        if rd is not None:
            location = redirect_location(self.head, rd, self.conn.downstream.local[1])
            self._local(rd.code, b"", self._route_headers(acts, [(b"location", location)]))
        elif route.direct_status is not None:
            self._local(route.direct_status, route.direct_body, self._route_headers(acts, []))
        else:
            self._forward(r, acts)

    @staticmethod
    def _route_headers(acts: RouteActions, headers: Headers) -> Headers:
        ops = acts.response_ops
        return ops.edit_response(headers) if ops is not None else headers

    def _abort(self, fault: FaultPolicy) -> None:
        self.info.response_flags |= ResponseFlag.FI
        self.info.response_code_details = DETAILS[ResponseFlag.FI]
        code = fault.grpc_status
        if code is not None:
            self.info.grpc_status = code
            self._local(200, b"", grpc.local_reply_headers(code, ABORT_BODY))
        else:
            self._local(fault.http_status or 500, ABORT_BODY)


    def _start_mirrors(self, mirrors: tuple[Mirror, ...], timeout: float | None) -> None:
        m = start_mirrors(self.conn.runtime, self.head, mirrors, self.conn.remote_ip, timeout)
        self.mirrors = m
        if m is not None and self._pending:  # body that arrived during a fault delay
            for ev in self._pending:
                if type(ev) is bytes:
                    m.data(ev)
                else:
                    m.end(ev)  # type: ignore[arg-type]
