"""Probing DestinationRule policies and load balancing as users write them, end to end.

Theory of operation: each test writes a mesh (Services, WorkloadEntries, Endpoints or
EndpointSlices, ServiceEntries, the Istio rules under test) and runs the real `sidecar run` as
the pod shop/sleep, whose Sidecar has explicit egress listeners (captureMode NONE) on
127.0.92.1; upstreams are echo servers on addresses of 127.0.92.0/24 (one per endpoint, the same
port), clients are curl (several source addresses through --interface). Which upstream answered
is the `x-up` response header. Splits are checked against binomial bounds (5 sigma).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from .h2_upstreams import start_h2_upstream
from .http_helpers import Request, Upstream, _UpstreamConn, curl
from .istio_tasks import http, join, loop_curl, running
from .routing_helpers import echo

BIND = "127.0.92.1"
NS = "shop"
BACKEND = "backend"
DOMAIN = "svc.cluster.local"


def within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


async def echo_at(name: str, host: str, port: int = 0) -> Upstream:
    """An echo upstream (routing_helpers.echo) bound to `host`."""
    up = echo(name)
    loop = asyncio.get_running_loop()
    up.server = await loop.create_server(lambda: _UpstreamConn(up), host, port)
    up.port = up.server.sockets[0].getsockname()[1]
    return up


@contextlib.asynccontextmanager
async def upstreams(*names: str, first: int = 10) -> AsyncIterator[tuple[dict[str, Upstream], int]]:
    """One echo upstream per name on 127.0.92.`first`+i, all on one port."""
    ups: dict[str, Upstream] = {}
    port = 0
    try:
        for i, name in enumerate(names):
            ups[name] = await echo_at(name, f"127.0.92.{first + i}", port)
            port = ups[name].port
        yield ups, port
    finally:
        for u in ups.values():
            u.close()


def addr(ups: dict[str, Upstream], name: str) -> str:
    assert ups[name].server is not None
    return str(ups[name].server.sockets[0].getsockname()[0])


def sidecar(*ports: tuple[int, str], hosts: str = '"*/*"', labels: str = "app: sleep") -> str:
    """The client pod shop/sleep (with `labels`) and its Sidecar's explicit egress listeners."""
    entries = "".join(
        f"""\
  - port: {{number: {n}, protocol: {p}, name: {p.lower()}-{n}}}
    bind: {BIND}
    captureMode: NONE
    hosts: [{hosts}]
"""
        for n, p in ports
    )
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: sleep
  namespace: {NS}
  labels: {{{labels}}}
spec:
  containers: [{{name: sleep, image: curl}}]
status: {{podIP: 127.0.92.2}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: {NS}}}
spec:
  egress:
{entries}"""


def web_service(ns: str = BACKEND, port: int = 80) -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: {port}}}]
"""


def entries(ups: dict[str, Upstream], port: int, ns: str = BACKEND,
            locality: dict[str, str] | None = None) -> str:
    """A WorkloadEntry per upstream, labels app=web, version=<name>, optional locality."""
    docs = []
    for name in ups:
        loc = f"\n  locality: {locality[name]}" if locality and name in locality else ""
        docs.append(f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-{name}, namespace: {ns}}}
spec:
  address: {addr(ups, name)}
  labels: {{app: web, version: {name}}}
  ports: {{http: {port}}}{loc}
""")
    return join(*docs)


def dr(name: str, ns: str, host: str, body: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {ns}}}
spec:
  host: {host}
{body}"""


def subsets(*versions: str) -> str:
    return "  subsets:\n" + "".join(
        f"  - {{name: {v}, labels: {{version: {v}}}}}\n" for v in versions)


def vs_to_subset(host: str, subset: str, ns: str = NS) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: to-{subset}, namespace: {ns}}}
spec:
  hosts: [{host}]
  http:
  - route:
    - destination: {{host: {host}, subset: {subset}}}
"""


WEB = f"web.{BACKEND}.{DOMAIN}"


async def status_and_up(url: str, *args: str) -> tuple[int, str]:
    code, out, err = await curl("-s", "-o", "/dev/null", "-w", "%{http_code} %header{x-up}",
                                *args, url, timeout=10)
    assert code == 0, err.decode()
    status, _, up = out.decode().partition(" ")
    return int(status), up


# --- which DestinationRule applies ------------------------------------------------------------


async def test_root_namespace_rule_applies_and_the_client_namespace_rule_overrides_it() -> None:
    async with upstreams("v1", "v2") as (ups, port):
        base = [sidecar((80, "HTTP")), web_service(), entries(ups, port),
                vs_to_subset(WEB, "v2")]
        root = dr("web-root", "istio-system", WEB, subsets("v1", "v2"))
        with running(join(*base, root)) as mesh:
            assert await status_and_up(f"http://{BIND}/", "-H", f"Host: {WEB}") == (200, "v2")
            # The client's namespace wins: its rule has no subset v2, so the route has no
            # cluster (Istio: 503 NC), even though the root rule defines v2.
            mine = dr("web-mine", NS, WEB, subsets("v1"))
            mesh.apply(join(*base, root, mine))
            status, _ = await status_and_up(f"http://{BIND}/", "-H", f"Host: {WEB}")
            assert status == 503
            # A rule in the service's namespace exported only to itself is invisible to shop:
            # the root rule applies again.
            hidden = dr("web-own", BACKEND, WEB, subsets("v1") + '  exportTo: ["."]\n')
            mesh.apply(join(*base, root, hidden))
            assert await status_and_up(f"http://{BIND}/", "-H", f"Host: {WEB}") == (200, "v2")
            # Exported to everyone, the service namespace's rule beats the root one.
            shown = dr("web-own", BACKEND, WEB, subsets("v1"))
            mesh.apply(join(*base, root, shown))
            status, _ = await status_and_up(f"http://{BIND}/", "-H", f"Host: {WEB}")
            assert status == 503


async def test_workload_selector_rule_applies_only_to_the_selected_client() -> None:
    async with upstreams("v1", "v2") as (ups, port):
        base = [web_service(), entries(ups, port), vs_to_subset(WEB, "v2")]
        general = dr("web-all", NS, WEB, subsets("v1"))
        selected = dr("web-sleep", NS, WEB, subsets("v1", "v2")
                      + "  workloadSelector:\n    matchLabels: {app: sleep}\n")
        cfg = join(sidecar((80, "HTTP")), *base, general, selected)
        with running(cfg) as mesh:
            assert await status_and_up(f"http://{BIND}/", "-H", f"Host: {WEB}") == (200, "v2")
            mesh.apply(join(sidecar((80, "HTTP"), labels="app: other"), *base, general,
                            selected))
            status, _ = await status_and_up(f"http://{BIND}/", "-H", f"Host: {WEB}")
            assert status == 503  # the general rule (no v2) applies to app=other


async def test_service_entry_static_subsets_routed_by_header() -> None:
    async with upstreams("blue", "green", "green2") as (ups, port):
        se = f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: payments, namespace: {NS}}}
spec:
  hosts: [payments.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  endpoints:
  - {{address: {addr(ups, "blue")}, labels: {{color: blue}}}}
  - {{address: {addr(ups, "green")}, labels: {{color: green}}}}
  - {{address: {addr(ups, "green2")}, labels: {{color: green}}}}
"""
        rule = dr("payments", NS, "payments.example.com", """\
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - {name: blue, labels: {color: blue}}
  - {name: green, labels: {color: green}}
""")
        vs = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: payments, namespace: {NS}}}
spec:
  hosts: [payments.example.com]
  http:
  - match: [{{headers: {{x-canary: {{exact: "1"}}}}}}]
    route: [{{destination: {{host: payments.example.com, subset: green}}}}]
  - route: [{{destination: {{host: payments.example.com, subset: blue}}}}]
"""
        with running(join(sidecar((80, "HTTP")), se, rule, vs)):
            url = f"http://{BIND}/"
            plain = await loop_curl(url, 10, "-H", "Host: payments.example.com")
            canary = await loop_curl(url, 10, "-H", "Host: payments.example.com",
                                     "-H", "x-canary: 1")
    assert set(plain) == {"blue"}, plain
    assert Counter(canary) == Counter({"green": 5, "green2": 5}), canary


# --- consistent hash --------------------------------------------------------------------------


def hashed(ups: dict[str, Upstream], port: int, chash: str) -> str:
    rule = dr("web", BACKEND, WEB, f"  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n"
              f"{chash}")
    return join(sidecar((80, "HTTP")), web_service(), entries(ups, port), rule)


NAMES = tuple(f"e{i}" for i in range(4))


@pytest.mark.parametrize("chash", [
    "        httpQueryParameterName: user\n",
    "        httpQueryParameterName: user\n        ringHash: {minimumRingSize: 4096}\n",
    "        httpQueryParameterName: user\n        maglev: {tableSize: 251}\n",
])
async def test_query_parameter_hash_keeps_each_user_on_one_endpoint(chash: str) -> None:
    async with upstreams(*NAMES) as (ups, port):
        with running(hashed(ups, port, chash)):
            per_user = {}
            for u in range(16):
                seen = await loop_curl(f"http://{BIND}/p?a=1&user=u{u}&b=2", 4,
                                       "-H", f"Host: {WEB}")
                per_user[u] = seen
    for seen in per_user.values():
        assert len(set(seen)) == 1, per_user
    # 16 users all on one of 4 endpoints: p = 4 * 4**-16.
    assert len({s[0] for s in per_user.values()}) >= 2, per_user


async def test_source_ip_hash_keeps_each_client_address_on_one_endpoint() -> None:
    async with upstreams(*NAMES) as (ups, port):
        cfg = hashed(ups, port, "        useSourceIp: true\n        maglev: {tableSize: 65537}\n")
        with running(cfg):
            per_src = {}
            for i in range(16):
                src = f"127.0.92.{100 + i}"
                per_src[src] = await loop_curl(f"http://{BIND}/?user={i}", 4,
                                               "--interface", src, "-H", f"Host: {WEB}")
                # A second curl (new connection, new source port) from the same address.
                per_src[src] += await loop_curl(f"http://{BIND}/", 1,
                                                "--interface", src, "-H", f"Host: {WEB}")
    for seen in per_src.values():
        assert len(set(seen)) == 1, per_src
    assert len({s[0] for s in per_src.values()}) >= 2, per_src


async def test_ring_hash_removing_an_endpoint_moves_only_its_keys() -> None:
    async with upstreams(*NAMES) as (ups, port):
        chash = "        httpHeaderName: x-user\n        ringHash: {minimumRingSize: 2048}\n"
        with running(hashed(ups, port, chash)) as mesh:

            async def owners() -> dict[int, str]:
                out = {}
                for u in range(40):
                    seen = await loop_curl(f"http://{BIND}/", 1, "-H", f"Host: {WEB}",
                                           "-H", f"x-user: user-{u}")
                    out[u] = seen[0]
                return out

            before = await owners()
            fewer = {k: v for k, v in ups.items() if k != "e3"}
            mesh.apply(join(sidecar((80, "HTTP")), web_service(), entries(fewer, port),
                            dr("web", BACKEND, WEB, "  trafficPolicy:\n    loadBalancer:\n"
                               f"      consistentHash:\n{chash}")))
            after = await owners()
    moved = [u for u in before if before[u] != after[u]]
    assert all(before[u] == "e3" for u in moved), (before, after)
    assert "e3" not in after.values()


# --- locality ---------------------------------------------------------------------------------


LOCALITY_RULE = """\
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 30s}
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        enabled: true
        failover:
        - {from: us-east, to: eu-west}
"""


def endpoints_doc(ready: dict[str, bool], ups: dict[str, Upstream], port: int) -> str:
    """Endpoints of backend/web pointing at the WorkloadEntries (targetRef gives locality)."""
    def item(name: str) -> str:
        return (f"    - {{ip: {addr(ups, name)}, targetRef: {{kind: WorkloadEntry, "
                f"namespace: {BACKEND}, name: web-{name}}}}}\n")
    good = "".join(item(n) for n, r in ready.items() if r)
    bad = "".join(item(n) for n, r in ready.items() if not r)
    good = "  addresses:\n" + good if good else ""
    bad = "  notReadyAddresses:\n" + bad if bad else ""
    return f"""\
apiVersion: v1
kind: Endpoints
metadata: {{name: web, namespace: {BACKEND}}}
subsets:
- ports: [{{name: http, port: {port}}}]
{good}{bad}"""


LOCALITIES = {"local": "us-east/z1/s1", "zone2": "us-east/z2/s1", "eu": "eu-west/z1/s1",
              "ap": "ap-south/z1/s1"}


def locality_mesh(ups: dict[str, Upstream], port: int, ready: dict[str, bool],
                  rule: str = LOCALITY_RULE) -> str:
    return join(sidecar((80, "HTTP"), labels="app: sleep, istio-locality: us-east.z1.s1"),
                web_service(), entries(ups, port, locality=LOCALITIES),
                endpoints_doc(ready, ups, port), dr("web", BACKEND, WEB, rule))


async def test_locality_failover_follows_readiness_and_comes_back() -> None:
    async with upstreams(*LOCALITIES) as (ups, port):
        all_ready = dict.fromkeys(LOCALITIES, True)
        url = f"http://{BIND}/"
        with running(locality_mesh(ups, port, all_ready)) as mesh:
            local = await loop_curl(url, 20, "-H", f"Host: {WEB}")
            mesh.apply(locality_mesh(ups, port, {**all_ready, "local": False}))
            same_region = await loop_curl(url, 20, "-H", f"Host: {WEB}")
            mesh.apply(locality_mesh(ups, port, {**all_ready, "local": False, "zone2": False}))
            failover = await loop_curl(url, 20, "-H", f"Host: {WEB}")
            mesh.apply(locality_mesh(ups, port, all_ready))
            back = await loop_curl(url, 20, "-H", f"Host: {WEB}")
    assert set(local) == {"local"}, local
    assert set(same_region) == {"zone2"}, same_region
    assert set(failover) == {"eu"}, failover  # the failover region, never ap-south
    assert set(back) == {"local"}, back


async def test_endpoint_slice_not_ready_local_endpoint_fails_over() -> None:
    async with upstreams(*LOCALITIES) as (ups, port):

        def mesh_with(local_ready: bool) -> str:
            eps = "".join(
                f"""\
- addresses: [{addr(ups, n)}]
  conditions: {{ready: {str(local_ready or n != "local").lower()}}}
  targetRef: {{kind: WorkloadEntry, namespace: {BACKEND}, name: web-{n}}}
""" for n in ("local", "zone2"))
            slice_doc = f"""\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: {BACKEND}
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:
{eps}"""
            return join(sidecar((80, "HTTP"), labels="app: sleep, istio-locality: us-east.z1.s1"),
                        web_service(), entries(ups, port, locality=LOCALITIES), slice_doc,
                        dr("web", BACKEND, WEB, LOCALITY_RULE))

        url = f"http://{BIND}/"
        with running(mesh_with(True)) as mesh:
            before = await loop_curl(url, 10, "-H", f"Host: {WEB}")
            mesh.apply(mesh_with(False))
            after = await loop_curl(url, 10, "-H", f"Host: {WEB}")
            mesh.apply(mesh_with(True))
            back = await loop_curl(url, 10, "-H", f"Host: {WEB}")
    assert set(before) == {"local"} and set(after) == {"zone2"} and set(back) == {"local"}, (
        before, after, back)


async def test_locality_distribute_weights() -> None:
    rule = """\
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        enabled: true
        distribute:
        - from: us-east/z1/*
          to: {"us-east/z1/*": 70, "eu-west/*": 30}
"""
    async with upstreams(*LOCALITIES) as (ups, port):
        ready = dict.fromkeys(LOCALITIES, True)
        n = 400
        with running(locality_mesh(ups, port, ready, rule)):
            seen = Counter(await loop_curl(f"http://{BIND}/", n, "-H", f"Host: {WEB}"))
    assert set(seen) <= {"local", "eu"}, seen
    assert within(seen["local"], n, 0.7), seen


# --- connection pool --------------------------------------------------------------------------


def pool_rule(http_settings: str = "", tcp_settings: str = "") -> str:
    body = "  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    connectionPool:\n"
    if tcp_settings:
        body += f"      tcp: {{{tcp_settings}}}\n"
    if http_settings:
        body += f"      http: {{{http_settings}}}\n"
    return dr("web", BACKEND, WEB, body)


async def held_upstream(release: asyncio.Event) -> Upstream:
    """An upstream on 127.0.92.10 whose every answer waits until `release` is set."""

    def slow(req: Request, t: asyncio.Transport) -> object:
        async def answer() -> None:
            await release.wait()
            t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-up: slow\r\n\r\nok")
        return answer()

    up = Upstream(slow)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    up.server = await loop.create_server(lambda: _UpstreamConn(up), "127.0.92.10", 0)
    up.port = up.server.sockets[0].getsockname()[1]
    return up


async def test_http2_max_requests_overflow_is_503_uo() -> None:
    release = asyncio.Event()
    up = await held_upstream(release)
    ups = {"slow": up}
    try:
        cfg = join(sidecar((80, "HTTP")), web_service(), entries(ups, up.port),
                   pool_rule("http2MaxRequests: 1"))
        with running(cfg) as mesh:
            first = asyncio.ensure_future(status_and_up(f"http://{BIND}/a", "-H", f"Host: {WEB}"))
            for _ in range(100):
                if up.requests:
                    break
                await asyncio.sleep(0.02)
            _, out, _ = await curl("-s", "-D", "-", f"http://{BIND}/b", "-H", f"Host: {WEB}")
            release.set()
            assert await first == (200, "slow")
            log = mesh.proc.wait_log(" UO ", stream="stdout")
    finally:
        up.close()
    assert out.startswith(b"HTTP/1.1 503"), out
    assert out.endswith(b"reset reason: overflow"), out
    assert '"GET /b HTTP/1.1" 503 UO' in log, log


@contextlib.contextmanager
def blackhole(host: str) -> Iterator[int]:
    """A listening socket that never accepts, its backlog filled: new SYNs go unanswered."""
    lsock = socket.socket()
    lsock.bind((host, 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((host, port))
            fillers.append(s)
        yield port
    finally:
        for s in fillers:
            s.close()
        lsock.close()


async def test_connect_timeout_against_a_blackholed_endpoint() -> None:
    with blackhole("127.0.92.50") as port:
        we = f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-hole, namespace: {BACKEND}}}
spec:
  address: 127.0.92.50
  labels: {{app: web}}
  ports: {{http: {port}}}
"""
        cfg = join(sidecar((80, "HTTP")), web_service(), we,
                   pool_rule(tcp_settings="connectTimeout: 300ms"))
        with running(cfg) as mesh:
            t0 = time.monotonic()
            status, body = await http(f"http://{BIND}/", "-H", f"Host: {WEB}")
            took = time.monotonic() - t0
            log = mesh.proc.wait_log(" UF ", stream="stdout")
    assert status == 503, body
    assert 0.25 <= took < 2.0, took
    assert "connection timeout" in body or "connection failure" in body, body
    assert '"GET / HTTP/1.1" 503 UF' in log, log


async def test_max_requests_per_connection_opens_new_upstream_connections() -> None:
    async with upstreams("only") as (ups, port):
        cfg = join(sidecar((80, "HTTP")), web_service(), entries(ups, port),
                   pool_rule("maxRequestsPerConnection: 2"))
        with running(cfg):
            seen = await loop_curl(f"http://{BIND}/", 6, "-H", f"Host: {WEB}")
        assert seen == ["only"] * 6
        assert ups["only"].accepts == 3, ups["only"].accepts


def h2_workload_entry(port: int) -> str:
    """The web workload as an h2c server on 127.0.92.10:`port`."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-h2, namespace: {BACKEND}}}
spec:
  address: 127.0.92.10
  labels: {{app: web}}
  ports: {{http: {port}}}
"""


async def test_h2_upgrade_policy_upgrade_speaks_h2c_to_the_upstream() -> None:
    server, port = await start_h2_upstream("127.0.92.10")
    try:
        we = h2_workload_entry(port)
        cfg = join(sidecar((80, "HTTP")), web_service(), we,
                   pool_rule("h2UpgradePolicy: UPGRADE"))
        with running(cfg):
            status, body = await http(f"http://{BIND}/up", "-H", f"Host: {WEB}")
    finally:
        server.close()
    assert status == 200 and body.startswith("h2 GET /up"), (status, body)


async def test_validate_reports_each_destination_rule_error_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(join(
        dr("two-keys", NS, "web", "  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n"
           "        httpHeaderName: x-user\n        useSourceIp: true\n"),
        dr("maglev", NS, "web", "  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n"
           "        useSourceIp: true\n        maglev: {tableSize: 1000}\n"),
        dr("dup", NS, "web", subsets("v1", "v2", "v1")),
    ))
    proc = await asyncio.create_subprocess_exec(
        str(Path(__file__).parents[2] / ".venv/bin/sidecar"), "validate", str(bad),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    text = err.decode()
    assert proc.returncode == 1, (out, err)
    assert f"{bad}:9: error: DestinationRule/shop/two-keys" in text, text
    assert "exactly one of" in text
    assert f"{bad}:21: error: DestinationRule/shop/maglev" in text and "prime" in text, text
    assert "DestinationRule/shop/dup: spec.subsets[2]: duplicate subset name 'v1'" in text, text


# --- big hash tables ---------------------------------------------------------------------------


@pytest.mark.parametrize("chash", [
    "        maglev: {tableSize: 4999999}\n",  # a prime below Envoy's limit: Istio accepts it
    "        ringHash: {minimumRingSize: 8388608}\n",
])
async def test_large_hash_tables_do_not_stall_the_proxy(chash: str) -> None:
    """Envoy builds such tables in milliseconds; a reload here must not freeze traffic."""
    async with upstreams(*NAMES) as (ups, port):
        plain = join(sidecar((80, "HTTP")), web_service(), entries(ups, port))
        rule = dr("web", BACKEND, WEB, "  trafficPolicy:\n    loadBalancer:\n"
                  f"      consistentHash:\n        httpHeaderName: x-user\n{chash}"
                  + subsets(*NAMES[:3]))
        with running(plain) as mesh:
            t0 = time.monotonic()
            mesh.apply(join(plain, rule))
            seen = await loop_curl(f"http://{BIND}/", 5, "-H", f"Host: {WEB}",
                                   "-H", "x-user: ann")
            took = time.monotonic() - t0
    assert len(set(seen)) == 1, seen
    assert took < 2.5, took


# --- more clients ----------------------------------------------------------------------------


async def test_source_ip_hash_with_httpx_http2_clients() -> None:
    async with upstreams(*NAMES) as (ups, port):
        cfg = hashed(ups, port, "        useSourceIp: true\n")
        with running(cfg):
            per_src: dict[str, list[str]] = {}
            for i in range(8):
                src = f"127.0.92.{100 + i}"
                transport = httpx.AsyncHTTPTransport(local_address=src, http1=False, http2=True)
                async with httpx.AsyncClient(transport=transport, timeout=5) as client:
                    rs = await asyncio.gather(*(client.get(f"http://{BIND}/", headers={"host": WEB})
                                                for _ in range(6)))
                assert {r.http_version for r in rs} == {"HTTP/2"}
                per_src[src] = [r.headers["x-up"] for r in rs]
    for seen in per_src.values():
        assert len(set(seen)) == 1, per_src
    assert len({s[0] for s in per_src.values()}) >= 2, per_src


async def test_tcp_connect_timeout_closes_the_client_connection() -> None:
    with blackhole("127.0.92.51") as port:
        we = f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: db-hole, namespace: {BACKEND}}}
spec:
  address: 127.0.92.51
  labels: {{app: db}}
  ports: {{tcp: {port}}}
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: {BACKEND}}}
spec:
  selector: {{app: db}}
  ports: [{{name: tcp, port: 5432}}]
"""
        rule = dr("db", BACKEND, f"db.{BACKEND}.{DOMAIN}",
                  "  trafficPolicy:\n    connectionPool:\n      tcp: {connectTimeout: 300ms}\n")
        with running(join(sidecar((5432, "TCP")), we, rule)) as mesh:
            t0 = time.monotonic()
            r, w = await asyncio.open_connection(BIND, 5432)
            async with asyncio.timeout(5):
                data = await r.read()
            took = time.monotonic() - t0
            w.close()
            log = mesh.proc.wait_log(" UF ", stream="stdout")
    assert data == b"" and 0.25 < took < 2, took
    assert "outbound|5432||db.backend" in log, log


async def test_http_idle_timeout_closes_idle_upstream_connections() -> None:
    async with upstreams("only") as (ups, port):
        cfg = join(sidecar((80, "HTTP")), web_service(), entries(ups, port),
                   pool_rule("idleTimeout: 300ms"))
        with running(cfg):
            assert await loop_curl(f"http://{BIND}/", 2, "-H", f"Host: {WEB}") == ["only"] * 2
            conn = ups["only"].conns[0]
            assert conn.transport is not None
            for _ in range(100):
                if conn.transport.is_closing():
                    break
                await asyncio.sleep(0.02)
            closed = conn.transport.is_closing()
            again = await loop_curl(f"http://{BIND}/", 1, "-H", f"Host: {WEB}")
    assert closed and again == ["only"] and ups["only"].accepts == 2


async def test_use_client_protocol_keeps_http2_to_an_h2c_upstream() -> None:
    server, port = await start_h2_upstream("127.0.92.10")
    try:
        we = h2_workload_entry(port)
        cfg = join(sidecar((80, "HTTP")), web_service(), we, pool_rule("useClientProtocol: true"))
        with running(cfg):
            transport = httpx.AsyncHTTPTransport(http1=False, http2=True)
            async with httpx.AsyncClient(transport=transport, timeout=5) as client:
                r = await client.get(f"http://{BIND}/x", headers={"host": WEB})
    finally:
        server.close()
    assert r.status_code == 200 and r.text.startswith("h2 GET /x"), (r.status_code, r.text)


async def test_http2_max_requests_counts_multiplexed_streams() -> None:
    release = asyncio.Event()
    up = await held_upstream(release)
    try:
        cfg = join(sidecar((80, "HTTP")), web_service(), entries({"slow": up}, up.port),
                   pool_rule("http2MaxRequests: 2"))
        with running(cfg):
            transport = httpx.AsyncHTTPTransport(http1=False, http2=True)
            async with httpx.AsyncClient(transport=transport, timeout=5) as client:
                calls = [asyncio.ensure_future(client.get(f"http://{BIND}/{i}",
                                                          headers={"host": WEB}))
                         for i in range(5)]
                for _ in range(100):
                    if len(up.requests) >= 2 and sum(c.done() for c in calls) >= 3:
                        break
                    await asyncio.sleep(0.02)
                release.set()
                rs = await asyncio.gather(*calls)
    finally:
        up.close()
    assert sorted(r.status_code for r in rs) == [200, 200, 503, 503, 503], rs
    assert len(up.requests) == 2
