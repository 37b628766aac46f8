"""Istio's bookinfo routing samples load as typed VirtualServices, DestinationRules, Gateways."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config.load import load_paths
from sidecar.config.resources import MeshConfig
from sidecar.config.resources_destination import (
    DestinationRule,
    Subset,
)
from sidecar.config.resources_routing import (
    Destination,
    FaultAbort,
    FaultDelay,
    Gateway,
    GatewayPort,
    HTTPFaultInjection,
    HTTPRouteDestination,
    StringMatch,
    VirtualService,
)
from sidecar.errors import Severity
from tests.conftest import require

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "istio-bookinfo"
FILES = sorted(SAMPLES.glob("*.yaml"))


def _load(name: str) -> MeshConfig:
    return load_paths([SAMPLES / name])


def _vs(name: str, obj: str) -> VirtualService:
    (vs,) = [v for v in _load(name).of(VirtualService) if v.meta.name == obj]
    return vs


def test_samples_are_present() -> None:
    require(len(FILES) >= 20, f"bookinfo samples not found under {SAMPLES}")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_sample_loads_without_errors(path: Path) -> None:
    mesh = load_paths([path])
    assert mesh.objects
    assert all(w.severity is Severity.WARNING for w in mesh.warnings)
    assert not [w for w in mesh.warnings if "kind not implemented" in w.reason]


def test_reviews_80_20_weights() -> None:
    vs = _vs("virtual-service-reviews-80-20.yaml", "reviews")
    assert vs.hosts == ("reviews",)
    assert vs.gateways == ()
    (route,) = vs.http
    assert route.match == ()
    assert route.route == (
        HTTPRouteDestination(Destination("reviews", "v1"), 80),
        HTTPRouteDestination(Destination("reviews", "v2"), 20),
    )


def test_jason_header_match() -> None:
    vs = _vs("virtual-service-reviews-jason-v2-v3.yaml", "reviews")
    first, fallback = vs.http
    (match,) = first.match
    assert match.headers == (("end-user", StringMatch(exact="jason")),)
    assert first.route == (HTTPRouteDestination(Destination("reviews", "v2")),)
    assert fallback.match == ()
    assert fallback.route == (HTTPRouteDestination(Destination("reviews", "v3")),)


def test_ratings_fault_delay_and_abort() -> None:
    delay = _vs("virtual-service-ratings-test-delay.yaml", "ratings").http[0]
    assert delay.fault == HTTPFaultInjection(delay=FaultDelay(7.0, 100.0))
    assert delay.match[0].headers == (("end-user", StringMatch(exact="jason")),)
    abort = _vs("virtual-service-ratings-test-abort.yaml", "ratings").http[0]
    assert abort.fault == HTTPFaultInjection(abort=FaultAbort(http_status=500, percentage=100.0))


def test_details_fault_warns_that_the_second_rule_is_unreachable() -> None:
    mesh = _load("fault-injection-details-v1.yaml")
    (vs,) = mesh.of(VirtualService)
    assert vs.http[0].fault == HTTPFaultInjection(abort=FaultAbort(555, None, 100.0))
    assert [(w.obj, w.path) for w in mesh.warnings] == [
        ("VirtualService/default/details", "spec.http[1]")
    ]


def test_destination_rule_subsets() -> None:
    rules = {r.meta.name: r for r in _load("destination-rule-all.yaml").of(DestinationRule)}
    assert sorted(rules) == ["details", "productpage", "ratings", "reviews"]
    reviews = rules["reviews"]
    assert reviews.host == "reviews"
    assert reviews.traffic_policy is None
    assert reviews.subsets == tuple(
        Subset(v, frozenset({("version", v)})) for v in ("v1", "v2", "v3")
    )
    mtls = {r.meta.name: r for r in _load("destination-rule-all-mtls.yaml").of(DestinationRule)}
    policy = mtls["ratings"].traffic_policy
    assert policy is not None and policy.tls is not None and policy.tls.mode == "ISTIO_MUTUAL"
    assert [s.name for s in mtls["ratings"].subsets] == ["v1", "v2", "v2-mysql", "v2-mysql-vm"]


def test_destination_rule_random_and_port_level_tls() -> None:
    (reviews,) = _load("destination-rule-reviews.yaml").of(DestinationRule)
    assert reviews.traffic_policy is not None
    assert reviews.traffic_policy.load_balancer is not None
    assert reviews.traffic_policy.load_balancer.simple == "RANDOM"
    (google,) = _load("egress-rule-google-apis.yaml").of(DestinationRule)
    assert google.traffic_policy is not None
    (port_policy,) = google.traffic_policy.port_level_settings
    assert port_policy.port == 443
    assert port_policy.tls is not None and port_policy.tls.mode == "SIMPLE"


def test_bookinfo_gateway_and_its_virtual_service() -> None:
    mesh = _load("bookinfo-gateway.yaml")
    (gateway,) = mesh.of(Gateway)
    assert gateway.selector == frozenset({("istio", "ingressgateway")})
    (server,) = gateway.servers
    assert server.port == GatewayPort(8080, "HTTP", "http")
    assert server.hosts == ("*",)
    assert server.tls is None
    (vs,) = mesh.of(VirtualService)
    assert vs.hosts == ("*",)
    assert vs.gateways == ("bookinfo-gateway",)
    (route,) = vs.http
    assert [m.uri for m in route.match] == [
        StringMatch(exact="/productpage"),
        StringMatch(prefix="/static"),
        StringMatch(exact="/login"),
        StringMatch(exact="/logout"),
        StringMatch(prefix="/api/v1/products"),
    ]
    assert route.route == (HTTPRouteDestination(Destination("productpage", port=9080)),)
