"""End to end: Istio's capture rules in a pod namespace send real traffic through `sidecar run`.

Two namespaces joined by a veth pair, nothing else: "pod" (10.200.7.2: an app on 8080 and the
sidecar, run as uid 1337) and "peer" (10.200.7.3: the service endpoint on 8000; 10.201.0.77 on
its lo: a TCP echo server outside the mesh). The Service's ClusterIP 10.96.7.10 belongs to
nobody; only the sidecar, reached through the OUTPUT capture, can turn it into the peer's address.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from sidecar.capture.iptables import Runner, apply
from sidecar.capture.options import CaptureOptions
from tests.capture.harness import (
    APP_UID,
    RAW_CLIENT,
    V4,
    Mesh,
    build_mesh,
    curl,
    services_yaml,
    start_sidecar,
)

pytestmark = [pytest.mark.capture, pytest.mark.timeout(120)]

POD_IP, OUTSIDE_IP, CLUSTER_IP = V4.pod_ip, V4.outside_ip, V4.cluster_ip


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    with build_mesh(V4) as m:
        yield m


def test_traffic_is_captured_and_proxied(mesh: Mesh) -> None:
    opts = CaptureOptions.from_flags(
        inbound_ports="*", inbound_ports_exclude="15090,15021,15020", outbound_cidrs="*"
    )
    apply(opts, Runner.in_netns(mesh.pod.name))

    # captured but nobody on 15001 yet: the ClusterIP is unreachable, so the capture is live
    before = curl(mesh.pod, f"http://{CLUSTER_IP}:80/", user=APP_UID)
    assert before.returncode != 0, before.stdout

    start_sidecar(mesh, services_yaml(V4))
    log = mesh.log

    # (a) outbound: the app calls the Service's ClusterIP; the sidecar sends it to the peer
    out = curl(mesh.pod, f"http://{CLUSTER_IP}:80/outbound", user=APP_UID)
    assert out.returncode == 0, f"{out.stderr}\n{log.read_text()}"
    body = json.loads(out.stdout)
    assert body["server"] == "peer" and body["path"] == "/outbound"
    assert body["client"][0] == POD_IP

    # (b) inbound: the peer calls the pod; the sidecar's inbound listener hands it to the app
    inbound = curl(mesh.peer, f"http://{POD_IP}:8080/inbound")
    assert inbound.returncode == 0, f"{inbound.stderr}\n{log.read_text()}"
    body = json.loads(inbound.stdout)
    assert body["server"] == "app" and body["path"] == "/inbound"
    assert body["client"][0] == "127.0.0.6"

    # (c) outside the mesh: raw TCP passes through the sidecar (ALLOW_ANY) to the real address
    raw = mesh.pod.run([sys.executable, "-c", RAW_CLIENT, OUTSIDE_IP, "9000"], check=False,
                       user=APP_UID)
    assert raw.returncode == 0, f"{raw.stderr}\n{log.read_text()}"
    seen = json.loads(raw.stdout)
    assert seen["echo"] == "ping through the mesh"
    host, port = seen["seen"].split()
    assert host == POD_IP
    assert int(port) != seen["local_port"], "the echo server saw the app's own socket: not proxied"
