"""End to end over IPv6 only: ip6tables capture rules in a pod namespace, `sidecar run --ipv6`.

The same scenario as test_capture_e2e.py with ULA addresses and no IPv4 between the namespaces:
the pod is fd00:5ce:1::1 and the peer fd00:5ce:1::2 (with fd00:5ce:2::77 on its lo, outside the
mesh); the peer Service's ClusterIP fd00:96::10 (`ipFamilies: [IPv6]`) belongs to nobody. The
rules come from `sidecar iptables apply --ipv6`, which also puts ::6 on lo, the source the
sidecar's inbound passthrough connects from. Addresses are added with `nodad`, so none is
"tentative" when the test starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.capture.harness import (
    APP_UID,
    SIDECAR,
    Mesh,
    Topology,
    build_mesh,
    curl,
    raw_client,
    server_lines,
    services_yaml,
    start_sidecar,
)

pytestmark = [pytest.mark.capture, pytest.mark.timeout(120)]

V6 = Topology(
    pod_ip="fd00:5ce:1::1",
    peer_ip="fd00:5ce:1::2",
    outside_ip="fd00:5ce:2::77",
    cluster_ip="fd00:96::10",
    app_cluster_ip="fd00:96::20",
    service_range="fd00:96::/64",
    prefix_len=64,
)
CAPTURE_FLAGS = ["-b", "*", "-d", "15090,15021,15020", "-i", "*", "--ipv6"]


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    with build_mesh(V6) as m:
        yield m


def test_ipv6_traffic_is_captured_and_proxied(mesh: Mesh) -> None:
    applied = mesh.pod.run([str(SIDECAR), "iptables", "apply", *CAPTURE_FLAGS], check=False)
    assert applied.returncode == 0, applied.stderr
    assert "IPv6" in applied.stderr
    lo = mesh.pod.run(["ip", "-6", "addr", "show", "dev", "lo"]).stdout
    assert "::6/128" in lo, lo
    tentative = mesh.pod.run(["ip", "-6", "-o", "addr", "show", "tentative"]).stdout
    assert V6.pod_ip not in tentative and "::6/" not in tentative, tentative

    # captured but nobody on 15001 yet: the ClusterIP is unreachable, so the capture is live
    vip_url = f"http://[{V6.cluster_ip}]:80"
    before = curl(mesh.pod, f"{vip_url}/", APP_UID)
    assert before.returncode != 0, before.stdout

    start_sidecar(mesh, services_yaml(V6), "--ipv6")
    log = mesh.log

    # (a) outbound: the app calls the Service's IPv6 ClusterIP; the sidecar sends it to the peer
    out = curl(mesh.pod, f"{vip_url}/outbound", APP_UID)
    assert out.returncode == 0, f"{out.stderr}\n{log.read_text()}"
    body = json.loads(out.stdout)
    assert body["server"] == "peer" and body["path"] == "/outbound", f"{body}\n{log.read_text()}"
    assert body["client"][0] == V6.pod_ip

    # (b) inbound: the peer calls the pod's IPv6 address; delivered to the app from ::6
    inbound = curl(mesh.peer, f"http://[{V6.pod_ip}]:8080/inbound")
    assert inbound.returncode == 0, f"{inbound.stderr}\n{log.read_text()}"
    body = json.loads(inbound.stdout)
    assert body["server"] == "app" and body["path"] == "/inbound"
    assert body["client"][0] == "::6"

    # (c) outside the mesh: raw TCP to an unknown IPv6 address passes through (ALLOW_ANY)
    raw = raw_client(mesh.pod, V6.outside_ip, 9000)
    assert raw.returncode == 0, f"{raw.stderr}\n{log.read_text()}"
    seen = json.loads(raw.stdout)
    assert seen["echo"] == "ping through the mesh"
    host, port = seen["seen"].split()
    assert host == V6.pod_ip
    assert int(port) != seen["local_port"], "the echo server saw the app's own socket: not proxied"
    assert server_lines(mesh.outside_echo, 1.0) == [f"CONN {host} {port}"]
