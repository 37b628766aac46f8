"""Kubernetes and Istio kinds as users write them, as frozen dataclasses.

Theory of operation: the loader parses YAML into these types and nothing else reads YAML; the
translator reads only these. Everything is immutable (tuples, frozensets) so a `MeshConfig` can be
shared and compared. Field names follow the Kubernetes/Istio field they come from, in snake case;
defaults are the API server's defaults (a Service port's targetPort is its port, a Pod's service
account is "default"). Kinds the proxy does not implement yet keep their spec as frozen raw data
(`GenericResource`) so later translators can pick them up.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from sidecar.bootstrap import OutboundPolicy
from sidecar.config.nodes import Frozen
from sidecar.config.snapshot import Labels
from sidecar.errors import ConfigIssue

R = TypeVar("R", bound="Resource")


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """metadata: identity, labels, and where the object was written."""

    name: str
    namespace: str
    labels: Labels = frozenset()
    file: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True)
class Resource:
    """Base of every loaded object."""

    kind: ClassVar[str] = ""
    meta: ObjectMeta

    @property
    def kind_name(self) -> str:
        return self.kind

    @property
    def ref(self) -> str:
        """ "Kind/namespace/name", as issues and endpoints name objects."""
        return f"{self.kind_name}/{self.meta.namespace}/{self.meta.name}"


def labels_match(selector: Labels, labels: Labels) -> bool:
    """Kubernetes equality-based selection: every selector pair present in labels."""
    return selector <= labels


# --- Kubernetes core -------------------------------------------------------------------------


class ServiceType(enum.Enum):
    """spec.type of a Service."""

    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    EXTERNAL_NAME = "ExternalName"


@dataclass(frozen=True, slots=True)
class ServicePort:
    """spec.ports[]: targetPort is a number or a container port name (defaults to port)."""

    port: int
    target_port: int | str
    name: str = ""
    protocol: str = "TCP"  # transport: TCP, UDP, SCTP (not the application protocol)
    app_protocol: str = ""
    node_port: int | None = None


@dataclass(frozen=True, slots=True)
class Service(Resource):
    """v1 Service. cluster_ip "None" means headless; "" means not written (allocated by k8s)."""

    kind: ClassVar[str] = "Service"
    type: ServiceType = ServiceType.CLUSTER_IP
    cluster_ip: str = ""
    external_name: str = ""
    selector: Labels = frozenset()
    ports: tuple[ServicePort, ...] = ()
    load_balancer_ip: str = ""  # spec.loadBalancerIP (deprecated in Kubernetes, still written)
    load_balancer_ingress: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip

    @property
    def lb_addresses(self) -> tuple[str, ...]:
        """LoadBalancer: the addresses it is reached on (spec IP first, then status ingress)."""
        if self.type is not ServiceType.LOAD_BALANCER:
            return ()
        out = [self.load_balancer_ip] if self.load_balancer_ip else []
        out += [ip for ip in self.load_balancer_ingress if ip not in out]
        return tuple(out)

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"


@dataclass(frozen=True, slots=True)
class ObjectReference:
    """targetRef of an endpoint address."""

    kind: str
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class EndpointAddress:
    """Endpoints subsets[].addresses[]."""

    ip: str
    target_ref: ObjectReference | None = None
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class EndpointPort:
    """Endpoints subsets[].ports[] (name matches the Service port name)."""

    port: int
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class EndpointSubset:
    """One set of addresses that all serve the same ports."""

    addresses: tuple[EndpointAddress, ...] = ()
    not_ready_addresses: tuple[EndpointAddress, ...] = ()
    ports: tuple[EndpointPort, ...] = ()


@dataclass(frozen=True, slots=True)
class Endpoints(Resource):
    """v1 Endpoints, named like the Service it belongs to."""

    kind: ClassVar[str] = "Endpoints"
    subsets: tuple[EndpointSubset, ...] = ()


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """EndpointSlice endpoints[]; `ready` is conditions.ready (unset counts as ready)."""

    addresses: tuple[str, ...]
    ready: bool = True
    zone: str = ""
    target_ref: ObjectReference | None = None


@dataclass(frozen=True, slots=True)
class SlicePort:
    """EndpointSlice ports[]."""

    port: int
    name: str = ""
    protocol: str = "TCP"
    app_protocol: str = ""


@dataclass(frozen=True, slots=True)
class EndpointSlice(Resource):
    """discovery.k8s.io/v1 EndpointSlice; service_name from label kubernetes.io/service-name."""

    kind: ClassVar[str] = "EndpointSlice"
    address_type: str = "IPv4"
    endpoints: tuple[SliceEndpoint, ...] = ()
    ports: tuple[SlicePort, ...] = ()
    service_name: str = ""


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """A container's ports[] entry (all containers of a pod flattened)."""

    container_port: int
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Pod(Resource):
    """v1 Pod: what identifies it as a workload and where it listens."""

    kind: ClassVar[str] = "Pod"
    service_account: str = "default"
    ports: tuple[ContainerPort, ...] = ()
    pod_ip: str = ""
    # metadata.annotations sidecar.istio.io/statsHistogramBuckets, parsed (metrics_buckets.py)
    stats_histogram_buckets: tuple[tuple[str, tuple[float, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class Deployment(Resource):
    """apps/v1 Deployment (or StatefulSet, DaemonSet, ReplicaSet): its pod template's identity."""

    kind: ClassVar[str] = "Deployment"
    workload_kind: str = "Deployment"
    template_labels: Labels = frozenset()
    service_account: str = "default"
    ports: tuple[ContainerPort, ...] = ()
    stats_histogram_buckets: tuple[tuple[str, tuple[float, ...]], ...] = ()  # template's

    @property
    def kind_name(self) -> str:
        return self.workload_kind


@dataclass(frozen=True, slots=True)
class ServiceAccount(Resource):
    """v1 ServiceAccount (identity only)."""

    kind: ClassVar[str] = "ServiceAccount"


@dataclass(frozen=True, slots=True)
class OpaqueResource(Resource):
    """A kind a proxy has no use for (ConfigMap, Secret, Namespace, ...): identity only."""

    kind: ClassVar[str] = "Opaque"
    object_kind: str = ""

    @property
    def kind_name(self) -> str:
        return self.object_kind


# --- Istio networking --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkloadEntrySpec:
    """The WorkloadEntry shape (also ServiceEntry.spec.endpoints[])."""

    address: str = ""
    ports: tuple[tuple[str, int], ...] = ()  # port name -> number, sorted by name
    labels: Labels = frozenset()
    service_account: str = ""
    locality: str = ""
    weight: int = 1
    network: str = ""

    def port(self, name: str) -> int | None:
        for n, p in self.ports:
            if n == name:
                return p
        return None


@dataclass(frozen=True, slots=True)
class WorkloadEntry(Resource):
    """networking.istio.io WorkloadEntry: a VM or any non-Pod workload."""

    kind: ClassVar[str] = "WorkloadEntry"
    spec: WorkloadEntrySpec = WorkloadEntrySpec()


@dataclass(frozen=True, slots=True)
class ServiceEntryPort:
    """ServiceEntry ports[] (protocol is Istio's: HTTP, HTTPS, TCP, GRPC, ...)."""

    number: int
    name: str = ""
    protocol: str = ""
    target_port: int | None = None


class Location(enum.Enum):
    """ServiceEntry.location."""

    MESH_EXTERNAL = "MESH_EXTERNAL"
    MESH_INTERNAL = "MESH_INTERNAL"


class Resolution(enum.Enum):
    """ServiceEntry.resolution."""

    NONE = "NONE"
    STATIC = "STATIC"
    DNS = "DNS"
    DNS_ROUND_ROBIN = "DNS_ROUND_ROBIN"


@dataclass(frozen=True, slots=True)
class ServiceEntry(Resource):
    """networking.istio.io ServiceEntry: services added to the mesh's registry."""

    kind: ClassVar[str] = "ServiceEntry"
    hosts: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    ports: tuple[ServiceEntryPort, ...] = ()
    location: Location = Location.MESH_EXTERNAL
    resolution: Resolution = Resolution.NONE
    endpoints: tuple[WorkloadEntrySpec, ...] = ()
    workload_selector: Labels | None = None
    export_to: tuple[str, ...] = ()


class CaptureMode(enum.Enum):
    """Sidecar ingress/egress captureMode."""

    DEFAULT = "DEFAULT"
    IPTABLES = "IPTABLES"
    NONE = "NONE"


@dataclass(frozen=True, slots=True)
class SidecarPort:
    """Sidecar listener port {number, protocol, name}."""

    number: int
    protocol: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class ServerTls:
    """Istio's ServerTLSSettings as the proxy terminates TLS with it (files, not secrets)."""

    mode: str  # "SIMPLE" or "MUTUAL"
    server_certificate: str
    private_key: str
    ca_certificates: str = ""  # MUTUAL: client certificates must chain to these
    min_protocol_version: str = ""  # "TLSV1_2", "TLSV1_3"; "" = the library's default


@dataclass(frozen=True, slots=True)
class IngressListener:
    """Sidecar ingress[]: where the proxy takes traffic for the workload and where it sends it."""

    port: SidecarPort
    bind: str = ""
    capture_mode: CaptureMode = CaptureMode.DEFAULT
    default_endpoint: str = ""  # "127.0.0.1:8080", "0.0.0.0:8080" or "unix:///path"
    tls: ServerTls | None = None  # terminate TLS on this port


@dataclass(frozen=True, slots=True)
class EgressListener:
    """Sidecar egress[]: which services the workload reaches, optionally on an explicit port."""

    hosts: tuple[str, ...]
    port: SidecarPort | None = None
    bind: str = ""
    capture_mode: CaptureMode = CaptureMode.DEFAULT


@dataclass(frozen=True, slots=True)
class Sidecar(Resource):
    """networking.istio.io Sidecar: shapes the proxy of the workloads it selects."""

    kind: ClassVar[str] = "Sidecar"
    workload_selector: Labels | None = None
    ingress: tuple[IngressListener, ...] = ()
    egress: tuple[EgressListener, ...] = ()
    outbound_policy: OutboundPolicy | None = None


@dataclass(frozen=True, slots=True)
class GenericResource(Resource):
    """A kind whose translation is not implemented yet: its spec kept as frozen raw data."""

    kind: ClassVar[str] = "Generic"
    object_kind: str = ""
    api_version: str = ""
    spec: Frozen = None

    @property
    def kind_name(self) -> str:
        return self.object_kind


@dataclass(frozen=True)
class MeshConfig:
    """Every object loaded from the mesh config files, plus the warnings found loading them."""

    objects: tuple[Resource, ...] = ()
    warnings: tuple[ConfigIssue, ...] = ()

    def of(self, cls: type[R]) -> tuple[R, ...]:
        """The objects of one type, sorted by namespace and name (translation is order-free)."""
        found = [o for o in self.objects if isinstance(o, cls)]
        found.sort(key=lambda o: (o.meta.namespace, o.meta.name, o.kind_name))
        return tuple(found)
