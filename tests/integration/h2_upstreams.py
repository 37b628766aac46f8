"""HTTP/2-only test peers built on the `h2` library (independent of the proxy's codec).

Theory of operation:
- `H2Upstream` is an asyncio Protocol serving h2c with prior knowledge only (an HTTP/1.1 request
  is not HTTP/2 and gets the connection closed by h2's preface check). Each request is read to its
  end (received data acknowledged at once, so the client's window never shuts) and answered with
  status 200, a small body `h2 METHOD PATH got=N` and the trailer `x-upstream-trailer: done`.
  Bodies are far below the initial 64 KiB window, so the answer never waits for flow control.
- `h2_request()` is a blocking one-request HTTP/2 client over a plain socket, bounded by a
  timeout, that returns the response head, body and trailers as they came on the wire (what
  grpcio does not show, e.g. a trailers-only gRPC answer's HTTP status).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions

TRAILER = ("x-upstream-trailer", "done")
Headers = list[tuple[str, str]]


def _text(headers: object) -> Headers:
    pairs = cast(list[tuple[bytes | str, bytes | str]], headers)
    return [
        (k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
        for k, v in pairs
    ]


class H2Upstream(asyncio.Protocol):
    """One server-side h2c connection: answers every request with a body and a trailer."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, tuple[str, str, int]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.conn.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            self.transport.close()
            return
        for ev in events:
            self._on_event(ev)
        self._flush()

    def _on_event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            head = dict(_text(ev.headers))
            self.requests[ev.stream_id] = (head.get(":method", ""), head.get(":path", ""), 0)
        elif isinstance(ev, h2.events.DataReceived):
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            method, path, n = self.requests.get(ev.stream_id, ("", "", 0))
            self.requests[ev.stream_id] = (method, path, n + len(ev.data))
        elif isinstance(ev, h2.events.StreamEnded):
            self._respond(ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            self.requests.pop(ev.stream_id, None)
        elif isinstance(ev, h2.events.ConnectionTerminated) and self.transport is not None:
            self.transport.close()

    def _respond(self, stream_id: int) -> None:
        method, path, n = self.requests.pop(stream_id, ("", "", 0))
        body = f"h2 {method} {path} got={n}".encode()
        self.conn.send_headers(
            stream_id,
            [
                (":status", "200"),
                ("content-type", "text/plain"),
                ("content-length", str(len(body))),
            ],
        )
        self.conn.send_data(stream_id, body)
        self.conn.send_headers(stream_id, [TRAILER], end_stream=True)

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)


async def start_h2_upstream(host: str = "127.0.0.1") -> tuple[asyncio.Server, int]:
    server = await asyncio.get_running_loop().create_server(H2Upstream, host, 0)
    return server, server.sockets[0].getsockname()[1]


@dataclass
class H2Response:
    """One HTTP/2 response as it arrived: head, body, trailers, and whether a RST came."""

    headers: Headers = field(default_factory=list)
    body: bytes = b""
    trailers: Headers = field(default_factory=list)
    reset: bool = False

    def header(self, name: str) -> str | None:
        return dict(self.headers).get(name)

    def trailer(self, name: str) -> str | None:
        return dict(self.trailers).get(name)


def h2_request(
    port: int,
    path: str,
    *,
    authority: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    method: str = "POST",
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> H2Response:
    """Send one h2c (prior knowledge) request and read the whole response, within `timeout`."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    conn.initiate_connection()
    deadline = time.monotonic() + timeout
    resp = H2Response()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sid = conn.get_next_available_stream_id()
        head = [(":method", method), (":scheme", "http"), (":authority", authority)]
        conn.send_headers(sid, [*head, (":path", path), *headers], end_stream=not body)
        if body:
            conn.send_data(sid, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        done = False
        while not done:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    resp.headers = _text(ev.headers)
                elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                    resp.trailers = _text(ev.headers)
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    resp.body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    done = True
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    resp.reset = done = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    done = True
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    return resp
