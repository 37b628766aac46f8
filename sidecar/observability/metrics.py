"""Istio's standard metrics, recorded as plain numbers on pre-bound series.

Theory of operation: a series is one label set's numbers (`RequestSeries`: the request count and
three histograms as per-bucket counts and a sum; `TcpSeries`: four counters). Recording one
finished request (`record_http`) is:
- one dict lookup on a small tuple of strings and ints, (direction, cluster, upstream host,
  downstream IP, response code, response flags, gRPC status), to the series it feeds;
- integer increments, and each histogram value's bucket from a precomputed table (durations
  under a second, in half milliseconds; bodies under 16 KiB) or else a bisect over the bounds.
No label dict, no string formatting and no aioprometheus call happen per request. On a miss the
label values are computed once (metrics_labels.py) for the (direction, cluster, host, peer) part
and cached, then joined with the outcome's values into the full label tuple that keys the series
(`requests`, `tcp`): label sets that resolve alike share one series. The caches are cleared when
the server adopts a new snapshot (workload labels may have changed) and when they grow past a
bound (many unknown peers); the series are kept for ever, as Prometheus counters must be.

gRPC calls also carry their message counts each way (http/grpc_messages.py, counted as the
body passes); they are added to the call's series when it ends, never periodically while a long
stream runs. A request that is not gRPC pays one attribute test for them.

Each request histogram has its own bucket bounds: Envoy's defaults unless overridden by stat-name
prefix (metrics_buckets.py: the proxy Pod's `sidecar.istio.io/statsHistogramBuckets`, the
`--stats-histogram-buckets` flag), resolved once, on the first snapshot, before any series exists.

Rendering happens at scrape time (metrics_render.py). Series hold only numbers keyed by label
tuples, so the stores of several worker processes add up with `merge` for one scrape.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from math import ceil
from typing import TYPE_CHECKING

from sidecar.observability import metrics_buckets as mb
from sidecar.observability import metrics_labels as ml
from sidecar.outcome import ResponseFlag

if TYPE_CHECKING:
    from sidecar.bootstrap import Bootstrap
    from sidecar.config.snapshot import Snapshot
    from sidecar.http.grpc_messages import GrpcMessages
    from sidecar.runtime import Runtime, StreamInfo

log = logging.getLogger(__name__)

# Envoy's default histogram bucket bounds (ms for durations, bytes for sizes); +Inf is implied.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
)  # fmt: skip
CACHE_LIMIT = 10_000  # cached bindings / hot keys before the caches are cleared
SMALL = 16384  # body sizes below this find their bucket in a table
DURATION_TABLE = 2048  # durations under this many half milliseconds too (as bounds allow)

HotKey = tuple[str, str, str, str, int, int, int | None]
TcpKey = tuple[str, str, str, str, int]
# The request histograms: RequestSeries attribute and Envoy stat name (for bucket overrides).
HISTOGRAMS = (
    ("duration", mb.DURATION_STAT),
    ("request_bytes", mb.REQUEST_BYTES_STAT),
    ("response_bytes", mb.RESPONSE_BYTES_STAT),
)


class Histogram:
    """A histogram as rendered: counts per bucket (not cumulative; the last one is +Inf) and the
    sum of the values. A view of a series' numbers, built at scrape time."""

    __slots__ = ("counts", "sum")

    def __init__(self, counts: list[int], total: float) -> None:
        self.counts = counts
        self.sum = total

    @property
    def count(self) -> int:
        return sum(self.counts)


class RequestSeries:
    """istio_requests_total, the gRPC message counts and the three request histograms of one
    label set (each histogram sized by its own bounds: `sizes`, +Inf included). The histograms'
    numbers are plain slots (counts lists and sums), which `record_http` updates without going
    through an object per histogram; `duration` etc. are views for rendering.

    Every request has one duration, so the request count is the duration histogram's count,
    not a number of its own. Most requests have no body, and record_http skips them: a byte
    histogram's first bucket is what it counted there plus the requests it skipped (the count
    less the other buckets)."""

    __slots__ = (
        "d_counts", "d_sum", "p_counts", "p_sum", "q_counts", "q_sum", "request_messages",
        "response_messages",
    )  # fmt: skip

    def __init__(self, sizes: tuple[int, int, int]) -> None:
        self.request_messages = 0
        self.response_messages = 0
        self.d_counts = [0] * sizes[0]  # duration (ms buckets; d_sum in seconds)
        self.q_counts = [0] * sizes[1]  # request bytes (bodies only: see above)
        self.p_counts = [0] * sizes[2]  # response bytes (bodies only)
        self.d_sum = 0.0
        self.q_sum = 0
        self.p_sum = 0

    @property
    def count(self) -> int:
        return sum(self.d_counts)

    def _implied_first(self, counts: list[int]) -> list[int]:
        return [self.count - sum(counts[1:]), *counts[1:]]

    def count_messages(self, messages: GrpcMessages) -> None:
        """A gRPC call's messages each way."""
        self.request_messages += messages.request.count
        self.response_messages += messages.response.count

    @property
    def duration(self) -> Histogram:
        return Histogram(self.d_counts, self.d_sum * 1000.0)  # kept in seconds

    @property
    def request_bytes(self) -> Histogram:
        return Histogram(self._implied_first(self.q_counts), self.q_sum)

    @property
    def response_bytes(self) -> Histogram:
        return Histogram(self._implied_first(self.p_counts), self.p_sum)

    def add(self, other: RequestSeries) -> None:
        self.request_messages += other.request_messages
        self.response_messages += other.response_messages
        for mine, theirs in ((self.d_counts, other.d_counts), (self.q_counts, other.q_counts),
                             (self.p_counts, other.p_counts)):  # fmt: skip
            if len(mine) != len(theirs):
                raise ValueError("histograms with different bucket counts")
            for i, n in enumerate(theirs):
                mine[i] += n
        self.d_sum += other.d_sum
        self.q_sum += other.q_sum
        self.p_sum += other.p_sum


class TcpSeries:
    """The four TCP counters of one label set."""

    __slots__ = ("closed", "opened", "received", "sent")

    def __init__(self) -> None:
        self.opened = self.closed = self.sent = self.received = 0

    def add(self, other: TcpSeries) -> None:
        self.opened += other.opened
        self.closed += other.closed
        self.sent += other.sent
        self.received += other.received


class MetricsStore:
    """One process's Istio metrics: series by label tuple, plus the hot-path caches."""

    def __init__(self, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.buckets = tuple(float(b) for b in buckets)  # the default of every histogram
        self._set_bounds({})
        self._overrides: mb.Overrides | None = None  # looked up on the first snapshot
        self.requests: dict[tuple[str, ...], RequestSeries] = {}
        self.tcp: dict[tuple[str, ...], TcpSeries] = {}
        self._hot: dict[HotKey, RequestSeries] = {}
        self._hot_tcp: dict[TcpKey, TcpSeries] = {}
        self._bindings: dict[tuple[str, str, str, str], tuple[str, ...]] = {}
        self._snapshot: Snapshot | None = None

    def _set_bounds(self, bounds: dict[str, mb.Bounds]) -> None:
        self.bounds = {attr: bounds.get(attr, self.buckets) for attr, _ in HISTOGRAMS}
        self._duration_bounds = self.bounds["duration"]
        # Bisect compares like with like (int against float is a slow path): durations are
        # floats; byte counts are ints, and for an int n, n <= bound exactly when n <= floor.
        self._request_bounds = tuple(math.floor(b) for b in self.bounds["request_bytes"])
        self._response_bounds = tuple(math.floor(b) for b in self.bounds["response_bytes"])
        # Most durations are short: the bucket of one under DURATION_TABLE half milliseconds by
        # table lookup, indexed by the duration in half milliseconds rounded up (k covers
        # ((k-1)/2, k/2] ms). Envoy's bounds are whole half milliseconds, so one bucket holds
        # each such interval; the table ends before the first interval that a bound off that
        # grid splits, and durations from there on bisect.
        durations = self._duration_bounds
        self._duration_index = []
        for k in range(DURATION_TABLE):
            if any((k - 1) / 2.0 < b < k / 2.0 for b in durations):
                break
            self._duration_index.append(bisect_left(durations, k / 2.0))
        # Most bodies are small: their bucket by table lookup instead of a bisect.
        self._request_index = [bisect_left(self._request_bounds, n) for n in range(SMALL)]
        self._response_index = [bisect_left(self._response_bounds, n) for n in range(SMALL)]
        self._sizes = (
            len(self._duration_bounds) + 1,
            len(self._request_bounds) + 1,
            len(self._response_bounds) + 1,
        )

    def resolve_buckets(self, overrides: mb.Overrides) -> None:
        """Each request histogram's bounds from prefix overrides (before any series exists)."""
        if self.requests:
            raise ValueError("bucket bounds cannot change once requests were recorded")
        self._set_bounds({
            attr: mb.bounds_for(stat, overrides, self.buckets) for attr, stat in HISTOGRAMS
        })  # fmt: skip

    # -- hot path -------------------------------------------------------------------------------
    def record_http(self, info: StreamInfo, runtime: Runtime) -> None:
        """One finished request (called by finish_request)."""
        if runtime.snapshot is not self._snapshot:
            self._adopt(runtime.snapshot, runtime.bootstrap)
        key = (
            info.direction,
            info.upstream_cluster,
            info.upstream_host,
            info.downstream_remote_ip,
            info.response_code,
            info.response_flags._value_,
            info.grpc_status,
        )
        s = self._hot.get(key)
        if s is None:
            s = self._request_series(key, info, runtime)
        if info.grpc_messages is not None:
            s.count_messages(info.grpc_messages)
        seconds = info.end_mono - info.start_mono
        try:  # the bucket by table (half milliseconds, rounded up), unless the request was long
            s.d_counts[self._duration_index[ceil(seconds * 2000.0)]] += 1
        except IndexError:
            s.d_counts[bisect_left(self._duration_bounds, seconds * 1000.0)] += 1
        s.d_sum += seconds  # rendered in milliseconds
        # No body (most requests): only the count, which is the duration's (RequestSeries).
        n = info.bytes_received
        if n:
            s.q_sum += n
            try:  # the bucket by table, unless the body is large
                s.q_counts[self._request_index[n]] += 1
            except IndexError:
                s.q_counts[bisect_left(self._request_bounds, n)] += 1
        n = info.bytes_sent
        if n:
            s.p_sum += n
            try:
                s.p_counts[self._response_index[n]] += 1
            except IndexError:
                s.p_counts[bisect_left(self._response_bounds, n)] += 1

    def tcp_opened(self, info: StreamInfo, runtime: Runtime) -> None:
        """A TCP connection was opened (its cluster and endpoint chosen, or failed to be)."""
        self._tcp_series(info, runtime).opened += 1

    def tcp_closed(self, info: StreamInfo, runtime: Runtime) -> None:
        """A TCP connection ended: its bytes each way, with the flags it ended with."""
        s = self._tcp_series(info, runtime)
        s.closed += 1
        s.received += info.bytes_received
        s.sent += info.bytes_sent

    # -- misses ---------------------------------------------------------------------------------
    def _adopt(self, snapshot: Snapshot | None, boot: Bootstrap) -> None:
        if snapshot is not None:
            overrides = mb.merge(snapshot.workload.stats_histogram_buckets,
                                 boot.stats_histogram_buckets)  # fmt: skip
            if self._overrides is None and not self.requests:
                self._overrides = overrides
                if overrides:
                    self.resolve_buckets(overrides)
            elif overrides != self._overrides:
                self._overrides = overrides
                log.warning("%s changed: new histogram buckets apply after a restart",
                            mb.ANNOTATION)  # fmt: skip
        self._snapshot = snapshot
        self._hot.clear()
        self._hot_tcp.clear()
        self._bindings.clear()

    def _tcp_series(self, info: StreamInfo, runtime: Runtime) -> TcpSeries:
        if runtime.snapshot is not self._snapshot:
            self._adopt(runtime.snapshot, runtime.bootstrap)
        flags = info.response_flags._value_
        key = (info.direction, info.upstream_cluster, info.upstream_host,
               info.downstream_remote_ip, flags)  # fmt: skip
        s = self._hot_tcp.get(key)
        if s is not None:
            return s
        base = self._base(key[0], key[1], key[2], key[3], info, runtime)
        labels = (*base, "tcp", ResponseFlag(flags).code())
        s = self.tcp.get(labels)
        if s is None:
            s = self.tcp[labels] = TcpSeries()
        if len(self._hot_tcp) >= CACHE_LIMIT:
            self._hot_tcp.clear()
        self._hot_tcp[key] = s
        return s

    def _request_series(self, key: HotKey, info: StreamInfo, runtime: Runtime) -> RequestSeries:
        base = self._base(key[0], key[1], key[2], key[3], info, runtime)
        grpc = key[6]
        labels = (
            *base,
            "http" if grpc is None else "grpc",
            str(key[4]),
            "" if grpc is None else str(grpc),  # Istio: "" for plain HTTP
            ResponseFlag(key[5]).code(),
        )
        s = self.requests.get(labels)
        if s is None:
            s = self.requests[labels] = RequestSeries(self._sizes)
        if len(self._hot) >= CACHE_LIMIT:
            self._hot.clear()
        self._hot[key] = s
        return s

    def _base(
        self, direction: str, cluster: str, host: str, peer_ip: str, info: StreamInfo,
        runtime: Runtime,
    ) -> tuple[str, ...]:  # fmt: skip
        bkey = (direction, cluster, host, peer_ip)
        base = self._bindings.get(bkey)
        if base is None:
            if len(self._bindings) >= CACHE_LIMIT:
                self._bindings.clear()
            base = self._bindings[bkey] = self._compute_base(direction, cluster, peer_ip, info,
                                                              runtime)  # fmt: skip
        return base

    def _compute_base(
        self, direction: str, cluster_name: str, peer_ip: str, info: StreamInfo, runtime: Runtime
    ) -> tuple[str, ...]:
        boot = runtime.bootstrap
        cid = boot.cluster_id
        snap = self._snapshot
        state = runtime.cluster_manager.get(cluster_name)
        cluster = state.cluster if state is not None else None
        service = ml.service_labels(cluster, cluster_name, boot.cluster_domain)
        me = ml.from_workload(snap.workload if snap is not None else None, cid)
        if direction == "inbound":
            peer = snap.peers.get(peer_ip) if snap is not None else None
            return ml.base_labels(False, ml.from_workload(peer, cid), me, service)
        endpoint = info.upstream_endpoint
        dest = ml.Peer()
        if endpoint is not None:
            dest = ml.from_endpoint(endpoint, cid)
            if not dest.name and snap is not None:  # e.g. ORIGINAL_DST: look the address up
                dest = ml.from_workload(snap.peers.get(endpoint.address), cid)
        return ml.base_labels(True, me, dest, service)

    # -- aggregation ----------------------------------------------------------------------------
    def merge(self, other: MetricsStore) -> MetricsStore:
        """A new store holding the sums of both (one scrape over several worker processes)."""
        if other.bounds != self.bounds:
            raise ValueError("cannot merge stores with different histogram buckets")
        out = MetricsStore(self.buckets)
        out._set_bounds(self.bounds)
        for store in (self, other):
            for labels, s in store.requests.items():
                out.requests.setdefault(labels, RequestSeries(out._sizes)).add(s)
            for labels, t in store.tcp.items():
                out.tcp.setdefault(labels, TcpSeries()).add(t)
        return out


class DisabledMetrics(MetricsStore):
    """Istio's metrics switched off (`--no-metrics`): nothing recorded, an empty exposition."""

    def record_http(self, info: StreamInfo, runtime: Runtime) -> None:
        return

    def tcp_opened(self, info: StreamInfo, runtime: Runtime) -> None:
        return

    def tcp_closed(self, info: StreamInfo, runtime: Runtime) -> None:
        return
