"""The service registry: Kubernetes Services and ServiceEntry hosts as one model, with endpoints.

Theory of operation: like Istio's `model.Service`, every Service and every host of every
ServiceEntry becomes a `MeshService` with a hostname, VIPs, typed ports, a discovery type and the
endpoints of each port. Endpoints come from, in order: Endpoints/EndpointSlices of the Service;
else the Pods and WorkloadEntries of its namespace that its selector matches (a named targetPort is
looked up in the container ports or the WorkloadEntry's ports). The listener and cluster builders
only ever read this model.

Endpoints that are not ready (Endpoints `notReadyAddresses`, EndpointSlice `conditions.ready:
false`) are kept with `healthy=False`: the balancer counts them (a locality with none healthy fails
over) and never picks them. Locality ("region/zone/subzone"): a WorkloadEntry's `locality`; a
Pod's `istio-locality` label ("region.zone.subzone"), else its topology labels; else the
EndpointSlice endpoint's zone. A headless Service is ORIGINAL_DST, as Istio makes it: traffic goes
to the address the client dialled (its endpoints stay listed for the per-address listener chains).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from sidecar.config import protocol
from sidecar.config.resources import (
    Endpoints,
    EndpointSlice,
    MeshConfig,
    ObjectReference,
    Pod,
    Resolution,
    Resource,
    Service,
    ServiceEntry,
    ServicePort,
    ServiceType,
    WorkloadEntry,
    WorkloadEntrySpec,
    labels_match,
)
from sidecar.config.snapshot import DiscoveryType, Endpoint, Labels, Protocol
from sidecar.errors import ConfigIssue, Severity


class Notes:
    """Warnings found while translating, each pinned to the object it concerns."""

    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []

    def warn(self, obj: Resource | None, path: str, reason: str) -> None:
        if obj is None:
            self.issues.append(ConfigIssue(Severity.WARNING, "<bootstrap>", "", path, reason))
            return
        self.issues.append(
            ConfigIssue(Severity.WARNING, obj.meta.file, obj.ref, path, reason, obj.meta.line)
        )


@dataclass(frozen=True, slots=True)
class MeshPort:
    """One port of a service, with the protocol it speaks and its endpoints."""

    port: int
    name: str
    protocol: Protocol
    endpoints: tuple[Endpoint, ...] = ()
    dns_name: str = ""  # STRICT_DNS / LOGICAL_DNS
    dns_port: int = 0


@dataclass(frozen=True, slots=True)
class MeshService:
    """A Service or one ServiceEntry host: what the proxy can route to."""

    hostname: str  # "reviews.default.svc.cluster.local" or the ServiceEntry host
    namespace: str
    name: str  # Kubernetes Service name; "" for ServiceEntry hosts
    vips: tuple[str, ...]
    headless: bool
    discovery: DiscoveryType
    ports: tuple[MeshPort, ...]
    export_to: tuple[str, ...] = ()

    def visible_from(self, namespace: str) -> bool:
        return exported_to(self.export_to, self.namespace, namespace)


def exported_to(export_to: Sequence[str], own: str, namespace: str) -> bool:
    """Istio's exportTo for an object of namespace `own`, seen from `namespace`: () and "*"
    everyone, "." its own namespace, listed namespaces; anything else ("~") nobody."""
    if not export_to or "*" in export_to or namespace in export_to:
        return True
    return "." in export_to and namespace == own


@dataclass(frozen=True, slots=True)
class Target:
    """Something that serves a port: a Pod or a WorkloadEntry, as an endpoint template."""

    address: str
    spec: WorkloadEntrySpec
    named_ports: tuple[tuple[str, int], ...]
    workload: str
    is_entry: bool

    def resolve(self, port_name: str, target: int | str) -> int | None:
        named = dict(self.named_ports)
        if self.is_entry and port_name in named:
            return named[port_name]  # WorkloadEntry.ports is keyed by the service port name
        if isinstance(target, int):
            return target
        return named.get(target)

    def endpoint(self, port: int) -> Endpoint:
        s = self.spec
        return Endpoint(
            self.address,
            port,
            s.labels,
            s.service_account,
            s.locality,
            max(s.weight, 1),
            self.workload,
        )


LOCALITY_LABEL = "istio-locality"
TOPOLOGY_LABELS = (
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
)


def locality_of(labels: Labels) -> str:
    """A workload's locality from its labels, as Istio reads it: the `istio-locality` label
    ("region.zone.subzone", dots because label values cannot hold "/"), else the topology labels
    ("region/zone/subzone"); "" when none is set."""
    found = dict(labels)
    written = found.get(LOCALITY_LABEL, "")
    if written:
        return written.replace(".", "/")
    parts = [found.get(key, "") for key in TOPOLOGY_LABELS]
    return "/".join(parts) if any(parts) else ""


def _targets(mesh: MeshConfig, namespace: str) -> list[Target]:
    out: list[Target] = []
    for pod in mesh.of(Pod):
        if pod.meta.namespace == namespace and pod.pod_ip:
            labels = pod.meta.labels
            spec = WorkloadEntrySpec(
                pod.pod_ip, (), labels, pod.service_account, locality_of(labels)
            )
            named = tuple((p.name, p.container_port) for p in pod.ports if p.name)
            out.append(Target(pod.pod_ip, spec, named, pod.ref, False))
    for we in mesh.of(WorkloadEntry):
        if we.meta.namespace == namespace:
            out.append(Target(we.spec.address, we.spec, we.spec.ports, we.ref, True))
    return out


class RegistryBuilder:
    """Builds `MeshService`s from one `MeshConfig` (indexes built once)."""

    def __init__(self, mesh: MeshConfig, domain: str, notes: Notes) -> None:
        self.mesh = mesh
        self.domain = domain
        self.notes = notes
        self.pods = {(p.meta.namespace, p.meta.name): p for p in mesh.of(Pod)}
        self.entries = {(w.meta.namespace, w.meta.name): w for w in mesh.of(WorkloadEntry)}
        self.endpoints = {(e.meta.namespace, e.meta.name): e for e in mesh.of(Endpoints)}
        self.slices: dict[tuple[str, str], list[EndpointSlice]] = {}
        for s in mesh.of(EndpointSlice):
            self.slices.setdefault((s.meta.namespace, s.service_name), []).append(s)
        self._targets: dict[str, list[Target]] = {}

    def targets(self, namespace: str) -> list[Target]:
        if namespace not in self._targets:
            self._targets[namespace] = _targets(self.mesh, namespace)
        return self._targets[namespace]

    def build(self) -> tuple[MeshService, ...]:
        out = [self.service(s) for s in self.mesh.of(Service)]
        for se in self.mesh.of(ServiceEntry):
            out.extend(self.service_entry(se))
        out.sort(key=lambda s: (s.hostname, s.namespace))
        return tuple(out)

    # --- Kubernetes Services -------------------------------------------------------------

    def fqdn(self, svc: Service) -> str:
        return f"{svc.meta.name}.{svc.meta.namespace}.svc.{self.domain}"

    def service(self, svc: Service) -> MeshService:
        ports = []
        for p in svc.ports:
            proto = protocol.port_protocol(p.app_protocol, p.name)
            if svc.type is ServiceType.EXTERNAL_NAME:
                ports.append(MeshPort(p.port, p.name, proto, (), svc.external_name, p.port))
            else:
                ports.append(MeshPort(p.port, p.name, proto, self.k8s_endpoints(svc, p)))
        discovery = DiscoveryType.STATIC
        if svc.type is ServiceType.EXTERNAL_NAME:
            discovery = DiscoveryType.STRICT_DNS
        elif svc.headless:
            discovery = DiscoveryType.ORIGINAL_DST
        vips = (svc.cluster_ip,) if svc.cluster_ip not in ("", "None") else ()
        return MeshService(
            self.fqdn(svc),
            svc.meta.namespace,
            svc.meta.name,
            vips,
            svc.headless,
            discovery,
            tuple(ports),
        )

    def k8s_endpoints(self, svc: Service, sp: ServicePort) -> tuple[Endpoint, ...]:
        key = (svc.meta.namespace, svc.meta.name)
        if key in self.endpoints:
            return self.from_endpoints(self.endpoints[key], svc, sp)
        if key in self.slices:
            return self.from_slices(self.slices[key], svc, sp)
        if not svc.selector:
            return ()
        out: list[Endpoint] = []
        for t in self.targets(svc.meta.namespace):
            if not labels_match(svc.selector, t.spec.labels):
                continue
            port = t.resolve(sp.name, sp.target_port)
            if port is None:
                self.notes.warn(
                    svc,
                    f"spec.ports[{svc.ports.index(sp)}].targetPort",
                    f"{t.workload} has no port named {sp.target_port!r}; not an endpoint",
                )
                continue
            out.append(t.endpoint(port))
        return tuple(out)

    def _ref_template(self, kind: str, ns: str, name: str, ip: str) -> Endpoint:
        pod = self.pods.get((ns, name)) if kind == "Pod" else None
        if pod is not None:
            labels = pod.meta.labels
            return Endpoint(
                ip, 0, labels, pod.service_account, locality_of(labels), workload=pod.ref
            )
        we = self.entries.get((ns, name)) if kind == "WorkloadEntry" else None
        if we is not None:
            s = we.spec
            return Endpoint(
                ip, 0, s.labels, s.service_account, s.locality, max(s.weight, 1), we.ref
            )
        return Endpoint(ip, 0, workload=f"{kind}/{ns}/{name}" if name else "")

    @staticmethod
    def _port_matches(name: str, sp: ServicePort, svc: Service) -> bool:
        return name == sp.name or (not name and len(svc.ports) == 1)

    def from_endpoints(self, eps: Endpoints, svc: Service, sp: ServicePort) -> tuple[Endpoint, ...]:
        out: list[Endpoint] = []
        for subset in eps.subsets:
            port = next((p.port for p in subset.ports if self._port_matches(p.name, sp, svc)), None)
            if port is None:
                continue
            ready = [(a, True) for a in subset.addresses]
            for a, healthy in ready + [(a, False) for a in subset.not_ready_addresses]:
                out.append(self._endpoint(a.target_ref, a.ip, port, healthy))
        return tuple(out)

    def from_slices(
        self, slices: list[EndpointSlice], svc: Service, sp: ServicePort
    ) -> tuple[Endpoint, ...]:
        out: list[Endpoint] = []
        for s in slices:
            port = next((p.port for p in s.ports if self._port_matches(p.name, sp, svc)), None)
            if port is None or s.address_type == "FQDN":
                continue
            for e in s.endpoints:
                for addr in e.addresses:
                    ep = self._endpoint(e.target_ref, addr, port, e.ready)
                    if e.zone and not ep.locality:
                        ep = replace(ep, locality=f"/{e.zone}")
                    out.append(ep)
        return tuple(out)

    def _endpoint(self, ref: ObjectReference | None, ip: str, port: int, healthy: bool) -> Endpoint:
        tmpl = self._ref_template(ref.kind, ref.namespace, ref.name, ip) if ref else Endpoint(ip, 0)
        return replace(tmpl, port=port, healthy=healthy)

    # --- ServiceEntries -----------------------------------------------------------------------

    def service_entry(self, se: ServiceEntry) -> list[MeshService]:
        discovery = {
            Resolution.NONE: DiscoveryType.ORIGINAL_DST,
            Resolution.STATIC: DiscoveryType.STATIC,
            Resolution.DNS: DiscoveryType.STRICT_DNS,
            Resolution.DNS_ROUND_ROBIN: DiscoveryType.LOGICAL_DNS,
        }[se.resolution]
        targets: list[Target] = [Target(e.address, e, e.ports, se.ref, True) for e in se.endpoints]
        if se.workload_selector and not se.endpoints:
            targets = [
                t
                for t in self.targets(se.meta.namespace)
                if labels_match(se.workload_selector, t.spec.labels)
            ]
        dns = discovery in (DiscoveryType.STRICT_DNS, DiscoveryType.LOGICAL_DNS)
        if discovery is DiscoveryType.LOGICAL_DNS and len(targets) > 1:
            self.notes.warn(
                se,
                "spec.endpoints",
                "resolution DNS_ROUND_ROBIN uses only the first endpoint (Envoy's LOGICAL_DNS)",
            )
        out: list[MeshService] = []
        for i, host in enumerate(se.hosts):
            if dns and not targets and host.startswith("*"):
                self.notes.warn(se, f"spec.hosts[{i}]", "a wildcard host cannot be resolved by DNS")
                continue
            ports = tuple(
                self._se_port(se, host, p.number, p.name, p.protocol, p.target_port, targets, dns)
                for p in se.ports
            )
            out.append(
                MeshService(
                    host,
                    se.meta.namespace,
                    "",
                    se.addresses,
                    False,
                    discovery,
                    ports,
                    se.export_to,
                )
            )
        return out

    def _se_port(
        self,
        se: ServiceEntry,
        host: str,
        number: int,
        name: str,
        proto_name: str,
        target: int | None,
        targets: list[Target],
        dns: bool,
    ) -> MeshPort:
        proto = protocol.port_protocol(proto_name, name)
        resolved = [(t, t.resolve(name, target or number) or number) for t in targets]
        if se.resolution is Resolution.NONE:
            return MeshPort(number, name, proto)
        if dns:
            # Each endpoint's address is a name (or an IP) the DNS cluster resolves; it keeps
            # the endpoint's port, labels, locality and weight. Without endpoints: the host.
            # (No dns_name beside endpoints: a subset that keeps none of them resolves nothing.)
            if resolved:
                return MeshPort(number, name, proto, tuple(t.endpoint(p) for t, p in resolved))
            return MeshPort(number, name, proto, (), host, target or number)
        return MeshPort(number, name, proto, tuple(t.endpoint(p) for t, p in resolved))
