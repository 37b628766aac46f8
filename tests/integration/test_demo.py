"""`sidecar demo` end to end: the command a newcomer runs, judged by what it prints and leaves.

Each test runs the real command in a subprocess (real apps, real sidecars, real sockets) and
reads its output: the answer from b through a, and, for every request, the three access-log
lines (a's sidecar inbound and outbound, b's sidecar inbound) carrying the request's id and 200;
then the golden-signals table, whose numbers must add up to what the demo sent, and the waterfall
of one trace through a's and b's sidecars.
"""

from __future__ import annotations

import contextlib
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT = 90.0
HOPS = ("a-1 inbound", "a-1 outbound")  # then b-1 inbound (b v1) or b-2 inbound (b v2)
B_SIDECAR = {"v1": "b-1", "v2": "b-2"}
_CURL = re.compile(r"^\$ curl -H 'x-request-id: ([^']+)' (\S+)$", re.MULTILINE)
_ROW = re.compile(
    r"^  (?P<service>\S+)\s+(?P<version>v\d)\s+(?P<reporter>destination|source)\s+(?P<by>\S+)"
    r"\s+(?P<requests>\d+)\s+(?P<rate>[\d.]+)\s+(?P<errors>\d+)\s+(?P<ratio>[\d.]+) %"
    r"\s+(?P<p50>[\d.]+)\s+(?P<p99>[\d.]+)$",
    re.MULTILINE,
)
A_SERVICE, B_SERVICE = "a.default.svc.cluster.local", "b.default.svc.cluster.local"
FAIL_EVERY = 4  # b v2 answers every 4th request with 503


def run_demo(*args: str) -> tuple[int, str, float]:
    """Run `sidecar demo ARGS`; (exit status, stdout + stderr, seconds taken)."""
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "demo", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=DEMO_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the demo stops its children on SIGTERM
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"sidecar demo did not finish in {DEMO_TIMEOUT:.0f} s:\n{out}")
    return proc.returncode, out, time.monotonic() - began


def request_blocks(out: str) -> list[tuple[str, str]]:
    """(request id, the text printed for that request) for each request the demo sent."""
    starts = list(_CURL.finditer(out))
    ends = [m.start() for m in starts[1:]] + [len(out)]
    return [(m.group(1), out[m.start() : end]) for m, end in zip(starts, ends, strict=True)]


def assert_each_request_went_through_both_sidecars(out: str, expected: int) -> None:
    blocks = request_blocks(out)
    assert len(blocks) == expected, out
    for request_id, text in blocks:
        assert "hello from a (v1)" in text, text
        version = re.search(r"hello from b \((v\d)\)", text)  # b's answer, relayed by a
        assert version, text
        assert f"x-request-id: {request_id}" in text, text  # b saw the id the client sent
        hops = (*HOPS, f"{B_SIDECAR[version.group(1)]} inbound")  # the b that answered logged
        for n, hop in enumerate(hops, 1):
            line = next((ln for ln in text.splitlines() if ln.startswith(f"  {n}. {hop} ")), "")
            assert line, f"no {hop} line for {request_id}:\n{text}"
            assert f'"{request_id}"' in line, line
            assert re.search(r'"[A-Z]+ \S+ HTTP/1\.1" 200 ', line), line


def assert_canary_split(out: str) -> None:
    """95/5 between b v1 and v2 within binomial bounds, and the Android rule sending all to v2."""
    section = out[out.index("--- the canary ") :]
    assert "200 requests to a; b answered from:" in section, section
    counts = [int(n) for n in re.findall(r"^    v[12]: +(\d+)", section, re.MULTILINE)]
    assert len(counts) == 4, section  # v1, v2 of the split; v1, v2 of the header rule
    v1, v2, android_v1, android_v2 = counts
    assert v1 + v2 == 200, section
    # 5 % of 200: mean 10, sd 3.1; 0 (p = 3.5e-5) or more than 25 (5 sd) means the split is off.
    assert 1 <= v2 <= 25, section
    assert (android_v1, android_v2) == (0, 5), section
    assert "no answer from b" not in section, section


def golden_rows(out: str) -> tuple[int, dict[tuple[str, str, str], dict[str, str]]]:
    """(requests the demo says it sent, rows keyed by (reporter, service, version))."""
    section = out[out.index("--- golden signals ") :]
    end = section.find("\n--- ")  # the next heading, if any
    section = section if end < 0 else section[:end]
    sent = re.search(r"The demo sent (\d+) requests to a in ([\d.]+) s", section)
    assert sent, section
    rows = {(m["reporter"], m["service"], m["version"]): m.groupdict()
            for m in _ROW.finditer(section)}  # fmt: skip
    return int(sent.group(1)), rows


def assert_totals(out: str, expected_sent: int) -> None:
    """a's sidecar counted every request sent; b's sidecars and a's (as source) every call."""
    sent, rows = golden_rows(out)
    assert sent == expected_sent, out
    a_in = [r for (rep, svc, _), r in rows.items() if rep == "destination" and svc == A_SERVICE]
    assert sum(int(r["requests"]) for r in a_in) == sent, rows
    for reporter in ("destination", "source"):
        calls = [r for (rep, svc, _), r in rows.items() if rep == reporter and svc == B_SERVICE]
        assert sum(int(r["requests"]) for r in calls) == sent, rows


def assert_golden_signals(out: str, expected_sent: int) -> None:
    """The table adds up to what was sent, from both sides, and shows the canary's errors."""
    assert_totals(out, expected_sent)
    sent, rows = golden_rows(out)
    assert set(rows) == {
        ("destination", A_SERVICE, "v1"), ("destination", B_SERVICE, "v1"),
        ("destination", B_SERVICE, "v2"), ("source", B_SERVICE, "v1"),
        ("source", B_SERVICE, "v2"),
    }, rows  # fmt: skip

    def n(reporter: str, service: str, version: str, field: str = "requests") -> int:
        return int(rows[(reporter, service, version)][field])

    assert n("destination", A_SERVICE, "v1") == sent
    for reporter in ("destination", "source"):
        assert n(reporter, B_SERVICE, "v1") + n(reporter, B_SERVICE, "v2") == sent, rows
    for version in ("v1", "v2"):  # the caller's and the callee's sidecar agree
        for field in ("requests", "errors"):
            assert n("source", B_SERVICE, version, field) == n(
                "destination", B_SERVICE, version, field
            ), rows
    v2 = n("destination", B_SERVICE, "v2")
    assert n("destination", B_SERVICE, "v2", "errors") == v2 // FAIL_EVERY > 0, rows
    assert float(rows[("destination", B_SERVICE, "v2")]["ratio"]) > 0, rows
    assert n("destination", B_SERVICE, "v1", "errors") == 0, rows
    assert float(rows[("destination", B_SERVICE, "v1")]["ratio"]) == 0, rows
    assert n("destination", A_SERVICE, "v1", "errors") == 0, rows
    for row in rows.values():
        assert 0 < float(row["p50"]) <= float(row["p99"]), row
        assert float(row["rate"]) > 0, row
    by = {(r["reporter"], r["service"]): r["by"] for r in rows.values()}
    assert by[("destination", A_SERVICE)] == "a-1" and by[("source", B_SERVICE)] == "a-1", by
    assert rows[("destination", B_SERVICE, "v2")]["by"] == "b-2", rows


def assert_one_trace_through_both_sidecars(out: str) -> None:
    section = out[out.index("--- one trace ") :]
    fetched = re.search(r"GET /api/v2/trace/([0-9a-f]{32})\)", section)
    assert fetched, section
    head_line = r"^  trace ([0-9a-f]+): (\d+) spans, services a\.default, b\.default,"
    head = re.search(head_line, section, re.MULTILINE)
    assert head and head.group(1) == fetched.group(1), section
    assert int(head.group(2)) >= 3, section  # a's SERVER and CLIENT, b's SERVER
    lines = section.splitlines()

    def first(pattern: str) -> int:
        found = [i for i, ln in enumerate(lines) if re.match(pattern, ln)]
        assert found, f"no line matching {pattern!r}:\n{section}"
        return found[0]

    a_server = first(r"  a\.default .* SERVER ")
    a_client = first(r"  \s+a\.default .* CLIENT ")
    b_server = first(r"  \s+b\.default .* SERVER ")
    assert a_server < a_client < b_server, section  # b's server span hangs under a's client span
    assert "x-b3-sampled: 1" in section, section


def address_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@pytest.mark.timeout(120)
def test_demo_shows_each_request_through_both_sidecars_then_stops() -> None:
    code, out, took = run_demo("--requests", "2")
    assert code == 0, out
    assert took < 60, f"took {took:.1f} s"
    assert_each_request_went_through_both_sidecars(out, expected=2)
    assert "2 of 2 requests answered 200; 2 of 2 left all 3 access-log lines." in out
    assert_canary_split(out)
    assert_golden_signals(out, expected_sent=2 + 200 + 5 + 1)  # + the traced request
    assert_one_trace_through_both_sidecars(out)
    for host, port in (("127.0.0.10", 9080), ("127.0.0.20", 9080), ("127.0.0.10", 18081),
                       ("127.0.0.10", 15090), ("127.0.0.30", 15090)):  # fmt: skip
        assert address_free(host, port), f"{host}:{port} still in use after the demo"


@pytest.mark.timeout(60)
def test_demo_refuses_to_start_when_an_address_is_taken() -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.20", 9080))
        squatter.listen()
        code, out, _ = run_demo()
    assert code != 0, out
    assert "127.0.0.20:9080" in out and "in use" in out, out


@pytest.mark.capture
@pytest.mark.timeout(150)
def test_demo_with_iptables_capture_in_network_namespaces() -> None:
    from sidecar.capture import netns

    ok, reason = netns.available()
    require(ok, reason)
    before = set(Path("/run/netns").iterdir()) if Path("/run/netns").exists() else set()
    code, out, _ = run_demo("--capture", "--requests", "2")
    assert code == 0, out
    assert_each_request_went_through_both_sidecars(out, expected=2)
    assert_totals(out, expected_sent=2 + 1)  # + the request marked for tracing
    after = set(Path("/run/netns").iterdir()) if Path("/run/netns").exists() else set()
    assert not {p.name for p in after - before if p.name.startswith("sdemo-")}, "netns left"


@pytest.mark.timeout(120)
def test_demo_keep_running_serves_until_ctrl_c() -> None:
    from sidecar.demo.client import fetch

    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "demo", "--requests", "1", "--keep-running"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_lines() -> None:
        for ln in proc.stdout or ():
            lines.put(ln)

    reader = threading.Thread(target=read_lines)
    reader.start()
    seen: list[str] = []
    try:
        end = time.monotonic() + DEMO_TIMEOUT
        while not any("Ctrl-C stops" in ln for ln in seen):
            assert proc.poll() is None or not lines.empty(), "".join(seen)
            assert time.monotonic() < end, "".join(seen)
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1.0))
        answer = fetch("http://127.0.0.10:9080/", [("x-request-id", "by-hand")], 10.0)
        assert answer.status == 200, answer
        assert re.search(r"hello from b \(v[12]\)", answer.body), answer.body
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        reader.join(timeout=10)
    assert address_free("127.0.0.10", 9080), "a's sidecar still listening after Ctrl-C"
