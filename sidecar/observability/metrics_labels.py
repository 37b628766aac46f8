"""Istio's standard metric labels: who the source and destination of a request are.

Theory of operation: label values are computed off the hot path, once per (direction, cluster,
upstream host, downstream peer IP) by `MetricsStore` (metrics.py), from what the snapshot knows:
- this proxy's own workload (`Snapshot.workload`);
- the chosen endpoint (`Endpoint`: labels, service account, "Kind/namespace/name") and its
  cluster's service (`Cluster.service`, FQDN, and `service_namespace`);
- the downstream peer, found by its IP in `Snapshot.peers` (the mesh's Pods and WorkloadEntries).

Outbound (reporter "source"): source = this workload, destination = the endpoint's workload and
the cluster's service. Inbound (reporter "destination"): destination = this workload and the
inbound cluster's service, source = the peer by IP, else "unknown".

Values follow Istio: workload name = the owning Deployment's name when the pod name says so
(`pod-template-hash`, or the generated `<name>-<hash>-<suffix>` form), else the object's name;
canonical service/revision from `service.istio.io/canonical-*`, `app.kubernetes.io/*`, `app` /
`version` labels (else the workload name / "latest"); app and version labels, else "unknown".
Principals are SPIFFE ids of verified peer certificates: there is no mTLS yet, so both are
"unknown" as Istio reports plaintext traffic, and `connection_security_policy` is "unknown" at
the source (it cannot know) and "none" at the destination.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sidecar.config.snapshot import (
    BLACKHOLE_CLUSTER,
    INBOUND_PASSTHROUGH_CLUSTER,
    PASSTHROUGH_CLUSTER,
    Cluster,
    Endpoint,
    Labels,
    Workload,
)

UNKNOWN = "unknown"

# The order of every series' label values (requests; TCP drops response_code and grpc status).
PEER_LABELS = (
    "workload",
    "workload_namespace",
    "principal",
    "app",
    "version",
    "canonical_service",
    "canonical_revision",
    "cluster",
)
SOURCE_LABELS = tuple(f"source_{n}" for n in PEER_LABELS)
DESTINATION_LABELS = tuple(f"destination_{n}" for n in PEER_LABELS)
SERVICE_LABELS = (
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
)
BASE_LABELS = ("reporter", *SOURCE_LABELS, *DESTINATION_LABELS, *SERVICE_LABELS,
               "connection_security_policy")  # fmt: skip
REQUEST_LABELS = (*BASE_LABELS, "request_protocol", "response_code", "grpc_response_status",
                  "response_flags")  # fmt: skip
TCP_LABELS = (*BASE_LABELS, "request_protocol", "response_flags")

# Kubernetes' generated names: <deployment>-<pod-template-hash>-<5 chars>, from this alphabet.
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
_GENERATED = re.compile(rf"^(.+)-{_SAFE}{{6,10}}-{_SAFE}{{5}}$")


@dataclass(frozen=True, slots=True)
class Peer:
    """One side of a request as the labels see it (a workload, or nothing known)."""

    name: str = ""  # the Pod / WorkloadEntry name; "" = unknown
    namespace: str = ""
    labels: Labels = frozenset()
    service_account: str = ""
    cluster: str = ""  # Istio's cluster id (bootstrap `cluster_id`) when known


_REVISION_KEYS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")


def _label(labels: Labels, *keys: str) -> str:
    found = dict(labels)
    for key in keys:
        value = found.get(key)
        if value:
            return value
    return ""


def workload_name(name: str, labels: Labels) -> str:
    """The workload a pod belongs to, as Istio names it (its Deployment's name when derivable)."""
    pod_hash = _label(labels, "pod-template-hash")
    if pod_hash and f"-{pod_hash}-" in name:
        return name[: name.rindex(f"-{pod_hash}-")]
    generated = _GENERATED.match(name)
    return generated.group(1) if generated else name


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """The identity Istio's certificates carry (used once peers are verified by mTLS)."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def peer_labels(peer: Peer) -> tuple[str, ...]:
    """Values for PEER_LABELS (principal "unknown": no verified identity without mTLS)."""
    if not peer.name:
        return (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, "latest", UNKNOWN)
    labels = peer.labels
    workload = workload_name(peer.name, labels)
    return (
        workload,
        peer.namespace or UNKNOWN,
        UNKNOWN,
        _label(labels, "app") or UNKNOWN,
        _label(labels, "version") or UNKNOWN,
        _label(labels, "service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
        or workload,
        _label(labels, *_REVISION_KEYS) or "latest",
        peer.cluster or UNKNOWN,
    )


def from_workload(w: Workload | None, cluster_id: str) -> Peer:
    if w is None or not w.name:
        return Peer()
    return Peer(w.name, w.namespace, w.labels, w.service_account, cluster_id)


def from_endpoint(ep: Endpoint, cluster_id: str) -> Peer:
    """An endpoint's workload from its "Kind/namespace/name" reference ("" = unknown)."""
    parts = ep.workload.split("/")
    if len(parts) != 3 or not parts[2]:
        return Peer()
    return Peer(parts[2], parts[1], ep.labels, ep.service_account, cluster_id)


_FIXED_CLUSTERS = (PASSTHROUGH_CLUSTER, BLACKHOLE_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER)


def service_labels(cluster: Cluster | None, cluster_name: str, domain: str) -> tuple[str, str, str]:
    """destination_service (FQDN), its name and namespace. A Kubernetes Service's name is its
    short name; a ServiceEntry host names itself; Passthrough/BlackHole name their cluster."""
    if cluster is None or not cluster.service:
        name = cluster_name if cluster_name in _FIXED_CLUSTERS else UNKNOWN
        return UNKNOWN, name, UNKNOWN
    fqdn = cluster.service
    ns = cluster.service_namespace or UNKNOWN
    suffix = f".{ns}.svc.{domain}"
    name = fqdn[: -len(suffix)] if fqdn.endswith(suffix) else fqdn
    return fqdn, name, ns


def base_labels(
    outbound: bool, source: Peer, destination: Peer, service: tuple[str, str, str]
) -> tuple[str, ...]:
    """Values for BASE_LABELS."""
    return (
        "source" if outbound else "destination",
        *peer_labels(source),
        *peer_labels(destination),
        *service,
        UNKNOWN if outbound else "none",
    )
