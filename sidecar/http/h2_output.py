"""Output of an HTTP/2 connection (either side): what h2 framed goes out once per loop turn.

Theory of operation: streams frame into the h2 state machine as they go; `schedule_flush` writes
everything framed so far at the start of the next event-loop turn, so the frames of all the
streams served in one turn leave in one write. Bulk data is flushed at once by the caller, so a
full socket buffer pauses the source promptly.
"""

from __future__ import annotations

import asyncio

import h2.connection


class H2Output:
    """Mixin for a protocol owning `h2` (an H2Connection), `transport` and `loop`."""

    h2: h2.connection.H2Connection
    transport: asyncio.Transport | None
    loop: asyncio.AbstractEventLoop
    _flush_pending: bool

    def _writable(self) -> bool:
        transport = self.transport
        return transport is not None and not transport.is_closing()

    def schedule_flush(self) -> None:
        if not self._flush_pending and self._writable():
            self._flush_pending = True
            self.loop.call_soon(self._deferred_flush)

    def _deferred_flush(self) -> None:
        self._flush_pending = False
        self.flush()

    def flush(self) -> None:
        if self._writable():
            data = self.h2.data_to_send()
            if data:
                assert self.transport is not None
                self.transport.write(data)
