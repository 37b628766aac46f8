"""Istio metrics end to end: two real sidecars, a real upstream, promtool and a real Prometheus.

Workload a (client side) reaches Service b through its sidecar's egress listener; b's sidecar
hands requests to the application. Service c's only endpoint (127.0.0.30) has nothing listening,
so requests to it fail with 503 UF at a's sidecar. Both sidecars serve /stats/prometheus on a
Prometheus port of their own; a Prometheus server scrapes both every second and PromQL must
return exactly the requests the test made, by reporter, service, code and flags.

a's WorkloadEntry has address 127.0.0.1: on loopback a's sidecar connects to b from 127.0.0.1,
so that is the address b's sidecar finds its peer by.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sidecar.config.snapshot import TcpProxy
from sidecar.observability.metrics_render import render
from tests.conftest import require

from .proxy_fixtures import free_port, start_proxy, static_cluster
from .sidecar_process import SidecarProcess

B_IP, C_IP = "127.0.0.20", "127.0.0.30"
OK_REQUESTS, FAILED_REQUESTS = 7, 3
B_SVC, C_SVC = "b.default.svc.cluster.local", "c.default.svc.cluster.local"
# What promtool's lint says about Istio's and Envoy's own metric names (fixed by those projects,
# not ours to rename): Istio's duration is in milliseconds; Envoy's counters keep names without
# "_total" and its gauge envoy_cluster_membership_total has one. Anything else is a failure.
ACCEPTED_LINT = (
    ("istio_request_duration_milliseconds ", 'use base unit "seconds" instead of "milliseconds"'),
    ("envoy_", 'counter metrics should have "_total" suffix'),
    ("envoy_cluster_membership_total ", 'non-counter metrics should not have "_total" suffix'),
)


def mesh_yaml(port: int, app_port: int) -> str:
    services = "".join(
        f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: 10.96.0.{n}
  selector: {{app: {name}}}
  ports: [{{name: http, port: {port}, targetPort: {port}}}]
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {{name: {name}-1, namespace: default}}
spec:
  address: {ip}
  labels: {{app: {name}, version: v1}}
  serviceAccount: {name}
---
"""
        for name, ip, n in (("a", "127.0.0.1", 10), ("b", B_IP, 20), ("c", C_IP, 30))
    )
    return services + f"""\
apiVersion: networking.istio.io/v1beta1
kind: Sidecar
metadata: {{name: a, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: a}}}}
  egress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: ["./*"]
---
apiVersion: networking.istio.io/v1beta1
kind: Sidecar
metadata: {{name: b, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: b}}}}
  ingress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    bind: {B_IP}
    captureMode: NONE
    defaultEndpoint: 0.0.0.0:{app_port}  # Istio: 0.0.0.0 = the instance IP
"""


class HelloApp(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from b\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Mesh:
    a: SidecarProcess
    b: SidecarProcess
    port: int
    a_prom: int
    b_prom: int


def mesh_sidecar(config: str, pod: str, ip: str, prom: int, ns: str = "default") -> SidecarProcess:
    """A sidecar of the two-workload mesh: pod `pod` at `ip`, Prometheus on `prom`."""
    return SidecarProcess(
        config, "--pod-name", pod, "--pod-namespace", ns, "--instance-ip", ip,
        "--service-account", pod[0], "--no-watch", "--prometheus-port", str(prom),
    )  # fmt: skip


def _get(port: int, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/hello", headers={"host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def scrape(port: int, path: str = "/stats/prometheus") -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.headers["content-type"], resp.read().decode()


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    app = ThreadingHTTPServer((B_IP, 0), HelloApp)
    thread = threading.Thread(target=app.serve_forever, daemon=True)
    thread.start()
    port, a_prom, b_prom = free_port(), free_port(), free_port()
    config = mesh_yaml(port, app.server_address[1])
    b = mesh_sidecar(config, "b-1", B_IP, b_prom).start()
    a = mesh_sidecar(config, "a-1", "127.0.0.1", a_prom)
    try:
        a.start()
        codes = [_get(port, f"{B_SVC}:{port}") for _ in range(OK_REQUESTS)]
        codes += [_get(port, f"{C_SVC}:{port}") for _ in range(FAILED_REQUESTS)]
        assert codes == [200] * OK_REQUESTS + [503] * FAILED_REQUESTS
        yield Mesh(a, b, port, a_prom, b_prom)
    finally:
        for sc in (a, b):
            if sc.proc is not None:
                sc.__exit__(None)
        app.shutdown()
        app.server_close()


def _series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_both_reporters_count_what_happened(mesh: Mesh) -> None:
    _, a_text = scrape(mesh.a_prom)
    _, b_text = scrape(mesh.b_prom)
    [ok, failed] = sorted(_series(a_text, "istio_requests_total"))
    assert f'destination_service="{B_SVC}"' in ok and ok.endswith(f" {OK_REQUESTS}")
    assert 'reporter="source"' in ok and 'source_workload="a-1"' in ok
    assert 'destination_workload="b-1"' in ok and 'response_code="200"' in ok
    assert f'destination_service="{C_SVC}"' in failed and failed.endswith(f" {FAILED_REQUESTS}")
    assert 'response_code="503"' in failed and 'response_flags="UF"' in failed
    [inbound] = _series(b_text, "istio_requests_total")
    assert 'reporter="destination"' in inbound and inbound.endswith(f" {OK_REQUESTS}")
    assert 'source_workload="a-1"' in inbound and 'destination_workload="b-1"' in inbound
    assert f'destination_service="{B_SVC}"' in inbound
    assert 'connection_security_policy="none"' in inbound
    count = [ln for ln in b_text.splitlines()
             if ln.startswith("istio_request_duration_milliseconds_count{")]  # fmt: skip
    assert len(count) == 1 and count[0].endswith(f" {float(OK_REQUESTS)}")
    assert 'envoy_cluster_upstream_rq_total{cluster_name="inbound|' in b_text
    assert "envoy_server_live 1" in b_text


def test_admin_port_serves_the_same_metrics(mesh: Mesh) -> None:
    content_type, text = scrape(mesh.a.admin_port)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert len(_series(text, "istio_requests_total")) == 2


@pytest.mark.parametrize("side", ["a", "b"])
def test_promtool_accepts_the_exposition(mesh: Mesh, side: str) -> None:
    require(shutil.which("promtool") is not None, "promtool is not installed")
    _, text = scrape(mesh.a_prom if side == "a" else mesh.b_prom)
    res = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                         capture_output=True, timeout=30)  # fmt: skip
    problems = (res.stdout + res.stderr).decode().strip().splitlines()
    assert res.returncode in (0, 3), problems  # 1 would be a parse error
    unexpected = [
        p for p in problems
        if not any(p.startswith(name) and p.endswith(why) for name, why in ACCEPTED_LINT)
    ]  # fmt: skip
    assert not unexpected, unexpected


def _query(port: int, promql: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        data = json.loads(resp.read())
    assert data["status"] == "success", data
    return list(data["data"]["result"])


@dataclass
class Prometheus:
    """A real Prometheus server scraping `targets` every second, queried over its HTTP API."""

    port: int
    tmp: Path

    def log_tail(self) -> str:
        return (self.tmp / "prometheus.log").read_text()[-2000:]


@contextmanager
def running_prometheus(targets: list[str]) -> Iterator[Prometheus]:
    require(shutil.which("prometheus") is not None, "prometheus is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="prom-test-"))
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "- job_name: sidecars\n"
        "  metrics_path: /stats/prometheus\n"
        f"  static_configs: [{{targets: {json.dumps(targets)}}}]\n"
    )
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp / "prometheus.log").open("wb"),
    )  # fmt: skip
    try:
        yield Prometheus(port, tmp)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


def test_prometheus_server_sees_the_counts(mesh: Mesh) -> None:
    promql = ("sum by (reporter, response_code, response_flags, destination_service) "
              "(istio_requests_total)")  # fmt: skip
    expected = {
        ("source", "200", "-", B_SVC): OK_REQUESTS,
        ("source", "503", "UF", C_SVC): FAILED_REQUESTS,
        ("destination", "200", "-", B_SVC): OK_REQUESTS,
    }
    found: dict[tuple[str, ...], int] = {}
    with running_prometheus([f"127.0.0.1:{mesh.a_prom}", f"127.0.0.1:{mesh.b_prom}"]) as prom:
        port = prom.port
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and found != expected:
            time.sleep(0.5)
            try:
                result = _query(port, promql)
            except OSError:
                continue  # not listening yet
            found = {}
            for r in result:
                m = r["metric"]
                assert isinstance(m, dict)
                key = tuple(m[k] for k in ("reporter", "response_code", "response_flags",
                                           "destination_service"))  # fmt: skip
                value = r["value"]
                assert isinstance(value, list)
                found[key] = int(float(value[1]))
        assert found == expected, prom.log_tail()
        ratio = _query(port, 'sum(istio_requests_total{reporter="source",response_code=~"5.."})'
                             ' / sum(istio_requests_total{reporter="source"})')  # fmt: skip
        value = ratio[0]["value"]
        assert isinstance(value, list)
        assert float(value[1]) == pytest.approx(FAILED_REQUESTS / (OK_REQUESTS + FAILED_REQUESTS))


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_tcp_connections_and_bytes_are_counted() -> None:
    """A relayed connection, then one to a dead port (UF): opened, closed and bytes each way."""
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    dead = free_port()
    proxy = await start_proxy(
        TcpProxy(cluster="up", stat_prefix="t"),
        (static_cluster("up", ("127.0.0.1", echo.sockets[0].getsockname()[1])),),
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x" * 1000)
        assert await asyncio.wait_for(reader.readexactly(1000), 5) == b"x" * 1000
        writer.close()
        await proxy.log.wait_for(1)
        text = render(proxy.runtime.metrics, {}).decode()
        for name, value in (("istio_tcp_connections_opened_total", 1),
                            ("istio_tcp_connections_closed_total", 1),
                            ("istio_tcp_sent_bytes_total", 1000),
                            ("istio_tcp_received_bytes_total", 1000)):  # fmt: skip
            [line] = _series(text, name)
            assert 'request_protocol="tcp"' in line and 'reporter="source"' in line
            assert line.endswith(f" {value}"), line
        assert "istio_requests_total" not in text
        failing = await start_proxy(TcpProxy(cluster="dead", stat_prefix="t"),
                                    (static_cluster("dead", ("127.0.0.1", dead)),))  # fmt: skip
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", failing.port)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed: nothing listens
            writer.close()
            await failing.log.wait_for(1)
            text = render(failing.runtime.metrics, {}).decode()
            [closed] = _series(text, "istio_tcp_connections_closed_total")
            assert 'response_flags="UF"' in closed and closed.endswith(" 1")
            [opened] = _series(text, "istio_tcp_connections_opened_total")
            assert 'response_flags="-"' in opened and opened.endswith(" 1")
        finally:
            failing.close()
    finally:
        proxy.close()
        echo.close()


def _get_from(host: str, port: int) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/hello", headers={"host": f"{B_SVC}:{port}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_requests_before_a_reload_keep_the_labels_they_ran_with() -> None:
    """A reload that changes the peer's labels: the requests served before it stay counted
    under the old labels, the later ones under the new."""
    app = ThreadingHTTPServer((B_IP, 0), HelloApp)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    port, prom = free_port(), free_port()
    config = mesh_yaml(port, app.server_address[1])
    try:
        with mesh_sidecar(config, "b-1", B_IP, prom) as b:
            assert [_get_from(B_IP, port) for _ in range(3)] == [200] * 3
            b.config.write_text(config.replace(
                "labels: {app: a, version: v1}", "labels: {app: a, version: v2}"))
            status, body = b.admin("POST", "/reload")
            assert status == 200, body.decode()
            assert [_get_from(B_IP, port) for _ in range(2)] == [200] * 2
            _, text = scrape(prom)
    finally:
        app.shutdown()
        app.server_close()
    counts = {
        line.split('source_version="')[1].split('"')[0]: line.rsplit(" ", 1)[1]
        for line in _series(text, "istio_requests_total")
    }  # fmt: skip
    assert counts == {"v1": "3", "v2": "2"}
