"""DNS messages on the wire (RFC 1035): queries out, answers in, nothing trusted.

Theory of operation: `encode_query` builds a one-question query; `parse_message` decodes a whole
message into plain data or returns None when any part of it is malformed (short header, counts
beyond the data, a name longer than 255 octets, a label over 63, a compression pointer that does
not point strictly backwards, more pointer hops than a name can have, record data that runs past
its length). Pointers must point before the label that holds them, so a chain of pointers can
never revisit a position: loops are impossible, and the hop count is bounded as well. Only the
record types a resolver needs are interpreted (A, AAAA, CNAME, SOA); others keep their raw data.
`encode_message` (with name compression) is for servers and tests.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

TYPE_A = 1
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_AAAA = 28
CLASS_IN = 1

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_REFUSED = 5

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080

MAX_NAME = 255  # octets on the wire, length bytes and the root included
MAX_LABEL = 63
_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")


class WireError(ValueError):
    """A name or message that cannot be put on the wire (bad label, name too long)."""


@dataclass(frozen=True, slots=True)
class Soa:
    """The fields of an SOA record a resolver uses for negative caching (RFC 2308)."""

    mname: str
    rname: str
    serial: int
    minimum: int


@dataclass(frozen=True, slots=True)
class Question:
    """One entry of the question section."""

    name: str  # lower case, no trailing dot ("" is the root)
    qtype: int
    qclass: int = CLASS_IN


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record; `value` is the address (A/AAAA), target (CNAME), Soa, or raw."""

    name: str
    rtype: int
    rclass: int
    ttl: int
    value: str | Soa | bytes


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded DNS message."""

    id: int
    flags: int
    questions: tuple[Question, ...] = ()
    answers: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = field(default=())

    @property
    def rcode(self) -> int:
        return self.flags & 0x000F

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_QR)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)


def normalize(name: str) -> str:
    """Lower case, without the trailing dot: the form names are compared in."""
    return name.rstrip(".").lower() if name != "." else ""


def name_labels(name: str) -> list[bytes]:
    """The labels of `name` as bytes; raises WireError when it cannot be a DNS name."""
    text = normalize(name)
    if not text:
        return []
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise WireError(f"{name!r}: not an ASCII host name") from exc
    labels = raw.split(b".")
    if any(not label or len(label) > MAX_LABEL for label in labels):
        raise WireError(f"{name!r}: empty label or label over {MAX_LABEL} octets")
    if sum(len(label) + 1 for label in labels) + 1 > MAX_NAME:
        raise WireError(f"{name!r}: longer than {MAX_NAME} octets")
    return labels


def encode_query(qid: int, name: str, qtype: int, recursion: bool = True) -> bytes:
    """A standard query for (name, qtype, IN); raises WireError for an impossible name."""
    flags = FLAG_RD if recursion else 0
    out = bytearray(_HEADER.pack(qid, flags, 1, 0, 0, 0))
    for label in name_labels(name):
        out.append(len(label))
        out += label
    out.append(0)
    out += struct.pack("!HH", qtype, CLASS_IN)
    return bytes(out)


class _Writer:
    """Builds a message with name compression (RFC 1035 4.1.4)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.offsets: dict[tuple[bytes, ...], int] = {}

    def name(self, name: str) -> None:
        labels = name_labels(name)
        for i in range(len(labels)):
            suffix = tuple(labels[i:])
            at = self.offsets.get(suffix)
            if at is not None:
                self.buf += struct.pack("!H", 0xC000 | at)
                return
            if len(self.buf) < 0x4000:
                self.offsets[suffix] = len(self.buf)
            self.buf.append(len(labels[i]))
            self.buf += labels[i]
        self.buf.append(0)

    def record(self, r: Record) -> None:
        self.name(r.name)
        self.buf += struct.pack("!HHI", r.rtype, r.rclass, r.ttl)
        at = len(self.buf)
        self.buf += b"\0\0"
        value = r.value
        if r.rtype in (TYPE_A, TYPE_AAAA) and isinstance(value, str):
            self.buf += ipaddress.ip_address(value).packed
        elif r.rtype == TYPE_CNAME and isinstance(value, str):
            self.name(value)
        elif r.rtype == TYPE_SOA and isinstance(value, Soa):
            self.name(value.mname)
            self.name(value.rname)
            self.buf += struct.pack("!IIIII", value.serial, 3600, 600, 86400, value.minimum)
        elif isinstance(value, bytes):
            self.buf += value
        else:
            raise WireError(f"record type {r.rtype} cannot carry {value!r}")
        struct.pack_into("!H", self.buf, at, len(self.buf) - at - 2)


def encode_message(msg: Message) -> bytes:
    """Encode a whole message, compressing names; raises WireError for impossible content."""
    w = _Writer()
    w.buf += _HEADER.pack(
        msg.id,
        msg.flags,
        len(msg.questions),
        len(msg.answers),
        len(msg.authority),
        len(msg.additional),
    )
    for q in msg.questions:
        w.name(q.name)
        w.buf += struct.pack("!HH", q.qtype, q.qclass)
    for r in (*msg.answers, *msg.authority, *msg.additional):
        w.record(r)
    return bytes(w.buf)


# --- decoding: every reader returns None (or a None-carrying tuple) on malformed input -----------


def read_name(data: bytes, pos: int) -> tuple[str, int] | None:
    """The name at `pos` and the position after it (after the first pointer, if any)."""
    labels: list[str] = []
    length = 1  # the root's zero octet
    end = -1  # where the name ends in the message (set at the first pointer)
    floor = pos  # a pointer must point strictly before the label sequence that holds it
    for _hop in range(MAX_NAME):  # each step consumes at least one octet of a 255-octet name
        if pos >= len(data):
            return None
        n = data[pos]
        if n == 0:
            return ".".join(labels), (pos + 1 if end < 0 else end)
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                return None
            target = ((n & 0x3F) << 8) | data[pos + 1]
            if target >= floor:
                return None  # forward or self pointer: a possible loop
            if end < 0:
                end = pos + 2
            pos = floor = target
            continue
        if n & 0xC0:
            return None  # 0x40 / 0x80: extended label types, not in use
        if pos + 1 + n > len(data):
            return None
        length += n + 1
        if length > MAX_NAME:
            return None
        labels.append(data[pos + 1 : pos + 1 + n].decode("latin-1").lower())
        pos += 1 + n
    return None


def _rdata(data: bytes, rtype: int, start: int, size: int) -> str | Soa | bytes | None:
    end = start + size
    if rtype == TYPE_A:
        return str(ipaddress.IPv4Address(data[start:end])) if size == 4 else None
    if rtype == TYPE_AAAA:
        return str(ipaddress.IPv6Address(data[start:end])) if size == 16 else None
    if rtype == TYPE_CNAME:
        got = read_name(data[:end], start)
        return got[0] if got is not None and got[1] == end else None
    if rtype == TYPE_SOA:
        mname = read_name(data[:end], start)
        if mname is None:
            return None
        rname = read_name(data[:end], mname[1])
        if rname is None or rname[1] + 20 != end:
            return None
        serial, _refresh, _retry, _expire, minimum = struct.unpack_from("!IIIII", data, rname[1])
        return Soa(mname[0], rname[0], serial, minimum)
    return data[start:end]


def _records(data: bytes, pos: int, count: int) -> tuple[list[Record], int] | None:
    out: list[Record] = []
    for _ in range(count):
        got = read_name(data, pos)
        if got is None:
            return None
        name, pos = got
        if pos + _RR_FIXED.size > len(data):
            return None
        rtype, rclass, ttl, size = _RR_FIXED.unpack_from(data, pos)
        pos += _RR_FIXED.size
        if pos + size > len(data):
            return None
        value = _rdata(data, rtype, pos, size)
        if value is None:
            return None
        # RFC 2181 8: a TTL with the top bit set is treated as zero.
        out.append(Record(name, rtype, rclass, 0 if ttl & 0x80000000 else ttl, value))
        pos += size
    return out, pos


def parse_message(data: bytes) -> Message | None:
    """Decode `data`; None when it is not a well-formed DNS message."""
    if len(data) < _HEADER.size:
        return None
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(data, 0)
    pos = _HEADER.size
    questions: list[Question] = []
    for _ in range(qd):
        got = read_name(data, pos)
        if got is None or got[1] + 4 > len(data):
            return None
        qtype, qclass = struct.unpack_from("!HH", data, got[1])
        questions.append(Question(got[0], qtype, qclass))
        pos = got[1] + 4
    sections: list[list[Record]] = []
    for count in (an, ns, ar):
        got_rr = _records(data, pos, count)
        if got_rr is None:
            return None
        sections.append(got_rr[0])
        pos = got_rr[1]
    return Message(
        qid, flags, tuple(questions), tuple(sections[0]), tuple(sections[1]), tuple(sections[2])
    )
