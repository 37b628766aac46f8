"""Parsers for the Istio kinds: WorkloadEntry, ServiceEntry, Sidecar, and the not-yet-implemented.

Same contract as `parse_k8s`: metadata already read, top-level fields in, typed resource out,
every problem recorded with its path. Every Istio field that is not implemented is a warning.
"""

from __future__ import annotations

from sidecar.bootstrap import OutboundPolicy
from sidecar.config import names
from sidecar.config.nodes import Fields, Node
from sidecar.config.parse_tls import server_tls
from sidecar.config.resources import (
    CaptureMode,
    EgressListener,
    GenericResource,
    IngressListener,
    Location,
    ObjectMeta,
    Resolution,
    ServiceEntry,
    ServiceEntryPort,
    Sidecar,
    SidecarPort,
    WorkloadEntry,
    WorkloadEntrySpec,
)

ISTIO_PROTOCOLS = (
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-WEB",
    "HTTP2",
    "MONGO",
    "TCP",
    "TLS",
    "MYSQL",
    "REDIS",
    "UDP",
)


def _spec(root: Fields) -> Fields | None:
    node = root.require("spec")
    root.finish(frozenset({"status"}))
    return None if node is None else node.fields()


def _address(node: Node) -> str | None:
    """An endpoint address: IP, host name, or unix:// socket path."""
    text = node.string()
    if text is None:
        return None
    if text.startswith("unix://"):
        return text
    if ":" in text or text.replace(".", "").isdigit():
        return names.ip(node)
    return names.host(node)


def workload_entry_spec(node: Node) -> WorkloadEntrySpec | None:
    f = node.fields()
    if f is None:
        return None
    address = f.read_required("address", _address)
    ports: list[tuple[str, int]] = []
    ports_node = f.get("ports")
    if ports_node is not None and (pf := ports_node.fields()) is not None:
        for name, child in pf.values.items():
            pf.get(name)
            number = child.port()
            if number is not None:
                ports.append((name, number))
    labels = names.selector_labels(f, "labels")
    account = f.read("serviceAccount", names.dns_subdomain, "")
    locality = f.string("locality")
    weight = f.read("weight", Node.integer, 1)
    weight_node = f.get("weight")
    if weight_node is not None and not 0 <= weight < 2**32:
        weight_node.error(f"weight {weight} is not in 0..4294967295")
    network = f.string("network")
    f.finish()
    if address is None:
        return None
    return WorkloadEntrySpec(
        address, tuple(sorted(ports)), labels, account, locality, weight, network
    )


def parse_workload_entry(meta: ObjectMeta, root: Fields) -> WorkloadEntry | None:
    node = root.require("spec")
    root.finish(frozenset({"status"}))
    parsed = None if node is None else workload_entry_spec(node)
    return None if parsed is None else WorkloadEntry(meta, parsed)


def _workload_selector(f: Fields) -> frozenset[tuple[str, str]] | None:
    node = f.get("workloadSelector")
    if node is None:
        return None
    sel = node.fields()
    if sel is None:
        return None
    labels = names.selector_labels(sel, "labels")
    sel.finish()
    return labels


def _se_port(node: Node) -> ServiceEntryPort | None:
    f = node.fields()
    if f is None:
        return None
    number = f.read_required("number", Node.port)
    name = f.read_required("name", Node.string)
    protocol = f.read("protocol", Node.string, "")
    proto_node = f.get("protocol")
    if proto_node is not None and protocol.upper() not in ISTIO_PROTOCOLS:
        proto_node.error(f"unknown protocol {protocol!r}")
    target = f.read("targetPort", Node.port, 0) or None
    f.finish()
    if number is None:
        return None
    return ServiceEntryPort(number, name or "", protocol.upper(), target)


def parse_service_entry(meta: ObjectMeta, root: Fields) -> ServiceEntry | None:
    spec = _spec(root)
    if spec is None:
        return None
    hosts_node = spec.require("hosts")
    hosts: list[str] = []
    for h in [] if hosts_node is None else hosts_node.items():
        value = names.host(h)
        if value is not None:
            hosts.append(value)
    if hosts_node is not None and not hosts_node.items():
        hosts_node.error("at least one host is required")
    addresses_node = spec.get("addresses")
    addresses = [names.ip_or_cidr(a) for a in (addresses_node.items() if addresses_node else [])]
    ports_node = spec.get("ports")
    ports: list[ServiceEntryPort] = []
    seen: set[int] = set()
    for item in [] if ports_node is None else ports_node.items():
        port = _se_port(item)
        if port is None:
            continue
        if port.number in seen:
            item.error(f"duplicate port {port.number}")
            continue
        seen.add(port.number)
        ports.append(port)
    location = Location(spec.choice("location", tuple(x.value for x in Location), "MESH_EXTERNAL"))
    resolution = Resolution(spec.choice("resolution", tuple(x.value for x in Resolution), "NONE"))
    eps_node = spec.get("endpoints")
    endpoints = [workload_entry_spec(e) for e in (eps_node.items() if eps_node else [])]
    selector = _workload_selector(spec)
    export_node = spec.get("exportTo")
    export_to = () if export_node is None else export_node.string_list()
    spec.finish()
    return ServiceEntry(
        meta,
        tuple(hosts),
        tuple(a for a in addresses if a),
        tuple(ports),
        location,
        resolution,
        tuple(e for e in endpoints if e),
        selector,
        export_to,
    )


def _sidecar_port(node: Node | None) -> SidecarPort | None:
    if node is None:
        return None
    f = node.fields()
    if f is None:
        return None
    number = f.read_required("number", Node.port)
    protocol = f.read("protocol", Node.string, "").upper()
    name = f.string("name")
    f.finish(frozenset({"targetPort"}))
    return None if number is None else SidecarPort(number, protocol, name)


def _capture(f: Fields) -> CaptureMode:
    return CaptureMode(f.choice("captureMode", tuple(c.value for c in CaptureMode), "DEFAULT"))


def _bind(f: Fields) -> str:
    node = f.get("bind")
    if node is None:
        return ""
    text = node.string()
    if text is not None and text.startswith("unix://"):
        node.error("unix domain socket binds are not supported")
        return ""
    return names.ip(node) or ""


def _default_endpoint(node: Node) -> str | None:
    text = node.string()
    if text is None:
        return None
    if text.startswith("unix://"):
        return text
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        node.error(f"{text!r} is not ip:port or unix:///path")
        return None
    if host not in ("127.0.0.1", "0.0.0.0", "::1", "::"):
        node.error(f"{text!r}: the host must be 127.0.0.1, 0.0.0.0, ::1 or :: (Istio's rule)")
        return None
    return text


def _ingress(node: Node) -> IngressListener | None:
    f = node.fields()
    if f is None:
        return None
    port = _sidecar_port(f.require("port"))
    bind = _bind(f)
    mode = _capture(f)
    default_endpoint = f.read("defaultEndpoint", _default_endpoint, "")
    tls = f.read("tls", server_tls, None)
    f.finish()
    return None if port is None else IngressListener(port, bind, mode, default_endpoint, tls)


def _sidecar_host(node: Node) -> str | None:
    text = node.string()
    if text is None:
        return None
    ns, sep, host = text.partition("/")
    if not sep or not ns or not host:
        node.error(f'{text!r} is not namespace/host (for example "./*" or "istio-system/*")')
        return None
    if ns not in (".", "*", "~") and not names.is_dns_label(ns):
        node.error(f"{text!r}: {ns!r} is not a namespace")
        return None
    return text


def _egress(node: Node) -> EgressListener | None:
    f = node.fields()
    if f is None:
        return None
    port = _sidecar_port(f.get("port"))
    bind = _bind(f)
    mode = _capture(f)
    hosts_node = f.require("hosts")
    hosts: list[str] = []
    for h in [] if hosts_node is None else hosts_node.items():
        value = _sidecar_host(h)
        if value is not None:
            hosts.append(value)
    f.finish()
    return EgressListener(tuple(hosts), port, bind, mode)


def parse_sidecar(meta: ObjectMeta, root: Fields) -> Sidecar | None:
    spec = _spec(root)
    if spec is None:
        return None
    selector = _workload_selector(spec)
    ingress_node = spec.get("ingress")
    ingress = [_ingress(n) for n in (ingress_node.items() if ingress_node else [])]
    egress_node = spec.get("egress")
    egress = [_egress(n) for n in (egress_node.items() if egress_node else [])]
    policy: OutboundPolicy | None = None
    otp = spec.get("outboundTrafficPolicy")
    if otp is not None and (of := otp.fields()) is not None:
        mode = of.choice("mode", tuple(m.value for m in OutboundPolicy), "")
        policy = OutboundPolicy(mode) if mode else None
        of.finish()
    spec.finish()
    return Sidecar(
        meta,
        selector,
        tuple(i for i in ingress if i),
        tuple(e for e in egress if e),
        policy,
    )


def parse_generic(meta: ObjectMeta, root: Fields, kind: str, api_version: str) -> GenericResource:
    """A kind not implemented yet: keep its spec frozen; the loader warns once per object."""
    node = root.get("spec")
    spec = None if node is None else node.frozen()
    root.finish(ignore_all=True)
    return GenericResource(meta, kind, api_version, spec)
