"""A real gRPC service (grpcio, no code generation) and client helpers for the end-to-end tests.

Theory of operation: the service `test.Echo` is registered with a generic handler whose methods
take and return raw bytes (no serializers, so no protoc). It runs on grpcio's synchronous server
with a small thread pool, in threads of its own, so it never meets the test's (uv)loop. Methods:
- Unary:    echoes the request.
- Download: server streaming; request b"COUNT,SIZE" -> COUNT messages of SIZE pattern bytes.
- Upload:   client streaming; answers b"count=N bytes=M sha256=HEX" over all messages.
- Chat:     bidirectional; answers each message m with b"echo:" + m, in order.
- Meta:     returns the caller's `x-test-*` metadata as initial metadata, fixed trailing
            metadata and status NOT_FOUND "no such thing".
- Sleep / SlowRoute: sleeps the milliseconds in the request (at most SLEEP_CAP_S), then answers
            b"slept"; stops early when the call is cancelled (deadline or client gone).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]

SERVICE = "test.Echo"
PATTERN = bytes(range(256)) * 256  # 64 KiB
SLEEP_CAP_S = 10.0
TRAILING_METADATA = (("x-test-trailer", "t-value"), ("x-test-trailer-bin", b"\x00\x01\xfe\xff"))
META_STATUS = grpc.StatusCode.NOT_FOUND
META_DETAILS = "no such thing"
ECHO_PREFIX = "x-test-"  # Meta echoes only these keys (a proxy may add x-forwarded-* and more)
# A client never honours HTTP proxies from the environment: traffic stays on loopback.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.enable_http_proxy", 0),)


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def _download(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    count, size = (int(x) for x in request.split(b","))
    piece = (PATTERN * (size // len(PATTERN) + 1))[:size]
    for _ in range(count):
        yield piece


def _upload(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    count = total = 0
    digest = hashlib.sha256()
    for msg in requests:
        count += 1
        total += len(msg)
        digest.update(msg)
    return f"count={count} bytes={total} sha256={digest.hexdigest()}".encode()


def _chat(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for msg in requests:
        yield b"echo:" + msg


def _meta(request: bytes, context: grpc.ServicerContext) -> bytes:
    echoed = tuple((k, v) for k, v in context.invocation_metadata() if k.startswith(ECHO_PREFIX))
    context.send_initial_metadata(echoed)
    context.set_trailing_metadata(TRAILING_METADATA)
    context.abort(META_STATUS, META_DETAILS)
    raise AssertionError("abort returns only by raising")  # pragma: no cover


def _sleep(request: bytes, context: grpc.ServicerContext) -> bytes:
    end = time.monotonic() + min(int(request or b"0") / 1000, SLEEP_CAP_S)
    while time.monotonic() < end and context.is_active():
        time.sleep(0.02)
    return b"slept"


def _handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Download": grpc.unary_stream_rpc_method_handler(_download),
            "Upload": grpc.stream_unary_rpc_method_handler(_upload),
            "Chat": grpc.stream_stream_rpc_method_handler(_chat),
            "Meta": grpc.unary_unary_rpc_method_handler(_meta),
            "Sleep": grpc.unary_unary_rpc_method_handler(_sleep),
            "SlowRoute": grpc.unary_unary_rpc_method_handler(_sleep),
        },
    )


class EchoServer:
    """The `test.Echo` service on a grpcio server bound to `host` on a free port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8), options=CHANNEL_OPTIONS
        )
        self.server.add_generic_rpc_handlers((_handler(),))
        self.host = host
        self.port = self.server.add_insecure_port(f"{host}:0")

    def __enter__(self) -> EchoServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None).wait(5)


def channel(target: str, authority: str | None = None) -> grpc.Channel:
    """An insecure channel to `target` (host:port), sending `authority` as :authority if given."""
    options = list(CHANNEL_OPTIONS)
    if authority:
        options.append(("grpc.default_authority", authority))
    return grpc.insecure_channel(target, options=options)


def wait_channel_ready(ch: grpc.Channel, timeout: float = 5.0) -> None:
    grpc.channel_ready_future(ch).result(timeout=timeout)


def upload_messages(count: int, size: int) -> Iterator[bytes]:
    piece = (PATTERN * (size // len(PATTERN) + 1))[:size]
    for _ in range(count):
        yield piece


def pattern_sha256(count: int, size: int) -> str:
    digest = hashlib.sha256()
    for piece in upload_messages(count, size):
        digest.update(piece)
    return digest.hexdigest()
