"""Protocol detection on real first bytes: TLS ClientHellos from Python's ssl, h2, HTTP/1.x."""

from __future__ import annotations

import ssl

import pytest

from sidecar.http.codec_select import H2_PREFACE
from sidecar.listener.sniff import MAX_HTTP_LINE, Detection, classify, parse_client_hello


def client_hello(server_name: str | None, alpn: list[str] | None = None) -> bytes:
    """The bytes a real TLS client sends first (Python's ssl, as any client would)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_tls_client_hello_gives_sni_and_alpn() -> None:
    hello = client_hello("Reviews.Default.svc.cluster.local", ["h2", "http/1.1"])
    found = classify(hello)
    assert found == Detection("tls", "reviews.default.svc.cluster.local", ("h2", "http/1.1"))
    assert found.transport_protocol == "tls"
    assert found.application_protocols == ("h2", "http/1.1")


def test_tls_without_sni_or_alpn() -> None:
    assert classify(client_hello(None)) == Detection("tls")


def test_tls_hello_split_anywhere_needs_more_bytes_until_whole() -> None:
    hello = client_hello("db.example.com", ["mysql"])
    for cut in range(1, len(hello)):
        assert classify(hello[:cut]) is None, cut
    assert classify(hello) == Detection("tls", "db.example.com", ("mysql",))


def test_tls_hello_fragmented_over_two_records() -> None:
    hello = client_hello("frag.example.com")
    body = hello[5:]
    half = len(body) // 2
    rec = hello[:3]
    two = (
        rec + half.to_bytes(2, "big") + body[:half]
        + rec + (len(body) - half).to_bytes(2, "big") + body[half:]
    )  # fmt: skip
    assert classify(two) == Detection("tls", "frag.example.com")


def test_garbage_inside_a_tls_hello_is_tls_without_names_never_an_exception() -> None:
    hello = bytearray(client_hello("x.example.com", ["h2"]))
    # Every single-byte corruption after the record header: still TLS, never a crash.
    for i in range(9, len(hello)):
        bad = bytearray(hello)
        bad[i] ^= 0xFF
        found = classify(bytes(bad))
        assert found is None or found.kind == "tls", i
    # A hello whose inner lengths point past its end.
    assert parse_client_hello(b"\x03\x03" + b"\x00" * 32 + b"\xff") == Detection("tls")
    assert parse_client_hello(b"") == Detection("tls")


def test_bytes_that_only_start_like_tls_are_tcp() -> None:
    assert classify(b"\x16\x01") == Detection("tcp")  # not a TLS version
    assert classify(b"\x16\x03\x01\x00\x10\x02") == Detection("tcp")  # ServerHello, not Client
    assert classify(b"\x16") is None


def test_h2_preface() -> None:
    assert classify(H2_PREFACE + b"\x00\x00\x12\x04") == Detection("h2c")
    for cut in range(1, len(H2_PREFACE)):
        assert classify(H2_PREFACE[:cut]) is None, cut
    assert Detection("h2c").application_protocols == ("h2c",)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"GET /reviews/1?x=1 HTTP/1.1\r\nHost: reviews\r\n\r\n", "http/1.1"),
        (b"POST / HTTP/1.0\r\n\r\n", "http/1.0"),
        (b"PRI /odd HTTP/1.1\r\n\r\n", "http/1.1"),
        (b"M-SEARCH * HTTP/1.1\r\n", "http/1.1"),
        (b"OPTIONS http://a.example:80/ HTTP/1.1\r\n", "http/1.1"),
    ],
)
def test_http1_request_line_split_at_every_byte(line: bytes, kind: str) -> None:
    end = line.index(b"\r\n") + 2
    for cut in range(1, end):
        assert classify(line[:cut]) is None, line[:cut]
    assert classify(line[:end]) == Detection(kind)
    assert classify(line) == Detection(kind)
    assert Detection(kind).transport_protocol == "raw_buffer"
    assert Detection(kind).application_protocols == (kind,)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01\x02binary",  # a non-token byte before the first space
        b"hello\n",
        b"GET  / HTTP/1.1\r\n",  # empty target
        b"GET / HTTP/2.0\r\n",
        b"GET / HTTP/1.1\n",  # bare LF
        b"GET / XTTP",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"*1\r\n$4\r\nPING\r\n",  # redis
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",  # broken h2 preface
    ],
)
def test_opaque_bytes_are_tcp(data: bytes) -> None:
    assert classify(data) == Detection("tcp")
    assert Detection("tcp").application_protocols == ()


def test_binary_junk_is_decided_on_the_first_byte() -> None:
    assert classify(b"\x00") == Detection("tcp")
    assert classify(b"{") == Detection("tcp")


def test_endless_request_line_stops_at_the_cap() -> None:
    long = b"GET /" + b"a" * MAX_HTTP_LINE
    assert classify(long[: MAX_HTTP_LINE - 1]) is None
    assert classify(long) == Detection("tcp")
    assert classify(b"") is None
