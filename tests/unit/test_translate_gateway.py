"""Router mode: Gateway servers and NodePort/LoadBalancer Services -> listeners and routes."""

from __future__ import annotations

import textwrap
from pathlib import Path

from sidecar.bootstrap import Bootstrap, Mode
from sidecar.config.load import load_text
from sidecar.config.resources import Service
from sidecar.config.snapshot import (
    HttpConnectionManager,
    Listener,
    Snapshot,
    TcpProxy,
)
from sidecar.config.translate import translate
from tests.integration.certs import self_signed

SAMPLES = Path("/work/shared/samples/istio-bookinfo")
BOOT = Bootstrap(pod_name="gw-1", pod_namespace="istio-system", mode=Mode.ROUTER)

GATEWAY_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: gw-1, namespace: istio-system, labels: {istio: ingressgateway}}
spec: {containers: [{name: istio-proxy}]}
status: {podIP: 127.0.0.9}
"""

SERVICES = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: mysql, namespace: db}
spec:
  selector: {app: mysql}
  ports: [{name: tcp, port: 3306}]
---
apiVersion: v1
kind: Service
metadata: {name: secure, namespace: shop}
spec:
  selector: {app: secure}
  ports: [{name: tls, port: 443}]
"""


def snap(*docs: str, boot: Bootstrap = BOOT) -> Snapshot:
    text = "\n---\n".join(textwrap.dedent(d).strip("\n") for d in (GATEWAY_POD, *docs))
    return translate(load_text(text, "mesh.yaml"), boot)


def gateway(name: str, ns: str, servers: str, selector: str = "istio: ingressgateway") -> str:
    return (
        f"apiVersion: networking.istio.io/v1\nkind: Gateway\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\n"
        f"spec:\n  selector: {{{selector}}}\n  servers:\n{textwrap.indent(servers, '  ')}"
    )


def listener(s: Snapshot, name: str) -> Listener:
    found = [lis for lis in s.listeners if lis.name == name]
    assert found, f"no listener {name}: {[lis.name for lis in s.listeners]}"
    return found[0]


HTTP_SERVER = """\
- port: {number: 8080, name: http, protocol: HTTP}
  hosts: ["*"]
"""


def test_selector_not_matching_serves_nothing() -> None:
    s = snap(SERVICES, gateway("gw", "istio-system", HTTP_SERVER, "istio: egressgateway"))
    assert s.listeners == ()
    # Clusters for every visible service exist anyway (as in sidecar mode).
    assert "outbound|80||web.shop.svc.cluster.local" in s.clusters


def test_router_mode_has_no_capture_listeners_and_one_listener_per_port() -> None:
    other = """\
    - port: {number: 8080, name: http-b, protocol: HTTP}
      hosts: ["shop/web.example.com"]
    - port: {number: 3306, name: tcp, protocol: TCP}
      hosts: ["*"]
    """
    s = snap(
        SERVICES,
        gateway("a", "istio-system", HTTP_SERVER),
        gateway("b", "shop", textwrap.dedent(other)),
    )
    names = sorted(lis.name for lis in s.listeners)
    # 3306 has no tcp route bound: nothing served there, and a warning says so.
    assert names == ["0.0.0.0_8080"]
    assert any("3306" in w and "tcp route" in w for w in s.warnings)
    lis = listener(s, "0.0.0.0_8080")
    assert (lis.address, lis.port, lis.use_original_dst) == ("0.0.0.0", 8080, False)
    (chain,) = lis.filter_chains
    assert isinstance(chain.filter, HttpConnectionManager)
    assert chain.filter.route_config == "http.8080"
    assert "http.8080" in s.route_configs


def test_conflicting_kinds_on_one_port_first_gateway_wins() -> None:
    tcp = "- port: {number: 8080, name: tcp, protocol: TCP}\n  hosts: ['*']\n"
    s = snap(gateway("a", "istio-system", HTTP_SERVER), gateway("b", "istio-system", tcp))
    (lis,) = s.listeners
    assert isinstance(lis.filter_chains[0].filter, HttpConnectionManager)
    assert any("Gateway/istio-system/b" in w and "already serves http" in w for w in s.warnings)


def test_https_redirect_answers_301_to_https_for_the_servers_hosts() -> None:
    server = """\
    - port: {number: 80, name: http, protocol: HTTP}
      hosts: ["shop/web.example.com"]
      tls: {httpsRedirect: true}
    """
    s = snap(SERVICES, gateway("gw", "istio-system", textwrap.dedent(server)))
    rc = s.route_configs["http.80"]
    (vh,) = rc.virtual_hosts
    assert vh.domains == ("web.example.com", "web.example.com:*")  # any port, as Istio
    (route,) = vh.routes
    assert route.redirect is not None and route.redirect.scheme == "https"
    assert route.redirect.code == 301


def test_credential_name_is_the_security_works_and_the_server_is_skipped() -> None:
    server = """\
    - port: {number: 443, name: https, protocol: HTTPS}
      hosts: ["*"]
      tls: {mode: SIMPLE, credentialName: web-cert}
    """
    s = snap(gateway("gw", "istio-system", textwrap.dedent(server)))
    assert s.listeners == ()
    assert any("credentialName" in w and "skipped" in w for w in s.warnings)


def test_passthrough_chains_by_sni_from_bound_tls_routes_with_namespace_restriction() -> None:
    server = """\
    - port: {number: 443, name: tls, protocol: TLS}
      hosts: ["shop/*.example.com"]
      tls: {mode: PASSTHROUGH}
    """
    vs = """\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: %s, namespace: %s}
    spec:
      hosts: ["%s"]
      gateways: ["istio-system/gw"]
      tls:
      - match: [{sniHosts: ["%s"]}]
        route: [{destination: {host: secure}}]
    """
    s = snap(
        SERVICES,
        gateway("gw", "istio-system", textwrap.dedent(server)),
        vs % ("a", "shop", "a.example.com", "a.example.com"),
        vs % ("b", "shop", "*.example.com", "*.example.com"),
        # Another namespace: the server admits only shop's VirtualServices.
        vs % ("c", "other", "c.example.com", "c.example.com"),
    )
    lis = listener(s, "0.0.0.0_443")
    assert lis.tls is None  # passed through, not terminated
    by_names = {c.match.server_names: c.filter for c in lis.filter_chains}
    assert set(by_names) == {("a.example.com",), ("*.example.com",)}
    for f in by_names.values():
        assert isinstance(f, TcpProxy)
        assert f.cluster == "outbound|443||secure.shop.svc.cluster.local"
    assert all(c.match.transport_protocol == "tls" for c in lis.filter_chains)


def test_tcp_server_relays_to_the_first_bound_tcp_route() -> None:
    server = "- port: {number: 3306, name: tcp, protocol: TCP}\n  hosts: ['*']\n"
    vs = """\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: mysql, namespace: db}
    spec:
      hosts: ["*"]
      gateways: ["istio-system/gw"]
      tcp:
      - match: [{port: 3306}]
        route: [{destination: {host: mysql}}]
    """
    s = snap(SERVICES, gateway("gw", "istio-system", server), vs)
    (chain,) = listener(s, "0.0.0.0_3306").filter_chains
    assert isinstance(chain.filter, TcpProxy)
    assert chain.filter.cluster == "outbound|3306||mysql.db.svc.cluster.local"


NODE_PORT = """\
apiVersion: v1
kind: Service
metadata: {name: shop-np, namespace: shop}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: tcp-raw, port: 9000, nodePort: 30900}
---
apiVersion: v1
kind: Service
metadata: {name: shop-lb, namespace: shop}
spec:
  type: LoadBalancer
  loadBalancerIP: 10.0.0.5
  selector: {app: web}
  ports: [{name: http, port: 8080, nodePort: 30081}]
status:
  loadBalancer:
    ingress: [{ip: 10.0.0.6}, {hostname: lb.example.com}]
"""


def test_node_port_and_load_balancer_listeners_route_to_the_service() -> None:
    s = snap(NODE_PORT)
    names = sorted(lis.name for lis in s.listeners)
    assert names == [
        "0.0.0.0_30080", "0.0.0.0_30081", "0.0.0.0_30900", "10.0.0.5_8080", "10.0.0.6_8080"
    ]
    http = listener(s, "0.0.0.0_30080").filter_chains[0].filter
    assert isinstance(http, HttpConnectionManager)
    (vh,) = s.route_configs[http.route_config].virtual_hosts
    assert vh.routes[0].cluster == "outbound|80||shop-np.shop.svc.cluster.local"
    tcp = listener(s, "0.0.0.0_30900").filter_chains[0].filter
    assert isinstance(tcp, TcpProxy)
    assert tcp.cluster == "outbound|9000||shop-np.shop.svc.cluster.local"
    lb = listener(s, "10.0.0.5_8080").filter_chains[0].filter
    assert isinstance(lb, HttpConnectionManager)
    assert "outbound|8080||shop-lb.shop.svc.cluster.local" in s.clusters


def test_a_gateway_port_wins_over_a_node_port() -> None:
    server = "- port: {number: 30080, name: http, protocol: HTTP}\n  hosts: ['*']\n"
    s = snap(NODE_PORT, gateway("gw", "istio-system", server))
    (lis,) = [lis for lis in s.listeners if lis.port == 30080]
    assert isinstance(lis.filter_chains[0].filter, HttpConnectionManager)
    assert lis.filter_chains[0].filter.route_config == "http.30080"
    assert any("0.0.0.0:30080 is already served" in w for w in s.warnings)


def test_sidecar_mode_serves_no_node_ports() -> None:
    s = snap(NODE_PORT, boot=Bootstrap(pod_name="gw-1", pod_namespace="istio-system"))
    assert not [lis for lis in s.listeners if lis.port in (30080, 30081, 30900)]


def test_service_load_balancer_fields_parse() -> None:
    mesh = load_text(NODE_PORT, "mesh.yaml")
    lb = next(s for s in mesh.of(Service) if s.meta.name == "shop-lb")
    assert lb.load_balancer_ip == "10.0.0.5"
    assert lb.load_balancer_ingress == ("10.0.0.6",)
    assert lb.lb_addresses == ("10.0.0.5", "10.0.0.6")
    assert not any("loadBalancer" in str(w) for w in mesh.warnings)


def test_bookinfo_gateway_routes_its_five_paths_to_productpage() -> None:
    pod = GATEWAY_POD.replace("namespace: istio-system", "namespace: default")
    boot = Bootstrap(pod_name="gw-1", pod_namespace="default", mode=Mode.ROUTER)
    text = "\n---\n".join(
        [
            pod,
            (SAMPLES / "bookinfo-kube.yaml").read_text(),
            (SAMPLES / "bookinfo-gateway.yaml").read_text(),
        ]
    )
    s = translate(load_text(text, "mesh.yaml"), boot)
    (lis,) = s.listeners
    assert (lis.name, lis.port) == ("0.0.0.0_8080", 8080)
    (vh,) = s.route_configs["http.8080"].virtual_hosts
    assert vh.domains == ("*",)
    matches = [(r.match.path, r.match.prefix) for r in vh.routes]
    assert matches == [
        ("/productpage", None), (None, "/static"), ("/login", None), ("/logout", None),
        (None, "/api/v1/products"),
    ]
    productpage = "outbound|9080||productpage.default.svc.cluster.local"
    assert {r.cluster for r in vh.routes} == {productpage}
    assert "outbound|9080||reviews.default.svc.cluster.local" in s.clusters


def test_server_hosts_restrict_virtual_services_by_namespace_and_host() -> None:
    server = """\
    - port: {number: 8080, name: http, protocol: HTTP}
      hosts: ["shop/web.example.com", "./gw.example.com"]
    """
    vs = """\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: %s, namespace: %s}
    spec:
      hosts: ["%s"]
      gateways: ["istio-system/gw"]
      http: [{route: [{destination: {host: web.shop.svc.cluster.local}}]}]
    """
    s = snap(
        SERVICES,
        gateway("gw", "istio-system", textwrap.dedent(server)),
        vs % ("ok", "shop", "web.example.com"),
        vs % ("wrong-ns", "other", "web.example.com"),
        vs % ("wrong-host", "shop", "api.example.com"),
        vs % ("gw-ns", "istio-system", "gw.example.com"),
    )
    vhosts = s.route_configs["http.8080"].virtual_hosts
    assert sorted(d for vh in vhosts for d in vh.domains) == [
        "gw.example.com", "gw.example.com:*", "web.example.com", "web.example.com:*"
    ]
    for vh in vhosts:
        assert len(vh.routes) == 1  # only the admitted VirtualService's route


def test_https_simple_terminates_with_the_files_and_tls_simple_relays_tcp(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "web.example.com")
    servers = f"""\
    - port: {{number: 443, name: https, protocol: HTTPS}}
      hosts: ["*"]
      tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
    - port: {{number: 3307, name: tls, protocol: TLS}}
      hosts: ["*"]
      tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
    """
    vs = """\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: mysql, namespace: db}
    spec:
      hosts: ["*"]
      gateways: ["istio-system/gw"]
      tcp: [{route: [{destination: {host: mysql}}]}]
    """
    s = snap(SERVICES, gateway("gw", "istio-system", textwrap.dedent(servers)), vs)
    https = listener(s, "0.0.0.0_443")
    assert https.tls is not None
    assert (https.tls.certificate_chain, https.tls.private_key) == (str(cert), str(key))
    assert "h2" in https.tls.alpn
    hcm = https.filter_chains[0].filter
    assert isinstance(hcm, HttpConnectionManager) and hcm.route_config == "https.443"
    tls = listener(s, "0.0.0.0_3307")
    assert tls.tls is not None and tls.tls.alpn == ()
    relay = tls.filter_chains[0].filter
    assert isinstance(relay, TcpProxy)
    assert relay.cluster == "outbound|3306||mysql.db.svc.cluster.local"
