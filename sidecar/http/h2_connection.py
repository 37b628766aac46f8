"""The HTTP connection manager for HTTP/2 downstream connections (h2c and h2 by ALPN).

Theory of operation: bytes go into one `h2.H2Connection` (server side, settings from h2_codec);
its events are dispatched per stream. A new stream's request head gets an `H2DownstreamStream`
(h2_stream.py) and an `ActiveStream`, the same exchange class HTTP/1.1 uses, so routing,
upstream choice and failures are shared; many streams run at once, each independent of the
others. Output (frames from every stream) is written once per event-loop turn.

Flow control end to end: request DATA is acknowledged as soon as it was passed on, unless the
stream's upstream pushed back, in which case the window update waits (h2_stream.py). Response
data goes out as the client's windows allow; while our socket's write buffer is full nothing more
is framed. Each stream's queue is bounded by back-pressure on its upstream, and a stream that
makes no progress for `stream_idle_timeout` is reset, so a client holding windows at zero costs
bounded memory for bounded time.

Closing: GOAWAY is written by hand for a graceful close (drain), so streams already open finish
(h2's own close_connection would refuse any further frame); new streams after it are refused
with REFUSED_STREAM. A protocol error is a connection error: h2 has queued GOAWAY with the code,
it is flushed and the socket closed. RST_STREAM from the client ends that stream's exchange (its
upstream request is cancelled: DC).

Protection against the known HTTP/2 attacks: h2_guard.py counts, this module answers (GOAWAY
ENHANCE_YOUR_CALM, then close).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

import h2.events
import h2.exceptions
import h2.settings

from sidecar.config.snapshot import HttpConnectionManager
from sidecar.http import h2_codec
from sidecar.http.active_stream import ActiveStream
from sidecar.http.h2_codec import ENHANCE_YOUR_CALM, HIGH_WATER, LOW_WATER, pump
from sidecar.http.h2_guard import AbuseGuard
from sidecar.http.h2_output import H2Output
from sidecar.http.h2_stream import H2DownstreamStream
from sidecar.http.stream import END, End
from sidecar.http.stream_info import HttpConnectionBase, describe_request
from sidecar.outcome import ResponseFlag
from sidecar.runtime import Downstream, Runtime

SOCKET_HIGH_WATER = 512 * 1024
SOCKET_LOW_WATER = 128 * 1024
DEFER_LIMIT = 64 * 1024  # framed bytes held for the next turn's write; more go out at once
PREFACE_CHECK = 24 + 9  # the magic and the first frame header
SETTINGS_TYPE = 0x4
LINGER_SECONDS = 1.0  # Envoy's delayed_close_timeout


class H2ConnectionManagerProtocol(HttpConnectionBase, H2Output, asyncio.Protocol):
    """One downstream HTTP/2 connection: many streams, each an ActiveStream."""

    def __init__(self, runtime: Runtime, downstream: Downstream, config: HttpConnectionManager):
        HttpConnectionBase.__init__(self, runtime, downstream, config)
        self.loop = asyncio.get_running_loop()
        self.h2 = h2_codec.new_connection(client=False)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2DownstreamStream] = {}
        self._write_paused = False
        self._flush_pending = False
        self._closed = False
        self._goaway_id: int | None = None  # last stream id of our graceful GOAWAY
        self._peer_goaway = False
        self._guard = AbuseGuard()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._preface = b""  # the client's first bytes until its first frame header is seen
        self._preface_checked = False
        self._touched: set[H2DownstreamStream] = set()  # streams that got request events

    # asyncio callbacks -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport
        self.transport.set_write_buffer_limits(high=SOCKET_HIGH_WATER, low=SOCKET_LOW_WATER)
        self.runtime.connection_opened(self)
        self.flush()  # our preface: SETTINGS and the connection window

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if not self._preface_checked and not self._check_preface(data):
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._connection_error()
            return
        touched = self._touched
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                self._on_data(ev)
            elif isinstance(ev, h2.events.RequestReceived):
                self._on_request(ev)
            elif isinstance(ev, h2.events.StreamEnded):
                self._on_end(ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                self._on_trailers(ev)
            elif isinstance(ev, h2.events.WindowUpdated):
                self._on_window(ev.stream_id or 0)
            elif isinstance(ev, h2.events.StreamReset):
                self._on_reset(ev)
            elif isinstance(ev, (h2.events.PingReceived, h2.events.RemoteSettingsChanged)):
                self._on_control(ev)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._peer_goaway = True
            if self._gone():
                touched.clear()
                return  # a connection error or GOAWAY ended it
        for s in touched:
            if s.active is not None and not s.active.done:
                s.active.flush()  # the request events of this read go upstream together
        touched.clear()
        self.schedule_flush()
        if self._peer_goaway and not self.streams:
            self._close()

    def _check_preface(self, data: bytes) -> bool:
        """RFC 9113 section 3.4: the client preface is the magic, then a SETTINGS frame (h2
        checks only the magic)."""
        head = self._preface = self._preface + data
        if len(head) < PREFACE_CHECK:
            return True
        self._preface_checked = True
        self._preface = b""
        if head[PREFACE_CHECK - 6] == SETTINGS_TYPE:
            return True
        self.flush()
        if self.transport is not None:
            self.transport.write(h2_codec.goaway(0, h2_codec.PROTOCOL_ERROR))
        self._connection_error()
        return False

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        streams = list(self.streams.values())
        self.streams.clear()
        for s in streams:
            s.closed = True
            if s.active is not None:
                s.active.on_downstream_reset(None)
        self.runtime.connection_closed(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for s in list(self.streams.values()):
            if s.out.chunks or (s.out.end and not s.out.done):
                self.pump(s)
        self.schedule_flush()

    # Drainable ---------------------------------------------------------------------------------

    def drain(self) -> None:
        if self._goaway_id is not None or self._closed:
            return
        self._goaway_id = self.h2.highest_inbound_stream_id
        self.flush()
        if self.transport is not None:
            self.transport.write(h2_codec.goaway(self._goaway_id))
        if not self.streams:
            self._close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # events ------------------------------------------------------------------------------------

    def _on_request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        ended = ev.stream_ended is not None
        if self._goaway_id is not None and sid > self._goaway_id:
            self.h2.reset_stream(sid, h2_codec.REFUSED_STREAM)
            return
        self._guard.streams += 1
        head = h2_codec.request_head(ev.headers, ended)
        s = H2DownstreamStream(self, sid)
        s.request_ended = ended
        self.streams[sid] = s
        info = self.labels.new_info(self.runtime)
        describe_request(info, head, "HTTP/2")
        active = ActiveStream(s, head, info)
        s.active = active
        self._touched.add(s)
        active.start()
        if ended and not active.done:
            active.on_request_end(END)
        self._arm_idle_timer()

    def _on_data(self, ev: h2.events.DataReceived) -> None:
        sid = ev.stream_id
        size = ev.flow_controlled_length
        data = ev.data
        s = self.streams.get(sid)
        if self._guard.data_frame(not data and ev.stream_ended is None):
            self._calm()
            return
        if s is None or s.active is None or s.active.done:
            if size:
                self.h2.acknowledge_received_data(size, sid)  # the stream is gone: free the window
            return
        s.last_progress = self.loop.time()
        self._touched.add(s)
        if data:
            s.active.on_request_data(data)
        if s.read_paused:
            s.unacked += size
        elif size:
            self.h2.acknowledge_received_data(size, sid)

    def _on_trailers(self, ev: h2.events.TrailersReceived) -> None:
        self._on_end(ev.stream_id, End(list(ev.headers)))

    def _on_end(self, stream_id: int | None, end: End = END) -> None:
        s = self.streams.get(stream_id or 0)
        if s is not None and not s.request_ended:
            s.request_ended = True
            self._touched.add(s)
            if s.active is not None:
                s.active.on_request_end(end)

    def _on_window(self, stream_id: int) -> None:
        if stream_id:
            s = self.streams.get(stream_id)
            if s is not None:
                self.pump(s)
            return
        for s in list(self.streams.values()):
            if s.out.chunks:
                self.pump(s)

    def _on_reset(self, ev: h2.events.StreamReset) -> None:
        s = self.streams.pop(ev.stream_id, None)
        if s is None:
            return
        s.closed = True
        active = s.active
        premature = False
        if active is not None and not active.done:
            premature = not active.response_started
            active.on_downstream_reset(None)
        if self._guard.stream_reset(premature):
            self._calm()  # rapid reset (CVE-2023-44487)

    def _on_control(self, ev: object) -> None:
        if self._guard.control_frame(self.loop.time(), self._write_paused):
            self._calm()
            return
        if type(ev) is h2.events.RemoteSettingsChanged:
            changed = ev.changed_settings
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in changed:
                self._on_window(0)

    # what the streams call ---------------------------------------------------------------------

    def pump(self, s: H2DownstreamStream) -> None:
        """Frame as much of the stream's queue as the windows allow."""
        if self._write_paused or s.closed:
            return
        q = s.out
        sent = pump(self.h2, s.id, q)
        if sent:
            s.last_progress = self.loop.time()
        if q.queued > HIGH_WATER:
            s.congested()
        elif s.write_paused and q.queued < LOW_WATER:
            s.writable()
        if q.done:
            self.stream_sent(s)
        if sent > DEFER_LIMIT:
            self.flush()
        else:
            self.schedule_flush()

    def stream_sent(self, s: H2DownstreamStream) -> None:
        """The response's END_STREAM was framed."""
        active = s.active
        if active is None or active.done:
            self._sent(s)

    def stream_complete(self, s: H2DownstreamStream) -> None:
        """The stream's exchange is over (ActiveStream completed)."""
        if s.closed:
            self._forget(s)
            return
        q = s.out
        if not q.end:  # over without a whole response (it would have been reset): cancel
            self.reset_stream(s, h2_codec.CANCEL)
            return
        if not s.request_ended:
            # Answered before the request ended: once the response is out, RST_STREAM
            # NO_ERROR tells the client to stop sending (RFC 9113 section 8.1).
            s.request_ended = True
            s.reset_when_sent = True
        if q.done:
            self._sent(s)
        # else: the queue still drains; pump finishes the stream once END_STREAM is out

    def _sent(self, s: H2DownstreamStream) -> None:
        if s.reset_when_sent:
            self.reset_stream(s, h2_codec.NO_ERROR)
        else:
            self._forget(s)

    def reset_stream(self, s: H2DownstreamStream, code: int) -> None:
        if not s.closed:
            s.closed = True
            s.out.chunks.clear()
            s.out.queued = 0
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.reset_stream(s.id, code)
            self.schedule_flush()
        self._forget(s)

    def _forget(self, s: H2DownstreamStream) -> None:
        self.streams.pop(s.id, None)
        s.closed = True
        if s.unacked:
            self.h2.acknowledge_received_data(s.unacked, s.id)  # give the connection window back
            s.unacked = 0
        if not self.streams and (self._goaway_id is not None or self._peer_goaway):
            self._close()

    def acknowledge(self, stream_id: int, size: int) -> None:
        self.h2.acknowledge_received_data(size, stream_id)
        self.schedule_flush()

    # output ------------------------------------------------------------------------------------

    def _writable(self) -> bool:
        return not self._closed and super()._writable()

    # closing -----------------------------------------------------------------------------------

    def _connection_error(self) -> None:
        """h2 found a connection error and queued GOAWAY with its code: send it and close."""
        self.runtime.counters.downstream_cx_protocol_error += 1
        self._close()

    def _calm(self) -> None:
        """An abusive peer: GOAWAY ENHANCE_YOUR_CALM, then close."""
        self.runtime.counters.downstream_cx_protocol_error += 1
        self.flush()
        if self.transport is not None and not self._closed:
            self.transport.write(
                h2_codec.goaway(self.h2.highest_inbound_stream_id, ENHANCE_YOUR_CALM)
            )
        self._close()
        for s in list(self.streams.values()):
            if s.active is not None and not s.active.done:
                s.active.info.response_flags |= ResponseFlag.DPE
        self._abort_streams()

    def _abort_streams(self) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        for s in streams:
            s.closed = True
            if s.active is not None and not s.active.done:
                s.active.on_downstream_reset(None)

    def _gone(self) -> bool:
        return self._closed

    def _close(self) -> None:
        """Send what is queued (a GOAWAY last), half-close, and discard input for a while:
        closing with unread input would reset the connection and lose the GOAWAY."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        t = self.transport
        if t is None:
            return
        if t.can_write_eof():
            t.write_eof()
            self._linger = self.loop.call_later(LINGER_SECONDS, t.close)
        else:
            t.close()

    # stream idle timeout -----------------------------------------------------------------------

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is None and not self._closed:
            timeout = self.config.stream_idle_timeout
            if timeout > 0:
                self._idle_timer = self.loop.call_later(min(timeout, 1.0), self._sweep_idle)

    def _sweep_idle(self) -> None:
        self._idle_timer = None
        timeout = self.config.stream_idle_timeout
        limit = self.loop.time() - timeout
        for s in list(self.streams.values()):
            if s.last_progress >= limit:
                continue
            active = s.active
            waiting_on_client = s.out.queued > 0 or (not s.request_ended and active is not None
                                                     and active.response_started)
            if not waiting_on_client:
                continue
            if active is not None and not active.done:
                active.info.response_flags |= ResponseFlag.SI
                self.reset_stream(s, h2_codec.CANCEL)
                active.on_downstream_reset(None)
            else:
                self.reset_stream(s, h2_codec.CANCEL)
        self.schedule_flush()
        if self.streams:
            self._arm_idle_timer()
