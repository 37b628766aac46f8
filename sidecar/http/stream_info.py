"""Filling a request's StreamInfo the same way whichever codec received it.

Theory of operation: the strings that describe the downstream connection (addresses, listener,
direction) are formatted once per connection into a `ConnectionLabels`; each request's StreamInfo
then gets them with four stores (`new_info`), and its request fields from the head
(`describe_request`). The server-wide request counters move here too, so a request is counted
once whichever connection manager saw it.
"""

from __future__ import annotations

import sys
from time import monotonic

from sidecar.config.snapshot import HttpConnectionManager
from sidecar.http.router import RouteTable, route_table
from sidecar.http.stream import RequestHead
from sidecar.runtime import Downstream, Runtime, StreamInfo, format_address


class ConnectionLabels:
    """A downstream connection's addresses and listener, formatted once for its requests."""

    __slots__ = (
        "direction", "listener", "local", "peer_ip", "remote", "remote_ip", "server_name",
    )  # fmt: skip

    def __init__(self, downstream: Downstream) -> None:
        self.peer_ip = sys.intern(downstream.remote[0])  # one object per address: fast compares
        self.remote_ip = self.peer_ip.encode("ascii")
        self.remote = format_address(*downstream.remote)
        self.local = format_address(*downstream.local)
        self.direction = downstream.listener.direction.value
        self.listener = downstream.listener.name
        self.server_name = downstream.server_name or "-"  # SNI, when TLS was seen

    def new_info(self, runtime: Runtime) -> StreamInfo:
        """A StreamInfo for a new request on this connection, counted as active."""
        info = StreamInfo()
        info.downstream_local_address = self.local
        info.downstream_remote_address = info.downstream_direct_remote_address = self.remote
        info.downstream_remote_ip = self.peer_ip
        info.listener_name = self.listener
        info.direction = self.direction
        info.requested_server_name = self.server_name
        rc = runtime.counters
        rc.downstream_rq_total += 1
        rc.downstream_rq_active += 1
        return info


def finish_request(runtime: Runtime, info: StreamInfo) -> None:
    """A request is over: its end time, the server-wide counters, Istio's metrics, the access
    log entry, the span of a sampled request."""
    if not info.end_mono:
        info.end_mono = monotonic()
    rc = runtime.counters
    rc.downstream_rq_active -= 1
    code = info.response_code
    if 400 <= code < 500:
        rc.downstream_rq_4xx += 1
    elif code >= 500:
        rc.downstream_rq_5xx += 1
    runtime.metrics.record_http(info, runtime)
    runtime.access_log.log(info)
    trace = info.trace
    if trace is not None and runtime.tracer is not None:
        runtime.tracer.finish(trace, info, runtime)


def describe_request(info: StreamInfo, head: RequestHead, protocol: str) -> None:
    """The request's own fields of the access log."""
    info.protocol = protocol
    info.method = head.method.decode("latin-1")
    info.path = head.path.decode("latin-1")
    if head.authority:
        info.authority = head.authority.decode("latin-1")
    if head.user_agent is not None:
        info.user_agent = head.user_agent.decode("latin-1")
    if head.forwarded_for is not None:
        info.forwarded_for = head.forwarded_for.decode("latin-1")


class HttpConnectionBase:
    """What either connection manager (HTTP/1.1, HTTP/2) holds for its requests: the runtime,
    the connection's record, its labels, and the route table of the current snapshot.

    The route table follows the snapshot the server has adopted, as Envoy's RDS does: each new
    request routes by the current route config of the connection's name (compiled once per
    config, looked up again only when the snapshot changed); a connection whose route config
    is gone from the current snapshot keeps the one it began with.
    """

    def __init__(
        self, runtime: Runtime, downstream: Downstream, config: HttpConnectionManager
    ) -> None:
        self.runtime = runtime
        self.downstream = downstream
        self.config = config
        self._snapshot = downstream.snapshot
        rc = downstream.snapshot.route_configs.get(config.route_config)
        self._table: RouteTable | None = route_table(rc) if rc is not None else None
        self.labels = ConnectionLabels(downstream)
        self.remote_ip = self.labels.remote_ip

    @property
    def table(self) -> RouteTable | None:
        current = self.runtime.snapshot
        if current is not None and current is not self._snapshot:
            self._snapshot = current
            rc = current.route_configs.get(self.config.route_config)
            if rc is not None:
                self._table = route_table(rc)
        return self._table
