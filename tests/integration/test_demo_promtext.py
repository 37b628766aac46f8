"""The demo's scrape reader and histogram_quantile, checked against Prometheus itself.

The quantile cases are hand-built bucket sets; each is asserted by hand-worked value and, when
promtool is installed, handed to `promtool test rules` as input series with our answer as the
expected value of PromQL's histogram_quantile, so Prometheus' own engine must agree.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sidecar.demo.promtext import ExpositionError, histogram_quantile, parse
from tests.conftest import require

INF = math.inf
# (q, [(le, cumulative count)], hand-worked answer)
CASES: list[tuple[float, list[tuple[float, float]], float]] = [
    (0.5, [(1, 2), (5, 6), (INF, 8)], 3.0),  # rank 4: halfway through (1, 5]
    (0.25, [(10, 4), (20, 8), (INF, 8)], 5.0),  # first bucket: from 0 to 10
    (0.99, [(1, 2), (5, 6), (INF, 8)], 5.0),  # rank in +Inf: the highest finite bound
    (0.5, [(INF, 3)], math.nan),  # fewer than two buckets
    (0.5, [(1, 1), (5, 3)], math.nan),  # no +Inf bucket
    (0.5, [(1, 0), (5, 0), (INF, 0)], math.nan),  # no observations
    (0.0, [(1, 0), (5, 4), (INF, 4)], math.nan),  # rank 0 in an empty first bucket: 0/0
    (0.0, [(1, 2), (5, 4), (INF, 4)], 0.0),
    (1.0, [(1, 2), (5, 4), (INF, 4)], 5.0),
    (-0.1, [(1, 2), (INF, 4)], -INF),
    (1.1, [(1, 2), (INF, 4)], INF),
    (0.6, [(1, 3), (5, 2), (10, 6), (INF, 6)], 6.0),  # the dip is raised: (3, 3, 6, 6)
    (0.5, [(-1, 2), (5, 3), (INF, 4)], -1.0),  # first bound <= 0: that bound
    (0.5, [(5, 4), (1, 2), (INF, 8)], 5.0),  # unsorted input
    (0.8, [(0.5, 10), (1, 30), (5, 90), (10, 99), (25, 100), (INF, 100)], 4.333333333333333),
]


@pytest.mark.parametrize(("q", "buckets", "expected"), CASES)
def test_histogram_quantile_hand_worked(
    q: float, buckets: list[tuple[float, float]], expected: float
) -> None:
    got = histogram_quantile(q, buckets)
    if math.isnan(expected):
        assert math.isnan(got), got
    else:
        assert got == pytest.approx(expected), got


def _le(bound: float) -> str:
    return "+Inf" if bound == INF else repr(float(bound))


def _yaml_float(value: float) -> str:
    if value == INF:
        return ".Inf"
    return "-.Inf" if value == -INF else repr(value)


@pytest.mark.timeout(30)
def test_histogram_quantile_agrees_with_prometheus(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed")
    assert promtool is not None
    series, exprs = [], []
    for n, (q, buckets, _) in enumerate(CASES):
        for bound, count in buckets:
            series += [f"  - series: 'h_bucket{{case=\"{n}\",le=\"{_le(bound)}\"}}'",
                       f"    values: '{count:g}'"]  # fmt: skip
        ours = histogram_quantile(q, buckets)
        expr = f'histogram_quantile({q!r}, h_bucket{{case="{n}"}})'
        if math.isnan(ours):  # NaN never equals NaN: count the NaN samples instead
            exprs += [f"  - expr: 'count(({expr}) != ({expr}))'", "    eval_time: 0",
                      "    exp_samples:", "    - labels: '{}'", "      value: 1"]  # fmt: skip
        else:
            exprs += [f"  - expr: '{expr}'", "    eval_time: 0", "    exp_samples:",
                      f"    - labels: '{{case=\"{n}\"}}'",
                      f"      value: {_yaml_float(ours)}"]  # fmt: skip
    test_file = tmp_path / "quantiles.yml"
    test_file.write_text("\n".join([
        "evaluation_interval: 1m", "tests:", "- interval: 1m", "  input_series:", *series,
        "  promql_expr_test:", *exprs, "",
    ]))  # fmt: skip
    done = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_parse_reads_labels_escapes_special_values_and_skips_comments() -> None:
    text = "\n".join([
        "# HELP istio_requests_total Total requests.",
        "# TYPE istio_requests_total counter",
        'istio_requests_total{reporter="source",path="a\\"b\\\\c\\nd",} 12',
        'istio_request_duration_milliseconds_bucket{le="+Inf"} +Inf 1700000000000',
        "envoy_server_live 1",
        'odd{ a = "x" , b="y"} NaN',
        "",
    ])  # fmt: skip
    samples = parse(text)
    assert [s.name for s in samples] == [
        "istio_requests_total", "istio_request_duration_milliseconds_bucket",
        "envoy_server_live", "odd",
    ]  # fmt: skip
    assert samples[0].labels == {"reporter": "source", "path": 'a"b\\c\nd'}
    assert samples[0].value == 12
    assert samples[1].value == INF and samples[1].labels == {"le": "+Inf"}
    assert samples[2].labels == {}
    assert samples[3].labels == {"a": "x", "b": "y"} and math.isnan(samples[3].value)


@pytest.mark.parametrize(
    "line", ['x{a="1" b="2"} 1', 'x{a="1"', "x 1 2 3", "x one", '{a="1"} 1', "x{a=1} 1"]
)
def test_parse_refuses_a_broken_line_naming_it(line: str) -> None:
    with pytest.raises(ExpositionError, match=re.escape(repr(line)[1:-1])):
        parse(f"ok 1\n{line}\n")
