"""gRPC message counters end to end: grpcio client -> sidecar a -> sidecar b -> grpcio server.

Each call kind (unary, client streaming, server streaming, bidi) is made once; after each, both
sidecars' Prometheus ports (the 15090 role) must show istio_request_messages_total and
istio_response_messages_total grown by exactly the messages that call sent each way, for
reporter "source" on a and "destination" on b. A gRPC-Web request over HTTP/1.1 then passes the
same sidecars without being counted. promtool must accept both expositions.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import require

from .grpc_service import EchoServer, channel, method, upload_messages, wait_channel_ready
from .mesh_two import A_IP, B_IP, NAMESPACE, mesh_two_yaml
from .proxy_fixtures import free_port
from .test_metrics import ACCEPTED_LINT, Mesh, mesh_sidecar, scrape

AUTHORITY = f"b.{NAMESPACE}.svc.cluster.local"


@pytest.fixture(scope="module")
def pair() -> Iterator[Mesh]:
    with EchoServer(B_IP) as app:
        port, a_prom, b_prom = free_port(), free_port(), free_port()
        config = mesh_two_yaml(port, app.port, "grpc", "GRPC")
        b = mesh_sidecar(config, "b-1", B_IP, b_prom, NAMESPACE).start()
        a = mesh_sidecar(config, "a-1", A_IP, a_prom, NAMESPACE)
        try:
            a.start()
            yield Mesh(a, b, port, a_prom, b_prom)
        finally:
            for sc in (a, b):
                if sc.proc is not None:
                    sc.__exit__(None)


def messages(prom: int) -> tuple[int, int]:
    """Sums of (request, response) message counters in one scrape."""
    _, text = scrape(prom)
    out = [0, 0]
    for line in text.splitlines():
        for i, name in enumerate(("istio_request_messages_total{",
                                  "istio_response_messages_total{")):  # fmt: skip
            if line.startswith(name):
                out[i] += int(float(line.rsplit(" ", 1)[1]))
    return out[0], out[1]


def wait_for(pair: Mesh, expected: tuple[int, int]) -> None:
    """Both reporters reach `expected` (the proxies record a call when its stream ends)."""
    deadline = time.monotonic() + 10
    seen = (messages(pair.a_prom), messages(pair.b_prom))
    while seen != (expected, expected) and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = (messages(pair.a_prom), messages(pair.b_prom))
    assert seen == (expected, expected), seen


def test_each_call_kind_counts_its_messages_on_both_reporters(pair: Mesh) -> None:
    ch = channel(f"127.0.0.1:{pair.port}", authority=f"{AUTHORITY}:{pair.port}")
    try:
        wait_channel_ready(ch)
        assert ch.unary_unary(method("Unary"))(b"x", timeout=5) == b"x"
        wait_for(pair, (1, 1))
        reply = ch.stream_unary(method("Upload"))(upload_messages(5, 70_000), timeout=10)
        assert reply.startswith(b"count=5 ")  # messages of 70 KB span many DATA frames
        wait_for(pair, (6, 2))
        got = list(ch.unary_stream(method("Download"))(b"4,100", timeout=5))
        assert len(got) == 4
        wait_for(pair, (7, 6))
        chat = list(ch.stream_stream(method("Chat"))(iter([b"1", b"2", b"3"]), timeout=5))
        assert chat == [b"echo:1", b"echo:2", b"echo:3"]
        wait_for(pair, (10, 9))
    finally:
        ch.close()
    _, a_text = scrape(pair.a_prom)
    _, b_text = scrape(pair.b_prom)
    [a_line] = [ln for ln in a_text.splitlines() if ln.startswith("istio_request_messages_total{")]
    assert 'reporter="source"' in a_line and 'request_protocol="grpc"' in a_line
    assert 'grpc_response_status="0"' in a_line and 'destination_workload="b-1"' in a_line
    [b_line] = [ln for ln in b_text.splitlines() if ln.startswith("istio_response_messages_total{")]
    assert 'reporter="destination"' in b_line and 'destination_workload="b-1"' in b_line


def _requests(prom: int) -> int:
    _, text = scrape(prom)
    return sum(int(float(ln.rsplit(" ", 1)[1])) for ln in text.splitlines()
               if ln.startswith("istio_requests_total{"))  # fmt: skip


def test_grpc_web_over_http1_is_not_counted(pair: Mesh) -> None:
    before = (messages(pair.a_prom), messages(pair.b_prom))
    calls = (_requests(pair.a_prom) + 1, _requests(pair.b_prom) + 1)
    body = b"".join(bytes([0]) + len(m).to_bytes(4, "big") + m for m in (b"one", b"two"))
    conn = http.client.HTTPConnection("127.0.0.1", pair.port, timeout=10)
    try:
        conn.request("POST", method("Unary"), body=body, headers={
            "host": f"{AUTHORITY}:{pair.port}", "content-type": "application/grpc-web+proto"})
        conn.getresponse().read()
    finally:
        conn.close()
    deadline = time.monotonic() + 10  # until both reporters recorded the request
    while (_requests(pair.a_prom), _requests(pair.b_prom)) != calls:
        assert time.monotonic() < deadline, calls
        time.sleep(0.1)
    assert (messages(pair.a_prom), messages(pair.b_prom)) == before


@pytest.mark.parametrize("side", ["a", "b"])
def test_promtool_accepts_the_message_counters(pair: Mesh, side: str) -> None:
    require(shutil.which("promtool") is not None, "promtool is not installed")
    _, text = scrape(pair.a_prom if side == "a" else pair.b_prom)
    assert "# TYPE istio_request_messages_total counter" in text
    res = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                         capture_output=True, timeout=30)  # fmt: skip
    problems = (res.stdout + res.stderr).decode().strip().splitlines()
    assert res.returncode in (0, 3), problems
    unexpected = [p for p in problems
                  if not any(p.startswith(n) and p.endswith(why) for n, why in ACCEPTED_LINT)]
    assert not unexpected, unexpected
