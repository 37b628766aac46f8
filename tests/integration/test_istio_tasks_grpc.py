"""gRPC routing as Istio users write it (match by method path prefix and by metadata header, a
route timeout) through a real client-side `sidecar run` over HTTP/2, with grpcio on both sides."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest

from .grpc_service import EchoServer, channel, method, wait_channel_ready
from .istio_tasks import NS, egress_sidecar, join, running, service, subsets_rule, workload

BIND = "127.0.78.3"
PORT = 7070

VS = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: {NS}}}
spec:
  hosts: [echo]
  http:
  - name: slow-calls
    match:
    - uri: {{prefix: /test.Echo/Sleep}}
    timeout: 0.3s
    route: [{{destination: {{host: echo, subset: v1}}}}]
  - name: canary-callers
    match:
    - headers:
        x-canary: {{exact: "true"}}
    route: [{{destination: {{host: echo, subset: v2}}}}]
  - name: chat-to-v2
    match:
    - uri: {{prefix: /test.Echo/Ch}}
    route: [{{destination: {{host: echo, subset: v2}}}}]
  - route: [{{destination: {{host: echo, subset: v1}}}}]
"""


@pytest.fixture
def servers() -> Iterator[tuple[EchoServer, EchoServer]]:
    with EchoServer() as v1, EchoServer() as v2:
        yield v1, v2


def mesh(v1: EchoServer, v2: EchoServer) -> str:
    return join(
        service("echo", ("grpc", PORT)),
        workload("echo", "v1", {"grpc": v1.port}),
        workload("echo", "v2", {"grpc": v2.port}),
        subsets_rule("echo", "v1", "v2"),
        egress_sidecar(BIND, (PORT, "GRPC")),
        VS,
    )


def _calls(authority: str) -> dict[str, object]:
    ch = channel(f"{BIND}:{PORT}", authority=authority)
    try:
        wait_channel_ready(ch)
        unary = ch.unary_unary(method("Unary"))
        out: dict[str, object] = {
            "plain": unary(b"a", timeout=5),
            "canary": unary(b"b", timeout=5, metadata=(("x-canary", "true"),)),
        }
        chat = ch.stream_stream(method("Chat"))
        out["chat"] = list(chat(iter([b"1", b"2"]), timeout=5))
        start = time.monotonic()
        try:
            ch.unary_unary(method("Sleep"))(b"3000", timeout=5)
            out["sleep"] = "answered"
        except grpc.RpcError as err:
            out["sleep"] = (err.code(), err.details(), time.monotonic() - start)
        return out
    finally:
        ch.close()



@pytest.mark.parametrize("authority", ["echo:7070", f"echo.{NS}.svc.cluster.local:7070"])
async def test_grpc_routes_by_method_prefix_and_metadata_with_a_deadline(
    servers: tuple[EchoServer, EchoServer], authority: str,
) -> None:
    v1, v2 = servers
    with running(mesh(v1, v2)) as m:
        out = await asyncio.to_thread(_calls, authority)
        assert out["plain"] == b"a" and out["canary"] == b"b" and out["chat"] == [
            b"echo:1", b"echo:2"]
        code, details, elapsed = out["sleep"]  # type: ignore[misc]
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
        assert 0.25 < elapsed < 2.0, elapsed
        log = m.proc.wait_log("POST /test.Echo/Sleep", stream="stdout")
    unary = [ln for ln in log.splitlines() if "POST /test.Echo/Unary " in ln]
    assert len(unary) == 2
    assert "outbound|7070|v1|echo.shop.svc.cluster.local" in unary[0], unary[0]
    assert "outbound|7070|v2|echo.shop.svc.cluster.local" in unary[1], unary[1]
    chat = [ln for ln in log.splitlines() if "POST /test.Echo/Chat " in ln]
    assert len(chat) == 1 and "|v2|" in chat[0], chat
    sleep = [ln for ln in log.splitlines() if "POST /test.Echo/Sleep " in ln]
    assert len(sleep) == 1 and " UT " in sleep[0] and "|v1|" in sleep[0], sleep
