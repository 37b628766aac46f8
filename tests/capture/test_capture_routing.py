"""Traffic management on captured traffic, as a pod's app sees it.

One mesh for the module: the pod (the app as uid 1000, the sidecar as uid 1337, Istio's capture
rules) and the peer, which holds two workloads of one app: v1 on 10.200.7.3 (its veth address)
and v2 on 10.200.8.4 (a second address on its lo, routed from the pod through the veth like the
outside address). Each answers HTTP on 8100 with its version. Every Service below selects both
WorkloadEntries; the app calls a Service by its ClusterIP (which belongs to nobody) or by name
(curl --resolve, standing in for cluster DNS), the OUTPUT capture hands the connection to the
sidecar, which recovers the ClusterIP by SO_ORIGINAL_DST and applies the VirtualService and
DestinationRule. The response body says which version answered; the JSON access log says which
cluster (`outbound|PORT|SUBSET|HOST`) the sidecar chose and which response flags it set.

Distribution bounds are 5 sigma of the binomial: a broken split (all to one side, or reversed)
fails, a fair one passes except with negligible probability.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.capture.iptables import Runner, apply
from sidecar.capture.options import CaptureOptions
from tests.capture.harness import (
    APP_UID,
    V4,
    Mesh,
    access_log_entry,
    build_mesh,
    curl,
    sidecar_file,
    start_server,
    start_sidecar,
)

pytestmark = [pytest.mark.capture, pytest.mark.timeout(120)]

V1_IP, V2_IP = V4.peer_ip, "10.200.8.4"
VERSION_IPS = {"v1": V1_IP, "v2": V2_IP}
WORK_PORT = 8100
MAIN_VIP, SPLIT_VIP, TCP_VIP, STRICT_VIP = "10.96.7.10", "10.96.7.11", "10.96.7.12", "10.96.7.13"
TCP_PORT = 81
SPLIT_REQUESTS = 1000
TCP_CONNECTIONS = 400
HEADLESS_REQUESTS = 20
SIGMAS = 5.0
DOMAIN = "default.svc.cluster.local"


def _service(name: str, cluster_ip: str, port_name: str, port: int) -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {cluster_ip}
  selector: {{app: work}}
  ports:
  - {{name: {port_name}, port: {port}, targetPort: {WORK_PORT}}}
"""


def _subsets(host: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: {host}, namespace: default}}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


VIRTUAL_SERVICES = """\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}, weight: 100}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: canary, namespace: default}
spec:
  hosts: [canary]
  http:
  - route:
    - {destination: {host: canary, subset: v1}, weight: 70}
    - {destination: {host: canary, subset: v2}, weight: 30}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: rawtcp, namespace: default}
spec:
  hosts: [rawtcp]
  tcp:
  - match: [{port: 81}]
    route:
    - {destination: {host: rawtcp, subset: v1}, weight: 50}
    - {destination: {host: rawtcp, subset: v2}, weight: 50}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: strict, namespace: default}
spec:
  hosts: [strict]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: strict, subset: v1}}]
"""

MESH_YAML = "---\n".join(
    [
        _service("reviews", MAIN_VIP, "http", 80),
        _service("canary", SPLIT_VIP, "http", 80),
        _service("rawtcp", TCP_VIP, "tcp-web", TCP_PORT),
        _service("strict", STRICT_VIP, "http", 80),
        f"""\
apiVersion: v1
kind: Service
metadata: {{name: headless, namespace: default}}
spec:
  clusterIP: None
  selector: {{app: work}}
  ports:
  - {{name: http, port: {WORK_PORT}, targetPort: {WORK_PORT}}}
""",
        *(
            f"""\
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {{name: work-{version}, namespace: default}}
spec:
  address: {ip}
  labels: {{app: work, version: {version}}}
"""
            for version, ip in VERSION_IPS.items()
        ),
        *(_subsets(host) for host in ("reviews", "canary", "rawtcp", "strict")),
        VIRTUAL_SERVICES,
    ]
)

# One keep-alive HTTP/1.1 connection, N requests; prints {"server name": count}.
# argv: address port host-header path count
KEEPALIVE_CLIENT = """\
import collections, http.client, json, sys
addr, port, host, path, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], \
    int(sys.argv[5])
conn = http.client.HTTPConnection(addr, port, timeout=5)
seen = collections.Counter()
for _ in range(count):
    conn.request("GET", path, headers={"Host": host})
    resp = conn.getresponse()
    body = resp.read()
    seen[json.loads(body)["server"] if resp.status == 200 else str(resp.status)] += 1
print(json.dumps(seen))
"""

# N TCP connections, each carrying one HTTP/1.0 request: the bytes are opaque to a TCP route.
# argv: address port count; prints {"server name": count}.
CONNECTIONS_CLIENT = """\
import collections, json, socket, sys
addr, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen = collections.Counter()
for _ in range(count):
    with socket.create_connection((addr, port), timeout=5) as s:
        s.sendall(b"GET /tcp HTTP/1.0\\r\\nHost: rawtcp\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\\r\\n\\r\\n")
    seen[json.loads(body)["server"] if b" 200 " in head.split(b"\\r\\n")[0] else "bad"] += 1
print(json.dumps(seen))
"""


class Routed:
    """The module's running mesh: the namespaces, and the sidecar's JSON access log."""

    def __init__(self, mesh: Mesh, access_log: Path) -> None:
        self.mesh = mesh
        self.access_log = access_log

    def get(self, url: str, *extra: str) -> str:
        """curl from the app (uid 1000): the body; fails the test on a transport error."""
        done = curl(self.mesh.pod, url, APP_UID, *extra)
        assert done.returncode == 0, f"{done.stderr}\n{self.mesh.log.read_text()}"
        return done.stdout

    def server(self, url: str, *extra: str) -> str:
        """Which version answered `url`."""
        return str(json.loads(self.get(url, *extra))["server"])

    def script(self, script: str, *args: object) -> Counter[str]:
        """Run a client script in the pod as the app; its JSON tally."""
        done = self.mesh.pod.run(
            [sys.executable, "-c", script, *map(str, args)], check=False, user=APP_UID
        )
        assert done.returncode == 0, f"{done.stderr}\n{self.mesh.log.read_text()}"
        return Counter(json.loads(done.stdout))


def _add_peer_address(m: Mesh, address: str) -> None:
    """A second address on the peer's lo, routed from the pod through the veth."""
    m.peer.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"])
    m.pod.run(["ip", "route", "add", f"{address}/32", "via", V4.peer_ip])


@pytest.fixture(scope="module")
def routed() -> Iterator[Routed]:
    with build_mesh(V4) as m:
        _add_peer_address(m, V2_IP)
        for version, ip in VERSION_IPS.items():
            start_server(m.peer, "http", str(WORK_PORT), version, ip)
        opts = CaptureOptions.from_flags(
            inbound_ports="*", inbound_ports_exclude="15090,15021,15020", outbound_cidrs="*"
        )
        apply(opts, Runner.in_netns(m.pod.name))
        access_log = sidecar_file(m, "access.log")
        start_sidecar(m, MESH_YAML, "--access-log", str(access_log), "--access-log-format", "json")
        yield Routed(m, access_log)


def _within(count: int, total: int, p: float) -> bool:
    """Whether `count` of `total` is within SIGMAS standard deviations of a binomial(p)."""
    sigma = math.sqrt(total * p * (1 - p))
    return abs(count - total * p) <= SIGMAS * sigma


def test_header_match_by_cluster_ip_and_by_name(routed: Routed) -> None:
    jason = ("-H", "end-user: jason")
    assert routed.server(f"http://{MAIN_VIP}/by-ip") == "v1"
    assert routed.server(f"http://{MAIN_VIP}/by-ip-jason", *jason) == "v2"
    for name in ("reviews", f"reviews.{DOMAIN}"):
        resolve = ("--resolve", f"{name}:80:{MAIN_VIP}")
        assert routed.server(f"http://{name}/by-name", *resolve) == "v1"
        assert routed.server(f"http://{name}/by-name-jason", *resolve, *jason) == "v2"
    for path, version in (("/by-ip", "v1"), ("/by-ip-jason", "v2"), ("/by-name-jason", "v2")):
        entry = access_log_entry(routed.access_log, path=path)
        assert entry["response_code"] == 200, entry
        assert entry["upstream_cluster"] == f"outbound|80|{version}|reviews.{DOMAIN}", entry
        assert entry["upstream_host"] == f"{VERSION_IPS[version]}:{WORK_PORT}", entry
        assert entry["downstream_local_address"] == f"{MAIN_VIP}:80", entry


def test_weighted_split_70_30(routed: Routed) -> None:
    seen = routed.script(KEEPALIVE_CLIENT, SPLIT_VIP, 80, "canary", "/split", SPLIT_REQUESTS)
    assert set(seen) <= {"v1", "v2"} and sum(seen.values()) == SPLIT_REQUESTS, seen
    assert _within(seen["v1"], SPLIT_REQUESTS, 0.7), seen
    access_log_entry(
        routed.access_log, path="/split", upstream_cluster=f"outbound|80|v2|canary.{DOMAIN}"
    )


def test_headless_service_goes_to_the_endpoint_dialled(routed: Routed) -> None:
    name = f"headless.{DOMAIN}"
    for version, ip in VERSION_IPS.items():
        # by name, as cluster DNS answers a headless name with the endpoints' addresses
        seen = routed.script(
            KEEPALIVE_CLIENT,
            ip,
            WORK_PORT,
            f"{name}:{WORK_PORT}",
            f"/headless-{version}",
            HEADLESS_REQUESTS,
        )
        assert seen == {version: HEADLESS_REQUESTS}, seen
        entry = access_log_entry(routed.access_log, path=f"/headless-{version}")
        assert entry["upstream_cluster"] == f"outbound|{WORK_PORT}||{name}", entry
        assert entry["upstream_host"] == f"{ip}:{WORK_PORT}", entry
        # by address: Host is the IP, so the route is Istio's allow_any; still that endpoint
        url = f"http://{ip}:{WORK_PORT}/headless-ip-{version}"
        assert routed.server(url) == version
        entry = access_log_entry(routed.access_log, path=f"/headless-ip-{version}")
        assert entry["upstream_host"] == f"{ip}:{WORK_PORT}", entry
        assert entry["downstream_local_address"] == f"{ip}:{WORK_PORT}", entry


def test_tcp_route_splits_connections(routed: Routed) -> None:
    seen = routed.script(CONNECTIONS_CLIENT, TCP_VIP, TCP_PORT, TCP_CONNECTIONS)
    assert set(seen) <= {"v1", "v2"} and sum(seen.values()) == TCP_CONNECTIONS, seen
    assert _within(seen["v1"], TCP_CONNECTIONS, 0.5), seen
    for version in VERSION_IPS:
        entry = access_log_entry(
            routed.access_log, upstream_cluster=f"outbound|{TCP_PORT}|{version}|rawtcp.{DOMAIN}"
        )
        assert entry["method"] is None and entry["path"] is None, entry  # relayed as TCP
        assert entry["downstream_local_address"] == f"{TCP_VIP}:{TCP_PORT}", entry


def test_no_matching_route_on_a_known_host_is_404_nr(routed: Routed) -> None:
    assert routed.server(f"http://{STRICT_VIP}/api/ok") == "v1"
    status = routed.get(f"http://{STRICT_VIP}/elsewhere", "-o", "/dev/null", "-w", "%{http_code}")
    assert status == "404"
    entry = access_log_entry(routed.access_log, path="/elsewhere")
    assert entry["response_code"] == 404 and entry["response_flags"] == "NR", entry
    assert entry["upstream_host"] is None, entry
