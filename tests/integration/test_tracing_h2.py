"""Tracing of HTTP/2 and gRPC through two real sidecars, read back from `sidecar traces`.

A grpcio client calls a grpcio service (HTTP/2 end to end: client -> a's sidecar -> b's sidecar
-> service, Service port protocol GRPC); curl speaks HTTP/2 with prior knowledge to a's listener
on an HTTP port, whose upstream side is HTTP/1.1. Each call's spans are found by the x-request-id
the client sent. Envoy's tags for gRPC (HttpTracerUtility): grpc.path, grpc.authority,
grpc.content_type, grpc.timeout from the request; grpc.status_code from the trailers (or a
trailers-only answer); error=true for the statuses Envoy counts as upstream errors (UNKNOWN,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS), not for
client errors such as NOT_FOUND.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest

from .grpc_service import EchoServer, channel, method
from .mesh_two import B_IP
from .proxy_fixtures import free_port
from .test_traces_collector import CollectorProcess
from .test_tracing import (
    B_FQDN,
    Pair,
    _App,
    by_kind,
    sidecar_pair,
    wait_spans,
)
from .test_tracing import app as app  # the fixture
from .test_tracing import collector as collector  # the fixture (one collector per module)
from .zipkin_schema import assert_valid

CALL_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def grpc_pair(collector: CollectorProcess) -> Iterator[Pair]:
    with EchoServer(B_IP) as server, sidecar_pair(
        server.port, f"127.0.0.1:{collector.port}", 100, port_name="grpc", protocol="GRPC"
    ) as pair:  # fmt: skip
        yield pair


def call(pair: Pair, name: str, payload: bytes = b"hi") -> tuple[str, grpc.StatusCode]:
    """One unary call through the sidecars with a fresh x-request-id; its id and status."""
    rid = f"grpc-{uuid.uuid4()}"
    with channel(f"127.0.0.1:{pair.port}", pair.authority) as ch:
        try:
            stub: Any = ch.unary_unary(method(name))
            stub(payload, timeout=CALL_TIMEOUT, metadata=(("x-request-id", rid),))
            return rid, grpc.StatusCode.OK
        except grpc.RpcError as err:
            return rid, err.code()


def both(collector: CollectorProcess, rid: str) -> tuple[dict[str, Any], dict[str, Any]]:
    spans = wait_spans(collector, rid, 2)
    assert_valid(spans, "ListOfSpans")
    client, server = by_kind(spans)
    assert client["traceId"] == server["traceId"]
    assert "parentId" not in client
    assert server["parentId"] == client["id"]
    return client, server


def test_a_grpc_call_is_traced_on_both_sides(grpc_pair: Pair, collector: CollectorProcess
                                             ) -> None:
    rid, code = call(grpc_pair, "Unary")
    assert code is grpc.StatusCode.OK
    client, server = both(collector, rid)
    assert client["name"] == server["name"] == f"{grpc_pair.authority}/*"
    for span in (client, server):
        tags = span["tags"]
        assert tags["http.protocol"] == "HTTP/2"
        assert tags["http.method"] == "POST"
        assert tags["http.status_code"] == "200"
        assert tags["grpc.path"] == "/test.Echo/Unary"
        assert tags["grpc.content_type"] == "application/grpc"
        assert tags["grpc.timeout"].endswith(("m", "S", "u", "n"))  # the client's deadline
        assert tags["grpc.status_code"] == "0"
        assert "error" not in tags
    assert client["tags"]["grpc.authority"] == grpc_pair.authority
    assert client["tags"]["upstream_cluster"] == f"outbound|{grpc_pair.port}||{B_FQDN}"


@pytest.mark.parametrize(("name", "code", "status", "error"), [
    ("Meta", grpc.StatusCode.NOT_FOUND, "5", False),  # a client error: no error tag
    ("NoSuchMethod", grpc.StatusCode.UNIMPLEMENTED, "12", True),
], ids=["not-found", "unimplemented"])
def test_grpc_status_and_error_tags(grpc_pair: Pair, collector: CollectorProcess, name: str,
                                    code: grpc.StatusCode, status: str, error: bool) -> None:
    rid, got = call(grpc_pair, name)
    assert got is code
    for span in both(collector, rid):
        assert span["tags"]["http.status_code"] == "200"
        assert span["tags"]["grpc.status_code"] == status
        assert span["tags"].get("error") == ("true" if error else None)


def test_a_failing_grpc_upstream_marks_the_span_as_an_error(
    collector: CollectorProcess, grpc_pair: Pair
) -> None:
    # b's sidecar with no application listening: the call fails UNAVAILABLE at b's sidecar.
    with sidecar_pair(free_port(), f"127.0.0.1:{collector.port}", 100, port_name="grpc",
                      protocol="GRPC") as pair:  # fmt: skip
        rid, code = call(pair, "Unary")
        assert code is grpc.StatusCode.UNAVAILABLE
        client, server_span = both(collector, rid)
    for span in (client, server_span):
        assert span["tags"]["error"] == "true"
    assert server_span["tags"]["response_flags"] == "UF"


@pytest.fixture(scope="module")
def http_pair(app: int, collector: CollectorProcess) -> Iterator[Pair]:
    with sidecar_pair(app, f"127.0.0.1:{collector.port}", 100) as pair:
        yield pair


def test_an_http2_client_is_traced_with_its_protocol(http_pair: Pair, collector: CollectorProcess
                                                     ) -> None:
    rid = f"h2-{uuid.uuid4()}"
    out = subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "--http2-prior-knowledge", "-o", "/dev/null",
         "-w", "%{http_version} %{http_code}", "-H", f"host: {http_pair.authority}",
         "-H", f"x-request-id: {rid}", f"http://127.0.0.1:{http_pair.port}/h2?x=1"],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    assert out.stdout == "2 200"
    client, server = both(collector, rid)
    assert client["tags"]["http.protocol"] == "HTTP/2"  # curl -> a
    assert server["tags"]["http.protocol"] == "HTTP/1.1"  # a -> b on an HTTP port
    assert client["tags"]["http.url"] == f"http://{http_pair.authority}/h2?x=1"
    assert client["name"] == server["name"] == f"{http_pair.authority}/*"
    assert _App.seen[rid]["x-b3-spanid"] == server["id"]
