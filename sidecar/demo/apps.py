"""The two demo applications: `a` (the caller) and `b` (the callee), plain HTTP/1.1 servers.

Theory of operation: each app is a small asyncio server (a Protocol feeding httptools) that
knows nothing of the mesh. App `b` answers every request with one greeting line and the request
headers a reader of the demo cares about (host, request id, B3 trace headers, forwarded-for).
App `a` answers `GET /` by calling `b` once - through whatever address it was told to use (its
sidecar's egress listener in the loopback demo, b's ClusterIP when traffic is captured) - and
answers with its own line plus what `b` said. It forwards the request id and the B3 headers it
received, as Istio asks every application to do so that traces join up.

App `b` can be told to fail: with `--fail-every N` it answers every Nth request (health checks
not counted) with 503 - the demo's canary v2 does, so its error ratio shows in the golden signals.
App `a` relays whatever `b` answered inside its own 200, as bookinfo's productpage does.

Both apps report the request id they saw in a response header (`x-demo-seen-request-id-a` /
`-b`), so the demo driver can find the matching access-log lines even if a proxy replaced the id.

Run one with `python -m sidecar.demo.apps a|b --listen HOST:PORT [...]`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

import httptools

# Headers app `a` forwards to `b`: Istio's list for trace propagation, the request id, and the
# user agent (bookinfo's productpage forwards it too, so routing rules can match on it).
PROPAGATED = (
    "user-agent",
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "traceparent",
    "tracestate",
)
# Headers app `b` echoes back in its answer.
ECHOED = ("host", "x-request-id", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-forwarded-for")
SEEN_ID_HEADER = "x-demo-seen-request-id-"  # + app name
UPSTREAM_TIMEOUT = 5.0  # seconds app `a` waits for `b`


@dataclass(frozen=True)
class Upstream:
    """Where app `a` sends its call to `b`: the TCP address to connect to and the Host to send."""

    host: str
    port: int
    authority: str  # the Host header, e.g. "b.default.svc.cluster.local:9080"
    path: str = "/api/v1/hello"  # the demo's VirtualService rewrites /api/v1/ to /


@dataclass(frozen=True)
class Reply:
    """An HTTP response as the apps build and read them."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class _Request:
    method: str = ""
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)


_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 502: "Bad Gateway", 503: "Service Unavailable",
}  # fmt: skip


def encode_response(reply: Reply, keep_alive: bool) -> bytes:
    """Serialise `reply` as an HTTP/1.1 response with a content-length."""
    lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}"]
    lines += [f"{k}: {v}" for k, v in reply.headers]
    lines.append("content-type: text/plain; charset=utf-8")
    lines.append(f"content-length: {len(reply.body)}")
    lines.append("connection: " + ("keep-alive" if keep_alive else "close"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body


class _HeadCollector:
    """httptools callbacks that collect a head (request or response) and a body."""

    def __init__(self) -> None:
        self.request = _Request()
        self.body = bytearray()
        self.complete = False
        self._name = b""

    def on_url(self, url: bytes) -> None:
        self.request.path += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.request.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


class AppProtocol(asyncio.Protocol):
    """One client connection to a demo app; requests are answered one at a time, in order."""

    def __init__(self, app: DemoApp) -> None:
        self._app = app
        self._collector = _HeadCollector()
        self._parser = httptools.HttpRequestParser(self._collector)
        self._transport: asyncio.Transport | None = None
        self._queue: asyncio.Queue[_Request | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._worker = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._queue.put_nowait(None)
            return
        if self._collector.complete:
            request = self._collector.request
            request.method = self._parser.get_method().decode("latin-1")
            self._queue.put_nowait(request)
            self._collector = _HeadCollector()
            self._parser = httptools.HttpRequestParser(self._collector)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._worker is not None:
            self._worker.cancel()

    async def _serve(self) -> None:
        assert self._transport is not None
        while True:
            request = await self._queue.get()
            if request is None:
                self._transport.write(encode_response(Reply(400, b"bad request\n"), False))
                self._transport.close()
                return
            reply = await self._app.handle(request.method, request.path, request.headers)
            keep_alive = request.headers.get("connection", "").lower() != "close"
            if self._transport.is_closing():
                return
            self._transport.write(encode_response(reply, keep_alive))
            if not keep_alive:
                self._transport.close()
                return


class DemoApp:
    """App `a` or `b`: answers requests; `a` calls `upstream` for each `GET /`."""

    def __init__(
        self, name: str, version: str, upstream: Upstream | None, fail_every: int = 0
    ) -> None:
        self.name = name
        self.version = version
        self.upstream = upstream
        self.fail_every = fail_every  # 0: never fail on purpose
        self.served = 0  # requests answered, health checks not counted

    async def handle(self, method: str, path: str, headers: dict[str, str]) -> Reply:
        seen = (SEEN_ID_HEADER + self.name, headers.get("x-request-id", "-"))
        if path.split("?", 1)[0] == "/healthz":
            return Reply(200, b"ok\n", (seen,))
        self.served += 1
        if self.fail_every and self.served % self.fail_every == 0:
            who = f"{self.name} ({self.version})"
            said = f"error from {who}: every {self.fail_every}th request fails, on purpose\n"
            return Reply(503, said.encode(), (seen,))
        if self.upstream is None:
            return self._greet(path, headers, seen)
        if method != "GET" or path.split("?", 1)[0] != "/":
            return Reply(404, f"{self.name}: no such page {path}\n".encode(), (seen,))
        return await self._call_upstream(self.upstream, headers, seen)

    def _greet(self, path: str, headers: dict[str, str], seen: tuple[str, str]) -> Reply:
        lines = [f"hello from {self.name} ({self.version}), asked for {path}"]
        lines += [f"  {name}: {headers[name]}" for name in ECHOED if name in headers]
        return Reply(200, ("\n".join(lines) + "\n").encode(), (seen,))

    async def _call_upstream(
        self, up: Upstream, headers: dict[str, str], seen: tuple[str, str]
    ) -> Reply:
        forwarded = [(name, headers[name]) for name in PROPAGATED if name in headers]
        url = f"http://{up.authority}{up.path}"
        try:
            answer = await asyncio.wait_for(fetch(up, forwarded), UPSTREAM_TIMEOUT)
        except (OSError, TimeoutError, httptools.HttpParserError) as exc:
            text = f"{self.name} ({self.version}) could not call {url}: {exc!r}\n"
            return Reply(502, text.encode(), (seen,))
        head = f"hello from {self.name} ({self.version}); {url} answered {answer.status}:\n"
        said = b"".join(b"  " + line + b"\n" for line in answer.body.splitlines())
        headers_out = (seen, *[(k, v) for k, v in answer.headers if k.startswith(SEEN_ID_HEADER)])
        return Reply(200, head.encode() + said, headers_out)


async def fetch(up: Upstream, headers: Sequence[tuple[str, str]]) -> Reply:
    """One `GET` to `up` on a fresh connection; the whole answer, read until complete."""
    reader, writer = await asyncio.open_connection(up.host, up.port)
    try:
        lines = [f"GET {up.path} HTTP/1.1", f"host: {up.authority}"]
        if not any(k == "user-agent" for k, _ in headers):
            lines.append("user-agent: demo-app-a")
        lines += [f"{k}: {v}" for k, v in headers]
        lines.append("connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        collector = _HeadCollector()
        parser = httptools.HttpResponseParser(collector)
        while not collector.complete:
            data = await reader.read(65536)
            if not data:
                raise ConnectionResetError("connection closed before the answer was complete")
            parser.feed_data(data)
        out = tuple(collector.request.headers.items())
        return Reply(parser.get_status_code(), bytes(collector.body), out)
    finally:
        writer.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def serve(app: DemoApp, host: str, port: int) -> None:
    """Serve `app` on host:port until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: AppProtocol(app), host, port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"app {app.name} listening on {host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m sidecar.demo.apps a|b --listen HOST:PORT [--upstream ...]`."""
    parser = argparse.ArgumentParser(prog="python -m sidecar.demo.apps")
    parser.add_argument("name", choices=("a", "b"))
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT to serve on")
    parser.add_argument("--version", default="v1", help="shown in the greeting")
    parser.add_argument("--upstream", type=_address, help="(a) HOST:PORT to connect to for b")
    parser.add_argument("--upstream-host", default="", help="(a) Host header for the call to b")
    parser.add_argument(
        "--fail-every",
        type=int,
        default=0,
        metavar="N",
        help="answer every Nth request with 503 (0: never)",
    )
    args = parser.parse_args(argv)
    upstream = None
    if args.upstream is not None:
        host, port = args.upstream
        upstream = Upstream(host, port, args.upstream_host or f"{host}:{port}")
    app = DemoApp(args.name, args.version, upstream, max(0, args.fail_every))
    asyncio.run(serve(app, *args.listen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
