"""HTTP/2 interop through one real sidecar: curl (h2c prior knowledge and HTTP/1.1) and h2load.

One `sidecar run` process with one ingress listener (captureMode NONE) in front of either an
HTTP/2-only upstream (tests/integration/h2_upstreams.py, port protocol HTTP2) or an HTTP/1.1-only
upstream (tests/integration/upstreams.py, port protocol HTTP). The `direct` cases run the same
clients against the upstreams themselves: they prove what each upstream serves and that each
refuses the other protocol, so a cross-protocol pass through the sidecar means it translated.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from tests.conftest import require

from .h2_upstreams import TRAILER, h2_request, start_h2_upstream
from .proxy_fixtures import free_port
from .sidecar_process import SidecarProcess, ingress_sidecar_yaml
from .upstreams import start_streaming_upstream

H2_PRIOR = "--http2-prior-knowledge"
H11 = "--http1.1"
Starter = Callable[[], Awaitable[tuple[asyncio.Server, int]]]
UPSTREAMS: dict[str, tuple[Starter, str]] = {
    "h2": (start_h2_upstream, "HTTP2"),
    "h1": (start_streaming_upstream, "HTTP"),
}


@dataclass
class Curl:
    """What curl reported: HTTP version, status and body (status 0 when it failed)."""

    returncode: int
    version: str
    status: int
    body: bytes
    stderr: str


async def curl(port: int, path: str, *args: str) -> Curl:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "10", "--noproxy", "*",
        "-w", "\n%{http_version} %{http_code}", *args, f"http://127.0.0.1:{port}{path}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    body, _, tail = out.rpartition(b"\n")
    version, _, status = tail.decode().partition(" ")
    return Curl(proc.returncode or 0, version, int(status or 0), body, err.decode())


@dataclass
class Setup:
    """Where clients connect (`port`): an upstream itself, or a sidecar in front of it."""

    port: int
    sidecar: SidecarProcess | None


@pytest.fixture
def tools() -> None:
    require(shutil.which("curl") is not None, "curl is not installed")


async def _serve(kind: str, via: str) -> AsyncIterator[Setup]:
    start, protocol = UPSTREAMS[kind]
    server, up = await start()
    sc: SidecarProcess | None = None
    try:
        if via == "direct":
            yield Setup(up, None)
        else:
            port = free_port()
            sc = SidecarProcess(ingress_sidecar_yaml(port, up, protocol), "--no-watch")
            await asyncio.to_thread(sc.start)
            yield Setup(port, sc)
    finally:
        if sc is not None:
            sc.__exit__(None)
        server.close()


@pytest.fixture
async def h2_direct(tools: None) -> AsyncIterator[Setup]:
    async for s in _serve("h2", "direct"):
        yield s


@pytest.fixture
async def h1_direct(tools: None) -> AsyncIterator[Setup]:
    async for s in _serve("h1", "direct"):
        yield s


@pytest.fixture(params=["direct", "sidecar"])
async def h2_up(request: pytest.FixtureRequest, tools: None) -> AsyncIterator[Setup]:
    async for s in _serve("h2", request.param):
        yield s


@pytest.fixture
async def h2_sidecar(tools: None) -> AsyncIterator[Setup]:
    async for s in _serve("h2", "sidecar"):
        yield s


@pytest.fixture
async def h1_sidecar(tools: None) -> AsyncIterator[Setup]:
    async for s in _serve("h1", "sidecar"):
        yield s


# --- the upstreams themselves: what they serve, and that each speaks one protocol only ---------


@pytest.mark.timeout(30)
async def test_h2_upstream_serves_h2c_only(h2_direct: Setup) -> None:
    ok = await curl(h2_direct.port, "/direct", H2_PRIOR)
    assert (ok.version, ok.status, ok.body) == ("2", 200, b"h2 GET /direct got=0"), ok
    refused = await curl(h2_direct.port, "/direct", H11)
    assert refused.returncode != 0 and refused.status != 200, refused


@pytest.mark.timeout(30)
async def test_h1_upstream_serves_http11_only(h1_direct: Setup) -> None:
    ok = await curl(h1_direct.port, "/direct", H11)
    assert (ok.version, ok.status, ok.body) == ("1.1", 200, b"ok /direct"), ok
    refused = await curl(h1_direct.port, "/direct", H2_PRIOR)
    assert refused.returncode != 0 and refused.status != 200, refused


# --- across protocols, through the sidecar ---------------------------------------------------


@pytest.mark.timeout(30)
async def test_http11_client_reaches_h2_only_upstream(h2_sidecar: Setup) -> None:
    got = await curl(h2_sidecar.port, "/from-h1", H11)
    assert (got.version, got.status, got.body) == ("1.1", 200, b"h2 GET /from-h1 got=0"), got
    posted = await curl(h2_sidecar.port, "/post", H11, "--data-binary", "x" * 5000)
    assert (posted.status, posted.body) == (200, b"h2 POST /post got=5000"), posted


@pytest.mark.timeout(30)
async def test_h2c_client_reaches_http11_upstream(h1_sidecar: Setup) -> None:
    got = await curl(h1_sidecar.port, "/from-h2", H2_PRIOR)
    assert (got.version, got.status, got.body) == ("2", 200, b"ok /from-h2"), got
    size = 3 * 1024 * 1024
    big = await curl(h1_sidecar.port, f"/bytes/{size}", H2_PRIOR)
    assert (big.status, len(big.body)) == (200, size), big.stderr


# --- h2c end to end ---------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_h2c_to_h2_upstream_with_trailers(h2_up: Setup) -> None:
    got = await curl(h2_up.port, "/h2c", H2_PRIOR)
    assert (got.version, got.status, got.body) == ("2", 200, b"h2 GET /h2c got=0"), got
    resp = await asyncio.to_thread(
        h2_request, h2_up.port, "/trail", authority="b.example", body=b"abc"
    )
    assert resp.header(":status") == "200", resp
    assert resp.body == b"h2 POST /trail got=3", resp
    assert resp.trailer(TRAILER[0]) == TRAILER[1], resp


_H2LOAD_DONE = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
    r"(\d+) failed, (\d+) errored, (\d+) timeout"
)
_H2LOAD_CODES = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


async def h2load(port: int, n: int = 2000) -> str:
    require(shutil.which("h2load") is not None, "h2load is not installed")
    proc = await asyncio.create_subprocess_exec(
        "h2load", "-n", str(n), "-c", "4", "-m", "10", "-T", "20", "-N", "20",
        f"http://127.0.0.1:{port}/load",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


def assert_all_2xx(text: str, n: int) -> None:
    done, codes = _H2LOAD_DONE.search(text), _H2LOAD_CODES.search(text)
    assert done and codes, text
    assert [int(x) for x in done.groups()] == [n, n, n, n, 0, 0, 0], text
    assert [int(x) for x in codes.groups()] == [n, 0, 0, 0], text


@pytest.mark.timeout(120)
async def test_h2load_to_h2_upstream(h2_up: Setup) -> None:
    assert_all_2xx(await h2load(h2_up.port), 2000)


@pytest.mark.timeout(120)
async def test_h2load_to_http11_upstream_through_sidecar(h1_sidecar: Setup) -> None:
    assert_all_2xx(await h2load(h1_sidecar.port), 2000)
