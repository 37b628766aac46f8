"""DestinationRules as cluster policy: YAML in, Cluster objects out, as Istio applies them."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

from sidecar.bootstrap import Bootstrap
from sidecar.config.load import load_paths, load_text
from sidecar.config.registry import Notes, RegistryBuilder
from sidecar.config.snapshot import (
    DiscoveryType,
    HashPolicy,
    LbPolicy,
    LocalityPolicy,
    Snapshot,
    TcpProxy,
    Workload,
)
from sidecar.config.translate import translate
from sidecar.config.translate_policy import PolicyIndex

SAMPLES = Path("/work/shared/samples/istio-bookinfo")
BOOT = Bootstrap(pod_name="web-1", pod_namespace="shop")
REVIEWS = "reviews.shop.svc.cluster.local"

# The proxy (web-1 in shop) and a two-port service "reviews" with three versions.
MESH = """\
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, istio-locality: eu-west.eu-west-1a}}
status: {podIP: 10.1.0.5}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.30
  selector: {app: reviews}
  ports: [{name: http, port: 9080}, {name: http-admin, port: 9090}]
"""
for i, version in enumerate(("v1", "v2", "v3"), start=1):
    MESH += f"""\
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-{version}
  namespace: shop
  labels: {{app: reviews, version: {version}, topology.kubernetes.io/region: eu-west,
           topology.kubernetes.io/zone: eu-west-1{"abc"[i - 1]}}}
status: {{podIP: 10.1.1.{i}}}
"""


def snap(extra: str, boot: Bootstrap = BOOT, base: str = MESH) -> Snapshot:
    return translate(load_text(base + "---\n" + textwrap.dedent(extra), "mesh.yaml"), boot)


def addresses(s: Snapshot, name: str) -> list[str]:
    return sorted(e.address for e in s.clusters[name].endpoints)


def warnings_about(s: Snapshot, text: str) -> list[str]:
    return [w for w in s.warnings if text in w]


def dr(name: str, ns: str, body: str) -> str:
    head = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
    head += f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n"
    return head + textwrap.indent(textwrap.dedent(body).rstrip("\n") + "\n", "  ") + "---\n"


SUBSETS = """\
host: reviews
subsets:
- {name: v1, labels: {version: v1}}
- {name: v2, labels: {version: v2}}
"""


def test_no_rule_gives_istio_defaults() -> None:
    s = snap("")
    c = s.clusters[f"outbound|9080||{REVIEWS}"]
    assert c.lb_policy is LbPolicy.LEAST_REQUEST and c.hash_policy is None
    assert c.locality is None and c.subset == ""
    assert addresses(s, c.name) == ["10.1.1.1", "10.1.1.2", "10.1.1.3"]
    assert not any(k.startswith("outbound|9080|v") for k in s.clusters)


def test_subsets_get_a_cluster_per_service_port_with_matching_endpoints() -> None:
    s = snap(dr("reviews", "shop", SUBSETS))
    for port in (9080, 9090):
        v1 = s.clusters[f"outbound|{port}|v1|{REVIEWS}"]
        assert v1.subset == "v1" and v1.service == REVIEWS
        assert addresses(s, v1.name) == ["10.1.1.1"]
        assert addresses(s, f"outbound|{port}|v2|{REVIEWS}") == ["10.1.1.2"]
        assert addresses(s, f"outbound|{port}||{REVIEWS}") == ["10.1.1.1", "10.1.1.2", "10.1.1.3"]
    assert not any("|v3|" in k for k in s.clusters)
    assert s.warnings == ()


def test_subset_policy_overrides_top_level_by_group() -> None:
    s = snap(
        dr(
            "reviews",
            "shop",
            """\
            host: reviews
            trafficPolicy:
              loadBalancer: {simple: ROUND_ROBIN}
              connectionPool: {tcp: {connectTimeout: 2s, maxConnections: 7}}
            subsets:
            - {name: v1, labels: {version: v1}}
            - name: v2
              labels: {version: v2}
              trafficPolicy:
                loadBalancer: {simple: RANDOM}
            - name: v3
              labels: {version: v3}
              trafficPolicy:
                connectionPool: {http: {http2MaxRequests: 5}}
            """,
        )
    )
    top = s.clusters[f"outbound|9080||{REVIEWS}"]
    v1 = s.clusters[f"outbound|9080|v1|{REVIEWS}"]
    v2 = s.clusters[f"outbound|9080|v2|{REVIEWS}"]
    v3 = s.clusters[f"outbound|9080|v3|{REVIEWS}"]
    for c in (top, v1, v2):
        assert (c.connect_timeout, c.max_connections) == (2.0, 7)
    assert top.lb_policy is v1.lb_policy is v3.lb_policy is LbPolicy.ROUND_ROBIN
    assert v2.lb_policy is LbPolicy.RANDOM
    # connectionPool replaces as a whole group: the subset's http settings, no inherited tcp.
    assert (v3.max_requests, v3.connect_timeout, v3.max_connections) == (5, 10.0, 0)


def test_port_level_settings_replace_the_whole_policy_for_their_port() -> None:
    s = snap(
        dr(
            "reviews",
            "shop",
            """\
            host: reviews
            trafficPolicy:
              loadBalancer: {simple: RANDOM}
              connectionPool: {tcp: {connectTimeout: 2s}}
              portLevelSettings:
              - port: {number: 9090}
                loadBalancer: {simple: ROUND_ROBIN}
            subsets:
            - {name: v1, labels: {version: v1}}
            - name: v2
              labels: {version: v2}
              trafficPolicy:
                connectionPool: {tcp: {connectTimeout: 3s}}
                portLevelSettings:
                - port: {number: 9080}
                  connectionPool: {tcp: {maxConnections: 9}}
            """,
        )
    )

    def c(port: int, subset: str = "") -> tuple[LbPolicy, float, int]:
        cl = s.clusters[f"outbound|{port}|{subset}|{REVIEWS}"]
        return cl.lb_policy, cl.connect_timeout, cl.max_connections

    assert c(9080) == (LbPolicy.RANDOM, 2.0, 0)
    # Istio: a port entry is not merged with the top level; what it omits takes the default.
    assert c(9090) == (LbPolicy.ROUND_ROBIN, 10.0, 0)
    assert c(9080, "v1") == (LbPolicy.RANDOM, 2.0, 0)
    assert c(9090, "v1") == (LbPolicy.ROUND_ROBIN, 10.0, 0)
    # The subset's own port entry replaces everything for 9080 (LB back to the default).
    assert c(9080, "v2") == (LbPolicy.LEAST_REQUEST, 10.0, 9)
    # On 9090 the subset's groups override the top level's port entry group by group.
    assert c(9090, "v2") == (LbPolicy.ROUND_ROBIN, 3.0, 0)


def test_simple_policies_and_passthrough() -> None:
    cases = {"ROUND_ROBIN": LbPolicy.ROUND_ROBIN, "LEAST_CONN": LbPolicy.LEAST_REQUEST}
    cases |= {"RANDOM": LbPolicy.RANDOM, "LEAST_REQUEST": LbPolicy.LEAST_REQUEST}
    cases |= {"UNSPECIFIED": LbPolicy.LEAST_REQUEST}
    for simple, expected in cases.items():
        s = snap(
            dr("r", "shop", f"host: reviews\ntrafficPolicy: {{loadBalancer: {{simple: {simple}}}}}")
        )
        assert s.clusters[f"outbound|9080||{REVIEWS}"].lb_policy is expected, simple
    s = snap(dr("r", "shop", "host: reviews\ntrafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}"))
    c = s.clusters[f"outbound|9080||{REVIEWS}"]
    assert (c.discovery, c.endpoints) == (DiscoveryType.ORIGINAL_DST, ())


def test_consistent_hash_sources_ring_and_maglev() -> None:
    s = snap(
        dr(
            "reviews",
            "shop",
            """\
            host: reviews
            trafficPolicy:
              loadBalancer:
                consistentHash: {httpHeaderName: X-User, ringHash: {minimumRingSize: 4096}}
              portLevelSettings:
              - port: {number: 9090}
                loadBalancer:
                  consistentHash:
                    httpCookie: {name: session, path: /app, ttl: 60s}
                    maglev: {tableSize: 131}
            subsets:
            - name: v1
              labels: {version: v1}
              trafficPolicy:
                loadBalancer: {consistentHash: {useSourceIp: true}}
            - name: v2
              labels: {version: v2}
              trafficPolicy:
                loadBalancer: {consistentHash: {httpQueryParameterName: user}}
            """,
        )
    )
    top = s.clusters[f"outbound|9080||{REVIEWS}"]
    assert (top.lb_policy, top.ring_size) == (LbPolicy.RING_HASH, 4096)
    assert top.hash_policy == HashPolicy(header="x-user")
    cookie = s.clusters[f"outbound|9090||{REVIEWS}"]
    assert (cookie.lb_policy, cookie.maglev_table_size) == (LbPolicy.MAGLEV, 131)
    assert cookie.hash_policy == HashPolicy(cookie="session", cookie_path="/app", cookie_ttl=60.0)
    v1 = s.clusters[f"outbound|9080|v1|{REVIEWS}"]
    assert v1.hash_policy == HashPolicy(source_ip=True) and v1.ring_size == 1024
    v2 = s.clusters[f"outbound|9080|v2|{REVIEWS}"]
    assert v2.hash_policy == HashPolicy(query_parameter="user")


def test_connection_pool_fields() -> None:
    s = snap(
        dr(
            "reviews",
            "shop",
            """\
            host: reviews
            trafficPolicy:
              connectionPool:
                tcp: {connectTimeout: 250ms, maxConnections: 100, idleTimeout: 30s}
                http:
                  http2MaxRequests: 50
                  http1MaxPendingRequests: 20
                  maxRequestsPerConnection: 3
                  idleTimeout: 15s
                  h2UpgradePolicy: UPGRADE
            subsets:
            - name: v1
              labels: {version: v1}
              trafficPolicy: {connectionPool: {http: {useClientProtocol: true}}}
            """,
        )
    )
    c = s.clusters[f"outbound|9080||{REVIEWS}"]
    assert (c.connect_timeout, c.max_connections) == (0.25, 100)
    assert (c.max_requests, c.max_pending_requests, c.max_requests_per_connection) == (50, 20, 3)
    assert c.idle_timeout == 15.0  # an HTTP port: the HTTP pool's idle timeout
    assert c.h2_upgrade and not c.use_client_protocol
    v1 = s.clusters[f"outbound|9080|v1|{REVIEWS}"]
    assert v1.use_client_protocol and not v1.h2_upgrade and v1.max_requests == 0
    assert s.warnings == ()


def test_locality_needs_outlier_detection_for_failover_and_honours_enabled() -> None:
    def locality(policy: str) -> LocalityPolicy | None:
        s = snap(dr("reviews", "shop", "host: reviews\ntrafficPolicy:\n" + policy))
        return s.clusters[f"outbound|9080||{REVIEWS}"].locality

    failover = (
        "  loadBalancer:\n    localityLbSetting:\n      failover: [{from: eu-west, to: us-east}]\n"
    )
    outlier = "  outlierDetection: {consecutive5xxErrors: 3}\n"
    assert locality(failover) is None  # Istio: no failover without outlier detection
    assert locality(failover + outlier) == LocalityPolicy(failover=(("eu-west", "us-east"),))
    assert locality(outlier) == LocalityPolicy()  # the mesh default: enabled, by closeness
    disabled = "  loadBalancer: {localityLbSetting: {enabled: false}}\n"
    assert locality(disabled + outlier) is None
    distribute = (
        "  loadBalancer:\n    localityLbSetting:\n      distribute:\n"
        "      - from: eu-west/eu-west-1a/*\n"
        "        to: {eu-west/eu-west-1a/*: 80, eu-west/eu-west-1b/*: 20}\n"
    )
    got = locality(distribute)
    assert got is not None and not got.failover
    ((frm, to),) = got.distribute
    assert frm == "eu-west/eu-west-1a/*"
    assert dict(to) == {"eu-west/eu-west-1a/*": 80, "eu-west/eu-west-1b/*": 20}


def test_unapplied_fields_warn_once_each_with_rule_and_path() -> None:
    s = snap(
        dr(
            "reviews",
            "shop",
            """\
            host: reviews
            trafficPolicy:
              outlierDetection: {consecutive5xxErrors: 3}
              tls: {mode: ISTIO_MUTUAL}
              connectionPool:
                tcp: {tcpKeepalive: {time: 10s}, maxConnectionDuration: 1h}
                http: {maxRetries: 2}
            subsets:
            - name: v1
              labels: {version: v1}
              trafficPolicy:
                tls: {mode: DISABLE}
                loadBalancer: {simple: RANDOM, warmupDurationSecs: 10s}
            """,
        )
    )
    found = warnings_about(s, "not applied yet")
    paths = [
        "spec.trafficPolicy.outlierDetection",
        "spec.trafficPolicy.tls",
        "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive",
        "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration",
        "spec.trafficPolicy.connectionPool.http.maxRetries",
        "spec.subsets[0].trafficPolicy.loadBalancer.warmupDurationSecs",
    ]
    assert len(found) == len(paths), found
    for path in paths:
        assert sum(path in w and "DestinationRule/shop/reviews" in w for w in found) == 1, path


def test_lookup_order_proxy_namespace_then_service_then_root() -> None:
    other_svc = """\
    apiVersion: v1
    kind: Service
    metadata: {name: ratings, namespace: data}
    spec: {clusterIP: 10.96.0.40, ports: [{name: http, port: 9080}]}
    ---
    """
    ratings = "ratings.data.svc.cluster.local"
    root = dr(
        "root",
        "istio-system",
        f"host: {ratings}\ntrafficPolicy: {{loadBalancer: {{simple: RANDOM}}}}",
    )
    in_svc = dr(
        "svc", "data", "host: ratings\ntrafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}"
    )
    # "ratings" written in shop means ratings.shop...: it does not cover ratings.data.
    short = dr(
        "short", "shop", "host: ratings\ntrafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}"
    )
    in_proxy = dr(
        "mine", "shop", f"host: {ratings}\ntrafficPolicy: {{loadBalancer: {{simple: LEAST_CONN}}}}"
    )

    def lb(text: str) -> LbPolicy:
        return (
            snap(textwrap.dedent(other_svc) + text).clusters[f"outbound|9080||{ratings}"].lb_policy
        )

    assert lb(root) is LbPolicy.RANDOM
    assert lb(root + in_svc + short) is LbPolicy.ROUND_ROBIN
    s = snap(textwrap.dedent(other_svc) + root + in_svc + in_proxy)
    assert s.clusters[f"outbound|9080||{ratings}"].lb_policy is LbPolicy.LEAST_REQUEST
    # exportTo ".": the service namespace's rule is private to it; the root's applies.
    private = in_svc.replace("host: ratings", "host: ratings\n  exportTo: ['.']")
    assert lb(root + private) is LbPolicy.RANDOM


def test_exact_host_beats_wildcards_and_longest_wildcard_wins() -> None:
    star = dr("a-star", "shop", "host: '*'\ntrafficPolicy: {loadBalancer: {simple: RANDOM}}")
    local = dr(
        "b-local",
        "shop",
        "host: '*.shop.svc.cluster.local'\ntrafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}",
    )
    exact = dr(
        "c-exact", "shop", "host: reviews\ntrafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}"
    )

    def lb(text: str) -> LbPolicy:
        return snap(text).clusters[f"outbound|9080||{REVIEWS}"].lb_policy

    assert lb(star) is LbPolicy.RANDOM
    assert lb(star + local) is LbPolicy.ROUND_ROBIN
    assert lb(star + local + exact) is LbPolicy.LEAST_REQUEST


def test_workload_selector_rules_apply_only_to_matching_proxies() -> None:
    catch_all = dr("a", "shop", "host: reviews\ntrafficPolicy: {loadBalancer: {simple: RANDOM}}")
    mine = dr(
        "b",
        "shop",
        "host: reviews\nworkloadSelector: {matchLabels: {app: web}}\n"
        "trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}",
    )
    theirs = mine.replace("app: web", "app: other").replace("name: b,", "name: c,")
    assert (
        snap(catch_all + mine).clusters[f"outbound|9080||{REVIEWS}"].lb_policy
        is LbPolicy.ROUND_ROBIN
    )
    assert (
        snap(catch_all + theirs).clusters[f"outbound|9080||{REVIEWS}"].lb_policy is LbPolicy.RANDOM
    )


def test_rules_for_one_host_merge_subsets_first_policy_wins() -> None:
    first = dr(
        "a",
        "shop",
        "host: reviews\ntrafficPolicy: {loadBalancer: {simple: RANDOM}}\n"
        "subsets: [{name: v1, labels: {version: v1}}]",
    )
    second = dr(
        "b",
        "shop",
        f"host: {REVIEWS}\ntrafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}\n"
        "subsets: [{name: v1, labels: {version: v3}}, {name: v2, labels: {version: v2}}]",
    )
    s = snap(first + second)
    assert addresses(s, f"outbound|9080|v1|{REVIEWS}") == ["10.1.1.1"]
    assert addresses(s, f"outbound|9080|v2|{REVIEWS}") == ["10.1.1.2"]
    assert s.clusters[f"outbound|9080|v2|{REVIEWS}"].lb_policy is LbPolicy.RANDOM
    assert len(warnings_about(s, "DestinationRule/shop/b")) == 2  # the policy and subset v1


def test_subset_cluster_names_for_routes() -> None:
    mesh = load_text(MESH + "---\n" + dr("reviews", "shop", SUBSETS), "mesh.yaml")
    notes = Notes()
    services = RegistryBuilder(mesh, "cluster.local", notes).build()
    w = Workload("web-1", "shop", frozenset({("app", "web")}))
    index = PolicyIndex(mesh, services, w, "cluster.local", notes)
    assert index.subset_cluster(REVIEWS, 9080, "v2") == f"outbound|9080|v2|{REVIEWS}"
    assert index.subset_cluster(REVIEWS, 9080, "v3") is None
    assert index.subset_cluster(REVIEWS, 1234, "v1") is None
    assert index.subset_cluster("nope.shop.svc.cluster.local", 9080, "v1") is None


def test_subsets_of_an_unknown_host_warn() -> None:
    s = snap(dr("ghost", "shop", "host: ghost\nsubsets: [{name: v1, labels: {version: v1}}]"))
    assert len(warnings_about(s, "ghost.shop.svc.cluster.local is not a known service")) == 1


def test_not_ready_endpoints_are_kept_unhealthy_with_localities() -> None:
    s = snap(
        """\
        apiVersion: v1
        kind: Service
        metadata: {name: db, namespace: shop}
        spec: {clusterIP: 10.96.0.50, ports: [{name: tcp-pg, port: 5432}]}
        ---
        apiVersion: v1
        kind: Endpoints
        metadata: {name: db, namespace: shop}
        subsets:
        - addresses: [{ip: 10.1.1.1, targetRef: {kind: Pod, name: reviews-v1}}]
          notReadyAddresses: [{ip: 10.1.1.2, targetRef: {kind: Pod, name: reviews-v2}}]
          ports: [{name: tcp-pg, port: 5433}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: cache, namespace: shop}
        spec: {clusterIP: 10.96.0.51, ports: [{name: redis, port: 6379}]}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: cache-1, namespace: shop, labels: {kubernetes.io/service-name: cache}}
        addressType: IPv4
        endpoints:
        - {addresses: [10.2.0.1], zone: z1}
        - {addresses: [10.2.0.2], zone: z2, conditions: {ready: false}}
        ports: [{name: redis, port: 6379}]
        ---
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {name: vm, namespace: shop}
        spec: {address: 10.9.0.1, labels: {app: reviews, version: vm}, locality: us/east/rack1}
        """
    )
    db = s.clusters["outbound|5432||db.shop.svc.cluster.local"]
    got = {(e.address, e.port, e.healthy, e.locality) for e in db.endpoints}
    assert got == {
        ("10.1.1.1", 5433, True, "eu-west/eu-west-1a/"),
        ("10.1.1.2", 5433, False, "eu-west/eu-west-1b/"),
    }
    cache = s.clusters["outbound|6379||cache.shop.svc.cluster.local"]
    in_cache = {(e.address, e.healthy, e.locality) for e in cache.endpoints}
    assert in_cache == {("10.2.0.1", True, "/z1"), ("10.2.0.2", False, "/z2")}
    reviews = s.clusters[f"outbound|9080||{REVIEWS}"]
    assert {e.address: e.locality for e in reviews.endpoints}["10.9.0.1"] == "us/east/rack1"
    assert s.workload.locality == "eu-west/eu-west-1a"  # from the istio-locality label


def test_headless_service_is_original_dst_with_per_endpoint_chains() -> None:
    s = snap(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: Service
            metadata: {name: kv, namespace: shop}
            spec:
              clusterIP: None
              selector: {app: reviews}
              ports: [{name: tcp-kv, port: 7000}, {name: http-web, port: 8080}]
            ---
            """
        )
        + dr("kv", "shop", "host: kv\nsubsets: [{name: v1, labels: {version: v1}}]")
    )
    for name in (
        "outbound|7000||kv.shop.svc.cluster.local",
        "outbound|7000|v1|kv.shop.svc.cluster.local",
    ):
        c = s.clusters[name]
        assert (c.discovery, c.endpoints) == (DiscoveryType.ORIGINAL_DST, ()), name
        assert c.lb_policy is LbPolicy.LEAST_REQUEST and c.hash_policy is None
    outbound = next(lis for lis in s.listeners if lis.name == "virtualOutbound")
    chains = [c for c in outbound.filter_chains if c.match.destination_port == 7000]
    assert len(chains) == 1 and isinstance(chains[0].filter, TcpProxy)
    nets = {ipaddress.ip_network(f"10.1.1.{i}/32") for i in (1, 2, 3)}
    assert set(chains[0].match.prefix_ranges) == nets
    http = s.clusters["outbound|8080||kv.shop.svc.cluster.local"]
    assert http.discovery is DiscoveryType.ORIGINAL_DST


def test_bookinfo_destination_rules() -> None:
    mesh = load_paths([SAMPLES / "bookinfo-kube.yaml", SAMPLES / "destination-rule-all.yaml"])
    s = translate(mesh, Bootstrap(pod_name="productpage-v1-abc-xyz", pod_namespace="default"))
    for svc, versions in {"reviews": (1, 2, 3), "ratings": (1, 2), "details": (1, 2)}.items():
        for v in versions:
            c = s.clusters[f"outbound|9080|v{v}|{svc}.default.svc.cluster.local"]
            assert c.subset == f"v{v}"
    assert s.warnings == ()


def test_inbound_clusters_take_the_rules_connection_pool_only() -> None:
    rule = dr(
        "reviews",
        "shop",
        """\
        host: reviews
        trafficPolicy:
          loadBalancer: {simple: RANDOM}
          connectionPool: {http: {http2MaxRequests: 5}, tcp: {connectTimeout: 1s}}
          portLevelSettings:
          - port: {number: 9090}
            connectionPool: {tcp: {maxConnections: 3}}
        """,
    )
    s = snap(rule, Bootstrap(pod_name="reviews-v1", pod_namespace="shop"))
    http = s.clusters["inbound|9080||"]
    assert (http.max_requests, http.connect_timeout, http.max_connections) == (5, 1.0, 0)
    assert http.discovery is DiscoveryType.ORIGINAL_DST and http.source_address == "127.0.0.6"
    admin = s.clusters["inbound|9090||"]
    assert (admin.max_requests, admin.connect_timeout, admin.max_connections) == (0, 10.0, 3)
    # A proxy that serves no Service of the rule's host keeps the defaults.
    assert snap(rule).clusters.get("inbound|9080||") is None


def test_dns_service_entry_subsets_keep_their_labelled_endpoints() -> None:
    s = snap(
        textwrap.dedent(
            """\
            apiVersion: networking.istio.io/v1
            kind: ServiceEntry
            metadata: {name: ext, namespace: shop}
            spec:
              hosts: [api.example.com]
              ports: [{number: 80, name: http, protocol: HTTP}]
              resolution: DNS
              endpoints:
              - {address: eu.api.example.com, labels: {region: eu}}
              - {address: us.api.example.com, labels: {region: us}}
            ---
            """
        )
        + dr(
            "ext",
            "shop",
            "host: api.example.com\nsubsets: [{name: us, labels: {region: us}}, "
            "{name: none, labels: {region: ap}}]",
        )
    )
    us = s.clusters["outbound|80|us|api.example.com"]
    assert [e.address for e in us.endpoints] == ["us.api.example.com"]
    assert (us.discovery, us.dns_name) == (DiscoveryType.STRICT_DNS, "")  # endpoints: names
    none = s.clusters["outbound|80|none|api.example.com"]
    assert (none.endpoints, none.dns_name) == ((), "")
