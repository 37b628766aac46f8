"""End to end: REGISTRY_ONLY refuses what the mesh does not know, through real capture rules.

The scenario of test_capture_e2e.py (IPv4): the peer Service's ClusterIP is reachable only
through the sidecar, and the peer also holds an address outside the mesh (10.201.0.77) with a TCP
echo server on 9000 and an HTTP server on 80, which ALLOW_ANY would let the app reach. Here the
policy is REGISTRY_ONLY, set either by `--outbound-traffic-policy` or by a Sidecar resource
selecting the pod (with the flag left at ALLOW_ANY, so the Sidecar's value must win): the known
Service still answers; raw TCP to the outside address is closed by the sidecar before the echo
server ever sees a connection (BlackHoleCluster); HTTP to an unknown host on port 80, a port the
mesh serves HTTP on, gets Envoy's 404 with the NR flag in the access log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

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
    raw_client,
    server_lines,
    services_yaml,
    sidecar_file,
    start_sidecar,
)

pytestmark = [pytest.mark.capture, pytest.mark.timeout(120)]

SIDECAR_RESOURCE = """\
---
apiVersion: networking.istio.io/v1beta1
kind: Sidecar
metadata: {name: app, namespace: default}
spec:
  workloadSelector: {labels: {app: app}}
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""
REFUSE_WITHIN_S = 3.0  # the raw client's own timeout is 5 s: a refusal is much quicker
NO_CONNECTION_WAIT_S = 1.0
PEER_CLUSTER = "outbound|80||peer.default.svc.cluster.local"

VARIANTS = {
    "flag": (services_yaml(V4), ["--outbound-traffic-policy", "REGISTRY_ONLY"]),
    "sidecar-resource": (
        services_yaml(V4) + SIDECAR_RESOURCE,
        ["--outbound-traffic-policy", "ALLOW_ANY"],
    ),
}


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    with build_mesh(V4) as m:
        yield m


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_registry_only_refuses_unknown_destinations(mesh: Mesh, variant: str) -> None:
    opts = CaptureOptions.from_flags(
        inbound_ports="*", inbound_ports_exclude="15090,15021,15020", outbound_cidrs="*"
    )
    apply(opts, Runner.in_netns(mesh.pod.name))
    access_log = sidecar_file(mesh, "access.log")
    config, flags = VARIANTS[variant]
    start_sidecar(mesh, config, *flags, "--access-log", str(access_log),
                  "--access-log-format", "json")
    log = mesh.log

    # the known Service still works
    known = curl(mesh.pod, f"http://{V4.cluster_ip}:80/known", APP_UID)
    assert known.returncode == 0, f"{known.stderr}\n{log.read_text()}"
    body = json.loads(known.stdout)
    assert body["server"] == "peer" and body["path"] == "/known"
    access_log_entry(access_log, path="/known", response_code=200, upstream_cluster=PEER_CLUSTER)

    # raw TCP to an address outside the mesh: closed by the sidecar, never reaches the peer
    started = time.monotonic()
    raw = raw_client(mesh.pod, V4.outside_ip, 9000)
    elapsed = time.monotonic() - started
    assert "ping through the mesh" not in raw.stdout, raw.stdout
    assert elapsed < REFUSE_WITHIN_S, f"not refused but timed out: {raw.stderr}"
    assert server_lines(mesh.outside_echo, NO_CONNECTION_WAIT_S) == []
    access_log_entry(access_log, upstream_cluster="BlackHoleCluster",
                     downstream_local_address=f"{V4.outside_ip}:9000")
    # the echo server does report connections that reach it
    direct = raw_client(mesh.peer, V4.outside_ip, 9000, user=None)
    assert direct.returncode == 0, direct.stderr
    assert len(server_lines(mesh.outside_echo, NO_CONNECTION_WAIT_S)) == 1

    # HTTP to an unknown host on the mesh's HTTP port 80: 404 NR (ALLOW_ANY would reach it)
    status = curl(mesh.pod, f"http://{V4.outside_ip}:80/unknown", APP_UID,
                  "-o", "/dev/null", "-w", "%{http_code}")
    assert status.stdout == "404", f"{status.stdout} {status.stderr}\n{log.read_text()}"
    entry = access_log_entry(access_log, path="/unknown")
    assert entry["response_code"] == 404 and entry["response_flags"] == "NR", entry
    assert entry["authority"] == V4.outside_ip
