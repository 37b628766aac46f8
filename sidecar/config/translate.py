"""Mesh config + bootstrap -> Snapshot. Pure and deterministic.

Theory of operation: find the workload this proxy serves (Pod or WorkloadEntry named like the pod,
else the Deployment-like whose name prefixes the pod name, as generated pod names do), pick its
Sidecar resource (`scope`), build the service registry (`registry`), then the outbound side
(`translate_outbound`) and the inbound side (`translate_inbound`), plus the fixed clusters every
sidecar has. In router mode (a gateway) there is no capture and no inbound side: the listeners
are the selected Gateways' servers and the NodePort/LoadBalancer Services (`translate_gateway`),
and the clusters those of every visible service, as in sidecar mode. Objects are read sorted by
namespace and name, so file order never changes the result; `Snapshot.version` is a short hash
of the snapshot's content.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from sidecar.bootstrap import Bootstrap, Mode
from sidecar.config import translate_gateway as gateway
from sidecar.config import translate_inbound as inbound
from sidecar.config import translate_outbound as outbound
from sidecar.config.registry import MeshService, Notes, RegistryBuilder, locality_of
from sidecar.config.resources import Deployment, MeshConfig, Pod, WorkloadEntry
from sidecar.config.scope import Scope, select_sidecar
from sidecar.config.snapshot import (
    BLACKHOLE_CLUSTER,
    INBOUND_PASSTHROUGH_CLUSTER,
    PASSTHROUGH_CLUSTER,
    Cluster,
    Direction,
    DiscoveryType,
    HttpConnectionManager,
    Listener,
    RouteConfig,
    Snapshot,
    Workload,
)
from sidecar.config.translate_policy import PolicyIndex
from sidecar.config.translate_routes import RouteBuilder


def find_workload(mesh: MeshConfig, boot: Bootstrap, notes: Notes) -> inbound.WorkloadInfo:
    """The Pod, WorkloadEntry or Deployment-like this proxy serves."""
    name, ns = boot.pod_name, boot.pod_namespace
    for pod in mesh.of(Pod):
        if (pod.meta.namespace, pod.meta.name) == (ns, name):
            named = tuple((p.name, p.container_port) for p in pod.ports if p.name)
            labels = pod.meta.labels
            ip = pod.pod_ip or boot.instance_ip
            w = Workload(name, ns, labels, pod.service_account, ip, locality_of(labels),
                         pod.stats_histogram_buckets)  # fmt: skip
            return inbound.WorkloadInfo(w, named)
    for we in mesh.of(WorkloadEntry):
        if (we.meta.namespace, we.meta.name) == (ns, name):
            s = we.spec
            sa = s.service_account or boot.service_account
            w = Workload(name, ns, s.labels, sa, s.address, s.locality or locality_of(s.labels))
            return inbound.WorkloadInfo(w, s.ports, is_entry=True)
    owners = [
        d
        for d in mesh.of(Deployment)
        if d.meta.namespace == ns and name.startswith(d.meta.name + "-")
    ]
    if owners:
        d = max(owners, key=lambda o: len(o.meta.name))
        named = tuple((p.name, p.container_port) for p in d.ports if p.name)
        labels = d.template_labels
        w = Workload(name, ns, labels, d.service_account, boot.instance_ip, locality_of(labels),
                     d.stats_histogram_buckets)  # fmt: skip
        return inbound.WorkloadInfo(w, named)
    if name:
        notes.warn(
            None,
            "pod_name",
            f"no Pod, WorkloadEntry or Deployment for pod {ns}/{name}; the workload has no labels",
        )
    return inbound.WorkloadInfo(
        Workload(name, ns, frozenset(), boot.service_account, boot.instance_ip)
    )


def peer_index(mesh: MeshConfig) -> dict[str, Workload]:
    """The mesh's Pods and WorkloadEntries by IP (first one wins: Pods, then entries, sorted),
    so the metrics can name an inbound request's source workload by its address."""
    peers: dict[str, Workload] = {}
    for pod in mesh.of(Pod):
        if pod.pod_ip and pod.pod_ip not in peers:
            labels = pod.meta.labels
            peers[pod.pod_ip] = Workload(pod.meta.name, pod.meta.namespace, labels,
                                         pod.service_account, pod.pod_ip, locality_of(labels))
    for we in mesh.of(WorkloadEntry):
        s = we.spec
        if s.address and s.address not in peers:
            peers[s.address] = Workload(we.meta.name, we.meta.namespace, s.labels,
                                        s.service_account or "default", s.address, s.locality)
    return peers


def _fixed_clusters(boot: Bootstrap) -> list[Cluster]:
    return [
        Cluster(PASSTHROUGH_CLUSTER, DiscoveryType.ORIGINAL_DST),
        Cluster(BLACKHOLE_CLUSTER, DiscoveryType.STATIC),
        Cluster(
            INBOUND_PASSTHROUGH_CLUSTER,
            DiscoveryType.ORIGINAL_DST,
            source_address=boot.inbound_passthrough_ipv4,
            direction=Direction.INBOUND,
        ),
    ]


def translate(mesh: MeshConfig, boot: Bootstrap) -> Snapshot:
    """Build the snapshot for the proxy `boot` describes from the mesh config."""
    notes = Notes()
    info = find_workload(mesh, boot, notes)
    sidecar = select_sidecar(mesh, info.workload.namespace, info.workload.labels)
    scope = Scope(info.workload.namespace, sidecar)
    policy = (
        sidecar.outbound_policy
        if sidecar is not None and sidecar.outbound_policy is not None
        else boot.outbound_policy
    )
    services = RegistryBuilder(mesh, boot.cluster_domain, notes).build()
    dr_index = PolicyIndex(mesh, services, info.workload, boot.cluster_domain, notes)
    if boot.mode is Mode.ROUTER:
        return _router(mesh, boot, info.workload, services, notes, dr_index)
    vs_routes = RouteBuilder(
        mesh, services, info.workload, scope, boot.cluster_domain, notes, dr_index.subset_cluster
    )

    listeners: list[Listener] = []
    clusters: dict[str, Cluster] = {c.name: c for c in _fixed_clusters(boot)}
    routes: dict[str, RouteConfig] = {}

    # Outbound: capture listener, plus explicit egress listeners.
    captured = outbound.visible_ports(services, scope)
    http_ports: set[int] = set()
    if scope.capture and boot.outbound_port:
        listeners.append(
            outbound.virtual_outbound(boot, captured, policy, notes, vs_routes.tcp_routes)
        )
        for svc, port in captured:
            clusters.update((c.name, c) for c in dr_index.clusters(svc, port))
            if outbound.serves_http(port.protocol):
                http_ports.add(port.port)
        for p in sorted(http_ports):
            routes[str(p)] = vs_routes.http_route_config(p, captured, policy)
    if sidecar is not None:
        for i, entry in enumerate(sidecar.egress):
            if entry.port is None or not entry.bind:
                continue
            pairs = outbound.visible_ports(services, scope, entry)
            listener = outbound.egress_listener(
                sidecar, i, entry, pairs, notes, vs_routes.tcp_routes
            )
            if listener is None:
                continue
            listeners.append(listener)
            for svc, port in pairs:
                if port.port == entry.port.number:
                    clusters.update((c.name, c) for c in dr_index.clusters(svc, port))
            if isinstance(listener.filter_chains[0].filter, HttpConnectionManager):
                routes[str(entry.port.number)] = vs_routes.http_route_config(
                    entry.port.number, pairs, policy, entry
                )

    # Inbound.
    ports = (
        inbound.from_sidecar(sidecar, boot)
        if sidecar is not None and sidecar.ingress
        else inbound.from_services(mesh, info, notes)
    )
    # Sidecar ingress ports name no Service: the one whose target port it is (for metrics).
    served = (
        {p.port: p.service for p in inbound.from_services(mesh, info, Notes())}
        if sidecar is not None and sidecar.ingress
        else {}
    )
    for ip in ports:
        named = replace(ip, service=served.get(ip.port, "")) if not ip.service else ip
        base = inbound.inbound_cluster(named, boot)
        clusters[ip.cluster] = dr_index.inbound(base, ip.service, ip.service_port)
        if outbound.serves_http(ip.protocol):
            routes[ip.cluster] = inbound.inbound_route_config(ip, base.service)
        if ip.bind:
            listeners.append(inbound.bound_listener(ip, boot.protocol_detection_timeout))
        elif ip.tls is not None:
            notes.warn(
                sidecar,
                "spec.ingress",
                f"port {ip.port}: tls on a captured port is not implemented (TLS terminates on "
                "a listener of its own: captureMode NONE with a bind); served without TLS",
            )
    if scope.capture and boot.inbound_port:
        listeners.append(inbound.virtual_inbound(ports, boot))

    return _snapshot(mesh, notes, info.workload, listeners, routes, clusters)


def _router(
    mesh: MeshConfig,
    boot: Bootstrap,
    workload: Workload,
    services: tuple[MeshService, ...],
    notes: Notes,
    dr_index: PolicyIndex,
) -> Snapshot:
    """A gateway: Gateway servers and node ports; clusters for every visible service."""
    scope = Scope(workload.namespace, None)  # Sidecar resources do not apply to gateways
    clusters: dict[str, Cluster] = {c.name: c for c in _fixed_clusters(boot)}
    for svc, port in outbound.visible_ports(services, scope):
        clusters.update((c.name, c) for c in dr_index.clusters(svc, port))
    vs_routes = RouteBuilder(
        mesh, services, workload, scope, boot.cluster_domain, notes, dr_index.subset_cluster
    )
    built = gateway.router_config(mesh, boot, workload, vs_routes, notes)
    return _snapshot(mesh, notes, workload, built.listeners, built.routes, clusters)


def _snapshot(
    mesh: MeshConfig,
    notes: Notes,
    workload: Workload,
    listeners: list[Listener],
    routes: dict[str, RouteConfig],
    clusters: dict[str, Cluster],
) -> Snapshot:
    warnings = tuple(str(i) for i in (*mesh.warnings, *notes.issues))
    snap = Snapshot(
        version="",
        workload=workload,
        listeners=tuple(listeners),
        route_configs=dict(sorted(routes.items())),
        clusters=dict(sorted(clusters.items())),
        warnings=warnings,
        peers=peer_index(mesh),
    )
    digest = hashlib.sha256(json.dumps(snap.to_json(), sort_keys=True).encode()).hexdigest()
    return replace(snap, version=digest[:12])
