"""VirtualServices -> route configs, virtual hosts, routes and TCP/TLS chains (Istio semantics)."""

from __future__ import annotations

import ipaddress
import textwrap
from dataclasses import replace
from pathlib import Path

from sidecar.bootstrap import Bootstrap, Mode
from sidecar.config.load import load_paths, load_text
from sidecar.config.snapshot import (
    Cors,
    Fault,
    FilterChain,
    HeaderMatch,
    HeaderOps,
    Mirror,
    QueryParamMatch,
    Redirect,
    Rewrite,
    Route,
    RouteMatch,
    Snapshot,
    StringMatcher,
    TcpProxy,
    VirtualHost,
    WeightedCluster,
)
from sidecar.config.snapshot_routes import RetryPolicy
from sidecar.config.translate import translate
from sidecar.config.translate_http_route import python_template

SAMPLES = Path("/work/shared/samples/istio-bookinfo")
BOOT = Bootstrap(pod_name="web-1", pod_namespace="shop")
REVIEWS = "reviews.shop.svc.cluster.local"

BASE = """\
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, version: v1}}
spec: {containers: [{name: app}]}
status: {podIP: 10.1.0.5}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: front, namespace: shop}
spec:
  clusterIP: 10.96.0.12
  selector: {app: front}
  ports: [{name: http, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"""


def snap(*docs: str, boot: Bootstrap = BOOT) -> Snapshot:
    text = "\n---\n".join(textwrap.dedent(d).strip("\n") for d in (BASE, *docs))
    return translate(load_text(text, "mesh.yaml"), boot)


def vs(name: str, spec: str, ns: str = "shop") -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{textwrap.indent(spec, '  ')}"
    )


def to(host: str, subset: str = "") -> str:
    """An http[] with one catch-all route to `host` (and `subset`)."""
    dest = f"host: {host}, subset: {subset}" if subset else f"host: {host}"
    return f"http: [{{route: [{{destination: {{{dest}}}}}]}}]"


def vhost(s: Snapshot, name: str, route_config: str = "9080") -> VirtualHost:
    found = [v for v in s.route_configs[route_config].virtual_hosts if v.name == name]
    assert found, [v.name for v in s.route_configs[route_config].virtual_hosts]
    return found[0]


def routes(s: Snapshot, host: str = REVIEWS, port: int = 9080) -> tuple[Route, ...]:
    return vhost(s, f"{host}:{port}", str(port)).routes


def cluster(subset: str = "", host: str = REVIEWS, port: int = 9080) -> str:
    return f"outbound|{port}|{subset}|{host}"


def test_bookinfo_jason_rule_then_v3_and_no_default_route() -> None:
    mesh = load_paths(
        [
            SAMPLES / "bookinfo-kube.yaml",
            SAMPLES / "destination-rule-all.yaml",
            SAMPLES / "virtual-service-reviews-jason-v2-v3.yaml",
        ]
    )
    s = translate(mesh, Bootstrap(pod_name="productpage-v1-abc-xyz", pod_namespace="default"))
    host = "reviews.default.svc.cluster.local"
    jason, rest = routes(s, host)
    assert jason.match == RouteMatch(headers=(HeaderMatch("end-user", exact="jason"),))
    assert jason.cluster == cluster("v2", host)
    assert rest.match == RouteMatch() and rest.cluster == cluster("v3", host)
    # Services without a VirtualService keep the single default route.
    (default,) = routes(s, "ratings.default.svc.cluster.local")
    assert default.cluster == cluster("", "ratings.default.svc.cluster.local")
    assert s.clusters[cluster("v2", host)].subset == "v2"
    assert not any("VirtualService" in w for w in s.warnings), s.warnings


def test_weights_zero_weight_dropped_and_destination_headers_split() -> None:
    s = snap(
        vs(
            "reviews",
            """\
            hosts: [reviews]
            http:
            - match: [{uri: {prefix: /a}}]
              route:
              - {destination: {host: reviews, subset: v1}, weight: 95}
              - {destination: {host: reviews, subset: v2}, weight: 5}
              - {destination: {host: reviews, subset: v3}, weight: 0}
            - match: [{uri: {prefix: /b}}]
              route:
              - {destination: {host: reviews, subset: v1}, weight: 100}
              - {destination: {host: reviews, subset: v2}, weight: 0}
            - route:
              - destination: {host: reviews, subset: v3}
                headers: {request: {set: {X-Canary: "yes"}}, response: {remove: [X-Debug]}}
            """,
        )
    )
    a, b, c = routes(s)
    assert a.weighted_clusters == (
        WeightedCluster(cluster("v1"), 95),
        WeightedCluster(cluster("v2"), 5),
    )
    assert a.cluster == ""
    assert b.cluster == cluster("v1") and b.weighted_clusters == ()
    assert c.weighted_clusters == (
        WeightedCluster(
            cluster("v3"),
            100,
            HeaderOps(set=(("x-canary", "yes"),)),
            HeaderOps(remove=("x-debug",)),
        ),
    )


def test_one_route_per_match_entry_and_match_fields() -> None:
    s = snap(
        vs(
            "reviews",
            """\
            hosts: [reviews]
            http:
            - name: api
              match:
              - name: exact
                uri: {exact: /v1/Items}
                ignoreUriCase: true
                method: {exact: GET}
                scheme: {exact: http}
                authority: {prefix: reviews}
              - uri: {regex: "/v[0-9]+/.*"}
                headers: {x-user: {}, x-team: {regex: "a.*"}}
                withoutHeaders: {x-debug: {exact: "1"}}
                queryParams: {tag: {exact: blue}}
              route: [{destination: {host: reviews}}]
            """,
        )
    )
    first, second = routes(s)
    assert first.name == "api.exact" and second.name == "api"
    assert first.match == RouteMatch(
        prefix=None,
        path="/v1/Items",
        case_sensitive=False,
        headers=(
            HeaderMatch(":scheme", exact="http"),
            HeaderMatch(":method", exact="GET"),
            HeaderMatch(":authority", prefix="reviews"),
        ),
    )
    assert set(second.match.headers) == {
        HeaderMatch("x-user", present=True),
        HeaderMatch("x-team", regex="a.*"),
        HeaderMatch("x-debug", exact="1", invert=True),
    }
    assert replace(second.match, headers=()) == RouteMatch(
        prefix=None, regex="/v[0-9]+/.*", query_params=(QueryParamMatch("tag", exact="blue"),)
    )
    # No catch-all is appended: a request matching neither gets 404 NR.
    assert first.cluster == second.cluster == cluster()


def test_matches_fixed_for_this_proxy_are_evaluated_and_dropped() -> None:
    s = snap(
        vs(
            "reviews",
            """\
            hosts: [reviews]
            http:
            - match:
              - {uri: {prefix: /port}, port: 8080}
              - {uri: {prefix: /labels}, sourceLabels: {app: other}}
              - {uri: {prefix: /ns}, sourceNamespace: prod}
              - {uri: {prefix: /gw}, gateways: [some-gateway]}
              - {uri: {prefix: /mine}, sourceLabels: {app: web}, port: 9080, gateways: [mesh]}
              route: [{destination: {host: reviews, subset: v1}}]
            - match: [{sourceLabels: {app: other}}]
              route: [{destination: {host: reviews, subset: v2}}]
            - match: [{uri: {prefix: /last}, sourceNamespace: shop}]
              route: [{destination: {host: reviews, subset: v3}}]
            """,
        )
    )
    mine, last = routes(s)
    assert mine.match == RouteMatch(prefix="/mine") and mine.cluster == cluster("v1")
    assert last.match == RouteMatch(prefix="/last") and last.cluster == cluster("v3")


def test_a_vs_with_nothing_for_this_proxy_leaves_the_default_route() -> None:
    s = snap(
        vs(
            "reviews",
            """\
            hosts: [reviews]
            http:
            - match: [{sourceLabels: {app: other}}]
              route: [{destination: {host: reviews, subset: v2}}]
            """,
        )
    )
    (default,) = routes(s)
    assert default.name == "default" and default.cluster == cluster()


def test_conflicting_virtual_services_first_wins_with_a_warning() -> None:
    s = snap(
        vs(
            "a-first",
            f"hosts: [reviews]\n{to('reviews', 'v1')}",
        ),
        vs(
            "b-second",
            f"hosts: [{REVIEWS}]\n{to('reviews', 'v2')}",
        ),
    )
    (only,) = routes(s)
    assert only.cluster == cluster("v1")
    assert any("b-second" in w and "already routed by" in w for w in s.warnings), s.warnings


def test_unknown_host_port_and_subset_are_warned_and_named() -> None:
    s = snap(
        vs(
            "reviews",
            """\
            hosts: [reviews]
            http:
            - match: [{uri: {prefix: /a}}]
              route: [{destination: {host: nowhere}}]
            - match: [{uri: {prefix: /b}}]
              route: [{destination: {host: reviews, subset: v9}}]
            - route: [{destination: {host: ratings.shop.svc.cluster.local, port: {number: 7}}}]
            """,
        )
    )
    a, b, c = routes(s)
    assert a.cluster == "outbound|9080||nowhere.shop.svc.cluster.local"
    assert b.cluster == cluster("v9")
    assert c.cluster == "outbound|7||ratings.shop.svc.cluster.local"
    assert cluster("v9") not in s.clusters
    text = "\n".join(s.warnings)
    assert "nowhere.shop.svc.cluster.local" in text and "'v9'" in text and "no port 7" in text


def test_actions_redirect_direct_rewrite_fault_mirror_cors_headers() -> None:
    s = snap(
        vs(
            "reviews",
            r"""
            hosts: [reviews]
            http:
            - match: [{uri: {prefix: /old}}]
              redirect: {uri: /new, authority: example.com, redirectCode: 302}
            - match: [{uri: {prefix: /gone}}]
              directResponse: {status: 410, body: {string: bye}}
            - match: [{uri: {regex: "/api/(.*)"}}]
              rewrite:
                uriRegexRewrite: {match: "^/api/(.*)$", rewrite: '/v2/\1'}
                authority: backend
              timeout: 2.5s
              retries: {attempts: 3, perTryTimeout: 1s, retryOn: 5xx}
              route: [{destination: {host: ratings}}]
            - match: [{uri: {prefix: /p}}]
              rewrite: {uri: /q}
              fault:
                delay: {fixedDelay: 1s, percentage: {value: 10}}
                abort: {grpcStatus: UNAVAILABLE, percentage: {value: 50}}
              mirror: {host: ratings}
              mirrorPercentage: {value: 25}
              corsPolicy:
                allowOrigins: [{exact: "https://a.example"}]
                allowMethods: [GET, POST]
                allowHeaders: [x-a, x-b]
                maxAge: 24h
              headers:
                request: {set: {X-Env: prod}, add: {X-Hop: "1"}}
                response: {remove: [Server]}
              route: [{destination: {host: reviews}}]
            """,
        )
    )
    redirect, direct, regex, prefix = routes(s)
    assert redirect.redirect == Redirect(authority="example.com", path="/new", code=302)
    assert direct.direct_status == 410 and direct.direct_body == b"bye"
    assert regex.rewrite == Rewrite(
        regex="^/api/(.*)$", substitution="/v2/\\g<1>", authority="backend"
    )
    assert regex.timeout == 2.5 and regex.retry == RetryPolicy(3, 1.0, "5xx")
    assert regex.cluster == "outbound|9080||ratings.shop.svc.cluster.local"
    assert prefix.rewrite == Rewrite(prefix="/q")
    assert prefix.fault == Fault(
        delay=1.0, delay_percent=10.0, abort_grpc_status=14, abort_percent=50.0
    )
    assert prefix.mirrors == (Mirror("outbound|9080||ratings.shop.svc.cluster.local", 25.0),)
    assert prefix.cors == Cors(
        allow_origins=(StringMatcher(exact="https://a.example"),),
        allow_methods="GET,POST",
        allow_headers="x-a,x-b",
        max_age="86400",
    )
    assert prefix.request_headers == HeaderOps(set=(("x-env", "prod"),), add=(("x-hop", "1"),))
    assert prefix.response_headers == HeaderOps(remove=("server",))


def test_re2_rewrite_groups_become_python_templates() -> None:
    assert python_template(r"/a/\1/\2\\x") == r"/a/\g<1>/\g<2>\\x"


def test_host_without_service_gets_a_vhost_on_port_80() -> None:
    s = snap(
        vs(
            "ext",
            """\
            hosts: [api.example.com]
            http: [{route: [{destination: {host: front}}]}]
            """,
        )
    )
    ext = vhost(s, "api.example.com:80", "80")
    assert ext.domains == ("api.example.com", "api.example.com:80")
    assert ext.routes[0].cluster == "outbound|80||front.shop.svc.cluster.local"
    assert all(v.name != "api.example.com:9080" for v in s.route_configs["9080"].virtual_hosts)


def test_wildcard_host_applies_to_matching_service_entries() -> None:
    s = snap(
        """\
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: ext, namespace: shop}
        spec:
          hosts: [a.example.com, b.other.com]
          ports: [{number: 9080, name: http, protocol: HTTP}]
          resolution: NONE
        """,
        vs(
            "wild",
            """\
            hosts: ["*.example.com"]
            http: [{route: [{destination: {host: reviews, subset: v2}}]}]
            """,
        ),
    )
    assert routes(s, "a.example.com")[0].cluster == cluster("v2")
    assert routes(s, "b.other.com")[0].name == "default"


def test_export_to_and_sidecar_egress_scope_the_virtual_services() -> None:
    other = vs(
        "reviews",
        """\
        hosts: [reviews.shop.svc.cluster.local]
        exportTo: ["."]
        http: [{route: [{destination: {host: reviews.shop.svc.cluster.local, subset: v2}}]}]
        """,
        ns="elsewhere",
    )
    assert routes(snap(other))[0].name == "default"
    sidecar = """\
        apiVersion: networking.istio.io/v1
        kind: Sidecar
        metadata: {name: default, namespace: shop}
        spec:
          egress: [{hosts: ["./*"]}]
        """
    mine = vs(
        "reviews",
        f"hosts: [reviews]\n{to('reviews', 'v2')}",
        ns="shop",
    )
    assert routes(snap(sidecar, mine))[0].cluster == cluster("v2")
    theirs = mine.replace("namespace: shop", "namespace: team").replace("[reviews]", f"[{REVIEWS}]")
    assert routes(snap(sidecar, theirs))[0].name == "default"


TCP = """\
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: db}
  ports: [{name: tcp, port: 3306}]
---
apiVersion: v1
kind: Service
metadata: {name: secure, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  selector: {app: secure}
  ports: [{name: https, port: 443}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: shop}
spec:
  host: db
  subsets: [{name: a, labels: {v: a}}, {name: b, labels: {v: b}}]
"""


def chains(s: Snapshot, port: int) -> list[FilterChain]:
    (outbound,) = [lis for lis in s.listeners if lis.name == "virtualOutbound"]
    return [c for c in outbound.filter_chains if c.match.destination_port == port]


def test_tcp_routes_weighted_and_destination_subnets() -> None:
    s = snap(
        TCP,
        vs(
            "db",
            """\
            hosts: [db]
            tcp:
            - match: [{destinationSubnets: [10.9.0.0/16], port: 3306}]
              route: [{destination: {host: db, subset: b}}]
            - match: [{port: 9999}]
              route: [{destination: {host: db, subset: a}}]
            - route:
              - {destination: {host: db, subset: a}, weight: 70}
              - {destination: {host: db, subset: b}, weight: 30}
            """,
        ),
    )
    by_net = {c.match.prefix_ranges: c.filter for c in chains(s, 3306)}
    a, b = "outbound|3306|a|db.shop.svc.cluster.local", "outbound|3306|b|db.shop.svc.cluster.local"
    assert by_net[(ipaddress.ip_network("10.9.0.0/16"),)] == TcpProxy(b, b)
    main = by_net[(ipaddress.ip_network("10.96.0.20/32"),)]
    assert isinstance(main, TcpProxy)
    assert main.weighted_clusters == (WeightedCluster(a, 70), WeightedCluster(b, 30))


def test_tls_routes_chain_per_sni_and_default_relay() -> None:
    s = snap(
        TCP,
        vs(
            "secure",
            """\
            hosts: [secure, "*.secure.example"]
            tls:
            - match: [{sniHosts: [api.secure.example]}]
              route: [{destination: {host: reviews, port: {number: 9080}}}]
            """,
        ),
    )
    by_sni = {c.match.server_names: c for c in chains(s, 443)}
    sni = by_sni[("api.secure.example",)]
    assert sni.match.transport_protocol == "tls"
    assert sni.filter == TcpProxy(cluster(), cluster())
    plain = by_sni[()].filter
    assert (
        isinstance(plain, TcpProxy)
        and plain.cluster == "outbound|443||secure.shop.svc.cluster.local"
    )


GATEWAY_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: gw-1, namespace: istio-system, labels: {istio: ingressgateway}}
spec: {containers: [{name: istio-proxy}]}
status: {podIP: 127.0.0.9}
"""


def test_bookinfo_gateway_routes_productpage() -> None:
    mesh = load_paths([SAMPLES / "bookinfo-kube.yaml", SAMPLES / "bookinfo-gateway.yaml"])
    mesh = load_text(
        "\n---\n".join(
            [
                Path(SAMPLES / "bookinfo-kube.yaml").read_text(),
                Path(SAMPLES / "bookinfo-gateway.yaml").read_text(),
                GATEWAY_POD,
            ]
        ),
        "mesh.yaml",
    )
    boot = Bootstrap(pod_name="gw-1", pod_namespace="istio-system", mode=Mode.ROUTER)
    s = translate(mesh, boot)
    (vh,) = s.route_configs["http.8080"].virtual_hosts
    assert vh.domains == ("*",)
    assert [r.match for r in vh.routes] == [
        RouteMatch(prefix=None, path="/productpage"),
        RouteMatch(prefix="/static"),
        RouteMatch(prefix=None, path="/login"),
        RouteMatch(prefix=None, path="/logout"),
        RouteMatch(prefix="/api/v1/products"),
    ]
    assert {r.cluster for r in vh.routes} == {
        "outbound|9080||productpage.default.svc.cluster.local"
    }


def test_gateway_hosts_narrow_and_merge_virtual_services() -> None:
    gw = """\
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: gw, namespace: shop}
        spec:
          selector: {istio: ingressgateway}
          servers:
          - port: {number: 8080, name: http, protocol: HTTP}
            hosts: ["shop/*.example.com"]
        """
    one = vs(
        "a",
        "hosts: [a.example.com]\ngateways: [gw]\n"
        "http: [{match: [{uri: {prefix: /r}}], route: [{destination: {host: reviews}}]}]",
    )
    two = vs(
        "b",
        f"hosts: [a.example.com]\ngateways: [shop/gw]\n{to('ratings')}",
    )
    wrong_ns = vs(
        "c",
        f"hosts: [c.example.com]\ngateways: [shop/gw]\n{to(REVIEWS)}",
        ns="team",
    )
    mesh_only = vs("d", "hosts: [d.example.com]\nhttp: [{route: [{destination: {host: reviews}}]}]")
    boot = Bootstrap(pod_name="gw-1", pod_namespace="istio-system", mode=Mode.ROUTER)
    s = snap(GATEWAY_POD, gw, one, two, wrong_ns, mesh_only, boot=boot)
    (vh,) = s.route_configs["http.8080"].virtual_hosts
    assert vh.name == "a.example.com:8080"
    assert vh.domains == ("a.example.com", "a.example.com:*")  # any port, as Istio
    assert [r.cluster for r in vh.routes] == [
        cluster(),
        cluster(host="ratings.shop.svc.cluster.local"),
    ]


def test_auto_port_tls_route_beside_the_detection_chains() -> None:
    s = snap(
        """\
        apiVersion: v1
        kind: Service
        metadata: {name: cache, namespace: shop}
        spec:
          clusterIP: 10.96.0.30
          selector: {app: cache}
          ports: [{name: cache, port: 7000}]
        """,
        vs(
            "cache",
            """\
            hosts: [cache]
            tls:
            - match: [{sniHosts: [cache], sourceNamespace: other}]
              route: [{destination: {host: reviews}}]
            - match: [{sniHosts: [cache]}]
              route: [{destination: {host: ratings, port: {number: 9080}}}]
            """,
        ),
    )
    found = {(c.match.transport_protocol, c.match.server_names): c.filter for c in chains(s, 7000)}
    ratings = "outbound|9080||ratings.shop.svc.cluster.local"
    assert found[("tls", ("cache",))] == TcpProxy(ratings, ratings)
    own = "outbound|7000||cache.shop.svc.cluster.local"
    assert found[("tls", ())] == found[("raw_buffer", ())] == TcpProxy(own, own)
