"""The HTTP connection manager for HTTP/1.1 downstream connections (Envoy's HCM, L7 filter).

Theory of operation: the listener hands an accepted connection to `HttpConnectionManagerProtocol`.
Bytes go through the sans-I/O codec (h1.py); its events (request head, body chunks, end, or a
protocol error) go into one queue and `_pump` feeds them, in order, to the `ActiveStream` of the
request in flight. A new request head waits in the queue until the previous exchange completed:
pipelined requests are answered in order. The queue is bounded (reading pauses past
PIPELINE_LIMIT bytes). The common read, one whole request without body while nothing is queued
or in flight, skips the queue (`_pump_one`: the same steps as `_pump` for those two events).

Writes are corked and coalesced: what handling a read produces for the client (ours or the
upstream's) is queued and sent with one `writelines` at the start of the next event-loop turn
(`schedule_flush`), after every socket that was ready in this turn has been read; the upstream
connection does the same for requests. With many connections, one turn's writes then go out
back to back and the peers (client, upstream) are woken once for a burst instead of once per
request, which costs less CPU on both sides than the extra loop callback. Bulk body data (more than
DEFER_LIMIT bytes) is written at once, so that a full socket buffer still pauses the reader
before the next read; closing, upgrading and resetting write or drop synchronously. Reading the
client pauses for any of several reasons
(bits): the upstream's write buffer is full, request body is waiting for an upstream connection,
the pipeline queue is full, our own write buffer is full, or an upgrade is pending; it resumes when
none remain. Our own write buffer filling up pauses reading the upstream (via the stream).

Closing: after a response with `connection: close` (client asked, HTTP/1.0, drain, protocol error,
unread request body) the connection half-closes (write EOF after the buffered bytes) and reads and
discards until the client closes or LINGER_SECONDS pass, so unread client data never turns the
close into a reset. On a 101 from the upstream both sockets become a byte relay (tcp/relay.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

from sidecar.config.snapshot import HttpConnectionManager
from sidecar.errors import ProtocolError
from sidecar.http import local_reply
from sidecar.http.active_stream import ActiveStream
from sidecar.http.coalesce import CoalescedWrites
from sidecar.http.h1 import H1ServerCodec
from sidecar.http.h1_encode import chunk, encode_response_head, last_chunk
from sidecar.http.stream import End, Headers, RequestEvent, RequestHead, ResponseHead
from sidecar.http.stream_info import HttpConnectionBase, describe_request, finish_request
from sidecar.outcome import ResponseFlag
from sidecar.runtime import Downstream, Runtime
from sidecar.tcp.relay import Relay, splice

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
PIPELINE_LIMIT = 64 * 1024  # bytes of queued pipelined requests before reading pauses
UPGRADE_LIMIT = 64 * 1024  # client bytes held while an upgrade waits for the 101
LINGER_SECONDS = 1.0  # Envoy's delayed_close_timeout
PAUSE_PIPELINE = 4
PAUSE_WRITE = 8
PAUSE_UPGRADE = 16
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HttpConnectionManagerProtocol(HttpConnectionBase, CoalescedWrites, asyncio.Protocol):
    """One downstream HTTP/1.1 connection: parse, route, proxy, answer in order."""

    def __init__(self, runtime: Runtime, downstream: Downstream, config: HttpConnectionManager):
        HttpConnectionBase.__init__(self, runtime, downstream, config)
        self.codec = H1ServerCodec()
        self.transport: asyncio.Transport | None = None
        self.stream: ActiveStream | None = None
        self.write_paused = False
        self._queue: deque[RequestEvent | ProtocolError] = deque()
        self._queued = 0
        self._paused = 0
        self._pumping = False
        self._out: list[bytes] = []
        self._chunked = False
        self._close_after = False
        self._draining = False
        self._lingering = False
        self._closed = False
        self._linger: asyncio.TimerHandle | None = None
        self._held: list[bytes] | None = None  # client bytes after an upgrade request
        self._held_bytes = 0
        self._relay: Relay | None = None
        self._out_bytes = 0  # body bytes in _out
        self._flush_pending = False
        self._loop = asyncio.get_running_loop()
        self._https = downstream.listener.tls is not None  # RequestHead.scheme

    # asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self.runtime.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        codec = self.codec
        if codec.upgraded:
            self._hold(data)
            return
        events = codec.feed(data)
        q = self._queue
        if (
            len(events) == 2
            and not q
            and self.stream is None
            and type(events[1]) is End
            and codec.error is None
            and codec.upgrade_tail is None
        ):
            self._pump_one(events[0], events[1])  # a whole request without body: the common case
            if self._out:
                self.schedule_flush()
            return
        if q:
            self._queued += len(data)
        q.extend(events)
        if codec.error is not None:
            q.append(codec.error)
        if codec.upgrade_tail is not None:
            self._held = []
            self._hold(codec.upgrade_tail)
        self._pump()
        if q and self._queued > PIPELINE_LIMIT:
            self.pause_reading(PAUSE_PIPELINE)
        if self._out:
            self.schedule_flush()

    def eof_received(self) -> bool:
        stream = self.stream
        if stream is None or self._lingering or not stream.request_done:
            return False  # close; connection_lost resets an unfinished request (DC)
        self._close_after = True  # the request is whole: answer it, then close
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._queue.clear()
        stream = self.stream
        if stream is not None:
            self.stream = None
            stream.on_downstream_reset(None)
        self.runtime.connection_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.pause_reading(PAUSE_WRITE)
        if self.stream is not None:
            self.stream.on_downstream_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.resume_reading(PAUSE_WRITE)
        if self.stream is not None:
            self.stream.on_downstream_write_resumed()

    # Drainable -----------------------------------------------------------------------------

    def drain(self) -> None:
        self._draining = True
        if self.stream is None and self._relay is None:
            self._close_gracefully()

    def abort(self) -> None:
        if self._relay is not None:
            self._relay.close()
        elif self.transport is not None:
            self.transport.abort()

    # request dispatch ----------------------------------------------------------------------

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        q = self._queue
        while q and not self._lingering:
            ev = q[0]
            t = type(ev)
            stream = self.stream
            if t is RequestHead:
                if stream is not None or self._close_after:
                    break
                q.popleft()
                self._start(ev)  # type: ignore[arg-type]
            elif t is bytes:
                q.popleft()
                if stream is not None:
                    stream.on_request_data(ev)  # type: ignore[arg-type]
            elif t is End:
                q.popleft()
                if stream is not None:
                    stream.on_request_end(ev)  # type: ignore[arg-type]
            else:
                if stream is not None and stream.request_done:
                    break  # the error belongs to a later request: answer the current one first
                q.popleft()
                self._protocol_error(ev)  # type: ignore[arg-type]
        if self.stream is not None:
            self.stream.flush()
        self._pumping = False
        if not q:
            self._queued = 0
            if self._paused & PAUSE_PIPELINE:
                self.resume_reading(PAUSE_PIPELINE)

    def _pump_one(self, head: RequestEvent, end: RequestEvent) -> None:
        """`_pump` for the events [head, end] arriving with no stream and an empty queue."""
        if self._pumping or self._close_after or type(head) is not RequestHead:
            self._queue.extend((head, end))
            self._pump()
            return
        self._pumping = True
        self._start(head)
        stream = self.stream
        if stream is not None and not self._lingering:
            stream.on_request_end(end)  # type: ignore[arg-type]
        if self.stream is not None:
            self.stream.flush()
        self._pumping = False

    def _start(self, head: RequestHead) -> None:
        info = self.labels.new_info(self.runtime)
        describe_request(info, head, "HTTP/1.1" if head.version == "1.1" else "HTTP/1.0")
        if self._https:
            head.scheme = b"https"
        stream = ActiveStream(self, head, info)
        self.stream = stream
        stream.start()

    def _protocol_error(self, err: ProtocolError) -> None:
        self.runtime.counters.downstream_cx_protocol_error += 1
        self._close_after = True
        stream = self.stream
        if stream is not None:
            stream.on_downstream_reset(err.status)
            return
        info = self.labels.new_info(self.runtime)
        info.response_code = err.status
        info.response_flags = ResponseFlag.DPE
        info.response_code_details = err.reason
        body = local_reply.reason_phrase(err.status)
        info.bytes_sent = len(body)
        self._out.append(local_reply.render(err.status, body, close=True))
        finish_request(self.runtime, info)
        self._close_gracefully()

    def _hold(self, data: bytes) -> None:
        if self._held is None or not data:
            return
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > UPGRADE_LIMIT:
            self.pause_reading(PAUSE_UPGRADE)

    # what the stream calls (DownstreamConn) ------------------------------------------------

    def send_head(self, stream: ActiveStream, head: ResponseHead) -> None:
        req = stream.head
        status = head.status
        close = self._close_after or self._draining or not req.keep_alive or req.version != "1.1"
        if status == 101:
            close = False
        elif req.upgrade is not None:
            close = True  # the client may already be speaking the new protocol
        chunked = False
        if head.content_length < 0 and not (req.method == b"HEAD" or status in (101, 204, 304)):
            chunked = req.version == "1.1"  # HTTP/1.0: delimited by the close
        self._chunked = chunked
        if close:
            self._close_after = True
        self._out.append(encode_response_head(head, chunked, close))

    def send_data(self, data: bytes) -> None:
        self._out_bytes += len(data)
        if self._chunked:
            if data:
                self._out += chunk(data)
        else:
            self._out.append(data)

    def send_end(self, end: End) -> None:
        if self._chunked:
            self._out.append(last_chunk(end.trailers))
            self._chunked = False

    def send_continue(self) -> None:
        self._out.append(CONTINUE)

    def send_local_reply(self, stream: ActiveStream, status: int, body: bytes,
                         headers: Headers | None = None) -> None:
        req = stream.head
        close = (
            self._close_after
            or self._draining
            or not req.keep_alive
            or req.version != "1.1"
            or req.upgrade is not None
            or (not stream.request_done and req.has_body)  # unread body: do not parse it
        )
        if close:
            self._close_after = True
        self._out.append(local_reply.render(status, body, close, req.method == b"HEAD", headers))

    def _writable(self) -> bool:
        return self.transport is not None and not self._closed

    def reset(self) -> None:
        """Reset the client connection (failure after the response head was sent)."""
        self._out = []
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self, reason: int) -> None:
        if not self._paused and self.transport is not None and not self._closed:
            self.transport.pause_reading()
        self._paused |= reason

    def resume_reading(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and self.transport is not None and not self._closed:
                self.transport.resume_reading()

    def stream_complete(self, stream: ActiveStream) -> None:
        if self.stream is not stream:
            return
        self.stream = None
        if self._paused & 3:  # PAUSE_UPSTREAM | PAUSE_BUFFER belonged to that stream
            self.resume_reading(3)
        if self._closed:
            return
        if self._close_after or self._draining:
            self._close_gracefully()
            return
        if self._queue:
            self._pump()

    def switch_to_relay(self, stream: ActiveStream, upstream: asyncio.Transport,
                        tail: bytes) -> None:
        assert self.transport is not None
        self.flush()
        held = b"".join(self._held or ())
        self._held = None

        def closed(relay: Relay, exc: Exception | None) -> None:
            self._closed = True
            self.stream = None
            stream.relay_closed(relay.a_to_b, relay.b_to_a)
            self.runtime.connection_closed(self)

        self._relay = splice(self.transport, upstream, on_close=closed, a_pending=held,
                             b_pending=tail)

    # closing -------------------------------------------------------------------------------

    def _close_gracefully(self) -> None:
        """Send what is buffered, half-close, then discard input until EOF or the linger time."""
        transport = self.transport
        if transport is None or self._closed or self._lingering:
            return
        self.flush()
        self._lingering = True
        self._queue.clear()
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self._paused:
            self._paused = 0
            transport.resume_reading()
        loop = asyncio.get_running_loop()
        self._linger = loop.call_later(LINGER_SECONDS, self._close_transport)

    def _close_transport(self) -> None:
        self._linger = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
