"""A bidirectional byte relay between two connected transports.

Theory of operation: `splice(a, b)` swaps each transport's protocol for a `RelayEnd` whose
`data_received` writes straight into the peer's transport. Back-pressure is the transports' own:
when the peer's write buffer passes its high-water mark asyncio calls the peer end's
`pause_writing`, which pauses reading on this side; `resume_writing` resumes it. So at most one
high-water mark of bytes is buffered per direction, whatever the speeds.

Half-close: EOF from one side becomes `write_eof` on the other (when the transport can); the relay
ends when both directions have seen EOF, or when either connection is lost (the other is then
closed after its pending bytes are flushed; aborted if the loss was an error). An idle timer
closes both when no byte moved for `idle_timeout` seconds; it costs nothing per chunk (it compares
byte counters when it fires). `on_close` runs exactly once, with the byte counts.

Used by the TCP proxy (L4) and by HTTP/1.1 Upgrade (WebSocket) after the 101.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

HIGH_WATER = 512 * 1024
LOW_WATER = 128 * 1024


class RelayEnd(asyncio.Protocol):
    """One side of a relay: what this transport receives is written to the peer's transport."""

    __slots__ = ("eof", "peer", "received", "relay", "transport")

    def __init__(self, relay: Relay, transport: asyncio.Transport) -> None:
        self.relay = relay
        self.transport = transport
        self.peer: RelayEnd
        self.received = 0
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer.transport
        if self.peer.eof:
            self.relay.finish(None)
            return False
        if peer.can_write_eof() and not peer.is_closing():
            peer.write_eof()
            return True  # keep our write side open: the peer may still answer (half-close)
        self.relay.finish(None)
        return False

    def pause_writing(self) -> None:
        # Our transport's buffer is full: stop reading the peer that fills it.
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.finish(exc)


class Relay:
    """Two `RelayEnd`s, an idle timer and the one-time close callback."""

    __slots__ = ("_idle_handle", "_last_total", "_on_close", "a", "b", "closed", "idle_timeout")

    def __init__(
        self,
        a: asyncio.Transport,
        b: asyncio.Transport,
        on_close: Callable[[Relay, Exception | None], None] | None,
        idle_timeout: float,
    ) -> None:
        self.a = RelayEnd(self, a)
        self.b = RelayEnd(self, b)
        self.a.peer = self.b
        self.b.peer = self.a
        self._on_close = on_close
        self.closed = False
        self.idle_timeout = idle_timeout
        self._last_total = -1
        self._idle_handle: asyncio.TimerHandle | None = None

    @property
    def a_to_b(self) -> int:
        """Bytes received from `a` (and written to `b`)."""
        return self.a.received

    @property
    def b_to_a(self) -> int:
        return self.b.received

    def start(self, a_pending: bytes, b_pending: bytes, a_eof: bool = False) -> None:
        for end in (self.a, self.b):
            end.transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
            end.transport.set_protocol(end)
        if a_pending:
            self.a.data_received(a_pending)
        if b_pending:
            self.b.data_received(b_pending)
        if a_eof:
            self.a.eof_received()  # `a` half-closed before the relay began
        for end in (self.a, self.b):
            if not end.transport.is_closing():
                end.transport.resume_reading()
        if self.idle_timeout > 0:
            self._arm_idle()

    def _arm_idle(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle_handle = loop.call_later(self.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        total = self.a.received + self.b.received
        if total == self._last_total:
            self.finish(None)
            return
        self._last_total = total
        self._arm_idle()

    def finish(self, exc: Exception | None) -> None:
        """End the relay once: close both transports (flushing unless `exc`), call back."""
        if self.closed:
            return
        self.closed = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        for end in (self.a, self.b):
            t = end.transport
            if exc is not None:
                t.abort()
            elif not t.is_closing():
                t.close()
        if self._on_close is not None:
            self._on_close(self, exc)

    def close(self) -> None:
        """Close both sides now (drain time is over)."""
        self.finish(ConnectionAbortedError("relay closed"))


def splice(
    a: asyncio.Transport,
    b: asyncio.Transport,
    *,
    on_close: Callable[[Relay, Exception | None], None] | None = None,
    a_pending: bytes = b"",
    b_pending: bytes = b"",
    idle_timeout: float = 3600.0,
    a_eof: bool = False,
) -> Relay:
    """Relay bytes between `a` and `b` until both finish; `*_pending` were already read from each.

    Both transports may be paused on entry; the relay resumes them.
    """
    relay = Relay(a, b, on_close, idle_timeout)
    relay.start(a_pending, b_pending, a_eof)
    return relay
