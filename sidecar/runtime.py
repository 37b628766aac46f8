"""What every connection can reach while it runs, and the record it keeps of itself.

Theory of operation: the server owns one `Runtime` (cluster manager, access log, drain manager,
server-wide counters) and hands it, with the snapshot current at accept time, to each downstream
connection. Each request (HTTP) or connection (TCP) fills one `StreamInfo` as it goes; when it ends,
the StreamInfo is given to the access log (and, later, metrics and tracing). StreamInfo keeps its
defaults on the class, so building one costs two stores and filling it one store per field learnt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sidecar.observability.metrics import DisabledMetrics, MetricsStore
from sidecar.outcome import ResponseFlag

if TYPE_CHECKING:
    from sidecar.bootstrap import Bootstrap
    from sidecar.config.snapshot import Endpoint, FilterChain, Listener, Snapshot
    from sidecar.http.grpc_messages import GrpcMessages
    from sidecar.http.stream import Headers, RequestHead, ResponseHead
    from sidecar.observability.tracing import Tracer
    from sidecar.observability.tracing_export import SpanRecord
    from sidecar.upstream.cluster import ClusterManager

Address = tuple[str, int]
# Read once per request: a module global loads fast; `ResponseFlag.NONE` goes through EnumType's
# __getattr__ hook on Python 3.11 (class attribute loads are not specialized there).
NO_FLAGS = ResponseFlag.NONE


def format_address(host: str, port: int) -> str:
    """`ip:port` as Envoy prints it: IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Downstream:
    """One accepted downstream connection, as the listener hands it to a network filter."""

    remote: Address  # the client
    local: Address  # where the client meant to go: the original destination when captured
    direct_local: Address  # the listener socket's own address
    listener: Listener
    chain: FilterChain
    snapshot: Snapshot  # read once at accept; the connection keeps it to the end
    original_dst: Address | None = None  # set when the listener reads SO_ORIGINAL_DST
    # What protocol detection found (listener/sniff.py); empty when the chain needed none.
    detected: str = ""  # "tls" | "h2c" | "http/1.1" | "http/1.0" | "tcp"
    server_name: str = ""  # TLS SNI
    alpn: tuple[str, ...] = ()  # TLS ALPN protocols the client offered


class StreamInfo:
    """Everything known about one request (L7) or one connection (L4), for logs and stats.

    Slotted: the request path and the observers (metrics, access log, tracer) read and write
    its fields on every request, and slot access is the interpreter's fastest (a dict-backed
    instance with class-level defaults made each read of an unset field a slow lookup).
    """

    __slots__ = (
        "authority",
        "bytes_received",
        "bytes_sent",
        "connection_termination_details",
        "direction",
        "downstream_direct_remote_address",
        "downstream_local_address",
        "downstream_remote_address",
        "downstream_remote_ip",
        "end_mono",
        "forwarded_for",
        "grpc_messages",
        "grpc_status",
        "listener_name",
        "method",
        "path",
        "protocol",
        "request_end_mono",
        "request_head",
        "request_id",
        "requested_server_name",
        "response_code",
        "response_code_details",
        "response_flags",
        "response_head",
        "response_start_mono",
        "response_trailers",
        "route_name",
        "start_mono",
        "start_time",
        "trace",
        "upstream_cluster",
        "upstream_endpoint",
        "upstream_host",
        "upstream_local_address",
        "upstream_service_time_ms",
        "upstream_transport_failure_reason",
        "user_agent",
    )

    start_time: float  # wall clock, for the log timestamp
    start_mono: float
    end_mono: float
    protocol: str  # "HTTP/1.1", "HTTP/2", or "-" for TCP
    method: str
    path: str  # as received (x-envoy-original-path semantics: before rewrites)
    authority: str
    user_agent: str
    request_id: str
    forwarded_for: str
    response_code: int  # 0 = no response sent
    grpc_status: int | None  # gRPC calls: grpc-status from the trailers (or trailers-only)
    response_flags: ResponseFlag
    response_code_details: str
    bytes_received: int  # request body (L7) / bytes from downstream (L4)
    bytes_sent: int  # response body (L7) / bytes to downstream (L4)
    upstream_cluster: str
    upstream_host: str  # "ip:port"
    upstream_local_address: str
    upstream_transport_failure_reason: str
    upstream_service_time_ms: int | None  # first upstream byte - request sent
    route_name: str
    downstream_local_address: str  # the original destination when captured
    downstream_remote_address: str
    downstream_direct_remote_address: str
    requested_server_name: str
    listener_name: str
    direction: str  # "inbound" | "outbound"
    # Access log timings (Envoy's REQUEST_DURATION, RESPONSE_DURATION, RESPONSE_TX_DURATION) and
    # L4 termination details; 0.0 / "-" (unset, logged as "-") until the request path sets them.
    request_end_mono: float  # last byte of the request received from downstream
    response_start_mono: float  # first byte of the response read from upstream
    connection_termination_details: str
    # For the metrics' labels: the downstream peer's IP and the endpoint the balancer chose.
    downstream_remote_ip: str
    upstream_endpoint: Endpoint | None
    # gRPC calls only: the messages counted each way (http/grpc_messages.py), for the metrics.
    grpc_messages: GrpcMessages | None
    # Set by the tracer on sampled requests only (observability/tracing.py).
    trace: SpanRecord | None
    # HTTP: the heads and trailers as they went, for the access log's %REQ/RESP/TRAILER(X)%
    # (read only when a line is written); None until there is one (and for TCP).
    request_head: RequestHead | None
    response_head: ResponseHead | None
    response_trailers: Headers | None

    def __init__(self, start_time: float | None = None) -> None:
        self.start_time = time.time() if start_time is None else start_time
        self.start_mono = time.monotonic()
        self.end_mono = 0.0
        self.protocol = "-"
        self.method = "-"
        self.path = "-"
        self.authority = "-"
        self.user_agent = "-"
        self.request_id = "-"
        self.forwarded_for = "-"
        self.response_code = 0
        self.grpc_status = None
        self.response_flags = NO_FLAGS
        self.response_code_details = "-"
        self.bytes_received = 0
        self.bytes_sent = 0
        self.upstream_cluster = "-"
        self.upstream_host = "-"
        self.upstream_local_address = "-"
        self.upstream_transport_failure_reason = "-"
        self.upstream_service_time_ms = None
        self.route_name = "-"
        self.downstream_local_address = "-"
        self.downstream_remote_address = "-"
        self.downstream_direct_remote_address = "-"
        self.requested_server_name = "-"
        self.listener_name = "-"
        self.direction = "-"
        self.request_end_mono = 0.0
        self.response_start_mono = 0.0
        self.connection_termination_details = "-"
        self.downstream_remote_ip = "-"
        self.upstream_endpoint = None
        self.grpc_messages = None
        self.trace = self.request_head = self.response_head = self.response_trailers = None

    def __repr__(self) -> str:
        fields = {name: getattr(self, name) for name in self.__slots__}
        return f"StreamInfo({fields!r})"

    def finish(self) -> None:
        if not self.end_mono:
            self.end_mono = time.monotonic()

    @property
    def duration_ms(self) -> int:
        end = self.end_mono or time.monotonic()
        return int((end - self.start_mono) * 1000)


class AccessLogger(Protocol):
    """Receives each finished stream; must not block and must not raise."""

    def log(self, info: StreamInfo) -> None: ...


class Drainable(Protocol):
    """A downstream connection the drain manager can ask to finish up."""

    def drain(self) -> None:
        """Close now if idle; otherwise finish the work in flight, then close."""

    def abort(self) -> None:
        """Close now, whatever is in flight (drain time is over)."""


@dataclass(slots=True)
class ServerCounters:
    """Server-wide counters in Envoy's names (listener/http stats), read by admin /stats."""

    downstream_cx_total: int = 0
    downstream_cx_active: int = 0
    downstream_cx_destroy: int = 0
    downstream_rq_total: int = 0
    downstream_rq_active: int = 0
    downstream_rq_4xx: int = 0
    downstream_rq_5xx: int = 0
    downstream_cx_protocol_error: int = 0


class Runtime:
    """The long-lived services a connection uses; one per proxy process."""

    __slots__ = (
        "access_log",
        "bootstrap",
        "cluster_manager",
        "connections",
        "counters",
        "draining",
        "metrics",
        "snapshot",
        "tracer",
    )

    def __init__(
        self,
        bootstrap: Bootstrap,
        cluster_manager: ClusterManager,
        access_log: AccessLogger,
        metrics: MetricsStore | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        if metrics is None:
            metrics = MetricsStore() if bootstrap.metrics else DisabledMetrics()
        self.metrics = metrics  # Istio's standard metrics
        self.cluster_manager = cluster_manager
        self.access_log = access_log
        self.counters = ServerCounters()
        self.connections: set[Drainable] = set()
        self.draining = False
        # The current snapshot (None until the server adopts one): route configs are looked up
        # here per request, so a VirtualService change applies to open connections too (Envoy's
        # RDS). Listeners, filter chains and their HCM settings stay as the connection began.
        self.snapshot: Snapshot | None = None
        # Zipkin tracing; None when no collector is configured (the request path tests only this).
        self.tracer: Tracer | None = None

    def connection_opened(self, conn: Drainable) -> None:
        self.connections.add(conn)
        self.counters.downstream_cx_total += 1
        self.counters.downstream_cx_active += 1
        if self.draining:
            conn.drain()

    def connection_closed(self, conn: Drainable) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.counters.downstream_cx_active -= 1
            self.counters.downstream_cx_destroy += 1

    def drain_all(self) -> None:
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()
