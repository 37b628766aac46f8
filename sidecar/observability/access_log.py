"""The access log: one line per finished request (L7) or connection (L4), as Envoy writes it.

Theory of operation: `log()` formats the `StreamInfo` with one f-string (text: Istio's default
format; JSON: Istio's keys) and appends the line to an in-memory batch; it never touches the file.
The first line of a batch schedules a hand-off with `loop.call_soon`, so the batch leaves at most
once per event-loop turn (or at once when it grows past `FLUSH_BYTES`). A hand-off gives the joined
batch to a writer thread, which does the blocking `write` + `flush`, so a slow pipe or disk never
stalls the event loop. Memory is bounded: when more than `MAX_PENDING_BYTES` wait for the writer,
new batches are dropped and counted. Write errors (closed file, full disk, broken pipe) are counted
as failed; nothing here raises into the caller.

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
from json.encoder import encode_basestring_ascii
from typing import TextIO

from sidecar.outcome import ResponseFlag
from sidecar.runtime import StreamInfo

FLUSH_BYTES = 64 * 1024  # hand a batch to the writer at once past this size
MAX_PENDING_BYTES = 8 * 1024 * 1024  # waiting for the writer; past this, drop
_quote: Callable[[str], str] = encode_basestring_ascii  # C: '"' + escaped ASCII + '"'
_STD_STREAMS = {"/dev/stdout": "stdout", "/dev/stderr": "stderr"}


class _Reopen:
    """Queue marker: close and reopen the file (log rotation)."""


_REOPEN = _Reopen()


class LineFormatter:
    """Formats a StreamInfo as one line; the time stamp is cached per second, flags per value."""

    __slots__ = ("_flag_codes", "_prefix", "_second", "format")

    def __init__(self, fmt: str) -> None:
        self._second = -1
        self._prefix = ""
        self._flag_codes: dict[ResponseFlag, str] = {}
        if fmt == "text":
            self.format: Callable[[StreamInfo], str] = self.text
        elif fmt == "json":
            self.format = self.json
        else:
            raise ValueError(f"access log format {fmt!r}: expected 'text' or 'json'")

    def start_time(self, t: float) -> str:
        """Envoy's %START_TIME% default: 2026-11-26T06:44:47.123Z (UTC, milliseconds)."""
        sec = int(t)
        if sec != self._second:
            self._second = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{int((t - sec) * 1000):03d}Z"

    def flags(self, flags: ResponseFlag) -> str:
        code = self._flag_codes.get(flags)
        if code is None:
            code = self._flag_codes[flags] = flags.code()
        return code

    def text(self, i: StreamInfo) -> str:
        """Istio's default text format (Envoy's extended format), '-' for missing values."""
        ust = i.upstream_service_time_ms
        return (
            f'[{self.start_time(i.start_time)}] "{i.method or "-"} {i.path or "-"} '
            f'{i.protocol or "-"}" {i.response_code} {self.flags(i.response_flags)} '
            f'{i.response_code_details or "-"} - "{i.upstream_transport_failure_reason or "-"}" '
            f"{i.bytes_received} {i.bytes_sent} {i.duration_ms} {'-' if ust is None else ust} "
            f'"{i.forwarded_for or "-"}" "{i.user_agent or "-"}" "{i.request_id or "-"}" '
            f'"{i.authority or "-"}" "{i.upstream_host or "-"}" {i.upstream_cluster or "-"} '
            f"{i.upstream_local_address or '-'} {i.downstream_local_address or '-'} "
            f"{i.downstream_remote_address or '-'} {i.requested_server_name or '-'} "
            f"{i.route_name or '-'}\n"
        )

    def json(self, i: StreamInfo) -> str:
        """Istio's JSON keys in Istio's order; missing values are null, counts are numbers.

        One f-string, with each string value quoted and escaped by the json module's C helper
        (a dict through json.dumps costs about twice as much).
        """
        ust = i.upstream_service_time_ms
        return (
            f'{{"start_time":"{self.start_time(i.start_time)}","route_name":{_j(i.route_name)},'
            f'"method":{_j(i.method)},"path":{_j(i.path)},"protocol":{_j(i.protocol)},'
            f'"response_code":{i.response_code},'
            f'"response_flags":{_j(self.flags(i.response_flags))},'
            f'"response_code_details":{_j(i.response_code_details)},'
            f'"connection_termination_details":null,'
            f'"upstream_transport_failure_reason":{_j(i.upstream_transport_failure_reason)},'
            f'"bytes_received":{i.bytes_received},"bytes_sent":{i.bytes_sent},'
            f'"duration":{i.duration_ms},'
            f'"upstream_service_time":{"null" if ust is None else _quote(str(ust))},'
            f'"x_forwarded_for":{_j(i.forwarded_for)},"user_agent":{_j(i.user_agent)},'
            f'"request_id":{_j(i.request_id)},"authority":{_j(i.authority)},'
            f'"upstream_host":{_j(i.upstream_host)},"upstream_cluster":{_j(i.upstream_cluster)},'
            f'"upstream_local_address":{_j(i.upstream_local_address)},'
            f'"downstream_local_address":{_j(i.downstream_local_address)},'
            f'"downstream_remote_address":{_j(i.downstream_remote_address)},'
            f'"requested_server_name":{_j(i.requested_server_name)}}}\n'
        )


def _j(value: str) -> str:
    """A JSON string literal, or null for a missing value ("-" or empty)."""
    return "null" if value == "-" or not value else _quote(value)


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
        self._format = LineFormatter(fmt).format
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
    """The access log for a bootstrap's `access_log` path ("" = off) and format (text | json)."""
    if not path:
        LineFormatter(fmt)  # still refuse an unknown format
        return NullAccessLogger()
    return FileAccessLogger(path, fmt)
