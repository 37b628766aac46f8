"""Histogram buckets by stat prefix: Istio's statsHistogramBuckets annotation and the flag."""

from __future__ import annotations

import pytest

from sidecar.bootstrap import Bootstrap, build
from sidecar.config.load import load_text
from sidecar.config.translate import translate
from sidecar.errors import BootstrapError, ConfigError
from sidecar.observability import metrics_buckets as mb
from sidecar.observability.metrics_render import render
from sidecar.runtime import Runtime
from sidecar.upstream.cluster import ClusterManager
from tests.unit.test_metrics import NullLog, request

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: {{app: web}}
  annotations:
    sidecar.istio.io/statsHistogramBuckets: '{value}'
spec: {{serviceAccountName: web}}
status: {{podIP: 10.0.0.7}}
"""
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata:
      labels: {{app: web}}
      annotations: {{sidecar.istio.io/statsHistogramBuckets: '{value}'}}
    spec: {{containers: [{{name: app}}]}}
"""


def test_parse_sorts_prefixes_and_first_match_wins_as_envoy() -> None:
    o = mb.parse('{"istiocustom.istio_request_bytes": [10, 20], "istiocustom": [1, 2.5], '
                 '"cluster_manager": [7]}')  # fmt: skip
    assert [p for p, _ in o] == [
        "cluster_manager", "istiocustom", "istiocustom.istio_request_bytes"]
    assert mb.bounds_for(mb.DURATION_STAT, o, (9.0,)) == (1.0, 2.5)
    # Envoy takes the first match in Istio's sorted order: "istiocustom" shadows the longer one.
    assert mb.bounds_for(mb.REQUEST_BYTES_STAT, o, (9.0,)) == (1.0, 2.5)
    per_metric = mb.parse('{"istiocustom.istio_request_bytes": [10, 20], '
                          '"istiocustom.istio_response_bytes": [100]}')  # fmt: skip
    assert mb.bounds_for(mb.REQUEST_BYTES_STAT, per_metric, (9.0,)) == (10.0, 20.0)
    assert mb.bounds_for(mb.RESPONSE_BYTES_STAT, per_metric, (9.0,)) == (100.0,)
    assert mb.bounds_for(mb.DURATION_STAT, per_metric, (9.0,)) == (9.0,)
    assert mb.merge(o, mb.parse('{"istiocustom": [3]}'))[1] == ("istiocustom", (3.0,))


@pytest.mark.parametrize(("text", "reason"), [
    ("[1, 2]", "expected a JSON object"),
    ('{"istiocustom": [1, 2}', "not JSON"),
    ('{"istiocustom": []}', "non-empty list"),
    ('{"istiocustom": [0, 1]}', "must be positive"),
    ('{"istiocustom": [-5]}', "must be positive"),
    ('{"istiocustom": [5, 5]}', "ascending"),
    ('{"istiocustom": [10, 1]}', "ascending"),
    ('{"istiocustom": ["1"]}', "not a number"),
    ('{"istiocustom": [true]}', "not a number"),
    ('{"": [1]}', "empty stat prefix"),
])  # fmt: skip
def test_bad_values_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        mb.parse(text)
    with pytest.raises(BootstrapError, match=f"--stats-histogram-buckets: .*{reason}"):
        build({"stats_histogram_buckets": text}, env={})


def test_bad_annotation_refuses_the_config_naming_file_object_and_field() -> None:
    with pytest.raises(ConfigError) as err:
        load_text(POD.format(value='{"istiocustom": [5, 1]}'), "mesh.yaml")
    msg = str(err.value)
    assert msg.startswith("mesh.yaml:8: error: Pod/shop/web-1: "), msg
    assert 'metadata.annotations.sidecar.istio.io/statsHistogramBuckets' in msg
    assert "ascending" in msg
    with pytest.raises(ConfigError, match=r"Deployment/shop/web: spec\.template\.metadata"):
        load_text(DEPLOYMENT.format(value='{"istiocustom": [0]}'), "d.yaml")


def _runtime(mesh: str, pod: str, boot_buckets: str | None = None) -> Runtime:
    boot = build({"pod_name": pod, "pod_namespace": "shop",
                  "stats_histogram_buckets": boot_buckets}, env={})  # fmt: skip
    snap = translate(load_text(mesh, "mesh.yaml"), boot)
    manager = ClusterManager()
    manager.update(snap)
    rt = Runtime(boot, manager, NullLog())
    rt.snapshot = snap
    return rt


def _le(text: str, metric: str) -> list[str]:
    return [ln.split('le="')[1].split('"')[0] for ln in text.splitlines()
            if ln.startswith(metric + "_bucket{")]  # fmt: skip


def test_the_proxys_pod_annotation_and_the_flag_set_bounds_per_metric() -> None:
    value = '{"istiocustom": [1, 10, 100], "istiocustom.istio_response_bytes": [64]}'
    rt = _runtime(POD.format(value=value), "web-1",
                  '{"istiocustom.istio_request_bytes": [2, 4]}')  # fmt: skip
    assert rt.snapshot is not None and rt.snapshot.workload.stats_histogram_buckets[0][0] == (
        "istiocustom")
    rt.metrics.record_http(request("inbound", "inbound|80||", "10.0.0.5", ms=7, sent=3,
                                   received=3), rt)  # fmt: skip
    text = render(rt.metrics, {}).decode()
    assert _le(text, "istio_request_duration_milliseconds") == ["1.0", "10.0", "100.0", "+Inf"]
    # "istiocustom" sorts first and matches both byte histograms (Envoy's first match) ...
    assert _le(text, "istio_response_bytes") == ["1.0", "10.0", "100.0", "+Inf"]
    # ... unless the flag's prefix sorts before it: none does here, so request bytes too.
    assert _le(text, "istio_request_bytes") == ["1.0", "10.0", "100.0", "+Inf"]
    only_flag = _runtime(DEPLOYMENT.format(value='{"other": [1]}'), "web-5d8f-x2k4q",
                         '{"istiocustom.istio_request_bytes": [2, 4]}')  # fmt: skip
    only_flag.metrics.record_http(request("inbound", "inbound|80||", "10.0.0.5", received=3),
                                  only_flag)  # fmt: skip
    text = render(only_flag.metrics, {}).decode()
    assert _le(text, "istio_request_bytes") == ["2.0", "4.0", "+Inf"]
    assert len(_le(text, "istio_response_bytes")) == 20  # Envoy's 19 defaults and +Inf
    series = next(iter(only_flag.metrics.requests.values()))
    assert series.request_bytes.counts == [0, 1, 0]  # 3 bytes: in (2, 4]


def test_bounds_stay_fixed_once_requests_were_recorded() -> None:
    rt = _runtime(POD.format(value='{"istiocustom": [5]}'), "web-1")
    rt.metrics.record_http(request("inbound", "inbound|80||", "10.0.0.5"), rt)
    rt.snapshot = _runtime(POD.format(value='{"istiocustom": [6]}'), "web-1").snapshot
    rt.metrics.record_http(request("inbound", "inbound|80||", "10.0.0.5"), rt)
    assert rt.metrics.bounds["duration"] == (5.0,)
    assert Bootstrap().stats_histogram_buckets == ()
