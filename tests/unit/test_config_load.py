"""Loading mesh YAML: Istio's samples load, malformed input is refused with precise issues."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from sidecar.config.load import load_paths, load_text
from sidecar.config.resources import (
    CaptureMode,
    Deployment,
    EndpointSlice,
    GenericResource,
    Resolution,
    Service,
    ServiceEntry,
    ServiceType,
    Sidecar,
    WorkloadEntry,
)
from sidecar.errors import ConfigError, ConfigIssue, Severity

SAMPLES = Path("/work/shared/samples/istio-bookinfo")


def _issues(text: str) -> tuple[ConfigIssue, ...]:
    with pytest.raises(ConfigError) as info:
        load_text(textwrap.dedent(text), "mesh.yaml")
    return info.value.issues


def _errors(text: str) -> list[tuple[int | None, str, str, str]]:
    return [
        (i.line, i.obj, i.path, i.reason) for i in _issues(text) if i.severity is Severity.ERROR
    ]


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_bookinfo_sample_loads_with_warnings_only(path: Path) -> None:
    mesh = load_paths([path])
    assert mesh.objects
    assert all(w.severity is Severity.WARNING for w in mesh.warnings)


def test_bookinfo_kube_is_typed() -> None:
    mesh = load_paths([SAMPLES / "bookinfo-kube.yaml"])
    services = {s.meta.name: s for s in mesh.of(Service)}
    assert sorted(services) == ["details", "productpage", "ratings", "reviews"]
    reviews = services["reviews"]
    assert reviews.meta.namespace == "default"
    assert reviews.selector == frozenset({("app", "reviews")})
    assert reviews.ports[0].port == 9080 and reviews.ports[0].target_port == 9080
    assert reviews.ports[0].name == "http"
    deployments = {d.meta.name: d for d in mesh.of(Deployment)}
    assert deployments["reviews-v2"].template_labels == frozenset(
        {("app", "reviews"), ("version", "v2")}
    )
    assert deployments["reviews-v2"].service_account == "bookinfo-reviews"
    # Several files at once (the samples are alternatives: only some combine without duplicates).
    everything = load_paths(
        [SAMPLES / "bookinfo-kube.yaml", SAMPLES / "egress-rule-google-apis.yaml"]
    )
    assert len(everything.of(ServiceEntry)) == 1
    assert everything.of(ServiceEntry)[0].resolution is Resolution.DNS


MALFORMED = [
    pytest.param(
        """\
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports:
          - port: 70000
        """,
        [(6, "Service/default/web", "spec.ports[0].port", "port 70000 is not in 1..65535")],
        id="port-out-of-range",
    ),
    pytest.param(
        """\
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop}
        spec:
          ports:
          - name: http
            port: 80
          - name: grpc
            port: 81
            targetPort: -3
        """,
        [(10, "Service/shop/web", "spec.ports[1].targetPort", "port -3 is not in 1..65535")],
        id="targetPort-out-of-range",
    ),
    pytest.param(
        """\
        apiVersion: v1
        kind: Service
        metadata:
          name: web
        spec:
          ports:
          - name: http
        """,
        [(7, "Service/default/web", "spec.ports[0].port", "missing required field")],
        id="missing-port",
    ),
    pytest.param(
        """\
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports:
          - port: "80"
        """,
        [(6, "Service/default/web", "spec.ports[0].port", "expected an integer, got a string")],
        id="wrong-type",
    ),
    pytest.param(
        """\
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          clusterIP: 10.0.300.1
          ports: [{port: 80}]
        """,
        [(5, "Service/default/web", "spec.clusterIP", "'10.0.300.1' is not an IP address")],
        id="bad-cluster-ip",
    ),
    pytest.param(
        """\
        apiVersion: v1
        kind: Service
        metadata:
          name: web
          labels:
            "-bad": x
        spec:
          ports: [{port: 80}]
        """,
        [
            (
                6,
                "Service/default/web",
                "metadata.labels.-bad",
                "invalid label key '-bad': name must be 1-63 characters: alphanumerics, '-', '_' "
                "or '.', starting and ending with an alphanumeric",
            )
        ],
        id="bad-label-key",
    ),
    pytest.param(
        """\
        apiVersion: v1
        kind: Service
        metadata: {name: web, labels: {version: 1}}
        spec:
          ports: [{port: 80}]
        """,
        [
            (
                3,
                "Service/default/web",
                "metadata.labels.version",
                "expected a string, got an integer",
            )
        ],
        id="label-value-not-string",
    ),
    pytest.param(
        """\
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports: [{port: 80}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports: [{port: 81}]
        """,
        [
            (
                7,
                "Service/default/web",
                "metadata.name",
                "duplicate object (first defined at mesh.yaml:1)",
            )
        ],
        id="duplicate-object",
    ),
    pytest.param(
        """\
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports: [{port: 80}
        """,
        [(6, "", "", "YAML syntax error: " + (
            "did not find expected ',' or ']'"  # libyaml's wording
            if yaml.__with_libyaml__
            else "expected ',' or ']', but got '<stream end>'"
        ))],
        id="yaml-syntax",
    ),
    pytest.param(
        """\
        apiVersion: v1
        kind: Service
        spec:
          ports: [{port: 80}]
        """,
        [(1, "", "metadata", "missing required field")],
        id="missing-metadata",
    ),
    pytest.param(
        """\
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: ext}
        spec:
          hosts: [api.example.com]
          ports:
          - {number: 443, name: https, protocol: HTTPS}
          resolution: DNS_ONLY
        """,
        [
            (
                8,
                "ServiceEntry/default/ext",
                "spec.resolution",
                "'DNS_ONLY' is not one of NONE, STATIC, DNS, DNS_ROUND_ROBIN",
            )
        ],
        id="bad-enum",
    ),
    pytest.param(
        """\
        apiVersion: networking.istio.io/v1
        kind: Sidecar
        metadata: {name: sc, namespace: shop}
        spec:
          ingress:
          - port: {number: 9080, protocol: HTTP}
            defaultEndpoint: 10.1.2.3:8080
          egress:
          - hosts: ["reviews"]
        """,
        [
            (
                7,
                "Sidecar/shop/sc",
                "spec.ingress[0].defaultEndpoint",
                "'10.1.2.3:8080': the host must be 127.0.0.1, 0.0.0.0, ::1 or :: (Istio's rule)",
            ),
            (
                9,
                "Sidecar/shop/sc",
                "spec.egress[0].hosts[0]",
                '\'reviews\' is not namespace/host (for example "./*" or "istio-system/*")',
            ),
        ],
        id="sidecar-endpoint-and-hosts",
    ),
    pytest.param(
        """\
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports: [{port: 80}]
          ports: [{port: 81}]
        """,
        [(6, "Service/default/web", "spec.ports", "duplicate key (first on line 5)")],
        id="duplicate-key",
    ),
]


@pytest.mark.parametrize(("text", "expected"), MALFORMED)
def test_malformed_input_is_refused_with_precise_issues(
    text: str, expected: list[tuple[int, str, str, str]]
) -> None:
    assert _errors(text) == expected


def test_every_error_is_reported_not_only_the_first() -> None:
    text = """\
    apiVersion: v1
    kind: Service
    metadata: {name: a}
    spec:
      ports: [{port: 0}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: p, namespace: Bad_NS}
    status: {podIP: nope}
    """
    errors = _errors(text)
    assert [(line, path) for line, _, path, _ in errors] == [
        (5, "spec.ports[0].port"),
        (9, "metadata.namespace"),
        (10, "status.podIP"),
    ]


def test_issue_renders_file_line_object_path_reason() -> None:
    (issue,) = _issues(
        """\
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports: [{port: 0}]
        """
    )
    assert str(issue) == (
        "mesh.yaml:5: error: Service/default/web: spec.ports[0].port: port 0 is not in 1..65535"
    )


def test_unknown_kinds_and_unimplemented_fields_are_warnings_with_paths() -> None:
    mesh = load_text(
        textwrap.dedent(
            """\
            apiVersion: example.com/v1
            kind: Widget
            metadata: {name: w}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: web}
            spec:
              sessionAffinity: ClientIP
              topologyKeys: ["*"]
              ports:
              - port: 80
                colour: blue
            ---
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: pa}
            spec:
              mtls: {mode: STRICT}
            """
        ),
        "mesh.yaml",
    )
    got = [(w.line, w.obj, w.path, w.reason) for w in mesh.warnings]
    assert got == [
        (1, "Widget/default/w", "", "unknown kind Widget (apiVersion example.com/v1); ignored"),
        (10, "Service/default/web", "spec.topologyKeys", "field not implemented; ignored"),
        (13, "Service/default/web", "spec.ports[0].colour", "field not implemented; ignored"),
        (15, "PeerAuthentication/default/pa", "", "kind not implemented yet; ignored"),
    ]
    (pa,) = [g for g in mesh.of(GenericResource) if g.object_kind != "Widget"]
    assert pa.object_kind == "PeerAuthentication"
    assert pa.spec == (("mtls", (("mode", "STRICT"),)),)


def test_alternative_samples_loaded_together_are_duplicates() -> None:
    with pytest.raises(ConfigError) as info:
        load_paths(
            [SAMPLES / "virtual-service-all-v1.yaml", SAMPLES / "virtual-service-reviews-v3.yaml"]
        )
    (error,) = [i for i in info.value.issues if i.severity is Severity.ERROR]
    assert error.obj == "VirtualService/default/reviews"
    assert error.reason == (
        f"duplicate object (first defined at {SAMPLES / 'virtual-service-all-v1.yaml'}:14)"
    )


def test_list_kind_empty_documents_and_typed_istio_kinds() -> None:
    mesh = load_text(
        textwrap.dedent(
            """\
            ---
            ---
            apiVersion: v1
            kind: List
            items:
            - apiVersion: v1
              kind: Service
              metadata: {name: db, namespace: data}
              spec:
                type: ExternalName
                externalName: db.example.com
                ports: [{name: tcp-pg, port: 5432}]
            - apiVersion: discovery.k8s.io/v1
              kind: EndpointSlice
              metadata:
                name: db-abc
                namespace: data
                labels: {kubernetes.io/service-name: db}
              addressType: IPv4
              endpoints:
              - addresses: [10.0.0.9]
                conditions: {ready: false}
            ---
            apiVersion: networking.istio.io/v1
            kind: WorkloadEntry
            metadata: {name: vm1}
            spec:
              address: 10.9.0.1
              ports: {http: 8080}
              labels: {app: web}
            ---
            apiVersion: networking.istio.io/v1
            kind: Sidecar
            metadata: {name: s}
            spec:
              workloadSelector: {labels: {app: web}}
              ingress:
              - port: {number: 9080, protocol: HTTP, name: http}
                bind: 127.0.0.1
                captureMode: NONE
                defaultEndpoint: 127.0.0.1:8080
              outboundTrafficPolicy: {mode: REGISTRY_ONLY}
            """
        ),
        "mesh.yaml",
    )
    assert mesh.warnings == ()
    (svc,) = mesh.of(Service)
    assert svc.type is ServiceType.EXTERNAL_NAME and svc.external_name == "db.example.com"
    (eps,) = mesh.of(EndpointSlice)
    assert eps.service_name == "db" and eps.endpoints[0].ready is False
    (we,) = mesh.of(WorkloadEntry)
    assert we.spec.ports == (("http", 8080),) and we.meta.namespace == "default"
    (sc,) = mesh.of(Sidecar)
    assert sc.ingress[0].capture_mode is CaptureMode.NONE
    assert sc.ingress[0].default_endpoint == "127.0.0.1:8080"
