"""gRPC end to end: a grpcio client and service, through a client sidecar and a server sidecar.

Every call test runs twice: `direct` (client straight to the service, which proves the test
itself) and `sidecars` (client -> a's egress listener -> b's ingress listener -> service, ports
with protocol GRPC). The gRPC service and the client are grpcio's synchronous API in threads of
grpcio's own; the sidecars are real `sidecar run` processes (tests/integration/mesh_two.py).
Failure answers (upstream not listening, route timeout, grpc-timeout) are also read off the wire
with a raw HTTP/2 client, since grpcio maps a bare HTTP 503 to UNAVAILABLE as well.
"""

from __future__ import annotations

import hashlib
import queue
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest

from .grpc_service import (
    ECHO_PREFIX,
    META_DETAILS,
    META_STATUS,
    PATTERN,
    TRAILING_METADATA,
    EchoServer,
    channel,
    method,
    pattern_sha256,
    upload_messages,
)
from .h2_upstreams import H2Response, h2_request
from .mesh_two import B_IP, MeshTwo, start_mesh_two
from .sidecar_process import SidecarProcess

CALL_TIMEOUT = 10.0
BIG_COUNT, BIG_SIZE = 1600, 64 * 1024  # 100 MiB in all
GROWTH_LIMIT_KIB = 32 * 1024
GRPC_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


@dataclass
class Via:
    """Where the client dials: the service itself, or a's sidecar (then `mesh` is set)."""

    target: str
    authority: str | None = None
    mesh: MeshTwo | None = None

    def channel(self) -> grpc.Channel:
        return channel(self.target, self.authority)


@pytest.fixture(scope="module")
def server() -> Iterator[EchoServer]:
    with EchoServer(B_IP) as srv:
        yield srv


@pytest.fixture(scope="module")
def mesh(server: EchoServer) -> Iterator[MeshTwo]:
    with start_mesh_two(server.port) as running:
        yield running


@pytest.fixture(scope="module", params=["direct", "sidecars"])
def via(request: pytest.FixtureRequest, server: EchoServer) -> Via:
    if request.param == "direct":
        return Via(f"{B_IP}:{server.port}")
    m: MeshTwo = request.getfixturevalue("mesh")
    return Via(m.target, m.authority, m)


@pytest.fixture
def ch(via: Via) -> Iterator[grpc.Channel]:
    with via.channel() as c:
        yield c


def as_call(err: BaseException) -> grpc.Call:
    """A failed call's RpcError is also its grpc.Call (code, details, metadata)."""
    return cast(grpc.Call, err)


def grpc_frame(payload: bytes) -> bytes:
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def request_id() -> str:
    return f"grpc-test-{uuid.uuid4()}"


def assert_logged_200(sc: SidecarProcess, path: str, rid: str) -> None:
    """The access-log line of the call with request id `rid` shows `POST path HTTP/2` 200."""
    text = sc.wait_log(f'"{rid}"', stream="stdout")
    line = next(ln for ln in text.splitlines() if f'"{rid}"' in ln)
    assert re.search(rf'"POST {re.escape(path)} HTTP/2(\.0)?" 200 ', line), line


# --- the four kinds of call -------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [0, 1, 100, 1024 * 1024])
def test_unary(ch: grpc.Channel, size: int) -> None:
    payload = (PATTERN * 16)[:size]
    assert ch.unary_unary(method("Unary"))(payload, timeout=CALL_TIMEOUT) == payload


@pytest.mark.timeout(60)
def test_server_streaming(ch: grpc.Channel) -> None:
    got = list(ch.unary_stream(method("Download"))(b"100,1000", timeout=CALL_TIMEOUT))
    assert got == [PATTERN[:1000]] * 100


@pytest.mark.timeout(60)
def test_client_streaming(ch: grpc.Channel) -> None:
    answer = ch.stream_unary(method("Upload"))(upload_messages(50, 3000), timeout=CALL_TIMEOUT)
    assert answer == f"count=50 bytes=150000 sha256={pattern_sha256(50, 3000)}".encode()


@pytest.mark.timeout(60)
def test_bidirectional_answers_arrive_before_the_client_finishes(ch: grpc.Channel) -> None:
    # Each answer must come back while the request stream is still open: a proxy that waited
    # for the end of the request would leave next() blocked until the deadline.
    outbox: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        while (msg := outbox.get(timeout=CALL_TIMEOUT)) is not None:
            yield msg

    answers = ch.stream_stream(method("Chat"))(requests(), timeout=CALL_TIMEOUT)
    for i in range(20):
        outbox.put(b"m%d" % i)
        assert next(answers) == b"echo:m%d" % i
    outbox.put(None)
    assert list(answers) == []
    assert answers.code() == grpc.StatusCode.OK


@pytest.mark.timeout(60)
def test_deadline_exceeded(ch: grpc.Channel) -> None:
    began = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        ch.unary_unary(method("Sleep"))(b"3000", timeout=0.5)
    assert as_call(err.value).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - began < 2.5


@pytest.mark.timeout(60)
def test_status_and_metadata_arrive_unchanged(ch: grpc.Channel) -> None:
    sent = (
        ("x-test-custom", "value one"),
        ("x-test-custom-bin", b"\x00\x01\x80\xff binary"),
        ("x-test-multi", "first"),
        ("x-test-multi", "second"),
    )
    with pytest.raises(grpc.RpcError) as err:
        ch.unary_unary(method("Meta"))(b"", metadata=sent, timeout=CALL_TIMEOUT)
    call = as_call(err.value)
    assert call.code() == META_STATUS
    assert call.details() == META_DETAILS
    initial = [(m.key, m.value) for m in call.initial_metadata()]
    assert [kv for kv in initial if kv[0].startswith(ECHO_PREFIX)] == list(sent)
    trailing = [(m.key, m.value) for m in call.trailing_metadata()]
    assert [kv for kv in trailing if kv[0].startswith(ECHO_PREFIX)] == list(TRAILING_METADATA)


# --- 100 MiB streamed, bounded proxy memory ---------------------------------------------------


def _peaks(via: Via) -> list[int]:
    return [sc.rss_peak_kib() for sc in (via.mesh.a, via.mesh.b)] if via.mesh else []


def _bytes_logged(sc: SidecarProcess, rid: str) -> tuple[int, int]:
    """(bytes received, bytes sent) in the access-log line of the call with request id `rid`."""
    text = sc.wait_log(f'"{rid}"', stream="stdout")
    line = next(ln for ln in text.splitlines() if f'"{rid}"' in ln)
    counts = re.search(r'" (\d+) (\d+) \d+ ', line)
    assert counts, line
    return int(counts[1]), int(counts[2])


@pytest.mark.timeout(240)
@pytest.mark.parametrize("direction", ["download", "upload"])
def test_100_mib_streamed_with_bounded_proxy_memory(
    via: Via, ch: grpc.Channel, direction: str
) -> None:
    before = _peaks(via)
    rid = request_id()
    meta = (("x-request-id", rid),)
    total = BIG_COUNT * BIG_SIZE
    digest = pattern_sha256(BIG_COUNT, BIG_SIZE)
    if direction == "download":
        count, got = 0, hashlib.sha256()
        request = b"%d,%d" % (BIG_COUNT, BIG_SIZE)
        for msg in ch.unary_stream(method("Download"))(request, timeout=180, metadata=meta):
            got.update(msg)
            count += 1
        assert (count, got.hexdigest()) == (BIG_COUNT, digest)
    else:
        answer = ch.stream_unary(method("Upload"))(
            upload_messages(BIG_COUNT, BIG_SIZE), timeout=180, metadata=meta
        )
        assert answer == f"count={BIG_COUNT} bytes={total} sha256={digest}".encode()
    growth = [after - b for after, b in zip(_peaks(via), before, strict=True)]
    assert all(g < GROWTH_LIMIT_KIB for g in growth), f"peak RSS growth KiB (a, b): {growth}"
    if via.mesh:  # and the bytes did pass through both sidecars
        for sc in (via.mesh.a, via.mesh.b):
            received, sent = _bytes_logged(sc, rid)
            assert (sent if direction == "download" else received) >= total


# --- failure answers --------------------------------------------------------------------------


def _wire_status(resp: H2Response) -> tuple[str | None, str | None]:
    """grpc-status and grpc-message, from the trailers or (trailers-only) the head."""
    fields = dict(resp.headers + resp.trailers)
    return fields.get("grpc-status"), fields.get("grpc-message")


@pytest.mark.timeout(60)
def test_grpc_timeout_shorter_than_the_server_gives_deadline_exceeded(via: Via) -> None:
    # No client-side deadline: the answer comes from whoever honours grpc-timeout (the service
    # when direct; the proxy, or the service it forwarded the header to, through the sidecars).
    port = int(via.target.rsplit(":", 1)[1])
    rid = request_id()
    began = time.monotonic()
    resp = h2_request(
        port,
        method("Sleep"),
        host=via.target.rsplit(":", 1)[0],
        authority=via.authority or via.target,
        headers=[*GRPC_HEADERS, ("grpc-timeout", "300m"), ("x-request-id", rid)],
        body=grpc_frame(b"3000"),
    )
    assert time.monotonic() - began < 2.5
    assert resp.header(":status") == "200", resp
    assert _wire_status(resp)[0] == "4", resp
    if via.mesh:
        assert_logged_200(via.mesh.a, method("Sleep"), rid)


def _closed_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
def test_upstream_not_listening_gives_unavailable_not_a_bare_503() -> None:
    rid = request_id()
    with start_mesh_two(_closed_port(B_IP)) as dead:
        resp = h2_request(
            dead.port,
            method("Unary"),
            authority=dead.authority,
            headers=[*GRPC_HEADERS, ("x-request-id", rid)],
            body=grpc_frame(b"hello"),
        )
        assert resp.header(":status") == "200", resp
        assert resp.header("content-type") == "application/grpc", resp
        assert (resp.body, resp.trailers) == (b"", []), "expected a trailers-only response"
        status, message = _wire_status(resp)
        assert status == "14", resp
        assert message and re.search(r"connect|refused|fail", message, re.I), resp
        assert_logged_200(dead.b, method("Unary"), rid)

        with channel(dead.target, dead.authority) as ch, pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(method("Unary"))(b"hello", timeout=CALL_TIMEOUT)
        call = as_call(err.value)
        assert call.code() == grpc.StatusCode.UNAVAILABLE
        assert "http2 header with status" not in call.details()
