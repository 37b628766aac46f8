"""The demo's own parts, without the proxy: the two apps over real sockets, log reading, and the
golden signals from hand-built scrapes."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.demo.client import Answer, fetch, wait_ok
from sidecar.demo.promtext import parse
from sidecar.demo.report import Exchange
from sidecar.demo.signals import golden_signals
from sidecar.demo.trail import Hop, HopSpec, response_code, trail

REPO = Path(__file__).resolve().parents[2]
B_HOST = "b.default.svc.cluster.local:9080"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def apps() -> Iterator[tuple[str, str]]:
    """App b, and app a calling b directly (no sidecar); their base URLs."""
    a_port, b_port = free_port(), free_port()
    procs = []
    try:
        for argv in (
            ["b", "--listen", f"127.0.0.1:{b_port}"],
            ["a", "--listen", f"127.0.0.1:{a_port}", "--upstream", f"127.0.0.1:{b_port}",
             "--upstream-host", B_HOST],
        ):  # fmt: skip
            procs.append(subprocess.Popen([sys.executable, "-m", "sidecar.demo.apps", *argv]))
        urls = (f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}")
        for url in urls:
            assert wait_ok(url + "/healthz", 10.0).status == 200
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


@pytest.mark.timeout(30)
def test_app_a_relays_b_and_forwards_request_id_and_b3(apps: tuple[str, str]) -> None:
    a_url, _ = apps
    sent = [("x-request-id", "rid-1"), ("x-b3-traceid", "80f198ee56343ba8"), ("x-b3-sampled", "1")]
    answer = fetch(a_url + "/", sent, 5.0)
    assert answer.status == 200, answer
    assert answer.body.startswith(f"hello from a (v1); http://{B_HOST}/api/v1/hello answered 200:")
    assert "  hello from b (v1)" in answer.body
    assert f"host: {B_HOST}" in answer.body
    assert "x-request-id: rid-1" in answer.body
    assert "x-b3-traceid: 80f198ee56343ba8" in answer.body
    assert answer.header("x-demo-seen-request-id-a") == "rid-1"
    assert answer.header("x-demo-seen-request-id-b") == "rid-1"


@pytest.mark.timeout(30)
def test_app_a_answers_502_when_b_is_gone() -> None:
    port = free_port()  # nothing listens here
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.demo.apps", "a", "--listen", f"127.0.0.1:{port}",
         "--upstream", "127.0.0.1:1"],
    )  # fmt: skip
    try:
        assert wait_ok(f"http://127.0.0.1:{port}/healthz", 10.0).status == 200
        answer = fetch(f"http://127.0.0.1:{port}/", (), 5.0)
        assert answer.status == 502
        assert "could not call" in answer.body
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.timeout(10)
def test_client_reports_a_refused_connection_instead_of_raising() -> None:
    answer = fetch(f"http://127.0.0.1:{free_port()}/", (), 2.0)
    assert answer.status == 0
    assert "Refused" in answer.error


def test_trail_picks_each_hop_by_request_id_and_direction() -> None:
    rid = "6f1c2c4e-0000-4000-8000-000000000001"
    a_log = [
        '[2024-01-01T00:00:00.000Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 120 3 2 "-" '
        '"curl" "other-id" "127.0.0.10:9080" "127.0.0.1:18081"',
        f'[2024-01-01T00:00:01.000Z] "GET /hello HTTP/1.1" 200 - via_upstream - "-" 0 80 1 1 "-" '
        f'"demo-app-a" "{rid}" "{B_HOST}" "127.0.0.20:9080" outbound|9080||b',
        f'[2024-01-01T00:00:01.000Z] "GET / HTTP/1.1" 503 UF - "-" 0 120 3 2 "-" '
        f'"curl" "{rid}" "127.0.0.10:9080" "127.0.0.1:18081" inbound|9080||',
    ]
    b_log = [f'{{"response_code": 200, "x_request_id": "{rid}", "authority": "{B_HOST}"}}']
    specs = (
        HopSpec("a-1", "inbound", B_HOST),
        HopSpec("a-1", "outbound", B_HOST),
        HopSpec("b-1", "inbound"),
    )
    hops = trail(specs, {"a-1": a_log, "b-1": b_log}, {rid})
    assert [h.line for h in hops] == [a_log[2], a_log[1], b_log[0]]
    assert [h.response_code for h in hops] == [503, 200, 200]
    assert trail(specs, {"a-1": a_log}, {"nobody"})[0].line == ""
    assert response_code("garbage") is None


@pytest.mark.timeout(30)
def test_app_b_fails_every_nth_request_but_not_health_checks() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.demo.apps", "b", "--listen", f"127.0.0.1:{port}",
         "--version", "v2", "--fail-every", "3"],
    )  # fmt: skip
    try:
        assert wait_ok(f"http://127.0.0.1:{port}/healthz", 10.0).status == 200
        answers = [fetch(f"http://127.0.0.1:{port}/hello", (), 5.0) for _ in range(6)]
        assert [a.status for a in answers] == [200, 200, 503, 200, 200, 503]
        assert "error from b (v2)" in answers[2].body
        assert fetch(f"http://127.0.0.1:{port}/healthz", (), 5.0).status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_an_exchange_is_complete_when_the_hops_log_what_b_answered() -> None:
    spec = HopSpec("a-1", "inbound")

    def exchange(relayed: int, codes: list[int]) -> Exchange:
        body = f"hello from a (v1); http://{B_HOST}/api/v1/hello answered {relayed}:\n"
        hops = tuple(Hop(spec, f'"GET / HTTP/1.1" {c} - rest') for c in codes)
        return Exchange(1, "http://a/", "rid", Answer(200, "OK", (), body), hops)

    assert exchange(200, [200, 200, 200]).complete
    assert exchange(503, [200, 503, 503]).complete  # the canary's failure, logged truly
    assert not exchange(503, [200, 200, 503]).complete
    assert not exchange(200, [503, 200, 200]).complete
    assert not exchange(200, []).complete


def test_golden_signals_sum_series_per_reporter_service_and_version() -> None:
    def scrape(reporter: str, version: str, code: str, n: int, fast: int) -> str:
        labels = (f'reporter="{reporter}",destination_service="b.default.svc.cluster.local",'
                  f'destination_version="{version}",response_code="{code}"')  # fmt: skip
        buckets = [("1.0", fast), ("5.0", n), ("+Inf", n)]
        lines = [f"istio_requests_total{{{labels}}} {n}"]
        lines += [f'istio_request_duration_milliseconds_bucket{{{labels},le="{le}"}} {c}.0'
                  for le, c in buckets]  # fmt: skip
        return "\n".join(lines)

    b2 = "\n".join(
        [scrape("destination", "v2", "200", 6, 6), scrape("destination", "v2", "503", 2, 0)]
    )
    a1 = scrape("source", "v2", "200", 6, 0)
    rows = golden_signals({"b-2": parse(b2), "a-1": parse(a1)})
    assert [(r.reporter, r.version, r.requests, r.errors) for r in rows] == [
        ("destination", "v2", 8, 2), ("source", "v2", 6, 0),
    ]  # fmt: skip
    assert rows[0].reported_by == {"b-2"} and rows[0].error_ratio == 0.25
    assert rows[0].buckets == {1.0: 6, 5.0: 8, float("inf"): 8}
    assert rows[0].quantile(0.5) == pytest.approx(4 / 6)  # rank 4 of 6 in (0, 1]
    assert rows[1].quantile(0.5) == pytest.approx(3.0)  # rank 3 of 6 in (1, 5]
    assert rows[0].rate(2.0) == 4.0
