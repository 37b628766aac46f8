"""gRPC message counting across DATA chunk boundaries, and the counts in the exposition."""

from __future__ import annotations

import random

import pytest

from sidecar.http.grpc_messages import GrpcMessages, MessageCounter, for_call
from sidecar.http.stream import RequestHead
from sidecar.observability.metrics_render import render
from tests.unit.test_metrics import request, runtime_for


def frame(payload: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(payload).to_bytes(4, "big") + payload


def count(chunks: list[bytes]) -> int:
    c = MessageCounter()
    for chunk in chunks:
        c.feed(chunk)
    return c.count


def test_many_messages_in_one_chunk_and_empty_messages() -> None:
    assert count([frame(b"a") + frame(b"") + frame(b"xyz" * 100)]) == 3


def test_one_message_over_many_chunks() -> None:
    body = frame(b"x" * 100_000)
    assert count([body[i:i + 7000] for i in range(0, len(body), 7000)]) == 1


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 6])
def test_prefix_split_over_chunks(cut: int) -> None:
    body = frame(b"hello") + frame(b"world!")
    at = len(frame(b"hello")) + cut - 1  # inside (or just after) the second prefix
    assert count([body[:at], body[at:]]) == 2
    assert count([body[:at], b"", body[at:at + 1], body[at + 1:]]) == 2


def test_every_split_of_a_random_stream_counts_the_same() -> None:
    rng = random.Random(5)
    messages = [bytes(rng.randrange(0, 40)) for _ in range(60)]
    body = b"".join(frame(m) for m in messages)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randrange(1, 40)))
        chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        assert count(chunks) == len(messages)
    assert count([body[i:i + 1] for i in range(len(body))]) == len(messages)


def test_a_message_counts_when_it_starts_and_grpc_web_trailers_do_not() -> None:
    assert count([frame(b"x" * 50)[:3]]) == 1  # a call cut short still sent that message
    assert count([frame(b"m") + frame(b"grpc-status:0\r\n", flag=0x80)]) == 1


def test_counts_reach_the_series_and_the_exposition() -> None:
    rt, _ = runtime_for("reviews-v2-7d9f8c6b5d-x2k4q")
    for n in (3, 4):
        info = request("inbound", "inbound|9080||", "10.0.0.5")
        info.grpc_status = 0
        info.grpc_messages = m = GrpcMessages()
        m.request.feed(frame(b"q") * n)
        m.response.feed(frame(b"r"))
        rt.metrics.record_http(info, rt)
    rt.metrics.record_http(request("inbound", "inbound|9080||", "10.0.0.5"), rt)  # plain HTTP
    text = render(rt.metrics, {}).decode()
    [req] = [ln for ln in text.splitlines() if ln.startswith("istio_request_messages_total{")]
    [resp] = [ln for ln in text.splitlines() if ln.startswith("istio_response_messages_total{")]
    assert 'request_protocol="grpc"' in req and req.endswith(" 7")
    assert 'grpc_response_status="0"' in resp and resp.endswith(" 2")
    assert "# TYPE istio_request_messages_total counter" in text


@pytest.mark.parametrize(("content_type", "counted"), [
    (b"application/grpc", True), (b"application/grpc+proto", True),
    (b"application/grpc-web", False), (b"application/grpc-web-text+proto", False),
])  # fmt: skip
def test_only_grpc_proper_is_counted(content_type: bytes, counted: bool) -> None:
    head = RequestHead(b"POST", b"/s/M", [(b"content-type", content_type)])
    head.grpc = True  # as the HTTP/2 codec marks any application/grpc*
    assert (for_call(head) is not None) is counted
