"""50 MB through the real proxy process with curl: streamed both ways, memory stays bounded."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
from collections.abc import AsyncIterator

import pytest

from tests.conftest import require

from .proxy_fixtures import free_port
from .sidecar_process import SidecarProcess, ingress_sidecar_yaml
from .upstreams import pattern_digest, start_streaming_upstream

SIZE = 50 * 1024 * 1024
# The proxy may grow by at most this much while 50 MB pass through it: a few socket buffers'
# worth, nowhere near the body size.
GROWTH_LIMIT_KIB = 16 * 1024


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[SidecarProcess, int]]:
    require(shutil.which("curl") is not None, "curl is not installed")
    server, up = await start_streaming_upstream()
    port = free_port()
    sc = SidecarProcess(ingress_sidecar_yaml(port, up), "--access-log", "")
    await asyncio.to_thread(sc.start)
    try:
        yield sc, port
    finally:
        sc.__exit__(None)
        server.close()


async def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "60",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


async def test_chunked_download_streams_with_bounded_memory(
    proxy: tuple[SidecarProcess, int],
) -> None:
    sc, port = proxy
    before = sc.rss_peak_kib()
    res = await _curl("-o", "-", f"http://127.0.0.1:{port}/bytes/{SIZE}")
    assert len(res.stdout) == SIZE
    assert hashlib.sha256(res.stdout).hexdigest() == pattern_digest(SIZE)
    assert sc.rss_peak_kib() - before < GROWTH_LIMIT_KIB


async def test_slow_reader_does_not_grow_the_proxy(proxy: tuple[SidecarProcess, int]) -> None:
    sc, port = proxy
    before = sc.rss_peak_kib()
    # 20 MB at 10 MB/s: the upstream can write far faster than curl reads.
    size = 20 * 1024 * 1024
    res = await _curl(
        "--limit-rate",
        "10M",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        f"http://127.0.0.1:{port}/bytes/{size}",
    )
    assert int(res.stdout) == size
    assert sc.rss_peak_kib() - before < GROWTH_LIMIT_KIB


async def test_chunked_upload_streams_with_bounded_memory(
    proxy: tuple[SidecarProcess, int],
) -> None:
    sc, port = proxy
    before = sc.rss_peak_kib()
    # `curl -T -` reads stdin and uploads it with transfer-encoding: chunked.
    curl = await asyncio.create_subprocess_shell(
        f"head -c {SIZE} /dev/zero | curl -sS --max-time 60 -T - -H 'expect:' "
        f"http://127.0.0.1:{port}/count",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await curl.communicate()
    assert curl.returncode == 0, err.decode()
    zero_digest = hashlib.sha256(b"\0" * SIZE).hexdigest()
    assert out.decode() == f"count={SIZE} sha256={zero_digest}"
    assert sc.rss_peak_kib() - before < GROWTH_LIMIT_KIB
