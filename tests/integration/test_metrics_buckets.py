"""Histogram buckets from the proxy Pod's sidecar.istio.io/statsHistogramBuckets, end to end.

Workload a is a Pod whose annotation sets the duration and response-size bounds (request size
keeps Envoy's defaults). a's sidecar proxies requests to an application answering 50-byte bodies;
its Prometheus port must expose exactly the annotated `le` bounds per metric, and a real
Prometheus' histogram_quantile over them must give the interpolation those bounds imply. A bad
annotation, or a bad --stats-histogram-buckets flag, stops `sidecar run` with a message that
names what is wrong.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .proxy_fixtures import free_port
from .sidecar_process import SidecarProcess
from .test_metrics import B_IP, B_SVC, _query, mesh_yaml, running_prometheus, scrape

BUCKETS = {
    "cluster_manager": [1, 2],  # an Envoy stat prefix: accepted, no Istio metric under it
    "istiocustom.istio_request_duration_milliseconds": [5, 50, 500, 5000],
    "istiocustom.istio_response_bytes": [10, 100, 1000],
}
REQUESTS = 6
BODY = b"x" * 50


def pod(annotation: str) -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: a-1
  namespace: default
  labels: {{app: a, version: v1}}
  annotations:
    sidecar.istio.io/statsHistogramBuckets: '{annotation}'
spec: {{serviceAccountName: a}}
status: {{podIP: 127.0.0.1}}
---
"""


class _App(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def sidecar() -> Iterator[tuple[SidecarProcess, int]]:
    port, prom = free_port(), free_port()
    app = ThreadingHTTPServer((B_IP, port), _App)  # b's endpoint is the app itself
    threading.Thread(target=app.serve_forever, daemon=True).start()
    config = pod(json.dumps(BUCKETS)) + mesh_yaml(port, port)
    a = SidecarProcess(config, "--pod-name", "a-1", "--pod-namespace", "default",
                       "--instance-ip", "127.0.0.1", "--no-watch",
                       "--prometheus-port", str(prom))  # fmt: skip
    try:
        a.start()
        for _ in range(REQUESTS):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/", headers={"host": f"{B_SVC}:{port}"})
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, BODY)
            conn.close()
        yield a, prom
    finally:
        a.__exit__(None)
        app.shutdown()
        app.server_close()


def bounds(text: str, metric: str) -> list[str]:
    out = []
    for line in text.splitlines():
        if line.startswith(metric + "_bucket{"):
            out.append(line.split('le="', 1)[1].split('"', 1)[0])
    return out


def test_exposition_has_the_annotated_bounds_per_metric(
    sidecar: tuple[SidecarProcess, int],
) -> None:
    _, prom = sidecar
    deadline = time.monotonic() + 10
    text = scrape(prom)[1]
    while f" {REQUESTS}" not in "".join(
            ln for ln in text.splitlines() if ln.startswith("istio_requests_total{")):
        assert time.monotonic() < deadline, text[:2000]
        time.sleep(0.1)
        text = scrape(prom)[1]
    assert bounds(text, "istio_request_duration_milliseconds") == [
        "5.0", "50.0", "500.0", "5000.0", "+Inf"]
    assert bounds(text, "istio_response_bytes") == ["10.0", "100.0", "1000.0", "+Inf"]
    assert len(bounds(text, "istio_request_bytes")) == 20  # Envoy's 19 defaults and +Inf
    line = next(ln for ln in text.splitlines()
                if ln.startswith("istio_response_bytes_bucket{") and 'le="100.0"' in ln)
    assert line.endswith(f" {float(REQUESTS)}")


def test_prometheus_histogram_quantile_uses_the_bounds(
    sidecar: tuple[SidecarProcess, int],
) -> None:
    _, prom_port = sidecar
    promql = ("histogram_quantile(0.5, sum by (le) "
              '(istio_response_bytes_bucket{reporter="source"}))')  # fmt: skip
    value = None
    with running_prometheus([f"127.0.0.1:{prom_port}"]) as prom:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and value is None:
            time.sleep(0.5)
            try:
                result = _query(prom.port, promql)
            except OSError:
                continue
            if result:
                v = result[0]["value"]
                assert isinstance(v, list)
                value = float(v[1])
        # every response is 50 bytes, in (10, 100]: the median interpolates to 10 + 90 / 2
        assert value == pytest.approx(55.0), prom.log_tail()
        le = _query(prom.port, 'count by (le) (istio_request_duration_milliseconds_bucket)')
        assert sorted(float(r["metric"]["le"]) for r in le) == [  # type: ignore[index]
            5.0, 50.0, 500.0, 5000.0, float("inf")]


def _run_fails(config: str, *flags: str) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="buckets-bad-"))
    try:
        (tmp / "mesh.yaml").write_text(config)
        res = subprocess.run(
            [sys.executable, "-m", "sidecar.cli", "run", "--config", str(tmp / "mesh.yaml"),
             "--pod-name", "a-1", "--pod-namespace", "default", "--outbound-port", "0",
             "--inbound-port", "0", "--admin-port", "0", "--status-port", "0",
             "--prometheus-port", "0", "--no-watch", *flags],
            capture_output=True, timeout=30,
        )  # fmt: skip
        assert res.returncode != 0
        return res.stderr.decode()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_bad_values_stop_the_proxy_with_a_clear_message() -> None:
    port = free_port()
    err = _run_fails(pod('{"istiocustom": [10, 5]}') + mesh_yaml(port, port))
    assert "mesh.yaml:8: error: Pod/default/a-1: metadata.annotations." in err, err
    assert "statsHistogramBuckets: invalid histogram buckets: 'istiocustom': bucket bounds " \
           "must be ascending (5 follows 10.0)" in err, err
    err = _run_fails(mesh_yaml(port, port), "--stats-histogram-buckets", '{"istiocustom": [0]}')
    assert "--stats-histogram-buckets: 'istiocustom': bucket bound 0 must be positive" in err, err
