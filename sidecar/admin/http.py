"""A small HTTP/1.1 server for the admin and status ports (not the data path).

Theory of operation: one `AdminConnection` (an asyncio Protocol) per client feeds bytes to an
httptools request parser. Each complete request becomes a `Request`, is dispatched through a
`Router` (exact path, then method: 404 for an unknown path, 405 with `allow` for a known path and a
wrong method), and the `Response` is written at once, so pipelined requests are answered in order.
Keep-alive follows the request (HTTP/1.1 default on, `connection: close`, HTTP/1.0 default off).

Bounds: the request head is limited (431), the body too (413), a malformed request gets 400 and the
connection closes; an idle connection closes after `IDLE_TIMEOUT`. Closing is "lingering": send the
answer and a FIN, then discard what the client still sends until it closes (or `LINGER_SECONDS`),
so the kernel does not reset the connection and destroy the answer before the client reads it.
When the client stops reading and the transport's write buffer passes its high-water mark,
reading pauses and parsed requests wait in a queue (at most one read's worth) until it drains.

Handlers are plain synchronous functions: every admin answer is computed from in-memory state.
A handler that raises yields a 500 (logged); it never takes the connection or the server down.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import parse_qsl

import httptools

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"
HTML = "text/html; charset=UTF-8"

MAX_HEAD_BYTES = 60 * 1024  # Envoy's default max_request_headers_kb
MAX_UNPARSED_HEAD_BYTES = 1024 * 1024  # a head never completing: close without an answer
MAX_BODY_BYTES = 1024 * 1024
IDLE_TIMEOUT = 60.0  # seconds a keep-alive connection may sit idle
LINGER_SECONDS = 2.0  # after our FIN, read and discard this long before closing

_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request: method, raw path, query (last value wins), lower-case headers."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def flag(self, name: str) -> bool:
        """A query flag such as `?inboundonly` (present, with any value but false/0)."""
        value = self.query.get(name)
        return value is not None and value.lower() not in ("false", "0")


@dataclass(frozen=True, slots=True)
class Response:
    """An answer; `after` runs once the answer has been handed to the transport."""

    status: int
    body: bytes
    content_type: str = TEXT
    after: Callable[[], None] | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()


def text(body: str, status: int = 200) -> Response:
    return Response(status, body.encode(), TEXT)


Handler = Callable[[Request], Response]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A route: the handler for one path and method, with its `/help` line."""

    method: str
    path: str
    handler: Handler
    help: str


class Router:
    """Exact-path routes; built once per server, then only read."""

    __slots__ = ("_by_path",)

    def __init__(self, endpoints: list[Endpoint]) -> None:
        by_path: dict[str, dict[str, Endpoint]] = {}
        for ep in endpoints:
            by_path.setdefault(ep.path, {})[ep.method] = ep
        self._by_path = by_path

    def endpoints(self) -> list[Endpoint]:
        return [ep for methods in self._by_path.values() for ep in methods.values()]

    def dispatch(self, req: Request) -> Response:
        methods = self._by_path.get(req.path)
        if methods is None:
            return text("invalid path. admin commands are:\n" + self.help_text(), 404)
        method = "GET" if req.method == "HEAD" else req.method
        ep = methods.get(method)
        if ep is None:
            allow = ", ".join(sorted(methods))
            return Response(
                405,
                f"method {req.method} not allowed; use {allow}\n".encode(),
                TEXT,
                None,
                (("allow", allow),),
            )
        return ep.handler(req)

    def help_text(self) -> str:
        lines = [f"  {ep.path} ({ep.method}): {ep.help}" for ep in self.endpoints() if ep.help]
        return "\n".join(sorted(lines)) + "\n"


def _head(resp: Response, keep_alive: bool) -> bytes:
    reason = _REASONS.get(resp.status, "Unknown")
    lines = [
        f"HTTP/1.1 {resp.status} {reason}",
        f"content-type: {resp.content_type}",
        f"content-length: {len(resp.body)}",
        "cache-control: no-cache, max-age=0",
        "x-content-type-options: nosniff",
        f"date: {email.utils.formatdate(usegmt=True)}",
    ]
    lines.extend(f"{k}: {v}" for k, v in resp.extra_headers)
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class AdminConnection(asyncio.Protocol):
    """One client connection to an admin or status server."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._head_bytes = 0  # parsed bytes of the current request head
        self._unparsed = 0  # bytes fed while the current head is incomplete
        self._body_bytes = 0
        self._in_head = True
        self._error = 0  # status to answer with before closing (431/413), 0 = none
        self._closing = False
        self._write_paused = False
        self._queue: collections.deque[tuple[Request, bool]] = collections.deque()
        self._idle: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a TCP transport (uvloop's is not an asyncio.Transport subclass, so no isinstance check)
        self._transport = cast(asyncio.Transport, transport)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._queue.clear()
        for timer in (self._idle, self._linger):
            if timer is not None:
                timer.cancel()
        self._idle = self._linger = None

    def eof_received(self) -> bool:
        return False  # the client is done: close our side too

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._arm_idle()
        if self._in_head:
            self._unparsed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._close_after_writes()  # answered already; no protocol switch here
            return
        except httptools.HttpParserError as exc:
            if not self._closed():
                self._fail(400, f"bad request: {exc}")
            return
        if self._closed():
            return
        if self._error:
            self._fail(self._error, "request too large")
        elif self._in_head and self._unparsed > MAX_UNPARSED_HEAD_BYTES:
            self._fail(431, "request head too large")

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        while self._queue and not self._write_paused and not self._closing:
            req, keep_alive = self._queue.popleft()
            self._answer(req, keep_alive)
        if self._transport is not None and not self._closing and not self._write_paused:
            self._transport.resume_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._head_bytes = 0
        self._body_bytes = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        val = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = val if old is None else f"{old},{val}"

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._unparsed = 0

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:
            self._error = self._error or 413
        elif not self._error:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._unparsed = 0
        if self._closing or self._error:
            return
        keep_alive = bool(self._parser.should_keep_alive())
        req = self._request()
        if self._write_paused or self._queue:
            self._queue.append((req, keep_alive))
        else:
            self._answer(req, keep_alive)

    # internals

    def _closed(self) -> bool:
        """Callbacks may set `_closing` inside feed_data; a call keeps mypy from narrowing it."""
        return self._closing

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            self._error = self._error or 431

    def _request(self) -> Request:
        parsed = httptools.parse_url(self._url)
        raw_query = parsed.query or b""
        query = dict(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True))
        return Request(
            method=self._parser.get_method().decode("latin-1"),
            path=(parsed.path or b"/").decode("latin-1"),
            query=query,
            headers=self._headers,
            body=b"".join(self._body),
        )

    def _answer(self, req: Request, keep_alive: bool) -> None:
        try:
            resp = self._router.dispatch(req)
        except Exception:  # a broken handler answers 500; the server lives on
            log.exception("admin: %s %s failed", req.method, req.path)
            resp = text("internal error\n", 500)
        self._write(resp, keep_alive, head_only=req.method == "HEAD")
        if resp.after is not None:
            asyncio.get_running_loop().call_soon(resp.after)

    def _write(self, resp: Response, keep_alive: bool, head_only: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        body = b"" if head_only else resp.body
        transport.writelines([_head(resp, keep_alive), body])
        if not keep_alive:
            self._close_after_writes()

    def _fail(self, status: int, reason: str) -> None:
        self._write(text(reason + "\n", status), keep_alive=False)
        self._close_after_writes()

    def _close_after_writes(self) -> None:
        """Send what is buffered and a FIN; discard further input until the client closes."""
        self._closing = True
        self._queue.clear()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not transport.can_write_eof():
            transport.close()  # flushes what is buffered first
            return
        transport.write_eof()
        transport.resume_reading()
        self._linger = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        self._closing = True
        if self._transport is not None:
            self._transport.close()


async def serve(router: Router, host: str, port: int) -> asyncio.Server:
    """Listen on host:port (0 = any free port) and answer through `router`."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: AdminConnection(router), host, port, reuse_address=True)
