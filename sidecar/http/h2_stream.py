"""One downstream HTTP/2 stream, seen by its ActiveStream as the connection it talks to.

Theory of operation: an `ActiveStream` is written against `DownstreamConn` (active_stream.py):
send a head, data, an end; pause and resume reading; reset. On HTTP/1.1 that is the connection.
On HTTP/2 each stream gets an `H2DownstreamStream` that does the same on its stream id, through
the connection manager's h2 state machine (h2_connection.py):

- The response head is held until the next thing is known: if the end follows in the same batch
  with no data, head and end go out as one HEADERS frame with END_STREAM. That keeps a gRPC
  trailers-only response trailers-only, which gRPC clients require.
- Response data waits in the stream's SendQueue for flow-control window. Past HIGH_WATER queued
  bytes the stream reports `write_paused` to its ActiveStream, which stops reading the upstream;
  below LOW_WATER it resumes.
- "Pause reading" on HTTP/2 means: stop granting window for this stream. Data already received is
  passed on, but its WINDOW_UPDATE is held back until reading resumes, so the client can have at
  most one stream window of data in flight towards a slow upstream.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sidecar.http import grpc, h2_codec
from sidecar.http.h2_codec import SendQueue
from sidecar.http.stream import End, Headers, ResponseHead

if TYPE_CHECKING:
    from sidecar.http.active_stream import ActiveStream
    from sidecar.http.h2_connection import H2ConnectionManagerProtocol


class H2DownstreamStream:
    """The DownstreamConn of one HTTP/2 stream's ActiveStream."""

    __slots__ = (
        "active",
        "closed",
        "downstream",
        "id",
        "last_progress",
        "manager",
        "out",
        "pending_head",
        "read_paused",
        "remote_ip",
        "request_ended",
        "reset_when_sent",
        "runtime",
        "table",
        "unacked",
        "write_paused",
    )

    def __init__(self, manager: H2ConnectionManagerProtocol, stream_id: int) -> None:
        self.manager = manager
        self.runtime = manager.runtime
        self.downstream = manager.downstream
        self.table = manager.table
        self.remote_ip = manager.remote_ip
        self.id = stream_id
        self.active: ActiveStream | None = None
        self.out = SendQueue()
        self.pending_head: ResponseHead | None = None
        self.read_paused = 0
        self.unacked = 0  # received bytes not yet acknowledged (window held back)
        self.write_paused = False
        self.request_ended = False
        self.reset_when_sent = False  # answered before the request ended: RST_STREAM after
        self.closed = False  # reset (either side) or fully sent: nothing more goes out
        self.last_progress = manager.loop.time()

    # what the ActiveStream calls -------------------------------------------------------------

    def send_head(self, stream: ActiveStream, head: ResponseHead) -> None:
        self.pending_head = head  # sent with what follows, or at the end of this batch

    def _emit_head(self, end_stream: bool) -> None:
        head = self.pending_head
        self.pending_head = None
        if head is not None and not self.closed:
            self.manager.h2.send_headers(self.id, h2_codec.response_headers(head), end_stream)

    def send_data(self, data: bytes) -> None:
        if self.pending_head is not None:
            self._emit_head(False)
        if not data or self.closed:
            return
        q = self.out
        q.chunks.append(data)
        q.queued += len(data)
        self.manager.pump(self)

    def send_end(self, end: End) -> None:
        q = self.out
        if self.pending_head is not None:
            if end.trailers is None and not q.chunks:
                self._emit_head(True)  # a whole response in one HEADERS frame
                q.done = q.end = True
                self.manager.stream_sent(self)
                return
            self._emit_head(False)
        q.end = True
        q.trailers = end.trailers
        self.manager.pump(self)

    def send_continue(self) -> None:
        self.manager.h2.send_headers(self.id, [(b":status", b"100")])

    def flush(self) -> None:
        self.schedule_flush()

    def schedule_flush(self) -> None:
        if self.pending_head is not None:
            self._emit_head(False)
        self.manager.schedule_flush()

    def send_local_reply(self, stream: ActiveStream, status: int, body: bytes,
                         headers: Headers | None = None) -> None:
        if self.closed:
            return
        self.pending_head = None
        h2 = self.manager.h2
        given = grpc.status_of(headers)
        if stream.head.grpc or given is not None:
            if given is None:
                code = grpc.status_for_failure(status, stream.info.response_flags)
                stream.info.grpc_status = code
                fields = [(b":status", b"200"), *grpc.local_reply_headers(code, body)]
            else:  # already a gRPC answer (fault abort with a grpc status): trailers-only
                fields = [(b":status", b"%d" % status), *[(n.lower(), v) for n, v in headers or ()]]
            h2.send_headers(self.id, fields, end_stream=True)
            self.out.done = self.out.end = True
            self.manager.stream_sent(self)
            return
        fields = [
            (b":status", b"%d" % status),
            (b"content-length", b"%d" % len(body)),
            (b"server", b"envoy"),
        ]
        if body:
            fields.append((b"content-type", b"text/plain"))
        if headers:
            fields += [(n.lower(), v) for n, v in headers]
        head_only = stream.head.method == b"HEAD" or not body
        h2.send_headers(self.id, fields, end_stream=head_only)
        if head_only:
            self.out.done = self.out.end = True
            self.manager.stream_sent(self)
            return
        q = self.out
        q.chunks.append(body)
        q.queued += len(body)
        q.end = True
        self.manager.pump(self)

    def reset(self) -> None:
        """Failure after the response started: reset this stream only."""
        self.manager.reset_stream(self, h2_codec.INTERNAL_ERROR)

    def pause_reading(self, reason: int) -> None:
        self.read_paused |= reason

    def resume_reading(self, reason: int) -> None:
        if self.read_paused & reason:
            self.read_paused &= ~reason
            if not self.read_paused and self.unacked:
                n, self.unacked = self.unacked, 0
                self.manager.acknowledge(self.id, n)

    def stream_complete(self, stream: ActiveStream) -> None:
        self.manager.stream_complete(self)

    def switch_to_relay(self, stream: ActiveStream, upstream: asyncio.Transport,
                        tail: bytes) -> None:
        # An HTTP/1.1 upgrade cannot continue on an HTTP/2 stream (that is extended CONNECT).
        upstream.close()
        self.reset()

    # what the connection manager calls -------------------------------------------------------

    def writable(self) -> None:
        """The queue went below LOW_WATER: let the upstream send again."""
        if self.write_paused:
            self.write_paused = False
            if self.active is not None:
                self.active.on_downstream_write_resumed()

    def congested(self) -> None:
        """The queue passed HIGH_WATER: stop reading the upstream."""
        if not self.write_paused:
            self.write_paused = True
            if self.active is not None:
                self.active.on_downstream_write_paused()

