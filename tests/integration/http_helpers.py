"""Fixtures for HTTP/1.1 proxy tests: a real proxy listener, real upstream servers, real clients.

`start_proxy(...)` binds the lead's real listener (listener/accept.py) on 127.0.0.1:0 with a
hand-built Snapshot whose single filter chain is the HTTP connection manager; `Upstream` is a small
asyncio HTTP/1.1 server (httptools) whose answer is a function of the request, counting accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import httptools

from sidecar.config.snapshot import (
    Cluster,
    DiscoveryType,
    Endpoint,
    HttpConnectionManager,
    Protocol,
    Route,
    RouteConfig,
    RouteMatch,
    VirtualHost,
)
from sidecar.runtime import Runtime
from sidecar.upstream.cluster import ClusterManager

from .proxy_fixtures import CollectingLog
from .proxy_fixtures import start_proxy as start_listener


@dataclass
class Request:
    """One request as the upstream saw it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        vals = [v for n, v in self.headers if n.lower() == name.lower()]
        return ",".join(vals) if vals else None


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


Handler = Callable[[Request, asyncio.Transport], Awaitable[None] | None]


class _UpstreamConn(asyncio.Protocol):
    def __init__(self, server: Upstream) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._cur: Request | None = None
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop: not a subclass
        self.server.accepts += 1
        self.server.conns.append(self)

    def data_received(self, data: bytes) -> None:
        with contextlib.suppress(httptools.HttpParserUpgrade):
            self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self._cur = Request("", "", [])
        self._body = []

    def on_url(self, url: bytes) -> None:
        assert self._cur is not None
        self._cur.path += url.decode()

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._cur is not None
        self._cur.headers.append((name.decode(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        if self.server.keep_bodies:
            self._body.append(body)
        self.server.body_bytes += len(body)

    def on_message_complete(self) -> None:
        req = self._cur
        assert req is not None and self.transport is not None
        req.method = self.parser.get_method().decode()
        req.body = b"".join(self._body)
        self.server.requests.append(req)
        result = self.server.handler(req, self.transport)
        if result is not None:
            asyncio.get_running_loop().create_task(result)  # type: ignore[arg-type]


@dataclass
class Upstream:
    """A real HTTP/1.1 server on 127.0.0.1 answering with `handler`."""

    handler: Handler
    keep_bodies: bool = True
    accepts: int = 0
    body_bytes: int = 0
    requests: list[Request] = field(default_factory=list)
    conns: list[_UpstreamConn] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> Upstream:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _UpstreamConn(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for c in self.conns:
            if c.transport is not None:
                c.transport.abort()


def static_ok(body: bytes = b"hello") -> Handler:
    def handle(req: Request, t: asyncio.Transport) -> None:
        t.write(ok(body))

    return handle


def cluster(name: str, port: int, **kw: object) -> Cluster:
    return Cluster(
        name=name,
        discovery=DiscoveryType.STATIC,
        endpoints=(Endpoint(address="127.0.0.1", port=port),),
        **{"protocol": Protocol.HTTP, **kw},  # type: ignore[arg-type]
    )


def simple_routes(cluster_name: str, timeout: float | None = None) -> RouteConfig:
    return RouteConfig(
        name="80",
        virtual_hosts=(
            VirtualHost(
                name="all",
                domains=("*",),
                routes=(Route(name="default", match=RouteMatch(prefix="/"),
                              cluster=cluster_name, timeout=timeout),),
            ),
        ),
    )


@dataclass
class Proxy:
    """A running proxy listener and what it reports."""

    port: int
    runtime: Runtime
    log: CollectingLog
    cm: ClusterManager


@contextlib.asynccontextmanager
async def start_proxy(
    routes: RouteConfig, clusters: list[Cluster]
) -> AsyncIterator[Proxy]:
    """A real listener (the production AcceptProtocol) whose one chain is the HTTP conn manager."""
    hcm = HttpConnectionManager(route_config=routes.name, stat_prefix="test")
    running = await start_listener(hcm, tuple(clusters), route_configs={routes.name: routes})
    try:
        yield Proxy(running.port, running.runtime, running.log, running.clusters)
    finally:
        running.close()
        await asyncio.sleep(0)


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0,
                       until_close: bool = True) -> bytes:
    """Send `data` on a fresh connection; read until the proxy closes (or timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                out += chunk
                if not until_close and b"\r\n\r\n" in out:
                    break
    except TimeoutError:
        if until_close:
            raise
    finally:
        writer.close()
    return out


def blocking_get(port: int, path: str = "/", host: str = "svc") -> bytes:
    """A plain blocking request on its own socket (for use in executors)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        out = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            b = s.recv(65536)
            if not b:
                break
            out += b
        return out


async def curl(*args: str, timeout: float = 20.0) -> tuple[int, bytes, bytes]:
    """Run curl; returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    return proc.returncode or 0, out, err
