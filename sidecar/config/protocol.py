"""What a port speaks, read the way Istio reads it.

Order: an explicit protocol (Kubernetes `appProtocol`, or the `protocol` field of Istio's
ServiceEntry/Sidecar ports), else the port name `<proto>` or `<proto>-<suffix>`. Anything else is
UNSUPPORTED, which the proxy treats as opaque TCP until protocol sniffing lands. The Kubernetes
`protocol` field (TCP/UDP/SCTP) is the transport, not the application protocol, and is not read.
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.config.snapshot import Protocol

_BY_NAME: Mapping[str, Protocol] = {
    "http": Protocol.HTTP,
    "http2": Protocol.HTTP2,
    "grpc": Protocol.GRPC,
    "grpc-web": Protocol.HTTP,
    "https": Protocol.TLS,
    "tls": Protocol.TLS,
    "tcp": Protocol.TCP,
    "mongo": Protocol.TCP,
    "mysql": Protocol.TCP,
    "redis": Protocol.TCP,
    # Kubernetes' standard appProtocol values.
    "kubernetes.io/h2c": Protocol.HTTP2,
    "kubernetes.io/ws": Protocol.HTTP,
    "kubernetes.io/wss": Protocol.TLS,
}


def parse(value: str) -> Protocol | None:
    """A protocol written out in full ("HTTP", "grpc", "kubernetes.io/h2c"), or None."""
    return _BY_NAME.get(value.lower())


def from_port_name(name: str) -> Protocol:
    """`http`, `http-web`, `grpc-api`, `tcp-db`, ...: the part before the first '-' decides."""
    lowered = name.lower()
    exact = _BY_NAME.get(lowered)
    if exact is not None and "/" not in lowered:
        return exact
    prefix = lowered.partition("-")[0]
    return _BY_NAME.get(prefix, Protocol.UNSUPPORTED)


def port_protocol(explicit: str, name: str) -> Protocol:
    """The explicit protocol when it is one Istio knows, else the one the name implies."""
    if explicit:
        found = parse(explicit)
        if found is not None:
            return found
    return from_port_name(name)
