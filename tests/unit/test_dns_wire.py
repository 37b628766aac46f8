"""DNS wire format: encoding, decoding, compression pointers, and hostile input."""

from __future__ import annotations

import random
import struct

import pytest

from sidecar.upstream.dns_wire import (
    CLASS_IN,
    FLAG_QR,
    FLAG_RD,
    FLAG_TC,
    RCODE_NXDOMAIN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_SOA,
    Message,
    Question,
    Record,
    Soa,
    WireError,
    encode_message,
    encode_query,
    parse_message,
    read_name,
)

HEADER = struct.Struct("!HHHHHH")


def test_query_encoding_is_rfc1035() -> None:
    q = encode_query(0x1234, "Backend.Test.", TYPE_AAAA)
    assert q[:12] == HEADER.pack(0x1234, FLAG_RD, 1, 0, 0, 0)
    assert q[12:] == b"\x07backend\x04test\x00" + struct.pack("!HH", TYPE_AAAA, CLASS_IN)
    msg = parse_message(q)
    assert msg is not None and not msg.is_response
    assert msg.questions == (Question("backend.test", TYPE_AAAA, CLASS_IN),)


@pytest.mark.parametrize(
    "name", ["a..b", "x" * 64 + ".com", ".".join(["abcdefghi"] * 26), "bücher.example", ".lead"]
)
def test_impossible_names_are_refused(name: str) -> None:
    with pytest.raises(WireError):
        encode_query(1, name, TYPE_A)


def test_round_trip_with_compression() -> None:
    soa = Soa("ns.test.internal", "admin.test.internal", 7, 30)
    msg = Message(
        42,
        FLAG_QR | RCODE_NXDOMAIN,
        (Question("www.test.internal", TYPE_A),),
        (
            Record("www.test.internal", TYPE_CNAME, CLASS_IN, 5, "real.test.internal"),
            Record("real.test.internal", TYPE_A, CLASS_IN, 9, "10.1.2.3"),
            Record("real.test.internal", TYPE_AAAA, CLASS_IN, 9, "fd00::1"),
        ),
        (Record("test.internal", TYPE_SOA, CLASS_IN, 60, soa),),
    )
    data = encode_message(msg)
    assert data.count(b"\x08internal") == 1  # every later "internal" is a pointer
    assert parse_message(data) == msg
    parsed = parse_message(data)
    assert parsed is not None and parsed.rcode == RCODE_NXDOMAIN and parsed.is_response


def test_ttl_with_the_top_bit_set_reads_as_zero() -> None:
    answer = Record("a", TYPE_A, CLASS_IN, 5, "1.2.3.4")
    msg = Message(1, FLAG_QR, (Question("a", TYPE_A),), (answer,))
    data = bytearray(encode_message(msg))
    ttl_at = len(data) - 4 - 2 - 4
    data[ttl_at : ttl_at + 4] = b"\x80\x00\x00\x01"
    parsed = parse_message(bytes(data))
    assert parsed is not None and parsed.answers[0].ttl == 0


def test_pointer_loops_and_forward_pointers_are_rejected() -> None:
    header = HEADER.pack(1, FLAG_QR, 1, 0, 0, 0)
    self_loop = header + b"\xc0\x0c" + b"\x00\x01\x00\x01"  # points at itself
    assert parse_message(self_loop) is None
    forward = header + b"\xc0\x0e\x01a\x00" + b"\x00\x01\x00\x01"
    assert parse_message(forward) is None
    # Two labels pointing at each other: 12 -> "a" then pointer to 12.
    mutual = header + b"\x01a\xc0\x0c" + b"\x00\x01\x00\x01"
    assert parse_message(mutual) is None
    # A legitimate backward pointer.
    data = header + b"\x01a\x00" + b"\x00\x01\x00\x01" + b"\x01b\xc0\x0c"
    assert read_name(data, 19) == ("b.a", 23)


def test_long_pointer_chains_are_bounded() -> None:
    body = bytearray(b"\x00")  # the root at offset 12
    for i in range(400):  # each pointer points at the previous one
        body += struct.pack("!H", 0xC000 | (12 + (0 if i == 0 else 1 + 2 * (i - 1))))
    data = HEADER.pack(1, 0, 0, 0, 0, 0) + bytes(body)
    assert read_name(data, 12 + 1 + 2 * 399) is None
    assert read_name(data, 12 + 1 + 2 * 3) == ("", 12 + 1 + 2 * 4)


def test_name_over_255_octets_via_pointers_is_rejected() -> None:
    label = b"\x3f" + b"x" * 63
    body = label + b"\x00"  # at 12: 65 octets
    at = 12
    for _ in range(4):  # each adds 64 more octets in front of the previous name
        here = 12 + len(body)
        body += label + struct.pack("!H", 0xC000 | at)
        at = here
    data = HEADER.pack(1, 0, 0, 0, 0, 0) + body
    assert read_name(data, at) is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 11,
        HEADER.pack(1, FLAG_QR, 1, 0, 0, 0),  # a question promised, none there
        HEADER.pack(1, FLAG_QR, 0, 1, 0, 0) + b"\x00\x00\x01",  # record cut short
        HEADER.pack(1, FLAG_QR, 0, 1, 0, 0) + b"\x00" + struct.pack("!HHIH", 1, 1, 5, 4) + b"\x01",
        HEADER.pack(1, FLAG_QR, 0, 1, 0, 0) + b"\x00" + struct.pack("!HHIH", 1, 1, 5, 3) + b"abc",
        HEADER.pack(1, FLAG_QR, 0, 1, 0, 0) + b"\x00" + struct.pack("!HHIH", 28, 1, 5, 4) + b"abcd",
        HEADER.pack(1, FLAG_QR, 1, 0, 0, 0) + b"\x40abc\x00\x00\x01\x00\x01",  # label type 01
        HEADER.pack(1, FLAG_QR, 1, 0, 0, 0) + b"\x05ab\x00",  # label runs past the end
        HEADER.pack(1, FLAG_QR, 0, 1, 0, 0) + b"\x00" + struct.pack("!HHIH", 5, 1, 5, 1) + b"\x05",
    ],
)
def test_malformed_messages_are_rejected(data: bytes) -> None:
    assert parse_message(data) is None


def test_cname_rdata_must_fill_its_length() -> None:
    rec = struct.pack("!HHIH", TYPE_CNAME, 1, 5, 4) + b"\x01a\x00\x00"
    data = HEADER.pack(1, FLAG_QR, 0, 1, 0, 0) + b"\x00" + rec
    assert parse_message(data) is None


def test_truncated_flag_and_random_garbage_never_raise() -> None:
    tc = HEADER.pack(9, FLAG_QR | FLAG_TC, 0, 0, 0, 0)
    parsed = parse_message(tc)
    assert parsed is not None and parsed.truncated
    good = encode_message(
        Message(3, FLAG_QR, (Question("x.y", TYPE_A),), (Record("x.y", TYPE_A, 1, 1, "1.1.1.1"),))
    )
    rng = random.Random()
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = bytes(data[: rng.randint(0, len(data))])
        parse_message(cut)  # must return a Message or None, never raise
        parse_message(bytes(rng.randrange(256) for _ in range(rng.randint(0, 80))))
