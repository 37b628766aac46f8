"""Write coalescing for the HTTP protocols: queue output, write it once per event-loop turn.

Theory of operation: a protocol appends the bytes it produces to `_out` and calls
`schedule_flush`. The first call in a turn schedules one `_deferred_flush` for the start of the
next turn, after every socket that was ready in this turn has been read; then everything queued
goes out with one `write`/`writelines`. With many connections, one turn's writes go out back to
back and each peer is woken once per burst instead of once per request. Body data past
DEFER_LIMIT bytes is written at once instead, so a full socket buffer still pauses the reader on
the next read and memory stays bounded by the transports' high-water marks. Used by the
downstream connection manager and the upstream HTTP/1.1 connection alike.
"""

from __future__ import annotations

import asyncio

DEFER_LIMIT = 64 * 1024  # body bytes held for the next loop turn's write; more go out at once


class CoalescedWrites:
    """Mixin for an asyncio protocol whose output is queued in `_out` and flushed per turn."""

    __slots__ = ()

    transport: asyncio.Transport | None
    _out: list[bytes]
    _out_bytes: int  # body bytes in _out
    _flush_pending: bool
    _loop: asyncio.AbstractEventLoop

    def _writable(self) -> bool:
        """Whether queued output may still be written (a reset connection drops it)."""
        return self.transport is not None

    def schedule_flush(self) -> None:
        """Write what is queued at the start of the next event-loop turn (bulk data: now)."""
        if self._out_bytes > DEFER_LIMIT:
            self.flush()  # so that a full socket buffer pauses the reader at once
        elif self._out and not self._flush_pending:
            self._flush_pending = True  # type: ignore[misc]  # (slot of the subclass)
            self._loop.call_soon(self._deferred_flush)

    def _deferred_flush(self) -> None:
        self._flush_pending = False  # type: ignore[misc]  # (slot of the subclass)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.flush()  # (a closed or aborted connection drops what it had not sent)

    def flush(self) -> None:
        """Write everything queued now, in one call."""
        out = self._out
        if out and self._writable():
            transport = self.transport
            assert transport is not None
            # The slots are the subclass's; mypy cannot see them from a slotted mixin.
            self._out = []  # type: ignore[misc]
            self._out_bytes = 0  # type: ignore[misc]
            if len(out) == 1:
                transport.write(out[0])
            else:
                transport.writelines(out)
