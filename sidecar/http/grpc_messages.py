"""Counting gRPC messages as a call's body passes through (istio_request/response_messages_total).

Theory of operation: a gRPC body is a sequence of length-prefixed messages, each a 5-byte prefix
(one flag byte, then the message length as 4 bytes big-endian) followed by that many bytes. The
proxy never buffers bodies, so a `MessageCounter` walks each DATA chunk as it is forwarded and
keeps only what a chunk boundary interrupts: how many body bytes of the current message are
still to come (`_skip`), or the first bytes of a prefix split over chunks (`_head`). A chunk
that lies entirely inside one message costs one comparison; a chunk holding many messages costs
one step per message. As Envoy's gRPC frame inspector does, a message counts when its first byte
(the flag) is seen, so a call cut short still counts the message it was sending. Frames with the
flag's high bit set (gRPC-Web's trailer frame) are not messages and are skipped uncounted.

`ActiveStream` creates a `GrpcMessages` (one counter per direction) only for gRPC calls
(`for_call`): requests the codec marked `RequestHead.grpc` (content-type application/grpc*: a
request that is not pays that one test) whose content-type is gRPC's own, `application/grpc` or
`application/grpc+<format>`, as Envoy's gRPC stats filter and Istio's `request_protocol` tell a
gRPC call; gRPC-Web (`application/grpc-web*`) is not counted. The counter hangs on the StreamInfo,
from which `MetricsStore.record_http` adds the counts to the request's series when the call ends.
"""

from __future__ import annotations

from sidecar.http.stream import RequestHead

PREFIX = 5  # flag byte + 4-byte big-endian length
TRAILER_FLAG = 0x80  # gRPC-Web: the frame carries trailers, not a message


class MessageCounter:
    """Counts the length-prefixed messages of one direction of one call, chunk by chunk."""

    __slots__ = ("_head", "_skip", "count")

    def __init__(self) -> None:
        self.count = 0
        self._skip = 0  # body bytes of the current message not seen yet
        self._head = b""  # the start of a prefix that a chunk boundary split

    def feed(self, data: bytes) -> None:
        """The next chunk of this direction's body."""
        n = len(data)
        pos = self._skip
        if pos >= n:  # all inside the current message
            self._skip = pos - n
            return
        head = self._head
        count = self.count
        if head:  # (its message was counted when its flag byte arrived)
            take = PREFIX - len(head)
            head += data[:take]
            if len(head) < PREFIX:
                self._head = head
                return
            pos = take + int.from_bytes(head[1:], "big")
            head = b""
        while pos + PREFIX <= n:
            if not data[pos] & TRAILER_FLAG:
                count += 1
            pos += PREFIX + int.from_bytes(data[pos + 1 : pos + PREFIX], "big")
        if pos < n:  # a prefix continues in the next chunk
            head = data[pos:]
            if not head[0] & TRAILER_FLAG:
                count += 1
            pos = n
        self._skip = pos - n
        self._head = head
        self.count = count


class GrpcMessages:
    """The message counts of one gRPC call: request (client to server) and response."""

    __slots__ = ("request", "response")

    def __init__(self) -> None:
        self.request = MessageCounter()
        self.response = MessageCounter()


def is_grpc_content_type(value: bytes) -> bool:
    """application/grpc or application/grpc+proto (and other formats), not gRPC-Web."""
    return value == b"application/grpc" or value.startswith(b"application/grpc+")


def for_call(head: RequestHead) -> GrpcMessages | None:
    """Counters for a request the codec marked as gRPC, when it is gRPC proper."""
    for name, value in head.headers:
        if name == b"content-type":
            return GrpcMessages() if is_grpc_content_type(value.lower()) else None
    return None
