"""The sans-I/O HTTP/1.1 codec: bytes in, events out; limits; encoders."""

from __future__ import annotations

import pytest

from sidecar.http.h1 import H1ClientCodec, H1ServerCodec
from sidecar.http.h1_encode import chunk, encode_request_head, encode_response_head, last_chunk
from sidecar.http.h2_codec import request_head as h2_request_head
from sidecar.http.h2_codec import request_headers as h2_request_headers
from sidecar.http.h2_codec import response_head as h2_response_head
from sidecar.http.h2_codec import response_headers as h2_response_headers
from sidecar.http.stream import End, RequestHead, ResponseHead


def test_request_split_across_reads_with_pipelined_second() -> None:
    codec = H1ServerCodec()
    data = (b"POST /p?q=1 HTTP/1.1\r\nHost: Svc:80\r\nContent-Length: 5\r\nUser-Agent: t\r\n"
            b"X-Forwarded-For: 1.1.1.1\r\n\r\nhello"
            b"GET /two HTTP/1.1\r\nHost: svc\r\n\r\n")
    events = []
    for i in range(0, len(data), 7):
        events += codec.feed(data[i : i + 7])
    assert codec.error is None
    heads = [e for e in events if isinstance(e, RequestHead)]
    assert [h.path for h in heads] == [b"/p?q=1", b"/two"]
    first = heads[0]
    assert first.method == b"POST" and first.authority == b"Svc:80"
    assert first.content_length == 5 and first.user_agent == b"t"
    assert first.forwarded_for == b"1.1.1.1"
    assert b"".join(e for e in events if isinstance(e, bytes)) == b"hello"
    assert sum(isinstance(e, End) for e in events) == 2
    assert [n for n, _ in first.headers] == [b"User-Agent"]


def test_trace_headers_in_any_case_mark_only_their_own_request() -> None:
    codec = H1ServerCodec()
    events = codec.feed(b"GET /a HTTP/1.1\r\nHost: a\r\nX-B3-Sampled: 1\r\n\r\n"
                        b"GET /b HTTP/1.1\r\nHost: a\r\nX-Other: 1\r\n\r\n"
                        b"GET /c HTTP/1.1\r\nHost: a\r\nTraceparent: 00-x\r\n\r\n")
    heads = [e for e in events if isinstance(e, RequestHead)]
    assert [h.traced for h in heads] == [True, False, True]
    assert heads[0].headers == [(b"X-B3-Sampled", b"1")]  # still forwarded as received


def test_h2_trace_headers_mark_the_request() -> None:
    traced = h2_request_head([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a"),
                              (b":scheme", b"http"), (b"b3", b"0")], True)
    plain = h2_request_head([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a"),
                             (b":scheme", b"http"), (b"x-other", b"0")], True)
    assert (traced.traced, plain.traced) == (True, False)


def test_the_not_sampled_decision_is_written_by_both_encoders() -> None:
    head = RequestHead(b"GET", b"/", [(b"accept", b"*/*")])
    head.authority = b"b"
    assert b"x-b3-sampled" not in encode_request_head(head)
    assert (b"x-b3-sampled", b"0") not in h2_request_headers(head)
    head.not_sampled = True
    assert encode_request_head(head).endswith(b"accept: */*\r\nx-b3-sampled: 0\r\n\r\n")
    assert (b"x-b3-sampled", b"0") in h2_request_headers(head)



def test_the_upstream_service_time_is_replaced_by_this_proxys() -> None:
    codec = H1ClientCodec()
    (head, _end) = codec.feed(b"HTTP/1.1 204 No Content\r\nX-Envoy-Upstream-Service-Time: 9\r\n"
                              b"x-a: 1\r\n\r\n")  # fmt: skip
    assert isinstance(head, ResponseHead) and head.headers == [(b"x-a", b"1")]
    h2_head = h2_response_head([(b":status", b"204"), (b"x-envoy-upstream-service-time", b"9"),
                                (b"x-a", b"1")], end_stream=True)  # fmt: skip
    assert h2_head.headers == [(b"x-a", b"1")]
    assert b"service-time" not in encode_response_head(head, chunked=False, close=False)
    assert all(b"service-time" not in n for n, _ in h2_response_headers(head))
    head.service_time = 12
    assert encode_response_head(head, chunked=False, close=False).endswith(
        b"x-a: 1\r\nx-envoy-upstream-service-time: 12\r\n\r\n")
    assert (b"x-envoy-upstream-service-time", b"12") in h2_response_headers(head)

def test_hop_by_hop_consumed_and_connection_named_removed() -> None:
    codec = H1ServerCodec()
    (head, _end) = codec.feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-A\r\nX-A: 1\r\nX-B: 2\r\n"
        b"Keep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: x\r\n\r\n")
    assert isinstance(head, RequestHead)
    assert head.headers == [(b"X-B", b"2")]
    assert head.keep_alive is False and head.te_trailers is True


def test_chunked_request_with_trailers() -> None:
    codec = H1ServerCodec()
    events = codec.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")
    head, body, end = events
    assert isinstance(head, RequestHead) and head.chunked
    assert body == b"abc"
    assert isinstance(end, End) and end.trailers == [(b"X-T", b"1")]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nX: " + b"y" * 100_000, 431),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
    ],
)
def test_errors_carry_status(data: bytes, status: int) -> None:
    codec = H1ServerCodec()
    codec.feed(data)
    assert codec.error is not None and codec.error.status == status


def test_upgrade_tail_returned() -> None:
    codec = H1ServerCodec()
    events = codec.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                        b"Upgrade: websocket\r\n\r\nRAW")
    assert isinstance(events[0], RequestHead) and events[0].upgrade == b"websocket"
    assert codec.upgraded and codec.upgrade_tail == b"RAW"


def test_client_codec_informational_head_and_eof_bodies() -> None:
    codec = H1ClientCodec()
    events = codec.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                        b"Connection: keep-alive\r\n\r\nok")
    head, body, end = events
    assert isinstance(head, ResponseHead) and head.status == 200 and head.reason == b"OK"
    assert head.content_length == 2 and head.headers == []
    assert body == b"ok" and isinstance(end, End)
    codec.expect_no_body = True  # HEAD
    (h2, e2) = codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert isinstance(h2, ResponseHead) and isinstance(e2, End)
    (h3, b3) = codec.feed(b"HTTP/1.1 200 OK\r\n\r\nuntil-close")
    assert isinstance(h3, ResponseHead) and not h3.keep_alive and b3 == b"until-close"
    assert codec.in_message
    assert isinstance(codec.feed_eof()[0], End)


def test_encoders() -> None:
    head = RequestHead(b"POST", b"/x", [(b"A", b"1")])
    head.authority = b"svc"
    head.chunked = True
    head.request_id = b"id"
    assert encode_request_head(head) == (
        b"POST /x HTTP/1.1\r\nhost: svc\r\nA: 1\r\nx-request-id: id\r\n"
        b"transfer-encoding: chunked\r\n\r\n")
    resp = ResponseHead(404, b"Not Found", [(b"B", b"2")])
    assert encode_response_head(resp, chunked=False, close=True) == (
        b"HTTP/1.1 404 Not Found\r\nB: 2\r\nconnection: close\r\n\r\n")
    assert b"".join(chunk(b"abc")) == b"3\r\nabc\r\n"
    assert last_chunk([(b"T", b"v")]) == b"0\r\nT: v\r\n\r\n"


@pytest.mark.parametrize(
    ("version", "extra", "keep_alive"),
    [
        (b"1.1", b"", True),
        (b"1.1", b"Connection: close\r\n", False),
        (b"1.1", b"User-Agent: t\r\n", True),
        (b"1.0", b"", False),
        (b"1.0", b"Connection: keep-alive\r\n", True),
        (b"1.0", b"Proxy-Connection: keep-alive\r\n", True),
        (b"1.0", b"User-Agent: t\r\n", False),
    ],
)
def test_request_version_and_keep_alive(version: bytes, extra: bytes, keep_alive: bool) -> None:
    codec = H1ServerCodec()
    (head, _end) = codec.feed(b"GET / HTTP/" + version + b"\r\nHost: a\r\n" + extra + b"\r\n")
    assert codec.error is None
    assert isinstance(head, RequestHead)
    assert head.version == version.decode() and head.keep_alive is keep_alive
