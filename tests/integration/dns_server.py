"""A tiny authoritative DNS server for tests, on 127.0.0.x over UDP and TCP (same port).

Theory of operation: `TestDns` answers from a dict the test edits at any time (`set_a`,
`set_aaaa`, `set_cname`, `remove`). An answer follows CNAMEs inside the zone as a recursive
server would (or stops at the first one with `partial_cname`), a name without records of the asked
type is NODATA and an unknown one NXDOMAIN, both with an SOA whose minimum is `negative_ttl`.
Knobs: `delay` seconds before answering, `silent` (never answer), `truncate` (UDP answers carry
only TC, so the client must ask over TCP), `spoof_first` (a wrong-id datagram with a bogus address
goes out first). Every question is logged in `queries` as (transport, name, type).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.upstream.dns_wire import (
    CLASS_IN,
    FLAG_AA,
    FLAG_QR,
    FLAG_RD,
    FLAG_TC,
    RCODE_NXDOMAIN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_SOA,
    Message,
    Record,
    Soa,
    encode_message,
    normalize,
    parse_message,
)

_Send = Callable[[bytes], None]


@dataclass
class TestDns:
    """The server's zone and knobs; `start()` binds UDP and TCP on `host`, port `port`."""

    host: str = "127.0.0.53"
    records: dict[str, list[Record]] = field(default_factory=dict)
    negative_ttl: int = 1
    delay: float = 0.0
    silent: bool = False
    truncate: bool = False
    partial_cname: bool = False
    spoof_first: bool = False
    queries: list[tuple[str, str, int]] = field(default_factory=list)
    port: int = 0
    _udp: asyncio.DatagramTransport | None = None
    _tcp: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    __test__ = False  # not a pytest test class

    # -- the zone ----------------------------------------------------------------------------
    def set_a(self, name: str, *ips: str, ttl: int = 1) -> None:
        self._set(name, TYPE_A, ips, ttl)

    def set_aaaa(self, name: str, *ips: str, ttl: int = 1) -> None:
        self._set(name, TYPE_AAAA, ips, ttl)

    def set_cname(self, name: str, target: str, ttl: int = 1) -> None:
        self.records[normalize(name)] = [Record(normalize(name), TYPE_CNAME, CLASS_IN, ttl, target)]

    def remove(self, name: str) -> None:
        self.records.pop(normalize(name), None)

    def _set(self, name: str, rtype: int, values: tuple[str, ...], ttl: int) -> None:
        key = normalize(name)
        keep = [r for r in self.records.get(key, []) if r.rtype not in (rtype, TYPE_CNAME)]
        self.records[key] = keep + [Record(key, rtype, CLASS_IN, ttl, v) for v in values]

    def count(self, name: str, qtype: int = TYPE_A, transport: str = "") -> int:
        return sum(
            1
            for t, n, q in self.queries
            if n == normalize(name) and q == qtype and transport in ("", t)
        )

    # -- answering ---------------------------------------------------------------------------
    def answer(self, query: Message, tcp: bool) -> bytes:
        q = query.questions[0]
        answers: list[Record] = []
        name, rcode = q.name, 0
        for _ in range(16):
            recs = self.records.get(name)
            if recs is None:
                rcode = RCODE_NXDOMAIN
                break
            cname = next((r for r in recs if r.rtype == TYPE_CNAME), None)
            if cname is None or q.qtype == TYPE_CNAME:
                answers += [r for r in recs if r.rtype == q.qtype]
                break
            answers.append(cname)
            name = str(cname.value)
            if self.partial_cname:
                break
        authority: list[Record] = []
        partial = self.partial_cname and answers and answers[-1].rtype == TYPE_CNAME
        if not partial and not any(r.rtype == q.qtype for r in answers):
            soa = Soa("ns.test.internal", "admin.test.internal", 1, self.negative_ttl)
            authority.append(Record("test.internal", TYPE_SOA, CLASS_IN, self.negative_ttl, soa))
        flags = FLAG_QR | FLAG_AA | (query.flags & FLAG_RD) | rcode
        if self.truncate and not tcp:
            return encode_message(Message(query.id, flags | FLAG_TC, query.questions))
        return encode_message(
            Message(query.id, flags, query.questions, tuple(answers), tuple(authority))
        )

    async def _respond(self, data: bytes, send: _Send, tcp: bool) -> None:
        query = parse_message(data)
        if query is None or len(query.questions) != 1:
            return
        q = query.questions[0]
        self.queries.append(("tcp" if tcp else "udp", q.name, q.qtype))
        if self.silent:
            return
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.spoof_first and not tcp:
            fake = "127.66.66.66" if q.qtype == TYPE_A else "::66"
            bogus = Record(q.name, q.qtype, CLASS_IN, 300, fake)
            wrong = Message((query.id + 1) & 0xFFFF, FLAG_QR | FLAG_AA, query.questions, (bogus,))
            send(encode_message(wrong))
        send(self.answer(query, tcp))

    def _spawn(self, data: bytes, send: _Send, tcp: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._respond(data, send, tcp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> TestDns:
        loop = asyncio.get_running_loop()
        for _ in range(20):
            udp, _proto = await loop.create_datagram_endpoint(
                lambda: _UdpServer(self), local_addr=(self.host, self.port)
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await loop.create_server(lambda: _TcpServer(self), self.host, port)
            except OSError:
                udp.close()
                continue
            self._udp, self.port = udp, port
            return self
        raise OSError("no port free for both UDP and TCP")

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def __aenter__(self) -> TestDns:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, server: TestDns) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        transport = self.transport

        def send(out: bytes) -> None:
            if transport is not None and not transport.is_closing():
                transport.sendto(out, addr)

        self.server._spawn(data, send, tcp=False)


class _TcpServer(asyncio.Protocol):
    def __init__(self, server: TestDns) -> None:
        self.server = server
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 2:
            (size,) = struct.unpack_from("!H", self.buf)
            if len(self.buf) < 2 + size:
                return
            query, self.buf = self.buf[2 : 2 + size], self.buf[2 + size :]
            transport = self.transport

            def send(out: bytes, t: asyncio.Transport | None = transport) -> None:
                if t is not None and not t.is_closing():
                    with contextlib.suppress(OSError):
                        t.write(struct.pack("!H", len(out)) + out)

            self.server._spawn(query, send, tcp=True)
