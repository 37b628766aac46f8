"""Shared pieces of the routing tests: echo upstreams, a raw keep-alive client, route builders.

`echo(name)` is a real HTTP/1.1 upstream (http_helpers.Upstream) answering every request with a
JSON body saying who it is and what it received (method, path, Host, headers), plus a few
response headers the tests edit. `Client` is a raw-socket HTTP/1.1 keep-alive client: it writes
exactly the request given and parses a Content-Length delimited answer, with a deadline.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.snapshot import Route, RouteConfig, RouteMatch, VirtualHost

from .http_helpers import Request, Upstream


def echo(name: str) -> Upstream:
    def handle(req: Request, t: asyncio.Transport) -> None:
        body = json.dumps({"up": name, "method": req.method, "path": req.path,
                           "host": req.header("host"), "headers": req.headers}).encode()
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-up: %s\r\nx-drop: 1\r\n"
                b"x-keep: 1\r\n\r\n%s" % (len(body), name.encode(), body))

    return Upstream(handle)


@dataclass
class Resp:
    """A response as read off the socket."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        vals = [v for n, v in self.headers if n == name.lower()]
        return ",".join(vals) if vals else None

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.body)
        return out

    def seen_header(self, name: str) -> str | None:
        """A request header as the echo upstream saw it."""
        vals = [v for n, v in self.json()["headers"] if n.lower() == name.lower()]
        return ",".join(vals) if vals else None


class Client:
    """One raw HTTP/1.1 keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()

    async def request(self, path: str, method: str = "GET", host: str = "svc",
                      headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                      timeout: float = 5.0) -> Resp:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{n}: {v}" for n, v in headers or ()]
        if body or method in ("POST", "PUT"):
            lines.append(f"content-length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *rest = head.decode("latin-1").split("\r\n")
            resp = Resp(int(status_line.split()[1]))
            for line in rest:
                if line:
                    n, _, v = line.partition(":")
                    resp.headers.append((n.strip().lower(), v.strip()))
            length = int(resp.header("content-length") or 0)
            if method != "HEAD" and length:
                resp.body = await self.reader.readexactly(length)
        return resp


async def get(port: int, path: str, **kw: Any) -> Resp:
    """One request on a fresh connection."""
    c = await Client.open(port)
    try:
        return await c.request(path, **kw)
    finally:
        c.close()


def answer(name: str, match: RouteMatch, **kw: Any) -> Route:
    """A route answering 200 with its own name (direct response): which route matched."""
    return Route(name=name, match=match, direct_status=200, direct_body=name.encode(), **kw)


def table(*routes: Route, domains: tuple[str, ...] = ("*",), **vh: Any) -> RouteConfig:
    return RouteConfig(name="80", virtual_hosts=(
        VirtualHost(name="vh", domains=domains, routes=routes, **vh),))
