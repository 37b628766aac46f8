"""`sidecar traces`: a small Zipkin-compatible collector that prints each finished trace.

Theory of operation: the admin HTTP/1.1 server (`sidecar.admin.http`) answers Zipkin's v2 API
from a `TraceStore`: `POST /api/v2/spans` (JSON, optionally gzip-encoded; the whole payload is
checked first and refused with 400 and the reason, else stored and answered 202),
`GET /api/v2/traces`, `GET /api/v2/trace/{traceId}`, `GET /api/v2/services` and `GET /health`.
All handlers are synchronous and run on the event loop, so the store needs no locks.

A trace is finished once no span arrived for it for the quiet period. Traces that received spans
wait in `_pending`, ordered by their last arrival, so the front is always the next one due; one
timer, armed for the front's deadline, prints every due trace as a waterfall on stdout and re-arms
for the next. A span arriving for a printed trace makes it pending again (printed again, complete).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import signal
import sys
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TextIO

from sidecar.admin.http import JSON, Endpoint, Request, Response, Router, serve, text
from sidecar.observability import waterfall
from sidecar.observability.trace_store import (
    SpanError,
    Trace,
    TraceQuery,
    TraceStore,
    decode_spans,
)

log = logging.getLogger(__name__)

API = "/api/v2"
TRACE_PREFIX = f"{API}/trace/"
MAX_INFLATED_BYTES = 16 * 1024 * 1024  # a gzip body may not expand past this (413)


def _json(value: object, status: int = 200) -> Response:
    return Response(status, json.dumps(value, separators=(",", ":")).encode(), JSON)


def _inflate(body: bytes) -> bytes | None:
    """The gzip body decompressed, or None when it would pass MAX_INFLATED_BYTES."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    data = inflater.decompress(body, MAX_INFLATED_BYTES)
    if inflater.unconsumed_tail:
        return None
    if not inflater.eof:
        raise zlib.error("truncated gzip stream")
    return data


class _ZipkinRouter(Router):
    """The admin router plus one prefix route, `/api/v2/trace/{traceId}`."""

    __slots__ = ("_paths", "_trace")

    def __init__(
        self, endpoints: list[Endpoint], trace: Callable[[Request, str], Response]
    ) -> None:
        super().__init__(endpoints)
        self._paths = frozenset(ep.path for ep in endpoints)
        self._trace = trace

    def dispatch(self, req: Request) -> Response:
        if req.path.startswith(TRACE_PREFIX):
            if req.method not in ("GET", "HEAD"):
                return Response(405, b"use GET\n", extra_headers=(("allow", "GET"),))
            return self._trace(req, req.path[len(TRACE_PREFIX) :])
        if req.path not in self._paths:
            return text(f"not found: {req.path}; this is a Zipkin v2 API collector\n", 404)
        return super().dispatch(req)


class Collector:
    """The collector's state: the store, the traces waiting for their quiet period, the output."""

    def __init__(self, store: TraceStore, quiet_period: float, out: TextIO | None) -> None:
        self.store = store
        self.quiet_period = quiet_period
        self._out = out
        self._pending: OrderedDict[str, float] = OrderedDict()  # key -> last arrival (monotonic)
        self._timer: asyncio.TimerHandle | None = None
        self.printed = 0

    def router(self) -> Router:
        endpoints = [
            Endpoint("POST", f"{API}/spans", self.post_spans, "upload Zipkin v2 spans (JSON)"),
            Endpoint("GET", f"{API}/traces", self.get_traces, "recent traces, newest first"),
            Endpoint("GET", f"{API}/services", self.get_services, "service names seen"),
            Endpoint("GET", "/health", self.health, "UP, with store counters"),
        ]
        return _ZipkinRouter(endpoints, self.get_trace)

    # handlers

    def post_spans(self, req: Request) -> Response:
        media = req.headers.get("content-type", JSON).split(";")[0].strip().lower()
        if media not in (JSON, ""):
            return text(f"unsupported content-type {media!r}: send {JSON}\n", 415)
        body = req.body
        encoding = req.headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            try:
                inflated = _inflate(body)
            except zlib.error as exc:
                return text(f"bad gzip body: {exc}\n", 400)
            if inflated is None:
                return text(f"gzip body inflates past {MAX_INFLATED_BYTES} bytes\n", 413)
            body = inflated
        elif encoding != "identity":
            return text(f"unsupported content-encoding {encoding!r}: use gzip\n", 415)
        try:
            spans = decode_spans(body)
        except SpanError as exc:
            return text(f"{exc}\n", 400)
        self._arrived(self.store.add(spans))
        return Response(202, b"")

    def get_traces(self, req: Request) -> Response:
        try:
            query = TraceQuery.from_params(req.query)
        except ValueError as exc:
            return text(f"{exc}\n", 400)
        return _json([t.spans for t in self.store.query(query)])

    def get_trace(self, req: Request, trace_id: str) -> Response:
        trace_id = trace_id.lower()
        if not 16 <= len(trace_id) <= 32 or any(c not in "0123456789abcdef" for c in trace_id):
            return text(f"traceId must be 16 to 32 hex characters, got {trace_id!r}\n", 400)
        trace = self.store.get(trace_id.rjust(16 if len(trace_id) <= 16 else 32, "0"))
        if trace is None:
            return text(f"trace {trace_id} not found\n", 404)
        return _json(trace.spans)

    def get_services(self, req: Request) -> Response:
        return _json(self.store.services())

    def health(self, req: Request) -> Response:
        store = self.store
        return _json({
            "status": "UP",
            "traces": len(store),
            "spans": store.span_count(),
            "max_traces": store.max_traces,
            "max_spans_per_trace": store.max_spans,
            "spans_accepted": store.spans_accepted,
            "spans_dropped": store.spans_dropped,
            "traces_evicted": store.traces_evicted,
            "traces_printed": self.printed,
        })

    # quiet period and printing

    def _arrived(self, keys: list[str]) -> None:
        if self._out is None or not keys:
            return
        now = time.monotonic()
        for key in keys:
            self._pending[key] = now
            self._pending.move_to_end(key)
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        first = next(iter(self._pending.values()))
        delay = max(0.0, first + self.quiet_period - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        deadline = time.monotonic() - self.quiet_period
        while self._pending:
            key, last = next(iter(self._pending.items()))
            if last > deadline:
                break
            del self._pending[key]
            self._print(self.store.get(key))
        if self._pending:
            self._arm()

    def flush(self) -> None:
        """Print every trace still waiting for its quiet period (on shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            key, _ = self._pending.popitem(last=False)
            self._print(self.store.get(key))

    def _print(self, trace: Trace | None) -> None:
        out = self._out
        if trace is None or out is None:
            return  # evicted before its quiet period ended
        width = shutil.get_terminal_size((120, 24)).columns
        try:
            out.write(waterfall.render(trace.spans, width) + "\n\n")
            out.flush()
        except OSError as exc:  # stdout closed (a pipe's reader went away): keep collecting
            log.warning("cannot print traces any more: %s", exc)
            self._out = None
            return
        self.printed += 1


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {value}")
        return number

    return parse


def register(sub: Any) -> None:
    """Add the `traces` subcommand to the `sidecar` command's subparsers."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "traces",
        help="collect Zipkin v2 spans and print each finished trace as a waterfall",
        description=(
            "A small Zipkin-compatible collector: POST /api/v2/spans, GET /api/v2/traces, "
            "GET /api/v2/trace/{id}, GET /api/v2/services, GET /health. Keeps recent traces "
            "in memory and prints each finished trace to stdout."
        ),
    )
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 9411),
                        metavar="HOST:PORT", help="address to serve (default 127.0.0.1:9411)")
    parser.add_argument("--max-traces", type=_positive(int), default=1000, metavar="N",
                        help="traces kept; the least recently updated go first (default 1000)")
    parser.add_argument("--max-spans-per-trace", type=_positive(int), default=1000, metavar="N",
                        help="spans kept per trace; later ones are dropped (default 1000)")
    parser.add_argument("--quiet-period", type=_positive(float), default=1.0, metavar="SECONDS",
                        help="a trace is finished after this long without spans (default 1)")
    parser.add_argument("--no-print", action="store_true", help="do not print waterfalls")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; the exit status."""
    import uvloop

    store = TraceStore(args.max_traces, args.max_spans_per_trace)
    collector = Collector(store, args.quiet_period, None if args.no_print else sys.stdout)
    host, port = args.listen
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(collector, host, port))


async def _serve(collector: Collector, host: str, port: int) -> int:
    try:
        server = await serve(collector.router(), host, port)
    except OSError as exc:
        print(f"sidecar traces: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    bound = server.sockets[0].getsockname()
    print(f"sidecar traces: Zipkin v2 collector listening on {bound[0]}:{bound[1]}",
          file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    collector.flush()
    return 0
