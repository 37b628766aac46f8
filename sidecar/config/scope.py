"""Which Sidecar resource shapes this proxy, and which services it lets the workload see.

Selection follows Istio: a Sidecar in the workload's namespace whose workloadSelector matches the
workload's labels; else that namespace's Sidecar without a selector; else the root namespace's
(istio-system) Sidecar without a selector. Ties go to the first by name.

Visibility of a service on a port: its exportTo must admit the proxy's namespace, and when the
Sidecar has egress listeners, the one for that port (or else the catch-all one without a port)
must list it in `hosts` ("ns/host": ns may be "." for the proxy's namespace, "*" for any, "~"
for none; host may be "*", "*.suffix" or an exact hostname).
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.config.registry import MeshService
from sidecar.config.resources import CaptureMode, EgressListener, MeshConfig, Sidecar
from sidecar.config.snapshot import Labels

ROOT_NAMESPACE = "istio-system"


def select_sidecar(mesh: MeshConfig, namespace: str, labels: Labels) -> Sidecar | None:
    """The Sidecar that applies to a workload with `labels` in `namespace`, if any."""
    sidecars = mesh.of(Sidecar)
    for sc in sidecars:
        selector = sc.workload_selector
        if sc.meta.namespace == namespace and selector and selector <= labels:
            return sc
    for ns in (namespace, ROOT_NAMESPACE):
        for sc in sidecars:
            if sc.meta.namespace == ns and not sc.workload_selector:
                return sc
    return None


def host_matches(pattern: str, svc: MeshService, proxy_ns: str) -> bool:
    """One Sidecar egress host "ns/host" against a service."""
    ns, _, host = pattern.partition("/")
    if ns == "~":
        return False
    if ns == ".":
        ns = proxy_ns
    if ns != "*" and ns != svc.namespace:
        return False
    if host == "*":
        return True
    if host.startswith("*."):
        return svc.hostname.endswith(host[1:])
    return host == svc.hostname


@dataclass(frozen=True)
class Scope:
    """The proxy's namespace and its Sidecar: answers what is visible and what is captured."""

    namespace: str
    sidecar: Sidecar | None

    def egress_for(self, port: int) -> EgressListener | None:
        """The egress listener that governs `port`: the one with that port, else the catch-all."""
        if self.sidecar is None:
            return None
        for e in self.sidecar.egress:
            if e.port is not None and e.port.number == port:
                return e
        for e in self.sidecar.egress:
            if e.port is None:
                return e
        return None

    def visible(self, svc: MeshService, port: int, egress: EgressListener | None = None) -> bool:
        if not svc.visible_from(self.namespace):
            return False
        if self.sidecar is None or not self.sidecar.egress:
            return True
        entry = egress or self.egress_for(port)
        if entry is None:
            return False
        return any(host_matches(h, svc, self.namespace) for h in entry.hosts)

    @property
    def capture(self) -> bool:
        """False when every ingress and egress entry of the Sidecar has captureMode NONE."""
        if self.sidecar is None:
            return True
        modes = [i.capture_mode for i in self.sidecar.ingress]
        modes += [e.capture_mode for e in self.sidecar.egress]
        return not modes or not all(m is CaptureMode.NONE for m in modes)
