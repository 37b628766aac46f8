"""Translating mesh config into a snapshot, with Istio's names and semantics."""

from __future__ import annotations

import ipaddress
import textwrap
from dataclasses import replace
from pathlib import Path

from sidecar.bootstrap import Bootstrap, OutboundPolicy
from sidecar.config.load import load_paths, load_text
from sidecar.config.snapshot import (
    BLACKHOLE_CLUSTER,
    PASSTHROUGH_CLUSTER,
    Direction,
    DiscoveryType,
    Endpoint,
    FilterChain,
    HttpConnectionManager,
    Listener,
    Protocol,
    Snapshot,
    TcpProxy,
)
from sidecar.config.translate import translate

SAMPLES = Path("/work/shared/samples/istio-bookinfo")
BOOT = Bootstrap(pod_name="web-1", pod_namespace="shop")


def snap(text: str, boot: Bootstrap = BOOT) -> Snapshot:
    return translate(load_text(textwrap.dedent(text), "mesh.yaml"), boot)


def listener(s: Snapshot, name: str) -> Listener:
    (found,) = [lis for lis in s.listeners if lis.name == name]
    return found


def chain(lis: Listener, port: int) -> FilterChain:
    (found,) = [c for c in lis.filter_chains if c.match.destination_port == port]
    return found


WEB_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  serviceAccountName: web-sa
  containers:
  - name: app
    ports: [{name: http-api, containerPort: 8080}]
status: {podIP: 10.1.0.5}
"""


def test_bookinfo_reviews_pod() -> None:
    mesh = load_paths([SAMPLES / "bookinfo-kube.yaml"])
    s = translate(mesh, Bootstrap(pod_name="reviews-v1-abc-xyz", pod_namespace="default"))
    assert s.workload.labels == frozenset({("app", "reviews"), ("version", "v1")})
    assert s.workload.service_account == "bookinfo-reviews"
    for svc in ("details", "ratings", "reviews", "productpage"):
        c = s.clusters[f"outbound|9080||{svc}.default.svc.cluster.local"]
        assert c.discovery is DiscoveryType.STATIC and c.protocol is Protocol.HTTP
    inbound = listener(s, "virtualInbound")
    assert inbound.port == 15006 and inbound.use_original_dst
    hcm = chain(inbound, 9080).filter
    assert hcm == HttpConnectionManager("inbound|9080||", "inbound_0.0.0.0_9080", Protocol.HTTP)
    cluster = s.clusters["inbound|9080||"]
    assert cluster.discovery is DiscoveryType.ORIGINAL_DST
    assert cluster.source_address == "127.0.0.6" and cluster.direction is Direction.INBOUND
    rc = s.route_configs["9080"]
    reviews = next(
        v for v in rc.virtual_hosts if v.name == "reviews.default.svc.cluster.local:9080"
    )
    assert {"reviews", "reviews:9080", "reviews.default.svc"} <= set(reviews.domains)
    assert reviews.routes[0].cluster == "outbound|9080||reviews.default.svc.cluster.local"
    assert rc.virtual_hosts[-1].name == "allow_any"
    assert s.warnings == ()
    # Deterministic: same input, same version; different pod, different snapshot.
    again = translate(mesh, Bootstrap(pod_name="reviews-v1-abc-xyz", pod_namespace="default"))
    assert again.version == s.version and len(s.version) == 12
    assert translate(mesh, Bootstrap(pod_name="ratings-v1-x-y")).version != s.version


def test_service_selects_workload_entries_and_named_target_port() -> None:
    s = snap(
        WEB_POD
        + """
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http-api}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm1, namespace: shop}
spec:
  address: 10.9.0.1
  ports: {http: 9090}
  labels: {app: web, version: vm}
  serviceAccount: vm-sa
  locality: eu/west-1/a
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other, namespace: shop}
spec: {address: 10.9.0.2, labels: {app: other}}
"""
    )
    c = s.clusters["outbound|80||web.shop.svc.cluster.local"]
    assert set(c.endpoints) == {
        Endpoint(
            "10.1.0.5", 8080, frozenset({("app", "web")}), "web-sa", workload="Pod/shop/web-1"
        ),
        Endpoint(
            "10.9.0.1",
            9090,
            frozenset({("app", "web"), ("version", "vm")}),
            "vm-sa",
            "eu/west-1/a",
            1,
            "WorkloadEntry/shop/vm1",
        ),
    }
    # Inbound: the named targetPort resolves to the pod's container port.
    assert "inbound|8080||" in s.clusters
    assert isinstance(chain(listener(s, "virtualInbound"), 8080).filter, HttpConnectionManager)
    vhost = s.route_configs["80"].virtual_hosts[0]
    assert "10.96.0.10:80" in vhost.domains and "web:80" in vhost.domains


def test_tcp_headless_and_external_name_services() -> None:
    s = snap(
        """\
        apiVersion: v1
        kind: Service
        metadata: {name: db, namespace: shop}
        spec:
          clusterIP: 10.96.0.20
          ports: [{name: tcp-pg, port: 5432}]
        ---
        apiVersion: v1
        kind: Endpoints
        metadata: {name: db, namespace: shop}
        subsets:
        - addresses: [{ip: 10.1.0.7}]
          ports: [{name: tcp-pg, port: 5433}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: cache, namespace: shop}
        spec:
          clusterIP: None
          ports: [{name: redis, port: 6379}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: cache-1, namespace: shop, labels: {kubernetes.io/service-name: cache}}
        addressType: IPv4
        endpoints:
        - addresses: [10.1.0.8]
          zone: z1
        - addresses: [10.1.0.9]
          conditions: {ready: false}
        ports: [{name: redis, port: 6379}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: legacy, namespace: shop}
        spec:
          type: ExternalName
          externalName: db.example.com
          ports: [{name: tcp, port: 3306}]
        """
    )
    db = s.clusters["outbound|5432||db.shop.svc.cluster.local"]
    assert [(e.address, e.port) for e in db.endpoints] == [("10.1.0.7", 5433)]
    out = listener(s, "virtualOutbound")
    db_chain = chain(out, 5432)
    assert db_chain.match.prefix_ranges == (ipaddress.ip_network("10.96.0.20/32"),)
    assert db_chain.filter == TcpProxy(db.name, db.name)
    # Headless: ORIGINAL_DST (the client dialled the endpoint), a chain per endpoint address.
    cache = s.clusters["outbound|6379||cache.shop.svc.cluster.local"]
    assert (cache.discovery, cache.endpoints) == (DiscoveryType.ORIGINAL_DST, ())
    assert ipaddress.ip_network("10.1.0.8/32") in chain(out, 6379).match.prefix_ranges
    legacy = s.clusters["outbound|3306||legacy.shop.svc.cluster.local"]
    assert legacy.discovery is DiscoveryType.STRICT_DNS
    assert (legacy.dns_name, legacy.dns_port) == ("db.example.com", 3306)


def test_service_entry_resolutions() -> None:
    s = snap(
        """\
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: ext, namespace: shop}
        spec:
          hosts: [api.example.com]
          ports: [{number: 443, name: https, protocol: HTTPS}]
          resolution: DNS
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: rr, namespace: shop}
        spec:
          hosts: [rr.example.com]
          ports: [{number: 80, name: http, protocol: HTTP}]
          resolution: DNS_ROUND_ROBIN
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: static, namespace: shop}
        spec:
          hosts: [vm.internal]
          addresses: [240.0.0.1]
          ports: [{number: 5000, name: tcp, protocol: TCP}]
          location: MESH_INTERNAL
          resolution: STATIC
          endpoints:
          - {address: 10.2.0.1, ports: {tcp: 5001}}
          - {address: 10.2.0.2}
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: any, namespace: shop}
        spec:
          hosts: ["*.wild.example"]
          ports: [{number: 8443, name: tls, protocol: TLS}]
          resolution: NONE
        """
    )
    ext = s.clusters["outbound|443||api.example.com"]
    assert (ext.discovery, ext.dns_name, ext.dns_port) == (
        DiscoveryType.STRICT_DNS,
        "api.example.com",
        443,
    )
    assert ext.protocol is Protocol.TLS
    assert s.clusters["outbound|80||rr.example.com"].discovery is DiscoveryType.LOGICAL_DNS
    static = s.clusters["outbound|5000||vm.internal"]
    assert [(e.address, e.port) for e in static.endpoints] == [
        ("10.2.0.1", 5001),
        ("10.2.0.2", 5000),
    ]
    wild = s.clusters["outbound|8443||*.wild.example"]
    assert wild.discovery is DiscoveryType.ORIGINAL_DST
    out = listener(s, "virtualOutbound")
    assert chain(out, 5000).match.prefix_ranges == (ipaddress.ip_network("240.0.0.1/32"),)
    assert chain(out, 8443).match.prefix_ranges == ()  # no address: any destination on the port


SIDECARS = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: root, namespace: istio-system}
spec:
  egress: [{hosts: ["*/*"]}]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: ns-default, namespace: shop}
spec:
  egress: [{hosts: ["./*"]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: for-web, namespace: shop}
spec:
  workloadSelector: {labels: {app: web}}
  egress: [{hosts: ["other/*"]}]
"""

SERVICES = """\
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: shop}
spec: {clusterIP: 10.96.1.1, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: other}
spec: {clusterIP: 10.96.1.2, ports: [{name: http, port: 80}]}
"""


def _outbound_hosts(s: Snapshot) -> set[str]:
    return {c.service for c in s.clusters.values() if c.name.startswith("outbound|")}


def test_sidecar_selection_order_and_egress_hosts() -> None:
    by_selector = snap(WEB_POD + "---\n" + SIDECARS + SERVICES)
    assert _outbound_hosts(by_selector) == {"b.other.svc.cluster.local"}
    no_labels = snap(SIDECARS + SERVICES)  # pod not found: the namespace-wide Sidecar applies
    assert _outbound_hosts(no_labels) == {"a.shop.svc.cluster.local"}
    assert no_labels.warnings == (
        "<bootstrap>: warning: pod_name: no Pod, WorkloadEntry or Deployment for pod shop/web-1;"
        " the workload has no labels",
    )
    root_only = snap(SIDECARS.split("---")[0] + SERVICES)  # only istio-system's
    assert _outbound_hosts(root_only) == {"a.shop.svc.cluster.local", "b.other.svc.cluster.local"}
    # The root Sidecar says REGISTRY_ONLY: no allow_any vhost, unknown traffic is black-holed.
    out = listener(root_only, "virtualOutbound")
    assert out.default_filter_chain is not None
    assert out.default_filter_chain.filter == TcpProxy(BLACKHOLE_CLUSTER, BLACKHOLE_CLUSTER)
    assert [v.name for v in root_only.route_configs["80"].virtual_hosts] == [
        "a.shop.svc.cluster.local:80",
        "b.other.svc.cluster.local:80",
    ]


def test_allow_any_versus_registry_only_from_bootstrap() -> None:
    allow = snap(SERVICES)
    out = listener(allow, "virtualOutbound")
    assert out.default_filter_chain is not None
    assert out.default_filter_chain.filter == TcpProxy(PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER)
    assert allow.route_configs["80"].virtual_hosts[-1].domains == ("*",)
    strict = snap(SERVICES, replace(BOOT, outbound_policy=OutboundPolicy.REGISTRY_ONLY))
    strict_out = listener(strict, "virtualOutbound")
    assert strict_out.default_filter_chain is not None
    assert strict_out.default_filter_chain.filter == TcpProxy(BLACKHOLE_CLUSTER, BLACKHOLE_CLUSTER)
    assert "allow_any" not in [v.name for v in strict.route_configs["80"].virtual_hosts]


def test_capture_mode_none_listeners_replace_capture() -> None:
    s = snap(
        WEB_POD
        + """
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: loopback, namespace: shop}
spec:
  workloadSelector: {labels: {app: web}}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: 127.0.0.1
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:8080
  egress:
  - port: {number: 9081, protocol: HTTP, name: http}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: ["./a.shop.svc.cluster.local"]
  - port: {number: 9432, protocol: TCP, name: tcp}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: ["./*"]
"""
        + """---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: shop}
spec: {clusterIP: 10.96.1.1, ports: [{name: http, port: 9081}]}
---
apiVersion: v1
kind: Service
metadata: {name: pg, namespace: shop}
spec: {clusterIP: 10.96.1.3, ports: [{name: tcp, port: 9432}]}
"""
    )
    assert sorted(lis.name for lis in s.listeners) == [
        "127.0.0.1_9080",
        "127.0.0.1_9081",
        "127.0.0.1_9432",
    ]
    inbound = listener(s, "127.0.0.1_9080")
    assert (inbound.direction, inbound.use_original_dst) == (Direction.INBOUND, False)
    assert inbound.filter_chains[0].filter.route_config == "inbound|9080||"  # type: ignore[union-attr]
    target = s.clusters["inbound|9080||"]
    assert target.discovery is DiscoveryType.STATIC
    assert [(e.address, e.port) for e in target.endpoints] == [("127.0.0.1", 8080)]
    egress = listener(s, "127.0.0.1_9081")
    assert egress.direction is Direction.OUTBOUND and not egress.use_original_dst
    assert [v.name for v in s.route_configs["9081"].virtual_hosts] == [
        "a.shop.svc.cluster.local:9081",
        "allow_any",
    ]
    tcp = listener(s, "127.0.0.1_9432").filter_chains[0].filter
    assert tcp == TcpProxy(
        "outbound|9432||pg.shop.svc.cluster.local", "outbound|9432||pg.shop.svc.cluster.local"
    )


def test_capture_listeners_absent_when_ports_are_zero() -> None:
    s = snap(SERVICES, replace(BOOT, outbound_port=0, inbound_port=0))
    assert s.listeners == ()
    assert "outbound|80||a.shop.svc.cluster.local" not in s.clusters


AUTO_PORTS = """\
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.2.1
  selector: {app: web}
  ports: [{name: api, port: 8000, targetPort: 8080}, {name: tcp-db, port: 5432}]
"""


def test_auto_ports_get_http_and_tcp_chains_told_apart_by_detection() -> None:
    s = snap(WEB_POD + AUTO_PORTS, replace(BOOT, protocol_detection_timeout=0.25))
    out = listener(s, "virtualOutbound")
    assert out.detection_timeout == 0.25
    cluster = "outbound|8000||web.shop.svc.cluster.local"
    assert s.clusters[cluster].protocol is Protocol.UNSUPPORTED  # upstream: as downstream
    auto = [c for c in out.filter_chains if c.match.destination_port == 8000]
    vip = (ipaddress.ip_network("10.96.2.1/32"),)
    assert [(c.match.prefix_ranges, c.match.transport_protocol) for c in auto] == [
        (vip, "raw_buffer"),
        (vip, "raw_buffer"),
        (vip, "tls"),
    ]
    http, tcp, tls = auto
    assert http.match.application_protocols == ("http/1.0", "http/1.1", "h2c")
    assert http.filter == HttpConnectionManager("8000", "outbound_0.0.0.0_8000", Protocol.HTTP)
    assert tcp.filter == tls.filter == TcpProxy(cluster, cluster)
    assert not tcp.match.application_protocols
    # The port's route config exists and routes the auto service by its names.
    rc = s.route_configs["8000"]
    assert rc.virtual_hosts[0].routes[0].cluster == cluster
    assert "web.shop.svc.cluster.local:8000" in rc.virtual_hosts[0].domains
    # A declared TCP port is one chain: no detection.
    (db,) = [c for c in out.filter_chains if c.match.destination_port == 5432]
    assert (db.match.transport_protocol, db.match.application_protocols) == ("", ())
    # Inbound: the same three chains on the target port, HTTP through the inbound route config.
    inbound = listener(s, "virtualInbound")
    assert inbound.detection_timeout == 0.25
    chains = [c for c in inbound.filter_chains if c.match.destination_port == 8080]
    assert [c.filter for c in chains] == [
        HttpConnectionManager("inbound|8080||", "inbound_0.0.0.0_8080", Protocol.HTTP),
        TcpProxy("inbound|8080||", "inbound|8080||"),
        TcpProxy("inbound|8080||", "inbound|8080||"),
    ]
    assert "inbound|8080||" in s.route_configs
    assert chain(inbound, 5432).filter == TcpProxy("inbound|5432||", "inbound|5432||")
