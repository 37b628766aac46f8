"""Upstream HTTP/2 connections and the streams that carry one request each.

Theory of operation: an `UpstreamH2Connection` is the asyncio protocol of one upstream socket
speaking HTTP/2 (prior knowledge: the cluster says the endpoint speaks it). Each request is an
`UpstreamH2Stream` on it, which offers the ActiveStream the same calls an HTTP/1.1 upstream
connection does (bind, send_head/data/end, pause/resume reading, close), so the exchange code does
not know which protocol carries it. A connection that received GOAWAY takes no new streams;
those above its last stream id are refused (the ActiveStream sends them again elsewhere) and it
closes when its streams are done.

Flow control as downstream (h2_codec): request data goes out as the server's windows allow, and
past HIGH_WATER queued bytes the stream tells its ActiveStream to stop reading the client;
response data is acknowledged when passed on, unless the client side pushed back.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, cast

import h2.events
import h2.exceptions
import h2.settings

from sidecar.http import h2_codec
from sidecar.http.h2_codec import HIGH_WATER, LOW_WATER, SendQueue, pump
from sidecar.http.h2_output import H2Output
from sidecar.http.stream import END, End, RequestHead, ResponseSink
from sidecar.outcome import ResponseFlag
from sidecar.runtime import format_address

if TYPE_CHECKING:
    from sidecar.upstream.h2_pool import Http2Pool

SOCKET_HIGH_WATER = 512 * 1024
SOCKET_LOW_WATER = 128 * 1024
DEFER_LIMIT = 64 * 1024


class UpstreamH2Stream:
    """One request on an upstream HTTP/2 connection; the upstream side of one ActiveStream."""

    __slots__ = (
        "blocked",
        "conn",
        "ended",
        "finished",
        "id",
        "local_address",
        "out",
        "paused",
        "reusable",
        "sink",
        "unacked",
    )

    def __init__(self, conn: UpstreamH2Connection) -> None:
        self.conn = conn
        self.id = 0  # assigned when the head is sent
        self.sink: ResponseSink | None = None
        self.out = SendQueue()
        self.paused = False
        self.blocked = False  # told the sink to stop sending (queue past HIGH_WATER)
        self.unacked = 0
        self.ended = False  # the response ended
        self.finished = False  # given back to the connection
        self.reusable = True  # (HTTP/1.1's notion; a stream is never reused)
        self.local_address = conn.local_address

    def bind(self, sink: ResponseSink) -> None:
        self.sink = sink

    def send_head(self, head: RequestHead) -> None:
        c = self.conn
        h2c = c.h2
        sid = h2c.get_next_available_stream_id()
        self.id = sid
        c.streams[sid] = self
        no_body = not head.has_body
        h2c.send_headers(sid, h2_codec.request_headers(head), end_stream=no_body)
        if no_body:
            self.out.end = self.out.done = True

    def send_data(self, data: bytes) -> None:
        q = self.out
        if q.done or not data:
            return
        q.chunks.append(data)
        q.queued += len(data)
        self.conn.pump(self)

    def send_end(self, end: End) -> None:
        q = self.out
        if q.done or q.end:
            return
        q.end = True
        q.trailers = end.trailers
        self.conn.pump(self)

    def flush(self) -> None:
        self.conn.flush()

    def schedule_flush(self) -> None:
        self.conn.schedule_flush()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        if self.unacked:
            n, self.unacked = self.unacked, 0
            self.conn.acknowledge(self.id, n)

    def detach(self) -> asyncio.Transport | None:
        return None  # no HTTP/1.1 upgrade on an HTTP/2 stream

    def close(self) -> None:
        """Abandon the request: cancel the stream if it is still open."""
        self.sink = None
        self.conn.stream_done(self, cancel=True)


class UpstreamH2Connection(H2Output, asyncio.Protocol):
    """One upstream HTTP/2 connection carrying many streams."""

    def __init__(self, pool: Http2Pool) -> None:
        self.pool = pool
        self.counters = pool.counters
        self.h2 = h2_codec.new_connection(client=True)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, UpstreamH2Stream] = {}
        self.in_use = 0  # streams handed out and not yet done
        self.opened = 0  # streams handed out over the connection's life
        self.closed = False
        self.goaway = False
        self.idle_since = 0.0
        self.local_address = "-"
        self.loop = asyncio.get_running_loop()
        self._write_paused = False
        self._flush_pending = False
        self._touched: set[ResponseSink] = set()  # sinks that got events in this read

    # capacity --------------------------------------------------------------------------------

    def has_room(self) -> bool:
        if self.closed or self.goaway:
            return False
        max_rq = self.pool.cluster.max_requests_per_connection
        if max_rq and self.opened >= max_rq:
            return False
        return self.in_use < self.h2.remote_settings.max_concurrent_streams

    def new_stream(self) -> UpstreamH2Stream:
        self.in_use += 1
        self.opened += 1
        return UpstreamH2Stream(self)

    # asyncio callbacks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=SOCKET_HIGH_WATER, low=SOCKET_LOW_WATER)
        sockname = transport.get_extra_info("sockname")
        if sockname:
            self.local_address = format_address(sockname[0], sockname[1])
        c = self.counters
        c.upstream_cx_total += 1
        c.upstream_cx_active += 1
        self.flush()  # the client preface and SETTINGS

    def data_received(self, data: bytes) -> None:
        self.counters.upstream_cx_rx_bytes_total += len(data)
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._fail_all(ResponseFlag.UPE)
            self.close()
            return
        touched = self._touched
        streams = self.streams
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                self._on_data(ev)
                continue
            sid = getattr(ev, "stream_id", 0)
            if not sid:
                self._on_connection_event(ev)
                continue
            s = streams.get(sid)
            sink = s.sink if s is not None else None
            if s is None or sink is None:
                continue
            if isinstance(ev, h2.events.ResponseReceived):
                touched.add(sink)
                head = h2_codec.response_head(ev.headers, ev.stream_ended is not None)
                sink.on_response_head(head)
            elif isinstance(ev, h2.events.TrailersReceived):
                touched.add(sink)
                self._end(s, End(list(ev.headers)))
            elif isinstance(ev, h2.events.StreamEnded):
                touched.add(sink)
                self._end(s, END)
            elif isinstance(ev, h2.events.WindowUpdated):
                self.pump(s)
            elif isinstance(ev, h2.events.StreamReset):
                code = ev.error_code
                flag = ResponseFlag.UPE if code == h2_codec.PROTOCOL_ERROR else ResponseFlag.UR
                self._reset(s, flag, refused=code == h2_codec.REFUSED_STREAM)
        for sink in touched:
            sink.on_batch_end()  # (also for streams that ended in this read)
        touched.clear()
        self.schedule_flush()

    def _on_data(self, ev: h2.events.DataReceived) -> None:
        sid = ev.stream_id
        size = ev.flow_controlled_length or 0
        s = self.streams.get(sid) if sid is not None else None
        sink = s.sink if s is not None else None
        if s is None or sink is None:
            if size and sid is not None:
                self.h2.acknowledge_received_data(size, sid)  # nobody wants it: free the window
            return
        self._touched.add(sink)
        if ev.data:
            sink.on_response_data(ev.data)
        if s.paused:
            s.unacked += size
        elif size:
            self.h2.acknowledge_received_data(size, s.id)

    def _on_connection_event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.WindowUpdated):
            self._pump_all()
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                self._pump_all()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._on_goaway(ev.last_stream_id, ev.error_code or 0)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(ResponseFlag.UC)
        self._count_closed()

    def _count_closed(self) -> None:
        if self.transport is not None:
            c = self.counters
            c.upstream_cx_active -= 1
            c.upstream_cx_destroy += 1
            self.transport = None
        self.pool.forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._pump_all()

    # streams ---------------------------------------------------------------------------------

    def _end(self, s: UpstreamH2Stream, end: End) -> None:
        if s.ended:
            return
        s.ended = True
        sink = s.sink
        if sink is not None:
            sink.on_response_end(end)

    def _reset(self, s: UpstreamH2Stream, flag: ResponseFlag, refused: bool = False) -> None:
        sink = s.sink
        s.sink = None
        self.streams.pop(s.id, None)
        s.out.done = True
        self.stream_done(s, cancel=False)  # (first: a retry must not pick this stream's slot)
        if sink is not None and not s.ended:
            if refused:
                sink.on_upstream_refused()
            else:
                sink.on_upstream_reset(flag)

    def _fail_all(self, flag: ResponseFlag) -> None:
        for s in list(self.streams.values()):
            self._reset(s, flag)

    def _on_goaway(self, last_stream_id: int | None, error_code: int) -> None:
        self.goaway = True
        last = last_stream_id if last_stream_id is not None else 0
        for sid, s in list(self.streams.items()):
            if sid > last:
                self._reset(s, ResponseFlag.UR, refused=True)  # never processed: retry
        if not self.in_use:
            self.close()

    def pump(self, s: UpstreamH2Stream) -> None:
        q = s.out
        sent = 0
        if not self._write_paused and s.id:
            sent = pump(self.h2, s.id, q)
        sink = s.sink
        if sink is not None:
            if q.queued > HIGH_WATER and not s.blocked:
                s.blocked = True
                sink.on_upstream_write_paused()
            elif s.blocked and q.queued < LOW_WATER:
                s.blocked = False
                sink.on_upstream_write_resumed()
        if sent:
            self.counters.upstream_cx_tx_bytes_total += sent
            if sent > DEFER_LIMIT:
                self.flush()
                return
        self.schedule_flush()

    def _pump_all(self) -> None:
        for s in list(self.streams.values()):
            if s.out.chunks or (s.out.end and not s.out.done):
                self.pump(s)

    def acknowledge(self, stream_id: int, size: int) -> None:
        self.h2.acknowledge_received_data(size, stream_id)
        self.schedule_flush()

    def stream_done(self, s: UpstreamH2Stream, cancel: bool) -> None:
        """A stream's exchange is over; an unfinished one is cancelled (RST_STREAM CANCEL)."""
        if s.finished:
            return
        s.finished = True
        s.sink = None
        self.in_use -= 1
        if s.id:
            self.streams.pop(s.id, None)
            if cancel and not (s.ended and s.out.done) and not self.closed:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.h2.reset_stream(s.id, h2_codec.CANCEL)
                self.schedule_flush()
            elif s.unacked:
                self.h2.acknowledge_received_data(s.unacked, s.id)
        if not self.in_use:
            self.idle_since = self.loop.time()
            max_rq = self.pool.cluster.max_requests_per_connection
            if self.goaway or self.pool.closed or (max_rq and self.opened >= max_rq):
                self.close()

    # output ----------------------------------------------------------------------------------

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if not self.closed:
                self.h2.close_connection()
                self.flush()
            self.transport.close()
        self.closed = True
