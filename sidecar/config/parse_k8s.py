"""Parsers for the Kubernetes kinds: Service, Endpoints, EndpointSlice, Pod, Deployment & co.

Each parser takes the object's metadata (already read) and its top-level fields, and returns the
typed resource; every problem is recorded on the way (see `nodes`). Fields of workload kinds that
do not concern a proxy (images, volumes, env, ...) are accepted silently; fields that would change
what the proxy does but are not implemented are warned about.
"""

from __future__ import annotations

import yaml

from sidecar.config import names
from sidecar.config.nodes import Fields, Node
from sidecar.config.resources import (
    ContainerPort,
    Deployment,
    EndpointAddress,
    EndpointPort,
    Endpoints,
    EndpointSlice,
    EndpointSubset,
    ObjectMeta,
    ObjectReference,
    Pod,
    Service,
    ServicePort,
    ServiceType,
    SliceEndpoint,
    SlicePort,
)
from sidecar.observability import metrics_buckets

TRANSPORTS = ("TCP", "UDP", "SCTP")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# Service spec fields with no effect on a sidecar (they concern kube-proxy or cloud LBs).
_SERVICE_SPEC_IRRELEVANT = frozenset(
    {
        "clusterIPs",
        "ipFamilies",
        "ipFamilyPolicy",
        "loadBalancerSourceRanges",
        "loadBalancerClass",
        "allocateLoadBalancerNodePorts",
        "healthCheckNodePort",
        "externalTrafficPolicy",
        "internalTrafficPolicy",
        "externalIPs",
    }
)


def _port_number(fields: Fields, key: str) -> int | None:
    return fields.read_required(key, Node.port)


def _port_fields(f: Fields) -> tuple[int | None, str, str, str]:
    """What Service and EndpointSlice ports share: port, name, protocol, appProtocol."""
    return (
        _port_number(f, "port"),
        f.read("name", names.port_name, ""),
        f.choice("protocol", TRANSPORTS, "TCP"),
        f.string("appProtocol"),
    )


def _service_port(node: Node) -> ServicePort | None:
    f = node.fields()
    if f is None:
        return None
    port, name, protocol, app_protocol = _port_fields(f)
    node_port = f.read("nodePort", Node.port, 0) or None
    target: int | str = port or 0
    target_node = f.get("targetPort")
    if target_node is not None:
        value = target_node.int_or_string()
        if isinstance(value, int) and not 1 <= value <= 65535:
            target_node.error(f"port {value} is not in 1..65535")
        elif isinstance(value, str) and names.port_name(target_node) is None:
            pass
        elif value is not None:
            target = value
    f.finish()
    if port is None:
        return None
    return ServicePort(port, target, name, protocol, app_protocol, node_port)


def _lb_ingress(status: Node | None) -> tuple[str, ...]:
    """status.loadBalancer.ingress[].ip (hostname-only entries are a cloud's DNS name: skipped)."""
    if status is None or (sf := status.fields()) is None:
        return ()
    lb = sf.get("loadBalancer")
    sf.finish(ignore_all=True)  # conditions: nothing for a proxy
    if lb is None or (lf := lb.fields()) is None:
        return ()
    ingress = lf.get("ingress")
    lf.finish()
    out: list[str] = []
    for item in [] if ingress is None else ingress.items():
        f = item.fields()
        if f is None:
            continue
        ip = f.read("ip", names.ip, "")
        f.finish(frozenset({"hostname", "ipMode", "ports"}))
        if ip:
            out.append(ip)
    return tuple(out)


def parse_service(meta: ObjectMeta, root: Fields) -> Service | None:
    spec_node = root.require("spec")
    lb_ingress = _lb_ingress(root.get("status"))
    root.finish()
    if spec_node is None:
        return None
    spec = spec_node.fields()
    if spec is None:
        return None
    type_name = spec.choice("type", tuple(t.value for t in ServiceType), "ClusterIP")
    stype = ServiceType(type_name)
    cluster_ip = ""
    ip_node = spec.get("clusterIP")
    if ip_node is not None:
        text = ip_node.string()
        if text == "None" or text == "":
            cluster_ip = text
        elif text is not None:
            cluster_ip = names.ip(ip_node) or ""
    external_name = ""
    if stype is ServiceType.EXTERNAL_NAME:
        external_name = spec.read_required("externalName", names.host) or ""
    else:
        spec.get("externalName")
    selector = names.selector_labels(spec, "selector")
    ports: list[ServicePort] = []
    seen: dict[tuple[int, str], int] = {}
    port_nodes = spec.get("ports")
    items = [] if port_nodes is None else port_nodes.items()
    for i, item in enumerate(items):
        parsed = _service_port(item)
        if parsed is None:
            continue
        key = (parsed.port, parsed.protocol)
        if key in seen:
            item.error(f"duplicate port {parsed.port}/{parsed.protocol} (also ports[{seen[key]}])")
            continue
        if not parsed.name and len(items) > 1:
            item.error("name is required when a Service has several ports")
        seen[key] = i
        ports.append(parsed)
    if stype is not ServiceType.EXTERNAL_NAME and cluster_ip != "None" and port_nodes is None:
        spec.require("ports")
    lb_ip = spec.read("loadBalancerIP", names.ip, "")
    spec.finish(_SERVICE_SPEC_IRRELEVANT | {"sessionAffinity", "sessionAffinityConfig"})
    return Service(
        meta, stype, cluster_ip, external_name, selector, tuple(ports), lb_ip, lb_ingress
    )


def _object_ref(node: Node | None, default_ns: str) -> ObjectReference | None:
    if node is None:
        return None
    f = node.fields()
    if f is None:
        return None
    kind = f.string("kind", "Pod")
    namespace = f.string("namespace", default_ns)
    name = f.string("name")
    f.finish(ignore_all=True)
    return ObjectReference(kind, namespace, name)


def _endpoint_address(node: Node, ns: str) -> EndpointAddress | None:
    f = node.fields()
    if f is None:
        return None
    ip = f.read_required("ip", names.ip)
    ref = _object_ref(f.get("targetRef"), ns)
    hostname = f.string("hostname")
    f.finish(frozenset({"nodeName"}))
    return None if ip is None else EndpointAddress(ip, ref, hostname)


def _endpoint_port(node: Node) -> EndpointPort | None:
    f = node.fields()
    if f is None:
        return None
    port = _port_number(f, "port")
    name = f.read("name", names.port_name, "")
    protocol = f.choice("protocol", TRANSPORTS, "TCP")
    f.get("appProtocol")
    f.finish()
    return None if port is None else EndpointPort(port, name, protocol)


def _addresses(f: Fields, key: str, ns: str) -> tuple[EndpointAddress, ...]:
    child = f.get(key)
    if child is None:
        return ()
    found = (_endpoint_address(n, ns) for n in child.items())
    return tuple(a for a in found if a is not None)


def parse_endpoints(meta: ObjectMeta, root: Fields) -> Endpoints:
    subsets: list[EndpointSubset] = []
    node = root.get("subsets")
    for item in [] if node is None else node.items():
        f = item.fields()
        if f is None:
            continue
        addresses = _addresses(f, "addresses", meta.namespace)
        not_ready = _addresses(f, "notReadyAddresses", meta.namespace)
        ports_node = f.get("ports")
        ports = (_endpoint_port(n) for n in ([] if ports_node is None else ports_node.items()))
        f.finish()
        subsets.append(EndpointSubset(addresses, not_ready, tuple(p for p in ports if p)))
    root.finish()
    return Endpoints(meta, tuple(subsets))


def _slice_endpoint(node: Node, ns: str, address_type: str) -> SliceEndpoint | None:
    f = node.fields()
    if f is None:
        return None
    addr_node = f.require("addresses")
    addresses: list[str] = []
    for a in [] if addr_node is None else addr_node.items():
        value = a.string() if address_type == "FQDN" else names.ip(a)
        if value is not None:
            addresses.append(value)
    ready = True
    cond = f.get("conditions")
    if cond is not None and (cf := cond.fields()) is not None:
        ready = cf.read("ready", Node.boolean, True)
        cf.finish(frozenset({"serving", "terminating"}))
    zone = f.string("zone")
    ref = _object_ref(f.get("targetRef"), ns)
    f.finish(frozenset({"nodeName", "hostname", "hints", "deprecatedTopology"}))
    return SliceEndpoint(tuple(addresses), ready, zone, ref)


def _slice_port(node: Node) -> SlicePort | None:
    f = node.fields()
    if f is None:
        return None
    port, name, protocol, app_protocol = _port_fields(f)
    f.finish()
    return None if port is None else SlicePort(port, name, protocol, app_protocol)


def parse_endpoint_slice(meta: ObjectMeta, root: Fields) -> EndpointSlice:
    address_type = root.choice("addressType", ("IPv4", "IPv6", "FQDN"), "IPv4")
    if "addressType" not in root.values:
        root.require("addressType")
    eps_node = root.get("endpoints")
    eps_items = eps_node.items() if eps_node else []
    eps = [_slice_endpoint(n, meta.namespace, address_type) for n in eps_items]
    ports_node = root.get("ports")
    ports = [_slice_port(n) for n in (ports_node.items() if ports_node else [])]
    root.finish()
    service = dict(meta.labels).get(SERVICE_NAME_LABEL, "")
    return EndpointSlice(
        meta, address_type, tuple(e for e in eps if e), tuple(p for p in ports if p), service
    )


def _container_ports(spec: Fields) -> tuple[ContainerPort, ...]:
    out: list[ContainerPort] = []
    for key in ("containers", "initContainers"):
        node = spec.get(key)
        for container in [] if node is None else node.items():
            cf = container.fields()
            if cf is None:
                continue
            ports = cf.get("ports")
            for pnode in [] if ports is None else ports.items():
                pf = pnode.fields()
                if pf is None:
                    continue
                number = _port_number(pf, "containerPort")
                name = pf.read("name", names.port_name, "")
                protocol = pf.choice("protocol", TRANSPORTS, "TCP")
                pf.finish(frozenset({"hostPort", "hostIP"}))
                if number is not None:
                    out.append(ContainerPort(number, name, protocol))
            cf.finish(ignore_all=True)
    return tuple(out)


def _pod_spec(node: Node | None) -> tuple[str, tuple[ContainerPort, ...]]:
    """(serviceAccountName, container ports) of a PodSpec."""
    if node is None:
        return "default", ()
    spec = node.fields()
    if spec is None:
        return "default", ()
    account = spec.read("serviceAccountName", names.dns_subdomain, "") or spec.string(
        "serviceAccount", "default"
    )
    ports = _container_ports(spec)
    spec.finish(ignore_all=True)  # the rest of a PodSpec does not concern the proxy
    return account, ports


def parse_pod(meta: ObjectMeta, root: Fields) -> Pod:
    account, ports = _pod_spec(root.get("spec"))
    pod_ip = ""
    status = root.get("status")
    if status is not None and (sf := status.fields()) is not None:
        pod_ip = sf.read("podIP", names.ip, "")
        sf.finish(ignore_all=True)
    buckets = _histogram_buckets(root.get("metadata"))
    root.finish()
    return Pod(meta, account, ports, pod_ip, buckets)


def _child(node: Node, key: str) -> Node | None:
    """A mapping's value by key without taking the mapping as Fields (read once already)."""
    if isinstance(node.node, yaml.MappingNode):
        for k, v in node.node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return Node(v, node.child_path(key), node.doc)
    return None


def _histogram_buckets(meta: Node | None) -> metrics_buckets.Overrides:
    """metadata.annotations' sidecar.istio.io/statsHistogramBuckets, validated (an error names
    the field and the reason)."""
    annotations = _child(meta, "annotations") if meta is not None else None
    node = _child(annotations, metrics_buckets.ANNOTATION) if annotations is not None else None
    if node is None or node.is_null:
        return ()
    text = node.string()
    if text is None:
        return ()
    try:
        return metrics_buckets.parse(text)
    except ValueError as exc:
        node.error(f"invalid histogram buckets: {exc}")
        return ()


def parse_workload(meta: ObjectMeta, root: Fields, kind: str) -> Deployment:
    """Deployment, StatefulSet, DaemonSet, ReplicaSet: spec.template's labels and pod spec."""
    labels: frozenset[tuple[str, str]] = frozenset()
    account: str = "default"
    ports: tuple[ContainerPort, ...] = ()
    buckets: metrics_buckets.Overrides = ()
    spec_node = root.get("spec")
    if spec_node is not None and (spec := spec_node.fields()) is not None:
        tmpl_node = spec.require("template")
        if tmpl_node is not None and (tmpl := tmpl_node.fields()) is not None:
            tmeta = tmpl.get("metadata")
            if tmeta is not None and (mf := tmeta.fields()) is not None:
                labels = names.selector_labels(mf, "labels")
                mf.finish(ignore_all=True)
                buckets = _histogram_buckets(tmeta)
            account, ports = _pod_spec(tmpl.get("spec"))
            tmpl.finish()
        spec.finish(ignore_all=True)
    root.finish(frozenset({"status"}))
    return Deployment(meta, kind, labels, account, ports, buckets)
