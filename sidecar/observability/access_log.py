"""The access log: one line per finished request (L7) or connection (L4), as Envoy writes it.

Theory of operation: `log()` formats the `StreamInfo` (Istio's `text` and `json` with one
f-string each, access_log_istio.py; `envoy`, Envoy format strings and JSON format dictionaries
with the template compiled once at start, access_log_format.py) and appends the line to an
in-memory batch; it never touches the file. The first line of a batch schedules a hand-off with
`loop.call_soon`, so the batch leaves at most once per event-loop turn (or at once when it grows
past `FLUSH_BYTES`). A hand-off gives the joined batch to a writer thread, which does the
blocking `write` + `flush`, so a slow pipe or disk never stalls the event loop. Memory is
bounded: when more than `MAX_PENDING_BYTES` wait for the writer, new batches are dropped and
counted. Write errors (closed file, full disk, broken pipe) are counted as failed; nothing here
raises into the caller.

Counters use Envoy's `filesystem.*` names (write_buffered, write_completed, write_failed,
write_total_buffered) plus `dropped_lines`; each counter is written by exactly one thread.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from sidecar.observability.access_log_format import compile_format
from sidecar.observability.access_log_istio import IstioFormatter
from sidecar.runtime import StreamInfo

FLUSH_BYTES = 64 * 1024  # hand a batch to the writer at once past this size
MAX_PENDING_BYTES = 8 * 1024 * 1024  # waiting for the writer; past this, drop
_STD_STREAMS = {"/dev/stdout": "stdout", "/dev/stderr": "stderr"}


class _Reopen:
    """Queue marker: close and reopen the file (log rotation)."""


_REOPEN = _Reopen()


def line_formatter(spec: str) -> Callable[[StreamInfo], str]:
    """The function making one log line for a format spec (see access_log_format.py): Istio's
    `text` and `json` by their f-strings, anything else compiled; BootstrapError if bad."""
    if spec.strip() in ("text", "json"):
        return IstioFormatter(spec.strip()).format
    return compile_format(spec).format


@dataclass(slots=True)
class AccessLogCounters:
    """Envoy's filesystem.* access log stats, plus the lines dropped (never written)."""

    write_buffered: int = 0  # batches handed to the writer (loop thread)
    write_completed: int = 0  # batches written (writer thread)
    write_failed: int = 0  # batches that failed to write (writer thread)
    dropped_lines: int = 0  # lines over the pending bound (loop thread)
    dropped_lines_writer: int = 0  # lines in batches that failed to write (writer thread)


class NullAccessLogger:
    """The logger when the access log is off: does nothing, costs one call."""

    def log(self, info: StreamInfo) -> None:
        return None

    def reopen(self) -> None:
        return None

    def flush(self, timeout: float = 1.0) -> bool:
        return True

    def close(self) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return {}


class FileAccessLogger:
    """Formats on the event loop, writes from a thread; see the module comment."""

    def __init__(
        self,
        path: str,
        fmt: str,
        *,
        flush_bytes: int = FLUSH_BYTES,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self.path = path
        self._flush_bytes = flush_bytes
        self._max_pending = max_pending_bytes
        self.counters = AccessLogCounters()
        self._format = line_formatter(fmt)
        self._open = self._opener(path)
        self._batch: list[str] = []
        self._batch_bytes = 0
        self._scheduled = False
        self._queue: queue.SimpleQueue[tuple[str, int] | _Reopen | None] = queue.SimpleQueue()
        self._queued_bytes = 0  # written only by the loop thread
        self._done_bytes = 0  # written only by the writer thread
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closed = False

    @staticmethod
    def _opener(path: str) -> Callable[[], tuple[TextIO, bool]]:
        """How the writer gets its stream: (stream, whether we own and must close it)."""
        std = _STD_STREAMS.get(path)
        if std is not None:
            stream: TextIO = getattr(sys, std)
            return lambda: (stream, False)
        return lambda: (open(path, "a", encoding="utf-8", errors="replace"), True)

    def log(self, info: StreamInfo) -> None:
        if self._closed:
            return
        line = self._format(info)
        self._batch.append(line)
        self._batch_bytes += len(line)
        if self._batch_bytes >= self._flush_bytes:
            self._handoff()
        elif not self._scheduled:
            loop = asyncio._get_running_loop()
            if loop is None:
                self._handoff()
            else:
                self._scheduled = True
                loop.call_soon(self._handoff)

    def _handoff(self) -> None:
        self._scheduled = False
        if not self._batch:
            return
        lines, size = len(self._batch), self._batch_bytes
        chunk = "".join(self._batch)
        self._batch.clear()
        self._batch_bytes = 0
        if self._queued_bytes - self._done_bytes + size > self._max_pending:
            self.counters.dropped_lines += lines
            return
        self._ensure_writer()
        self._queued_bytes += size
        self.counters.write_buffered += 1
        self._queue.put((chunk, lines))

    def _ensure_writer(self) -> None:
        pid = os.getpid()
        if self._thread is None or self._pid != pid or not self._thread.is_alive():
            self._pid = pid  # a forked worker starts its own writer
            self._thread = threading.Thread(
                target=self._write_loop, name=f"access-log:{self.path}", daemon=True
            )
            self._thread.start()

    def _write_loop(self) -> None:
        stream: TextIO | None = None
        owned = False
        while True:
            item = self._queue.get()
            if item is None:
                break
            if isinstance(item, _Reopen):
                if owned and stream is not None:
                    self._close_quietly(stream)
                stream = None
                continue
            chunk, lines = item
            try:
                if stream is None:
                    stream, owned = self._open()
                stream.write(chunk)
                stream.flush()
                self.counters.write_completed += 1
            except (OSError, ValueError):  # full disk, broken pipe, closed file, bad encoding
                self.counters.write_failed += 1
                self.counters.dropped_lines_writer += lines
            with self._idle:
                self._done_bytes += len(chunk)
                self._idle.notify_all()
        if owned and stream is not None:
            self._close_quietly(stream)

    @staticmethod
    def _close_quietly(stream: TextIO) -> None:
        try:
            stream.close()
        except (OSError, ValueError):
            return

    def reopen(self) -> None:
        """Close and reopen the file before the next write (after log rotation)."""
        if self._thread is not None:
            self._queue.put(_REOPEN)

    def flush(self, timeout: float = 1.0) -> bool:
        """Hand off the batch and wait (blocking!) until written; for tests and shutdown only."""
        self._handoff()
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._done_bytes < self._queued_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is pending (waiting at most `timeout`), then stop the writer."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def stats(self) -> dict[str, int]:
        c = self.counters
        return {
            "filesystem.write_buffered": c.write_buffered,
            "filesystem.write_completed": c.write_completed,
            "filesystem.write_failed": c.write_failed,
            "filesystem.write_total_buffered": max(0, self._queued_bytes - self._done_bytes),
            "access_log.dropped_lines": c.dropped_lines + c.dropped_lines_writer,
        }


def make_access_logger(path: str, fmt: str) -> FileAccessLogger | NullAccessLogger:
    """The access log for a bootstrap's `access_log` path ("" = off) and format (see
    access_log_format.py); a bad format is a BootstrapError even when the log is off."""
    if not path:
        line_formatter(fmt)
        return NullAccessLogger()
    return FileAccessLogger(path, fmt)
