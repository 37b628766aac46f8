"""`sidecar traces` as a real subprocess: the Zipkin v2 API over real sockets, bounds, waterfall."""

from __future__ import annotations

import gzip
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .zipkin_schema import assert_valid

NOW_US = time.time_ns() // 1000
WIDTH = 100


class CollectorProcess:
    """One `sidecar traces --listen 127.0.0.1:0` with its stdout lines collected by a thread."""

    def __init__(self, *flags: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "traces", "--listen", "127.0.0.1:0", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": str(WIDTH)},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        self.port = self._await_port(self.proc.stderr)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5.0)

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def _await_port(self, stream: Any) -> int:
        found: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: found.put(stream.readline()), daemon=True).start()
        line = found.get(timeout=15)
        assert "listening on 127.0.0.1:" in line, line
        return int(line.rsplit(":", 1)[1])

    def post(
        self, spans: Any, gzipped: bool = False, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        body = json.dumps(spans).encode() if not isinstance(spans, bytes) else spans
        hdrs = {"content-type": "application/json", **(headers or {})}
        if gzipped:
            body = gzip.compress(body)
            hdrs["content-encoding"] = "gzip"
        return self.http.post("/api/v2/spans", content=body, headers=hdrs)

    def health(self) -> dict[str, Any]:
        resp = self.http.get("/health")
        assert resp.status_code == 200
        result: dict[str, Any] = resp.json()
        return result

    def block(self, timeout: float) -> list[str]:
        """The next printed waterfall: lines up to the blank line that ends it."""
        deadline = time.monotonic() + timeout
        out: list[str] = []
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if not line and out:
                return out
            if line:
                out.append(line)

    def stop(self) -> int:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise


@pytest.fixture
def collector() -> Iterator[CollectorProcess]:
    proc = CollectorProcess("--no-print")
    yield proc
    assert proc.stop() == 0


def span(trace: str, ident: str, parent: str | None = None, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"traceId": trace, "id": ident}
    if parent:
        out["parentId"] = parent
    out.update(fields)
    return out


TRACE_A = "5af7183fb1d4cf5f"
TRACE_B = "4e441824ec2b6a44ffdc9bb9a6453df3"
SPANS_A = [
    span(TRACE_A, "000000000000000a", name="get /api", kind="SERVER", timestamp=NOW_US - 9000,
         duration=12000, localEndpoint={"serviceName": "frontend", "ipv4": "10.0.0.1", "port": 80},
         tags={"http.status_code": "200"}),
    span(TRACE_A, "000000000000000b", "000000000000000a", name="get /db", kind="CLIENT",
         timestamp=NOW_US - 8000, duration=5000, localEndpoint={"serviceName": "frontend"},
         remoteEndpoint={"ipv6": "::1", "port": 5432},
         annotations=[{"timestamp": NOW_US - 7900, "value": "ws"}]),
    span(TRACE_A, "000000000000000c", "000000000000000b", name="get /db", kind="SERVER",
         timestamp=NOW_US - 7500, duration=4000, localEndpoint={"serviceName": "backend"},
         shared=False, debug=True),
]
SPANS_B = [
    span(TRACE_B, "00000000000000b1", name="post /orders", kind="CLIENT", timestamp=NOW_US - 3000,
         duration=250_000, localEndpoint={"serviceName": "orders"}, tags={"error": "true"}),
    span(TRACE_B, "00000000000000b2", "00000000000000b1", name="post /orders", kind="SERVER",
         timestamp=NOW_US - 2500, duration=200_000, localEndpoint={"serviceName": "payments"}),
]


def test_spans_come_back_as_posted(collector: CollectorProcess) -> None:
    assert_valid(SPANS_A)
    assert_valid(SPANS_B)
    assert collector.post(SPANS_A[:2]).status_code == 202
    assert collector.post(SPANS_A[2:]).status_code == 202
    resp = collector.post(SPANS_B, gzipped=True)
    assert (resp.status_code, resp.content) == (202, b"")

    got_a = collector.http.get(f"/api/v2/trace/{TRACE_A}")
    assert got_a.status_code == 200
    assert got_a.headers["content-type"] == "application/json"
    assert got_a.json() == SPANS_A
    assert_valid(got_a.json(), "Trace")
    assert collector.http.get(f"/api/v2/trace/{TRACE_B}").json() == SPANS_B

    traces = collector.http.get("/api/v2/traces").json()
    assert_valid(traces, "ListOfTraces")
    assert traces == [SPANS_B, SPANS_A]  # newest first
    assert collector.http.get("/api/v2/traces", params={"limit": 1}).json() == [SPANS_B]
    by_service = collector.http.get("/api/v2/traces", params={"serviceName": "backend"})
    assert by_service.json() == [SPANS_A]
    slow = collector.http.get("/api/v2/traces", params={"minDuration": 100_000})
    assert slow.json() == [SPANS_B]
    past = collector.http.get(
        "/api/v2/traces", params={"endTs": NOW_US // 1000 - 5, "lookback": 60_000}
    )
    assert past.json() == [SPANS_A]  # B started after endTs
    assert collector.http.get("/api/v2/traces", params={"limit": "x"}).status_code == 400
    services = collector.http.get("/api/v2/services").json()
    assert services == ["backend", "frontend", "orders", "payments"]
    health = collector.health()
    assert (health["status"], health["traces"], health["spans"]) == ("UP", 2, 5)


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b"{not json", {}, "not JSON"),
        (b'{"traceId": "5af7183fb1d4cf5f", "id": "000000000000000a"}', {}, "must be a JSON list"),
        (json.dumps([SPANS_A[0], {"traceId": TRACE_A, "name": "x"}]).encode(), {},
         "span 1: id is required"),
        (json.dumps([{"traceId": "5af7183fb1d4cf5", "id": "000000000000000a"}]).encode(), {},
         "span 0: traceId must be 16 or 32 lower-case hex"),
        (json.dumps([{**SPANS_A[0], "duration": 1.5}]).encode(), {}, "duration must be an int"),
        (b"\x1f\x8b\x08garbage", {"content-encoding": "gzip"}, "bad gzip body"),
    ],
    ids=["not-json", "not-a-list", "no-id", "short-trace-id", "float-duration", "bad-gzip"],
)
def test_bad_payload_is_refused_and_the_collector_keeps_serving(
    collector: CollectorProcess, body: bytes, headers: dict[str, str], reason: str
) -> None:
    resp = collector.post(body, headers=headers)
    assert resp.status_code == 400, resp.text
    assert reason in resp.text
    assert collector.health()["spans"] == 0  # nothing of a refused payload is kept
    assert collector.http.get(f"/api/v2/trace/{TRACE_A}").status_code == 404
    assert collector.post(SPANS_A).status_code == 202
    assert collector.http.get(f"/api/v2/trace/{TRACE_A}").json() == SPANS_A


def test_unknown_trace_and_wrong_requests(collector: CollectorProcess) -> None:
    assert collector.http.get("/api/v2/trace/0123456789abcdef").status_code == 404
    assert collector.http.get("/api/v2/trace/not-an-id").status_code == 400
    assert collector.http.get("/api/v2/nothing").status_code == 404
    assert collector.http.get("/api/v2/spans").status_code == 405
    protobuf = collector.post(b"\x0a\x00", headers={"content-type": "application/x-protobuf"})
    assert protobuf.status_code == 415


def _traces(first: int, count: int, tag: str = "") -> list[dict[str, Any]]:
    tags = {"payload": tag} if tag else {}
    return [
        span(f"{n:016x}", f"{n:016x}", name="op", timestamp=NOW_US + n, duration=10,
             localEndpoint={"serviceName": "svc"}, tags=tags)
        for n in range(first, first + count)
    ]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_bounds_drop_the_oldest_and_memory_stays_flat() -> None:
    proc = CollectorProcess("--max-traces", "20", "--max-spans-per-trace", "5", "--no-print")
    try:
        assert proc.post(_traces(1, 60)).status_code == 202
        health = proc.health()
        assert (health["traces"], health["traces_evicted"]) == (20, 40)
        assert proc.http.get(f"/api/v2/trace/{1:016x}").status_code == 404
        assert proc.http.get(f"/api/v2/trace/{40:016x}").status_code == 404
        assert proc.http.get(f"/api/v2/trace/{41:016x}").status_code == 200
        listed = proc.http.get("/api/v2/traces", params={"limit": 1000}).json()
        assert [t[0]["id"] for t in listed] == [f"{n:016x}" for n in range(60, 40, -1)]

        wide = [span("00000000000000ff", f"{n:016x}", name="op") for n in range(1, 9)]
        assert proc.post(wide).status_code == 202
        assert len(proc.http.get("/api/v2/trace/00000000000000ff").json()) == 5
        assert proc.health()["spans_dropped"] == 3

        big = "x" * 8000  # 100 spans of 8 KB a post, 400 traces a round
        rss: list[int] = []
        for round_ in range(5):
            for batch in range(4):
                first = 1000 + round_ * 400 + batch * 100
                assert proc.post(_traces(first, 100, big)).status_code == 202
            rss.append(_rss_kib(proc.proc.pid))
        assert proc.health()["traces"] == 20
        # rounds 2-5 posted ~12.8 MB more; kept, that would be far more than this
        assert rss[-1] - rss[0] < 6 * 1024, rss
    finally:
        assert proc.stop() == 0


def test_finished_trace_is_printed_as_a_waterfall() -> None:
    proc = CollectorProcess("--quiet-period", "0.5")
    try:
        tagged = [dict(SPANS_A[0]), dict(SPANS_A[1]), SPANS_A[2]]
        tagged[1]["tags"] = {"http.status_code": "503", "error": "true"}
        assert proc.post(tagged[2:]).status_code == 202  # children first, root last
        time.sleep(0.2)  # inside the quiet period: the trace is not finished yet
        assert proc.post(tagged[:2]).status_code == 202
        posted = time.monotonic()
        lines = proc.block(timeout=10)
        assert time.monotonic() - posted >= 0.4
    finally:
        assert proc.stop() == 0
    header, root, child, grandchild = lines
    assert header.startswith(f"trace {TRACE_A}: 3 spans, services backend, frontend, 12.000ms")
    assert root.startswith("frontend get /api ")
    assert child.startswith("  frontend get /db ")
    assert grandchild.startswith("    backend get /db ")
    for line, kind, start, duration in (
        (root, "SERVER", "+0.000ms", "12.000ms"),
        (child, "CLIENT", "+1.000ms", "5.000ms"),
        (grandchild, "SERVER", "+1.500ms", "4.000ms"),
    ):
        assert f" {kind} " in line and f" {start} " in line and f" {duration} " in line, line
        assert len(line) <= WIDTH, line
    assert root.endswith("| 200")
    assert child.endswith("| 503 error")
    bars = [line[line.index("|") + 1 : line.rindex("|")] for line in (root, child, grandchild)]
    assert bars[0].strip(" ") == "#" * len(bars[0])  # the root spans the whole axis
    assert bars[1].index("#") < bars[2].index("#")  # the grandchild starts later
    assert bars[1].count("#") > bars[2].count("#") > 0  # and is shorter


def test_opentelemetry_zipkin_exporter_is_understood() -> None:
    """The exporter the proxy's tracing uses posts to the collector; what comes back is valid."""
    from opentelemetry.exporter.zipkin.json import ZipkinExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind

    proc = CollectorProcess("--quiet-period", "0.3")
    try:
        exporter = ZipkinExporter(endpoint=f"http://127.0.0.1:{proc.port}/api/v2/spans")
        provider = TracerProvider(resource=Resource.create({"service.name": "a.default"}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("inbound", kind=SpanKind.SERVER) as server:
            server.set_attribute("http.status_code", 200)
            with tracer.start_as_current_span("outbound", kind=SpanKind.CLIENT):
                time.sleep(0.005)
        provider.shutdown()
        traces = proc.http.get("/api/v2/traces").json()
        assert_valid(traces, "ListOfTraces")
        assert [sorted(s["name"] for s in t) for t in traces] == [["inbound", "outbound"]]
        lines = proc.block(timeout=10)
    finally:
        assert proc.stop() == 0
    assert lines[1].startswith("a.default inbound ") and lines[1].endswith("| 200")
    assert lines[2].startswith("  a.default outbound ")
