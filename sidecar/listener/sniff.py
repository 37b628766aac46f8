"""Protocol detection: peek at a connection's first bytes without consuming them.

Theory of operation (Envoy's tls_inspector + http_inspector, as Istio configures them): the
listener buffers what the client sends first and asks the pure `classify(buf)` after every read.
It answers None while the bytes could still go either way, else a `Detection`:
- "tls": a TLS handshake record carrying a ClientHello; the hello is parsed (bounds-checked, no
  exceptions) for the SNI host name and the ALPN list. A malformed hello is still "tls".
- "h2c": the HTTP/2 connection preface (prior knowledge).
- "http/1.0" / "http/1.1": a well-formed request line `METHOD SP target SP HTTP/1.x CRLF`.
- "tcp": anything else, decided as soon as one byte rules the others out, or when the look
  reaches `MAX_PEEK` bytes undecided.
`SniffProtocol` is the asyncio side: it holds the transport while deciding, with an optional
detection timeout (server-first protocols: the client sends nothing, so after the timeout the
connection is handed on as "tcp" and never hangs). The buffered bytes are handed on with the
decision; nothing is consumed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from sidecar.http.codec_select import is_h2_preface

if TYPE_CHECKING:
    from sidecar.runtime import Runtime

MAX_PEEK = 16 * 1024  # TLS records carry up to 16 KiB: a ClientHello fits
MAX_HTTP_LINE = 8 * 1024  # longest request line looked at before calling it "tcp"

TLS = "tls"
H2C = "h2c"
HTTP10 = "http/1.0"
HTTP11 = "http/1.1"
TCP = "tcp"
HTTP_KINDS = (HTTP10, HTTP11, H2C)


@dataclass(frozen=True, slots=True)
class Detection:
    """What the first bytes of a connection say about its protocol."""

    kind: str  # "tls" | "h2c" | "http/1.1" | "http/1.0" | "tcp"
    server_name: str = ""  # TLS SNI host name
    alpn: tuple[str, ...] = ()  # TLS ALPN protocols offered by the client
    timed_out: bool = False  # the detection timeout (or EOF) decided, not the bytes

    @property
    def transport_protocol(self) -> str:
        """Envoy's transport_protocol: "tls" or "raw_buffer"."""
        return "tls" if self.kind == TLS else "raw_buffer"

    @property
    def application_protocols(self) -> tuple[str, ...]:
        """Envoy's application_protocols: ALPN for TLS, the HTTP version detected in clear."""
        if self.kind == TLS:
            return self.alpn
        return (self.kind,) if self.kind in HTTP_KINDS else ()


OPAQUE = Detection(TCP)
UNDECIDED_TIMEOUT = Detection(TCP, timed_out=True)

# -- HTTP/1.x request line ---------------------------------------------------------------------
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TARGET = rb"[\x21-\x7e\x80-\xff]"
_REQUEST_LINE = re.compile(_TOKEN + rb"+ " + _TARGET + rb"+ HTTP/1\.([01])\r\n")
# Every proper prefix of a request line: while the buffer is one, more bytes may still make it.
_TAIL = b"HTTP/1.x\r"
_tail_re = b""
for _ch in reversed(_TAIL):
    _c = rb"[01]" if _ch == ord("x") else re.escape(bytes([_ch]))
    _tail_re = rb"(?:" + _c + _tail_re + rb")?"
_REQUEST_PREFIX = re.compile(_TOKEN + rb"+(?: (?:" + _TARGET + rb"+(?: " + _tail_re + rb")?)?)?")


def _http1(buf: bytes) -> Detection | None:
    head = buf[:MAX_HTTP_LINE]
    m = _REQUEST_LINE.match(head)
    if m is not None:
        return Detection(HTTP11 if m.group(1) == b"1" else HTTP10)
    if len(head) < MAX_HTTP_LINE and _REQUEST_PREFIX.fullmatch(head) is not None:
        return None
    return OPAQUE


# -- TLS ClientHello ---------------------------------------------------------------------------
_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SNI = 0
_EXT_ALPN = 16
_MAX_RECORD = 16384 + 2048  # TLSPlaintext max, with room for TLS 1.3's allowed expansion


class _Reader:
    """A bounds-checked cursor: reads past the end set `ok` False and return empty values."""

    __slots__ = ("buf", "end", "ok", "pos")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end
        self.ok = True

    def take(self, n: int) -> bytes:
        if not self.ok or self.pos + n > self.end:
            self.ok = False
            return b""
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def num(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> _Reader:
        """A sub-reader over a length-prefixed vector; this reader moves past it."""
        n = self.num(length_bytes)
        start = self.pos
        self.take(n)
        sub = _Reader(self.buf, start, start + n if self.ok else start)
        sub.ok = self.ok
        return sub

    @property
    def left(self) -> int:
        return self.end - self.pos if self.ok else 0


def _handshake_bytes(buf: bytes) -> tuple[bytes, bool]:
    """The handshake records' payloads joined (the last one maybe partial); and malformed?"""
    out = bytearray()
    pos = 0
    while pos + 5 <= len(buf):
        if buf[pos] != _HANDSHAKE or buf[pos + 1] != 3:
            return bytes(out), True
        length = int.from_bytes(buf[pos + 3 : pos + 5], "big")
        if length == 0 or length > _MAX_RECORD:
            return bytes(out), True
        if pos + 5 + length > len(buf):
            out += buf[pos + 5 :]
            return bytes(out), False
        out += buf[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return bytes(out), False


def _tls(buf: bytes) -> Detection | None:
    if len(buf) < 2:
        return None
    if buf[1] != 3:
        return OPAQUE
    if len(buf) >= 3 and buf[2] > 4:
        return OPAQUE
    if len(buf) < 6:
        return None
    if buf[5] != _CLIENT_HELLO:
        return OPAQUE
    data, malformed = _handshake_bytes(buf)
    if malformed and len(data) < 4:
        return Detection(TLS)
    hello_len = int.from_bytes(data[1:4], "big") if len(data) >= 4 else 0
    if len(data) < 4 + hello_len:
        if malformed or len(buf) >= MAX_PEEK:
            return Detection(TLS)
        return None
    return parse_client_hello(data[4 : 4 + hello_len])


def parse_client_hello(body: bytes) -> Detection:
    """SNI and ALPN from a ClientHello body; anything malformed gives a bare "tls"."""
    r = _Reader(body)
    r.take(2 + 32)  # legacy_version, random
    r.vector(1)  # legacy_session_id
    r.vector(2)  # cipher_suites
    r.vector(1)  # legacy_compression_methods
    if not r.ok or r.left == 0:
        return Detection(TLS)
    exts = r.vector(2)
    server_name = ""
    alpn: list[str] = []
    while exts.ok and exts.left >= 4:
        ext_type = exts.num(2)
        data = exts.vector(2)
        if ext_type == _EXT_SNI:
            server_name = _sni(data)
        elif ext_type == _EXT_ALPN:
            alpn = _alpn(data)
    if not exts.ok:
        return Detection(TLS)
    return Detection(TLS, server_name=server_name, alpn=tuple(alpn))


def _sni(r: _Reader) -> str:
    names = r.vector(2)
    while names.ok and names.left >= 3:
        name_type = names.num(1)
        name = names.vector(2)
        raw = name.take(name.left)
        if names.ok and name_type == 0 and raw and raw.isascii():
            return raw.decode("ascii").lower().rstrip(".")
    return ""


def _alpn(r: _Reader) -> list[str]:
    protos = r.vector(2)
    out: list[str] = []
    while protos.ok and protos.left >= 1:
        p = protos.vector(1)
        raw = p.take(p.left)
        if protos.ok and raw:
            out.append(raw.decode("latin-1"))
    return out if protos.ok else []


# -- the classifier ----------------------------------------------------------------------------
def classify(buf: bytes) -> Detection | None:
    """The protocol the first bytes of a connection show, or None if more bytes are needed."""
    if not buf:
        return None
    if buf[0] == _HANDSHAKE:
        return _tls(buf)
    preface = is_h2_preface(buf)
    if preface:
        return Detection(H2C)
    if preface is None:
        return None
    return _http1(buf)


def codec_ready(buf: bytes) -> Detection | None:
    """For an HTTP chain that needs no detection: enough bytes to choose h1 or h2."""
    preface = is_h2_preface(buf)
    if preface is None:
        return None
    return Detection(H2C) if preface else Detection(HTTP11)


# -- asyncio side ------------------------------------------------------------------------------
OnDecided = Callable[[asyncio.Transport, Detection, bytes, bool], None]
"""(transport, detection, buffered bytes, eof seen) -> install the next protocol."""


class SniffProtocol(asyncio.Protocol):
    """Holds an accepted transport until `decide` says what it carries, or the timeout fires.

    `on_decided` gets the transport, the detection, every byte read so far and whether the
    client already half-closed; it installs the next protocol (which receives the bytes through
    `data_received`). EOF before any byte, or a lost connection, closes without a decision.
    While sniffing the connection is in `runtime.connections` (drain closes it: it is idle).
    """

    __slots__ = (
        "_buf",
        "_decide",
        "_done",
        "_on_decided",
        "_runtime",
        "_timeout",
        "_timer",
        "_transport",
    )

    def __init__(
        self,
        runtime: Runtime,
        decide: Callable[[bytes], Detection | None],
        on_decided: OnDecided,
        timeout: float | None,
    ) -> None:
        self._runtime = runtime
        self._decide = decide
        self._on_decided = on_decided
        self._timeout = timeout
        self._buf = b""
        self._done = False
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, base)  # uvloop's are not asyncio.Transport
        self._runtime.connections.add(self)
        if self._timeout is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._done:  # pragma: no cover - the next protocol is installed before more reads
            return
        buf = self._buf + data if self._buf else data
        self._buf = buf
        found = self._decide(buf)
        if found is None and len(buf) >= MAX_PEEK:
            found = OPAQUE
        if found is not None:
            self._finish(found, eof=False)

    def eof_received(self) -> bool:
        if self._done or not self._buf:
            self._close()
            return False
        found = self._decide(self._buf) or UNDECIDED_TIMEOUT
        return self._finish(found, eof=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._close()

    def _timed_out(self) -> None:
        self._timer = None
        if not self._done:
            self._finish(UNDECIDED_TIMEOUT, eof=False)

    def _finish(self, found: Detection, eof: bool) -> bool:
        self._done = True
        self._release()
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        buf, self._buf = self._buf, b""
        self._on_decided(transport, found, buf, eof)
        return not transport.is_closing()

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._runtime.connections.discard(self)

    def _close(self) -> None:
        self._done = True
        self._buf = b""
        self._release()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    # -- Drainable ----------------------------------------------------------------------------
    def drain(self) -> None:
        """Nothing is in flight while sniffing: close."""
        self._close()

    def abort(self) -> None:
        self._done = True
        self._release()
        if self._transport is not None:
            self._transport.abort()
