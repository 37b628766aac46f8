"""Zipkin tracing across two real sidecars, reported to a real `sidecar traces` collector.

Workload a's sidecar (egress) and workload b's sidecar (ingress) front a small HTTP app that
records the trace headers it receives; both sidecars post spans to the collector subprocess,
whose Zipkin v2 API the tests read back (and validate against the Zipkin spec).
"""

from __future__ import annotations

import http.client
import itertools
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sidecar.bootstrap import Tracing, build
from sidecar.observability.tracing_context import extract

from .mesh_two import A_IP, B_IP, NAMESPACE, mesh_two_yaml
from .proxy_fixtures import free_port
from .sidecar_process import SidecarProcess
from .test_metrics import HelloApp
from .test_traces_collector import CollectorProcess
from .zipkin_schema import assert_valid

TRACE_HEADERS = ("x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled",
                 "x-b3-flags", "b3", "traceparent", "tracestate",
                 "x-envoy-decorator-operation")  # fmt: skip
TRACE_ID = "463ac35c9f6413ad48485a3953bb6124"
CALLER_SPAN = "a2fb4a1d1a96d312"
B_FQDN = f"b.{NAMESPACE}.svc.cluster.local"
_ids = itertools.count()


class _App(HelloApp):
    """Answers 200 and records each request's trace headers by x-request-id (so a request is
    found only when its x-request-id reached the app unchanged)."""

    protocol_version = "HTTP/1.1"
    wbufsize = 65536  # head and body in one write (no Nagle/delayed-ACK stall per request)
    disable_nagle_algorithm = True
    seen: dict[str, dict[str, str]] = {}

    def do_GET(self) -> None:
        rid = self.headers.get("x-request-id", "")
        self.seen[rid] = {h: self.headers[h] for h in TRACE_HEADERS if h in self.headers}
        super().do_GET()


@pytest.fixture(scope="module")
def app() -> Iterator[int]:
    server = ThreadingHTTPServer((B_IP, 0), _App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@dataclass
class Pair:
    """a's and b's sidecars; requests go to a's egress listener."""

    a: SidecarProcess
    b: SidecarProcess
    port: int
    app_port: int

    @property
    def authority(self) -> str:
        return f"{B_FQDN}:{self.port}"


@contextmanager
def sidecar_pair(
    app_port: int, zipkin: str, sampling: float, proxy_config: str = "",
    port_name: str = "http", protocol: str = "HTTP", extra: str = "",
) -> Iterator[Pair]:  # fmt: skip
    """Both sidecars, tracing set by flags, or by `proxy_config` (PROXY_CONFIG) when given,
    with only the sampling flag on top; Service b's port named `port_name` (`protocol`), and
    `extra` mesh config (VirtualServices, ...)."""
    port = free_port()
    config = mesh_two_yaml(port, app_port, port_name, protocol, extra)
    flags = ["--trace-sampling", str(sampling), "--zipkin-flush-interval", "0.5"]
    if not proxy_config:
        flags += ["--zipkin-address", zipkin]
    started: list[SidecarProcess] = []
    try:
        for pod, ip in (("b-1", B_IP), ("a-1", A_IP)):
            sc = SidecarProcess(
                config, "--pod-name", pod, "--pod-namespace", NAMESPACE, "--instance-ip", ip,
                "--service-account", pod[0], "--no-watch", "--access-log", "", *flags,
                env={"PROXY_CONFIG": proxy_config} if proxy_config else None,
            )  # fmt: skip
            started.append(sc)
            sc.start(expect_ready=False)  # both start at once (each takes seconds to import)
        for sc in started:
            sc.wait_ready()
        yield Pair(started[1], started[0], port, app_port)
    finally:
        for sc in started:
            sc.__exit__(None)


class Client:
    """One keep-alive HTTP/1.1 connection to a's egress listener."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.conn = http.client.HTTPConnection("127.0.0.1", pair.port, timeout=10)

    def get(self, headers: dict[str, str] | None = None, path: str = "/hello?x=1") -> str:
        """Send a GET with a fresh x-request-id (returned); asserts a 200."""
        rid = f"rid-{next(_ids)}-{time.monotonic_ns()}"
        self.conn.request("GET", path, headers={
            "host": self.pair.authority, "x-request-id": rid, **(headers or {})})
        resp = self.conn.getresponse()
        resp.read()
        assert resp.status == 200
        return rid

    def close(self) -> None:
        self.conn.close()


def spans_of(collector: CollectorProcess) -> list[dict[str, Any]]:
    resp = collector.http.get("/api/v2/traces", params={"limit": "100000"})
    assert resp.status_code == 200
    traces = resp.json()
    out: list[dict[str, Any]] = []
    for trace in traces:
        assert_valid(trace, "ListOfSpans")
        out.extend(trace)
    return out


def wait_spans(collector: CollectorProcess, rid: str, count: int) -> list[dict[str, Any]]:
    """The spans tagged with x-request-id `rid`, once `count` of them arrived (5s at most)."""
    deadline = time.monotonic() + 5
    while True:
        found = [s for s in spans_of(collector) if s["tags"].get("guid:x-request-id") == rid]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, found
            return found
        time.sleep(0.1)


def zipkin_stats(sc: SidecarProcess) -> dict[str, int]:
    """The proxy's tracing.zipkin.* counters from admin /stats."""
    status, body = sc.admin("GET", "/stats?filter=^tracing%5C.zipkin")
    assert status == 200
    pairs = (line.split(": ") for line in body.decode().splitlines() if line)
    return {name: int(value) for name, value in pairs}


def by_kind(spans: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    kinds = {s["kind"]: s for s in spans}
    assert set(kinds) == {"CLIENT", "SERVER"}, spans
    return kinds["CLIENT"], kinds["SERVER"]


@pytest.fixture(scope="module")
def collector() -> Iterator[CollectorProcess]:
    proc = CollectorProcess("--no-print")
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def traced(app: int, collector: CollectorProcess) -> Iterator[Client]:
    with sidecar_pair(app, f"127.0.0.1:{collector.port}", 100) as pair:
        client = Client(pair)
        yield client
        client.close()


def test_client_and_server_spans_share_the_trace(traced: Client, collector: CollectorProcess
                                                 ) -> None:
    rid = traced.get({"tracestate": "congo=t61rcWkgMzE", "user-agent": "tracing-test/1"})
    client, server = by_kind(wait_spans(collector, rid, 2))
    assert client["traceId"] == server["traceId"]
    assert "parentId" not in client
    assert server["parentId"] == client["id"] != server["id"]
    assert client["localEndpoint"]["serviceName"] == "a.default"
    assert server["localEndpoint"]["serviceName"] == "b.default"
    # Istio's decorator for a service without a VirtualService, on both sides (b's sidecar
    # takes it from x-envoy-decorator-operation, which the app never sees).
    name = f"{traced.pair.authority}/*"
    assert client["name"] == server["name"] == name
    tags = client["tags"]
    assert tags["component"] == "proxy"
    assert tags["node_id"].startswith(f"sidecar~{A_IP}~a-1.default")
    assert tags["http.method"] == "GET"
    assert tags["http.protocol"] == "HTTP/1.1"
    assert tags["http.status_code"] == "200"
    assert tags["http.url"] == f"http://{traced.pair.authority}/hello?x=1"
    assert tags["upstream_cluster"] == f"outbound|{traced.pair.port}||{B_FQDN}"
    assert tags["upstream_address"].startswith(B_IP + ":")
    assert tags["peer.address"] == "127.0.0.1"
    assert tags["user_agent"] == "tracing-test/1"
    assert tags["request_size"] == "0"
    assert tags["response_size"] == str(len(b"hello from b\n"))
    assert tags["response_flags"] == "-"
    assert "error" not in tags
    assert server["tags"]["upstream_cluster"] == f"inbound|{traced.pair.port}||"
    assert server["tags"]["upstream_address"] == f"{B_IP}:{traced.pair.app_port}"
    assert server["tags"]["guid:x-request-id"] == rid
    assert server["duration"] <= client["duration"]
    # What the app received: the server span's context, as B3 and W3C.
    seen = _App.seen[rid]
    assert seen["x-b3-traceid"] == client["traceId"]
    assert seen["x-b3-spanid"] == server["id"]
    assert seen["x-b3-parentspanid"] == client["id"]
    assert seen["x-b3-sampled"] == "1"
    assert seen["traceparent"] == f"00-{client['traceId']}-{server['id']}-01"
    assert seen["tracestate"] == "congo=t61rcWkgMzE"  # carried through as received
    assert "x-envoy-decorator-operation" not in seen
    assert zipkin_stats(traced.pair.a)["tracing.zipkin.spans_sent"] >= 1
    assert zipkin_stats(traced.pair.b)["tracing.zipkin.reports_failed"] == 0


@pytest.mark.parametrize("headers", [
    {"x-b3-traceid": TRACE_ID, "x-b3-spanid": CALLER_SPAN, "x-b3-sampled": "1"},
    {"b3": f"{TRACE_ID}-{CALLER_SPAN}-1"},
    {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"},
], ids=["b3-multi", "b3-single", "traceparent"])
def test_the_callers_trace_continues(traced: Client, collector: CollectorProcess,
                                     headers: dict[str, str]) -> None:
    rid = traced.get(headers)
    client, server = by_kind(wait_spans(collector, rid, 2))
    assert client["traceId"] == server["traceId"] == TRACE_ID
    assert client["parentId"] == CALLER_SPAN
    assert server["parentId"] == client["id"]
    assert "b3" not in _App.seen[rid]  # replaced by the proxy's own context


def test_the_callers_no_is_honoured_and_propagated(traced: Client, collector: CollectorProcess
                                                   ) -> None:
    unsampled = traced.get({"x-b3-sampled": "0"})
    marker = traced.get()
    wait_spans(collector, marker, 2)  # posted after the unsampled request's would have been
    wait_spans(collector, unsampled, 0)
    assert _App.seen[unsampled] == {"x-b3-sampled": "0"}


@pytest.fixture(scope="module")
def untraced(app: int, collector: CollectorProcess) -> Iterator[Client]:
    # PROXY_CONFIG names the collector and samples everything; the flag overrides sampling.
    proxy_config = (
        f"tracing:\n  zipkin:\n    address: 127.0.0.1:{collector.port}\n  sampling: 100\n"
    )
    with sidecar_pair(app, "", 0, proxy_config) as pair:
        client = Client(pair)
        yield client
        client.close()


def test_sampling_zero_still_traces_what_the_caller_sampled(
    untraced: Client, collector: CollectorProcess
) -> None:
    plain = untraced.get()
    assert _App.seen[plain] == {"x-b3-sampled": "0"}  # a's decision reached b
    forced = untraced.get({"x-b3-flags": "1"})
    sampled = untraced.get({"x-b3-sampled": "1"})
    client, server = by_kind(wait_spans(collector, sampled, 2))
    assert server["parentId"] == client["id"]
    assert not client.get("debug")
    debug = wait_spans(collector, forced, 2)
    assert all(s.get("debug") is True for s in debug)
    wait_spans(collector, plain, 0)


def hey(pair: Pair, count: int, concurrency: int = 16) -> tuple[int, float, float]:
    """`count` GETs through a's sidecar with hey (no x-request-id: the proxy makes one):
    (200 answers, p99 seconds, slowest seconds); any other status fails."""
    out = subprocess.run(
        ["hey", "-n", str(count), "-c", str(concurrency), "-disable-compression",
         "-host", pair.authority, f"http://127.0.0.1:{pair.port}/load"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    ok = re.search(r"\[200\]\s+(\d+) responses", out)
    p99 = re.search(r"99%\s+in\s+([\d.]+)\s+secs", out)
    slowest = re.search(r"Slowest:\s+([\d.]+)\s+secs", out)
    assert ok and p99 and slowest, out
    assert re.findall(r"\[(\d+)\]\s+\d+ responses", out) == ["200"], out
    return int(ok.group(1)), float(p99.group(1)), float(slowest.group(1))


ONE_PERCENT_N = 4000
# Binomial(4000, 1%): mean 40, sd 6.3. P(X < 17) = 1.3e-5 and P(X > 68) = 1.8e-5 (exact sums),
# so a correct proxy fails one run in 30,000; a proxy sampling 2% (or 0.5%) passes 10% (78%).
ONE_PERCENT_WINDOW = (17, 68)


def test_one_percent_samples_about_one_percent(app: int) -> None:
    collector = CollectorProcess("--no-print")
    try:
        before = set(_App.seen)
        with sidecar_pair(app, f"127.0.0.1:{collector.port}", 1) as pair:
            assert hey(pair, ONE_PERCENT_N, 8)[0] == ONE_PERCENT_N
            marker = Client(pair)
            wait_spans(collector, marker.get({"x-b3-sampled": "1"}), 2)
            marker.close()
        rids = set(_App.seen) - before  # the x-request-ids a's sidecar made, as the app saw them
        spans = [s for s in spans_of(collector) if s["tags"]["guid:x-request-id"] in rids]
        clients = [s for s in spans if s["kind"] == "CLIENT"]
        servers = [s for s in spans if s["kind"] == "SERVER"]
        assert len(rids) == ONE_PERCENT_N + 1
        lo, hi = ONE_PERCENT_WINDOW
        assert lo <= len(clients) <= hi, len(clients)
        assert len(servers) == len(clients)  # b follows a's decision, never draws again
        sampled_rids = {rid for rid in rids if _App.seen[rid].get("x-b3-sampled") == "1"}
        assert {s["tags"]["guid:x-request-id"] for s in clients} == sampled_rids
        assert {s["tags"]["guid:x-request-id"] for s in servers} == sampled_rids
    finally:
        assert collector.stop() == 0


class _Failing(BaseHTTPRequestHandler):
    """A collector that answers 500, or answers nothing for 5s (slow)."""

    protocol_version = "HTTP/1.1"
    posts: list[str] = []
    slow = False

    def do_POST(self) -> None:
        self.posts.append(self.path)
        self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.slow:
            time.sleep(5)
        self.send_response(500)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def failing_collector(slow: bool) -> Iterator[str]:
    handler: type[_Failing] = type("Handler", (_Failing,), {"posts": [], "slow": slow})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
        assert handler.posts, "the proxy never tried to post"  # the test exercised export
        assert set(handler.posts) == {"/api/v2/spans"}
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def dead_collector() -> Iterator[str]:
    yield f"127.0.0.1:{free_port()}"  # nothing listens there


@pytest.mark.parametrize("kind", ["down", "500", "slow"])
def test_a_broken_collector_does_not_hurt_requests(app: int, kind: str) -> None:
    ctx = dead_collector() if kind == "down" else failing_collector(kind == "slow")
    with ctx as address, sidecar_pair(app, address, 100) as pair:
        client = Client(pair)
        started = time.monotonic()
        worst = 0.0
        for _ in range(300):
            t0 = time.monotonic()
            client.get()
            worst = max(worst, time.monotonic() - t0)
            if _ % 100 == 99:
                time.sleep(0.6)  # let the export thread try (and fail) between bursts
        total = time.monotonic() - started - 1.8
        client.close()
        assert worst < 0.5, worst
        assert total < 5, total
        deadline = time.monotonic() + 8  # slow: each post gives up after its 2s timeout
        while zipkin_stats(pair.a)["tracing.zipkin.reports_failed"] == 0:
            assert time.monotonic() < deadline, zipkin_stats(pair.a)
            time.sleep(0.1)
        assert zipkin_stats(pair.a)["tracing.zipkin.spans_sent"] == 0


@pytest.mark.parametrize(("headers", "trace_id", "span_id", "sampled", "debug"), [
    ([(b"X-B3-TraceId", TRACE_ID.encode()), (b"X-B3-SpanId", CALLER_SPAN.encode())],
     int(TRACE_ID, 16), int(CALLER_SPAN, 16), None, False),
    ([(b"x-b3-traceid", b"nothex"), (b"x-b3-spanid", CALLER_SPAN.encode()),
      (b"x-b3-sampled", b"1")], 0, 0, True, False),
    ([(b"x-b3-sampled", b"0"), (b"x-b3-flags", b"1")], 0, 0, True, True),
    ([(b"b3", b"0")], 0, 0, False, False),
    ([(b"b3", b"d")], 0, 0, True, True),
    ([(b"b3", f"{TRACE_ID[16:]}-{CALLER_SPAN}".encode())],
     int(TRACE_ID[16:], 16), int(CALLER_SPAN, 16), None, False),
    ([(b"traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-00".encode())],
     int(TRACE_ID, 16), int(CALLER_SPAN, 16), False, False),
    ([(b"traceparent", f"00-{TRACE_ID[:31]}-{CALLER_SPAN}-01".encode())], 0, 0, None, False),
    ([(b"x-other", b"1")], 0, 0, None, False),
])
def test_extract_reads_each_format(headers: list[tuple[bytes, bytes]], trace_id: int,
                                   span_id: int, sampled: bool | None, debug: bool) -> None:
    ctx = extract(headers)
    assert (ctx.trace_id, ctx.span_id, ctx.sampled, ctx.debug) == (
        trace_id, span_id, sampled, debug)


def test_flags_override_only_the_tracing_fields_they_name() -> None:
    env = {"PROXY_CONFIG": "tracing:\n  zipkin:\n    address: zipkin:9411\n  sampling: 3\n"}
    boot = build({"tracing": {"zipkin_address": None, "sampling": 50.0}}, env)
    assert boot.tracing == Tracing("zipkin:9411", 50.0)
    boot = build({"tracing": {"zipkin_address": "127.0.0.1:1", "sampling": None}}, {})
    assert boot.tracing == Tracing("127.0.0.1:1", 1.0)
    assert build({}, {}).tracing == Tracing()
