"""TLS terminated by the sidecar (Sidecar `ingress[].tls`), with ALPN choosing HTTP/2 or
HTTP/1.1, through the real `sidecar run` process and curl; a certificate that cannot be loaded
refuses the config with the field's path."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import require

from .certs import self_signed
from .proxy_fixtures import free_port
from .sidecar_process import SidecarProcess, ingress_sidecar_yaml
from .upstreams import start_streaming_upstream


def tls_ingress_yaml(port: int, upstream: int, cert: Path, key: Path) -> str:
    tls = f"""\
    tls:
      mode: SIMPLE
      serverCertificate: {cert}
      privateKey: {key}
"""
    return ingress_sidecar_yaml(port, upstream, "HTTPS", tls)


@pytest.fixture
async def tls_sidecar(tmp_path: Path) -> AsyncIterator[tuple[SidecarProcess, int]]:
    require(shutil.which("curl") is not None, "curl is not installed")
    cert, key = self_signed(tmp_path, "b.default.svc.cluster.local")
    server, up = await start_streaming_upstream()
    port = free_port()
    sc = SidecarProcess(tls_ingress_yaml(port, up, cert, key))
    await asyncio.to_thread(sc.start)
    try:
        yield sc, port
    finally:
        sc.__exit__(None)
        server.close()


async def curl(port: int, *args: str) -> tuple[str, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-k", "--max-time", "10", "-o", "-", "-w", "\n%{http_version}",
        *args, f"https://127.0.0.1:{port}/bytes/1000",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    body, _, version = out.rpartition(b"\n")
    return version.decode(), body


async def test_curl_http2_over_tls_is_served_as_http2(
    tls_sidecar: tuple[SidecarProcess, int],
) -> None:
    sc, port = tls_sidecar
    version, body = await curl(port, "--http2")
    assert version == "2" and len(body) == 1000
    log = await asyncio.to_thread(sc.wait_log, '"GET /bytes/1000 HTTP/2" 200', 5, "stdout")
    assert "HTTP/2" in log


async def test_the_access_log_shows_the_sni_of_a_terminated_connection(
    tls_sidecar: tuple[SidecarProcess, int],
) -> None:
    sc, port = tls_sidecar
    host = "b.default.svc.cluster.local"
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-k", "--max-time", "10", "-o", "/dev/null", "--resolve",
        f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/bytes/10",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert await proc.wait() == 0
    log = await asyncio.to_thread(sc.wait_log, '"GET /bytes/10 HTTP/2" 200', 5, "stdout")
    line = next(ln for ln in log.splitlines() if "/bytes/10 " in ln)
    assert f" {host} " in line or f'"{host}"' in line, line  # requested_server_name, as Envoy


async def test_curl_http11_over_tls_is_served_as_http11(
    tls_sidecar: tuple[SidecarProcess, int],
) -> None:
    sc, port = tls_sidecar
    version, body = await curl(port, "--http1.1")
    assert version == "1.1" and len(body) == 1000
    await asyncio.to_thread(sc.wait_log, '"GET /bytes/1000 HTTP/1.1" 200', 5, "stdout")


async def test_h2load_over_tls(tls_sidecar: tuple[SidecarProcess, int]) -> None:
    require(shutil.which("h2load") is not None, "h2load is not installed")
    _, port = tls_sidecar
    proc = await asyncio.create_subprocess_exec(
        "h2load", "-n", "200", "-c", "2", "-m", "10", f"https://127.0.0.1:{port}/bytes/100",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        out = (await proc.communicate())[0].decode()
    assert "Application protocol: h2" in out, out
    assert "status codes: 200 2xx" in out, out


def test_a_missing_certificate_refuses_the_config(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(tls_ingress_yaml(8443, 8080, tmp_path / "nope.pem", tmp_path / "nope.key"))
    res = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "validate", str(mesh)],
        capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert "Sidecar/default/default" in out and "spec.ingress[0].tls.serverCertificate" in out
    assert "nope.pem" in out
