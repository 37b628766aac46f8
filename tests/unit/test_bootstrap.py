"""Bootstrap precedence: defaults < PROXY_CONFIG < Istio env vars < flags; bad values refused."""

from __future__ import annotations

import pytest

from sidecar.bootstrap import Bootstrap, build, from_proxy_config
from sidecar.errors import BootstrapError


def test_istio_defaults() -> None:
    b = build({}, env={})
    assert (b.outbound_port, b.inbound_port, b.admin_port, b.status_port, b.prometheus_port) == (
        15001,
        15006,
        15000,
        15021,
        15090,
    )
    assert b.inbound_passthrough_ipv4 == "127.0.0.6"
    assert b.tracing.sampling == 1.0
    assert b.drain_duration == 45.0 and b.termination_drain_duration == 5.0


def test_proxy_config_yaml_and_json() -> None:
    yaml_text = (
        "concurrency: 2\ndrainDuration: 30s\n"
        "tracing:\n  sampling: 10\n  zipkin:\n    address: zipkin:9411\n"
    )
    b = build({}, env={"PROXY_CONFIG": yaml_text})
    assert b.concurrency == 2 and b.drain_duration == 30.0
    assert b.tracing.zipkin_address == "zipkin:9411" and b.tracing.sampling == 10.0
    j = from_proxy_config('{"terminationDrainDuration": "1m", "statusPort": 15999}')
    assert j == {"termination_drain_duration": 60.0, "status_port": 15999}


def test_zipkin_flush_interval_defaults_to_envoys_and_must_be_positive() -> None:
    assert build({}).tracing.flush_interval == 5.0
    yaml_text = "tracing:\n  sampling: 10\n  zipkin:\n    address: zipkin:9411\n"
    b = build({"tracing": {"flush_interval": 0.5}}, env={"PROXY_CONFIG": yaml_text})
    assert (b.tracing.flush_interval, b.tracing.sampling) == (0.5, 10.0)  # one field replaced
    with pytest.raises(BootstrapError, match=r"flush_interval: 0\.0: must be > 0"):
        build({"tracing": {"flush_interval": 0.0}})


def test_env_then_flags_override() -> None:
    env = {
        "PROXY_CONFIG": "statusPort: 15100",
        "POD_NAME": "reviews-v1-abc",
        "POD_NAMESPACE": "bookinfo",
        "INSTANCE_IP": "10.0.0.5",
        "SERVICE_ACCOUNT": "bookinfo-reviews",
    }
    b = build({"status_port": 15200, "pod_name": None}, env=env)
    assert b.status_port == 15200  # flag beats PROXY_CONFIG
    assert b.pod_name == "reviews-v1-abc"  # an unset flag (None) does not override the env
    assert b.pod_namespace == "bookinfo" and b.service_account == "bookinfo-reviews"
    assert b.node_id == "sidecar~10.0.0.5~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local"


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        ({"PROXY_CONFIG": "drainDuration: soon"}, {}, "invalid duration"),
        ({"PROXY_CONFIG": "[1, 2]"}, {}, "expected a mapping"),
        ({"PROXY_CONFIG": "tracing: {sampling: 150}"}, {}, "0..100"),
        ({}, {"admin_port": 70000}, "not a TCP port"),
        ({}, {"concurrency": 0}, "at least 1"),
        ({}, {"access_log_format": "xml"}, "text or json"),
    ],
)
def test_bad_bootstrap_is_refused_with_a_reason(
    env: dict[str, str], overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(BootstrapError, match=message):
        build(overrides, env=env)


def test_bootstrap_is_frozen() -> None:
    b = Bootstrap()
    with pytest.raises(AttributeError):
        b.admin_port = 1  # type: ignore[misc]
