"""VirtualService, DestinationRule and Gateway parsing: exact types, and every problem located."""

from __future__ import annotations

import textwrap

import pytest

from sidecar.config.load import load_text
from sidecar.config.resources import MeshConfig
from sidecar.config.resources_destination import (
    ConnectionPoolSettings,
    ConsistentHash,
    DestinationRule,
    HTTPCookie,
    HTTPSettings,
    LoadBalancerSettings,
    LocalityFailover,
    LocalityLbSetting,
    OutlierDetection,
    PortTrafficPolicy,
    Subset,
    TCPSettings,
    TrafficPolicy,
)
from sidecar.config.resources_routing import (
    CorsPolicy,
    Destination,
    FaultAbort,
    FaultDelay,
    Gateway,
    GatewayPort,
    GatewayServer,
    GatewayTls,
    HeaderOperations,
    HeadersPolicy,
    HTTPDirectResponse,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPMirrorPolicy,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
    HTTPRoute,
    HTTPRouteDestination,
    L4MatchAttributes,
    RegexRewrite,
    RouteDestination,
    StringMatch,
    TCPRoute,
    TLSMatchAttributes,
    TLSRoute,
    VirtualService,
)
from sidecar.errors import ConfigError, Severity

Issue = tuple[str, str, str]  # (object, field path, reason)


def _doc(kind: str, spec: str, name: str = "r") -> str:
    head = f"apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: {{name: {name}}}\n"
    return head + "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  ")


def _load(kind: str, spec: str) -> MeshConfig:
    return load_text(_doc(kind, spec), "mesh.yaml")


def _errors(kind: str, spec: str) -> list[Issue]:
    with pytest.raises(ConfigError) as info:
        _load(kind, spec)
    assert {i.file for i in info.value.issues} == {"mesh.yaml"}
    return [(i.obj, i.path, i.reason) for i in info.value.issues if i.severity is Severity.ERROR]


def _warnings(mesh: MeshConfig) -> list[Issue]:
    return [(w.obj, w.path, w.reason) for w in mesh.warnings]


VS = "VirtualService/default/r"
DR = "DestinationRule/default/r"
GW = "Gateway/default/r"


# --- VirtualService: what loads --------------------------------------------------------------


def test_full_http_route_loads_to_exact_types() -> None:
    mesh = _load(
        "VirtualService",
        """\
        hosts: [reviews, "*.example.com", 10.0.0.1]
        exportTo: ["."]
        http:
        - name: canary
          match:
          - name: m
            uri: {regex: "/api/v[0-9]+/.*"}
            scheme: {exact: https}
            method: {exact: GET}
            authority: {prefix: shop}
            headers:
              end-user: {exact: jason}
              user-agent: {regex: ".*Android.*"}
              x-any: {}
            withoutHeaders:
              x-skip: {regex: "*"}
            queryParams:
              debug: {exact: "1"}
            port: 9080
            sourceLabels: {app: productpage}
            sourceNamespace: shop
            gateways: [mesh]
            ignoreUriCase: true
          route:
          - destination: {host: reviews, subset: v1, port: {number: 9080}}
            weight: 95
            headers:
              request: {set: {x-route: v1}}
          - destination: {host: reviews.other.svc.cluster.local, subset: v2}
            weight: 5
          rewrite:
            authority: reviews.internal
            uriRegexRewrite: {match: "^/api/(.*)$", rewrite: '/\\1'}
          timeout: 1.5s
          retries: {attempts: 3, perTryTimeout: 100ms, retryOn: "5xx,connect-failure,503"}
          fault:
            delay: {fixedDelay: 1m, percentage: {value: 0.5}}
            abort: {grpcStatus: UNAVAILABLE, percentage: {value: 10}}
          mirror: {host: shadow}
          mirrorPercentage: {value: 12.5}
          corsPolicy:
            allowOrigins: [{exact: "https://a.example"}, {regex: "https://.*\\\\.b\\\\.example"}]
            allowMethods: [GET, POST]
            allowHeaders: [x-custom]
            exposeHeaders: ["*"]
            maxAge: 24h
            allowCredentials: true
            unmatchedPreflights: IGNORE
          headers:
            request: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}
            response: {remove: [server]}
        """,
    )
    (vs,) = mesh.of(VirtualService)
    assert _warnings(mesh) == []
    assert vs.hosts == ("reviews", "*.example.com", "10.0.0.1")
    assert vs.export_to == (".",)
    assert vs.http == (
        HTTPRoute(
            name="canary",
            match=(
                HTTPMatchRequest(
                    name="m",
                    uri=StringMatch(regex="/api/v[0-9]+/.*"),
                    scheme=StringMatch(exact="https"),
                    method=StringMatch(exact="GET"),
                    authority=StringMatch(prefix="shop"),
                    headers=(
                        ("end-user", StringMatch(exact="jason")),
                        ("user-agent", StringMatch(regex=".*Android.*")),
                        ("x-any", StringMatch()),
                    ),
                    without_headers=(("x-skip", StringMatch()),),
                    query_params=(("debug", StringMatch(exact="1")),),
                    port=9080,
                    source_labels=frozenset({("app", "productpage")}),
                    source_namespace="shop",
                    gateways=("mesh",),
                    ignore_uri_case=True,
                ),
            ),
            route=(
                HTTPRouteDestination(
                    Destination("reviews", "v1", 9080),
                    95,
                    HeadersPolicy(request=HeaderOperations(set=(("x-route", "v1"),))),
                ),
                HTTPRouteDestination(Destination("reviews.other.svc.cluster.local", "v2"), 5),
            ),
            rewrite=HTTPRewrite(None, "reviews.internal", RegexRewrite("^/api/(.*)$", "/\\1")),
            timeout=1.5,
            retries=HTTPRetry(3, 0.1, "5xx,connect-failure,503"),
            fault=HTTPFaultInjection(
                FaultDelay(60.0, 0.5), FaultAbort(grpc_status="UNAVAILABLE", percentage=10.0)
            ),
            mirrors=(HTTPMirrorPolicy(Destination("shadow"), 12.5),),
            cors_policy=CorsPolicy(
                (
                    StringMatch(exact="https://a.example"),
                    StringMatch(regex=r"https://.*\.b\.example"),
                ),
                ("GET", "POST"),
                ("x-custom",),
                ("*",),
                86400.0,
                True,
                "IGNORE",
            ),
            headers=HeadersPolicy(
                HeaderOperations((("x-a", "1"),), (("x-b", "2"),), ("x-c",)),
                HeaderOperations(remove=("server",)),
            ),
        ),
    )


def test_redirect_direct_response_and_mirrors() -> None:
    mesh = _load(
        "VirtualService",
        """\
        hosts: [web]
        http:
        - match: [{uri: {prefix: /old}}]
          redirect: {uri: /new, derivePort: FROM_REQUEST_PORT}
        - match: [{uri: {exact: /teapot}}]
          directResponse: {status: 418, body: {bytes: "aGVsbG8="}}
        - match: [{uri: {exact: /text}}]
          directResponse: {status: 503, body: {string: down}}
        - route: [{destination: {host: web}}]
          mirrors:
          - destination: {host: copy-a}
          - destination: {host: copy-b, subset: v2}
            percentage: {value: 50}
        """,
    )
    (vs,) = mesh.of(VirtualService)
    assert vs.http[0].redirect == HTTPRedirect("/new", derive_port="FROM_REQUEST_PORT")
    assert vs.http[0].redirect.redirect_code == 301
    assert vs.http[1].direct_response == HTTPDirectResponse(418, b"hello")
    assert vs.http[2].direct_response == HTTPDirectResponse(503, b"down")
    assert vs.http[3].mirrors == (
        HTTPMirrorPolicy(Destination("copy-a")),
        HTTPMirrorPolicy(Destination("copy-b", "v2"), 50.0),
    )


def test_tcp_and_tls_routes() -> None:
    mesh = _load(
        "VirtualService",
        """\
        hosts: ["*.example.com"]
        tcp:
        - match: [{port: 5432, destinationSubnets: [10.1.0.0/16], sourceLabels: {app: api}}]
          route:
          - {destination: {host: db, port: {number: 5432}}, weight: 70}
          - {destination: {host: db-replica}, weight: 30}
        tls:
        - match: [{sniHosts: [login.example.com], port: 443}]
          route: [{destination: {host: login}}]
        """,
    )
    (vs,) = mesh.of(VirtualService)
    assert vs.tcp == (
        TCPRoute(
            (L4MatchAttributes(("10.1.0.0/16",), 5432, frozenset({("app", "api")})),),
            (
                RouteDestination(Destination("db", port=5432), 70),
                RouteDestination(Destination("db-replica"), 30),
            ),
        ),
    )
    assert vs.tls == (
        TLSRoute(
            (TLSMatchAttributes(("login.example.com",), port=443),),
            (RouteDestination(Destination("login")),),
        ),
    )


def test_warnings_for_unimplemented_and_deprecated_fields() -> None:
    mesh = _load(
        "VirtualService",
        """\
        hosts: [web]
        http:
        - match: [{uri: {prefix: /child}}]
          delegate: {name: child}
        - fault:
            abort: {http2Error: 7, percentage: {value: 1}}
          route: [{destination: {host: web}}]
          mirror: {host: copy}
          mirrorPercent: 20
          colour: blue
        """,
    )
    assert _warnings(mesh) == [
        (
            VS,
            "spec.http[0].delegate",
            "VirtualService delegation is not implemented; route ignored",
        ),
        (
            VS,
            "spec.http[1].fault.abort.http2Error",
            "HTTP/2 error aborts are not implemented; abort ignored",
        ),
        (VS, "spec.http[1].mirrorPercent", 'deprecated: use "mirrorPercentage: {value: N}"'),
        (VS, "spec.http[1].colour", "field not implemented; ignored"),
    ]
    (vs,) = mesh.of(VirtualService)
    (route,) = vs.http
    assert route.fault == HTTPFaultInjection()
    assert route.mirrors == (HTTPMirrorPolicy(Destination("copy"), 20.0),)


def test_fault_without_percentage_applies_to_no_request_as_in_istio() -> None:
    mesh = _load(
        "VirtualService",
        """\
        hosts: [web]
        http:
        - fault: {delay: {fixedDelay: 2s}}
          route: [{destination: {host: web}}]
        """,
    )
    (vs,) = mesh.of(VirtualService)
    assert vs.http[0].fault == HTTPFaultInjection(FaultDelay(2.0, 0.0))
    assert _warnings(mesh) == [
        (
            VS,
            "spec.http[0].fault.delay",
            "no percentage: Istio delays 0% of requests; set percentage.value",
        ),
    ]


# --- VirtualService: what is refused ---------------------------------------------------------

ROUTE = "route: [{destination: {host: web}}]"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "hosts: [web]\nhttp:\n- route:\n  - {destination: {host: a}, weight: 90}\n"
            "  - {destination: {host: b}, weight: -10}\n",
            [("spec.http[0].route[1].weight", "weight -10 must not be negative")],
        ),
        (
            "hosts: [web]\nhttp:\n- route:\n  - {destination: {host: a}}\n"
            "  - {destination: {host: b}}\n",
            [
                (
                    "spec.http[0].route",
                    "total destination weight is 0: with more than one destination, give them "
                    "weights (relative: each gets weight/sum of the traffic)",
                )
            ],
        ),
        (
            f"hosts: [web]\nhttp:\n- match: [{{headers: {{End-User: {{exact: jason}}}}}}]\n"
            f"  {ROUTE}\n",
            [
                (
                    "spec.http[0].match[0].headers.End-User",
                    "header name 'End-User' must be lower-case (Istio rejects upper case)",
                )
            ],
        ),
        (
            f"hosts: [web]\nhttp:\n- match: [{{uri: {{regex: '/a(b'}}}}]\n  {ROUTE}\n",
            [
                (
                    "spec.http[0].match[0].uri.regex",
                    "invalid regex '/a(b': missing ), unterminated subpattern at position 2",
                )
            ],
        ),
        (
            f"hosts: [web]\nhttp:\n- redirect: {{uri: /x}}\n  {ROUTE}\n",
            [("spec.http[0].redirect", "redirect cannot be combined with route")],
        ),
        (
            "hosts: [web]\nhttp:\n- timeout: 5s\n",
            [("spec.http[0]", "an http route needs one of route, redirect, directResponse")],
        ),
        (
            "hosts: [web]\nhttp:\n- directResponse: {status: 99}\n",
            [("spec.http[0].directResponse.status", "HTTP status 99 is not in 200..599")],
        ),
        (
            "hosts: [web]\nhttp:\n- redirect: {uri: /x, redirectCode: 200}\n",
            [("spec.http[0].redirect.redirectCode", "200 is not a redirect code (300..399)")],
        ),
        (
            f"hosts: [web]\nhttp:\n- fault: {{abort: {{httpStatus: 503, percentage: "
            f"{{value: 150}}}}}}\n  {ROUTE}\n",
            [("spec.http[0].fault.abort.percentage.value", "percentage 150 is not in 0..100")],
        ),
        (
            f"hosts: [web]\nhttp:\n- fault: {{abort: {{grpcStatus: NOPE}}}}\n  {ROUTE}\n",
            [
                (
                    "spec.http[0].fault.abort.grpcStatus",
                    "'NOPE' is not a gRPC status name (e.g. UNAVAILABLE)",
                )
            ],
        ),
        (
            f"hosts: [web]\nhttp:\n- timeout: 5 seconds\n  {ROUTE}\n",
            [
                (
                    "spec.http[0].timeout",
                    '\'5 seconds\' is not a duration (for example "1.5s", "100ms", "1m")',
                )
            ],
        ),
        (
            f"hosts: [web]\nhttp:\n- retries: {{attempts: 2, perTryTimeout: 0.5ms}}\n  {ROUTE}\n",
            [
                (
                    "spec.http[0].retries.perTryTimeout",
                    "'0.5ms': only durations to millisecond precision are supported",
                )
            ],
        ),
        (
            f"hosts: [web]\nhttp:\n- mirror: {{host: a}}\n  mirrors: [{{destination: "
            f"{{host: b}}}}]\n  {ROUTE}\n",
            [("spec.http[0].mirror", "only one of mirror and mirrors may be set")],
        ),
        (
            f"hosts: [web]\nhttp:\n- match: [{{uri: {{exact: /a, prefix: /b}}}}]\n  {ROUTE}\n",
            [
                (
                    "spec.http[0].match[0].uri",
                    "only one of exact, prefix, regex may be set (got exact, prefix)",
                )
            ],
        ),
        (
            f"http:\n- {ROUTE}\n",
            [("spec.hosts", "missing required field")],
        ),
        (
            f"hosts: ['*']\nhttp:\n- {ROUTE}\n",
            [
                (
                    "spec.hosts[0]",
                    'wildcard host "*" is not allowed for virtual services bound to the mesh',
                )
            ],
        ),
        (
            f"hosts: [a.example.com, '*.example.com']\nhttp:\n- {ROUTE}\n",
            [
                (
                    "spec.hosts[1]",
                    "duplicate hosts in virtual service: a.example.com and *.example.com",
                )
            ],
        ),
        (
            "hosts: [web]\n",
            [("spec", "a virtual service needs http, tcp or tls routes")],
        ),
        (
            f"hosts: ['*.example.com']\ntls:\n- match: [{{sniHosts: [evil.org]}}]\n  {ROUTE}\n",
            [
                (
                    "spec.tls[0].match[0].sniHosts[0]",
                    "SNI host 'evil.org' is not covered by the virtual service's hosts "
                    "(*.example.com)",
                )
            ],
        ),
        (
            "hosts: [web]\nhttp:\n- route: [{destination: {host: '*'}}]\n",
            [("spec.http[0].route[0].destination.host", '"*" is not a valid destination host')],
        ),
    ],
)
def test_bad_virtual_service_is_refused_with_the_field_and_reason(
    spec: str, expected: list[tuple[str, str]]
) -> None:
    assert _errors("VirtualService", spec) == [(VS, path, reason) for path, reason in expected]


def test_issue_names_file_line_object_path_and_reason() -> None:
    with pytest.raises(ConfigError) as info:
        _load(
            "VirtualService",
            "hosts: [web]\nhttp:\n- route:\n  - {destination: {host: a}, weight: -1}\n",
        )
    (issue,) = info.value.issues
    assert str(issue) == (
        "mesh.yaml:8: error: VirtualService/default/r: spec.http[0].route[0].weight: "
        "weight -1 must not be negative"
    )


# --- DestinationRule ------------------------------------------------------------------------


def test_destination_rule_loads_to_exact_types() -> None:
    mesh = _load(
        "DestinationRule",
        """\
        host: reviews.default.svc.cluster.local
        exportTo: ["*"]
        trafficPolicy:
          loadBalancer:
            consistentHash:
              httpCookie: {name: user, path: /, ttl: 0s}
              ringHash: {minimumRingSize: 1024}
            localityLbSetting:
              failover: [{from: us-east, to: us-west}]
              enabled: true
          connectionPool:
            tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {time: 7200s, probes: 3}}
            http: {http2MaxRequests: 1000, maxRequestsPerConnection: 10, h2UpgradePolicy: UPGRADE}
          outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m,
                             maxEjectionPercent: 50}
          portLevelSettings:
          - port: {number: 9080}
            loadBalancer: {simple: LEAST_REQUEST}
        subsets:
        - name: v1
          labels: {version: v1}
        - name: v2
          labels: {version: v2}
          trafficPolicy:
            loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}
        """,
    )
    assert _warnings(mesh) == []
    (dr,) = mesh.of(DestinationRule)
    assert dr.host == "reviews.default.svc.cluster.local"
    assert dr.export_to == ("*",)
    assert dr.traffic_policy == TrafficPolicy(
        load_balancer=LoadBalancerSettings(
            consistent_hash=ConsistentHash(
                http_cookie=HTTPCookie("user", "/", 0.0), minimum_ring_size=1024
            ),
            locality_lb_setting=LocalityLbSetting(
                failover=(LocalityFailover("us-east", "us-west"),), enabled=True
            ),
        ),
        connection_pool=ConnectionPoolSettings(
            TCPSettings(
                max_connections=100, connect_timeout=0.03, keepalive_time=7200.0, keepalive_probes=3
            ),
            HTTPSettings(
                http2_max_requests=1000, max_requests_per_connection=10, h2_upgrade_policy="UPGRADE"
            ),
        ),
        outlier_detection=OutlierDetection(
            consecutive_5xx_errors=7,
            interval=300.0,
            base_ejection_time=900.0,
            max_ejection_percent=50,
        ),
        port_level_settings=(
            PortTrafficPolicy(9080, load_balancer=LoadBalancerSettings("LEAST_REQUEST")),
        ),
    )
    assert dr.subsets == (
        Subset("v1", frozenset({("version", "v1")})),
        Subset(
            "v2",
            frozenset({("version", "v2")}),
            TrafficPolicy(
                LoadBalancerSettings(
                    consistent_hash=ConsistentHash(
                        use_source_ip=True, use_maglev=True, maglev_table_size=65537
                    )
                )
            ),
        ),
    )


def test_destination_rule_not_implemented_parts_warn() -> None:
    mesh = _load(
        "DestinationRule",
        """\
        host: db
        trafficPolicy:
          tunnel: {protocol: CONNECT, targetHost: proxy, targetPort: 8080}
          loadBalancer: {simple: ROUND_ROBIN}
        """,
    )
    assert _warnings(mesh) == [(DR, "spec.trafficPolicy.tunnel", "not implemented; ignored")]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "host: r\nsubsets:\n- {name: v1, labels: {version: v1}}\n"
            "- {name: v1, labels: {version: v2}}\n",
            [("spec.subsets[1]", "duplicate subset name 'v1'")],
        ),
        (
            "host: r\ntrafficPolicy:\n  loadBalancer: {simple: RANDOM, consistentHash: "
            "{useSourceIp: true}}\n",
            [
                (
                    "spec.trafficPolicy.loadBalancer",
                    "only one of simple and consistentHash may be set",
                )
            ],
        ),
        (
            "host: r\ntrafficPolicy:\n  loadBalancer: {simple: FASTEST}\n",
            [
                (
                    "spec.trafficPolicy.loadBalancer.simple",
                    "'FASTEST' is not one of UNSPECIFIED, ROUND_ROBIN, LEAST_CONN, LEAST_REQUEST, "
                    "RANDOM, PASSTHROUGH",
                )
            ],
        ),
        (
            "host: r\ntrafficPolicy:\n  loadBalancer: {consistentHash: {useSourceIp: true, "
            "maglev: {tableSize: 1000}}}\n",
            [
                (
                    "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
                    "tableSize 1000 must be a prime number for maglev",
                )
            ],
        ),
        (
            "host: r\ntrafficPolicy:\n  loadBalancer: {consistentHash: {httpHeaderName: x, "
            "useSourceIp: true}}\n",
            [
                (
                    "spec.trafficPolicy.loadBalancer.consistentHash",
                    "a consistent hash needs exactly one of httpHeaderName, httpCookie, "
                    "useSourceIp, httpQueryParameterName",
                )
            ],
        ),
        (
            "host: r\ntrafficPolicy:\n  outlierDetection: {maxEjectionPercent: 120}\n",
            [
                (
                    "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
                    "percentage 120 is not in 0..100",
                )
            ],
        ),
        (
            "host: r\ntrafficPolicy:\n  connectionPool: {tcp: {maxConnections: -1}}\n",
            [("spec.trafficPolicy.connectionPool.tcp.maxConnections", "-1 must not be negative")],
        ),
        (
            "subsets: [{name: v1}]\n",
            [("spec.host", "missing required field")],
        ),
        (
            "host: r\nsubsets: [{name: V1}]\n",
            [
                (
                    "spec.subsets[0].name",
                    "subset name 'V1' is invalid: it must be a DNS label (lower-case, '-')",
                )
            ],
        ),
    ],
)
def test_bad_destination_rule_is_refused(spec: str, expected: list[tuple[str, str]]) -> None:
    assert _errors("DestinationRule", spec) == [(DR, path, reason) for path, reason in expected]


# --- Gateway --------------------------------------------------------------------------------


def test_gateway_loads_to_exact_types() -> None:
    mesh = _load(
        "Gateway",
        """\
        selector: {istio: ingressgateway}
        servers:
        - port: {number: 80, name: http, protocol: http}
          hosts: [shop/www.example.com, "*.example.org"]
          tls: {httpsRedirect: true}
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: ["*"]
          tls: {mode: SIMPLE, credentialName: www-cert, minProtocolVersion: TLSV1_2}
        """,
    )
    assert _warnings(mesh) == []
    (gw,) = mesh.of(Gateway)
    assert gw.selector == frozenset({("istio", "ingressgateway")})
    assert gw.servers == (
        GatewayServer(
            GatewayPort(80, "HTTP", "http"),
            ("shop/www.example.com", "*.example.org"),
            tls=GatewayTls(mode="PASSTHROUGH", https_redirect=True),
        ),
        GatewayServer(
            GatewayPort(443, "HTTPS", "https"),
            ("*",),
            tls=GatewayTls(credential_name="www-cert", min_protocol_version="TLSV1_2"),
        ),
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "servers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: ['*']\n",
            [("spec.servers[0].tls", "a HTTPS server needs tls settings")],
        ),
        (
            "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n",
            [("spec.servers[0].hosts", "missing required field")],
        ),
        (
            "servers:\n- port: {number: 80, name: web, protocol: HTTP}\n  hosts: ['*']\n"
            "- port: {number: 81, name: web, protocol: HTTP}\n  hosts: ['*']\n",
            [("spec.servers[1]", "port names must be unique in a gateway: 'web' repeats")],
        ),
        (
            "servers:\n- port: {number: 80, name: http, protocol: SMTP}\n  hosts: ['*']\n",
            [("spec.servers[0].port.protocol", "unknown protocol 'SMTP'")],
        ),
        (
            "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['Bad_NS!/x']\n",
            [("spec.servers[0].hosts[0]", "'Bad_NS!/x': 'Bad_NS!' is not a namespace")],
        ),
        (
            "selector: {istio: ingressgateway}\n",
            [("spec.servers", "a gateway needs at least one server")],
        ),
    ],
)
def test_bad_gateway_is_refused(spec: str, expected: list[tuple[str, str]]) -> None:
    assert _errors("Gateway", spec) == [(GW, path, reason) for path, reason in expected]
