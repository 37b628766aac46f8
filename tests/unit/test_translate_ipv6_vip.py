"""A Service with an IPv6 ClusterIP is reached by the Host headers clients send for it."""

from __future__ import annotations

import textwrap

import pytest

from sidecar.bootstrap import Bootstrap, OutboundPolicy
from sidecar.config.load import load_text
from sidecar.config.translate import translate
from sidecar.http.router import route_table

MESH = """\
apiVersion: v1
kind: Service
metadata: {name: peer, namespace: default}
spec:
  clusterIP: fd00:96::10
  ipFamilies: [IPv6]
  ports:
  - {name: http, port: 80, targetPort: 8000}
"""
PEER = "peer.default.svc.cluster.local:80"


@pytest.mark.parametrize(
    ("authority", "vhost"),
    [
        (b"[fd00:96::10]", PEER),  # curl http://[fd00:96::10]/ omits the default port
        (b"[fd00:96::10]:80", PEER),
        (b"[FD00:96::10]", PEER),
        (b"peer", PEER),
        (b"[fd00:96::11]", None),  # another address: not this service (REGISTRY_ONLY: 404 NR)
    ],
)
def test_ipv6_vip_host_selects_the_service(authority: bytes, vhost: str | None) -> None:
    boot = Bootstrap(
        pod_name="app-1", pod_namespace="default", outbound_policy=OutboundPolicy.REGISTRY_ONLY
    )
    snap = translate(load_text(textwrap.dedent(MESH), "mesh.yaml"), boot)
    found = route_table(snap.route_configs["80"]).virtual_host(authority)
    assert (found.vhost.name if found is not None else None) == vhost
