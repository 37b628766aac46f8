"""DestinationRules -> outbound clusters: which rule applies to a service, and its subsets.

Theory of operation (Istio's PushContext.destinationRule + SidecarScope.DestinationRule):
- A rule's `host` is resolved in the rule's namespace ("reviews" ->
  "reviews.<ns>.svc.<domain>"; anything with a dot, and "*", as written). Only rules whose
  exportTo admits the proxy's namespace count.
- Rules for one host in one namespace without a workloadSelector are merged in name order (Istio
  orders by creation time, which config files do not have): subsets are added (a repeated subset
  name is dropped with a warning), the first top-level trafficPolicy wins (a later one is dropped
  with a warning). Rules with a workloadSelector stand alone (equal selectors merge).
- Lookup for a service: the proxy's namespace, then the service's namespace, then the root
  namespace (istio-system); a proxy in the root namespace looks at the service's namespace first.
  Within a namespace the exact host beats wildcards, a longer wildcard beats a shorter one. The
  first namespace with a host match decides: among its rules for that host, one whose
  workloadSelector matches the proxy's labels (only rules in the proxy's own namespace), else the
  one without a selector, else none.
- Clusters: the service port's `outbound|PORT||HOST` and `outbound|PORT|SUBSET|HOST` for every
  subset of the applying rule on every service port, whose endpoints are the port's endpoints
  carrying the subset's labels; each with its policy merged by `policy_settings.effective`.
  Headless services (and ServiceEntry resolution NONE) are ORIGINAL_DST: the endpoint is the
  address the client dialled.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from sidecar.config import policy_settings
from sidecar.config.registry import MeshPort, MeshService, Notes, exported_to
from sidecar.config.resources import MeshConfig
from sidecar.config.resources_destination import (
    DestinationRule,
    Subset,
)
from sidecar.config.scope import ROOT_NAMESPACE
from sidecar.config.snapshot import Cluster, DiscoveryType, Labels, Workload


def resolve_host(host: str, namespace: str, domain: str) -> str:
    """A DestinationRule host as Istio resolves it: short names in the rule's namespace."""
    if host == "*" or "." in host or _is_ip(host):
        return host
    return f"{host}.{namespace}.svc.{domain}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def host_match(pattern: str, hostname: str) -> bool:
    """Does a rule host (exact, "*" or "*.suffix") cover a service hostname?"""
    if pattern == hostname or pattern == "*":
        return True
    return pattern.startswith("*.") and hostname.endswith(pattern[1:])


@dataclass(frozen=True, slots=True)
class _Rule:
    """One consolidated rule: the merged DestinationRule and the objects it came from."""

    host: str  # resolved
    rule: DestinationRule  # first source, with merged subsets and trafficPolicy
    selector: Labels | None
    sources: tuple[DestinationRule, ...]


class PolicyIndex:
    """The DestinationRules as they apply to this proxy's outbound clusters.

    Made once per translate; `clusters(svc, port)` gives the service port's cluster and its
    subset clusters; `subset_cluster(host, port, subset)` names a subset cluster (None when the
    applying rule has no such subset or the host/port is not a known service port).
    """

    def __init__(
        self,
        mesh: MeshConfig,
        services: tuple[MeshService, ...],
        workload: Workload,
        domain: str,
        notes: Notes,
    ) -> None:
        self.workload = workload
        self.namespace = workload.namespace
        self.domain = domain
        self.notes = notes
        self._warned: set[str] = set()
        self._chosen: dict[tuple[str, str, bool], _Rule | None] = {}
        self.by_host: dict[str, MeshService] = {}
        for s in services:
            if s.visible_from(self.namespace):
                self.by_host.setdefault(s.hostname, s)
        # namespace -> resolved host -> consolidated rules (catch-all first, then by selector)
        self.rules: dict[str, dict[str, list[_Rule]]] = {}
        for dr in mesh.of(DestinationRule):
            ns = dr.meta.namespace
            if exported_to(dr.export_to, ns, self.namespace):
                self._add(resolve_host(dr.host, ns, domain), dr)
        self._check_hosts(services)

    # --- index --------------------------------------------------------------------------------

    def _add(self, host: str, dr: DestinationRule) -> None:
        rules = self.rules.setdefault(dr.meta.namespace, {}).setdefault(host, [])
        selector = dr.workload_selector or None
        for i, r in enumerate(rules):
            if r.selector == selector:
                rules[i] = self._merge(r, dr)
                return
        rules.append(_Rule(host, dr, selector, (dr,)))

    def _merge(self, into: _Rule, dr: DestinationRule) -> _Rule:
        first = into.rule
        names = {s.name for s in first.subsets}
        subsets = list(first.subsets)
        for i, s in enumerate(dr.subsets):
            if s.name in names:
                self.notes.warn(
                    dr,
                    f"spec.subsets[{i}]",
                    f"subset {s.name!r} of host {into.host} is already defined by "
                    f"{into.sources[0].ref}; this one is ignored (Istio merges rules for a host)",
                )
                continue
            names.add(s.name)
            subsets.append(s)
        policy = first.traffic_policy
        if policy is None:
            policy = dr.traffic_policy
        elif dr.traffic_policy is not None:
            self.notes.warn(
                dr,
                "spec.trafficPolicy",
                f"host {into.host} already has a trafficPolicy from {into.sources[0].ref}; "
                "this one is ignored (Istio keeps the first when merging rules for a host)",
            )
        merged = replace(first, subsets=tuple(subsets), traffic_policy=policy)
        return _Rule(into.host, merged, into.selector, (*into.sources, dr))

    def _check_hosts(self, services: tuple[MeshService, ...]) -> None:
        hostnames = {s.hostname for s in services}
        for by_host in self.rules.values():
            for host, rules in by_host.items():
                if host.startswith("*") or host in hostnames:
                    continue
                for r in rules:
                    for dr in r.sources:
                        if dr.subsets:
                            self.notes.warn(
                                dr,
                                "spec.host",
                                f"host {host} is not a known service; its subsets make no clusters",
                            )

    # --- lookup -------------------------------------------------------------------------------

    def _in_namespace(self, ns: str, hostname: str) -> list[_Rule] | None:
        by_host = self.rules.get(ns)
        if not by_host:
            return None
        if hostname in by_host:
            return by_host[hostname]
        wild = [h for h in by_host if h.startswith("*") and host_match(h, hostname)]
        if not wild:
            return None
        return by_host[max(wild, key=lambda h: (len(h), h))]

    def rule_for(self, svc: MeshService, inbound: bool = False) -> DestinationRule | None:
        """The (merged) DestinationRule that applies to `svc` for this proxy, if any.

        Inbound, Istio ignores rules with a workloadSelector (the Sidecar is the place for it).
        """
        key = (svc.hostname, svc.namespace, inbound)
        if key not in self._chosen:
            self._chosen[key] = self._lookup(svc, inbound)
        found = self._chosen[key]
        return found.rule if found is not None else None

    def _lookup(self, svc: MeshService, inbound: bool) -> _Rule | None:
        if self.namespace == ROOT_NAMESPACE:
            order = [svc.namespace, ROOT_NAMESPACE]
        else:
            order = [self.namespace, svc.namespace, ROOT_NAMESPACE]
        seen: set[str] = set()
        for ns in order:
            if ns in seen:
                continue
            seen.add(ns)
            rules = self._in_namespace(ns, svc.hostname)
            if rules is not None:
                chosen = self._select(rules, inbound)
                if chosen is not None:
                    self._warn_unapplied(chosen)
                return chosen
        return None

    def _select(self, rules: list[_Rule], inbound: bool) -> _Rule | None:
        catch_all = None
        for r in rules:
            if r.selector is None:
                catch_all = r
            elif inbound or r.rule.meta.namespace != self.namespace:
                continue
            elif r.selector <= self.workload.labels:
                return r
        return catch_all

    def _warn_unapplied(self, rule: _Rule) -> None:
        for dr in rule.sources:
            for path in policy_settings.unapplied(dr):
                key = f"{dr.ref} {path}"
                if key not in self._warned:
                    self._warned.add(key)
                    self.notes.warn(dr, path, "parsed; not applied yet")

    # --- clusters -----------------------------------------------------------------------------

    def clusters(self, svc: MeshService, port: MeshPort) -> list[Cluster]:
        """The port's cluster, then one per subset of the applying rule, policies merged."""
        rule = self.rule_for(svc)
        top = rule.traffic_policy if rule is not None else None
        base = _base_cluster(svc, port)
        out = [policy_settings.apply(base, policy_settings.effective(top, None, port.port))]
        for subset in rule.subsets if rule is not None else ():
            c = _subset_cluster(base, svc, port, subset)
            groups = policy_settings.effective(top, subset.traffic_policy, port.port)
            out.append(policy_settings.apply(c, groups))
        return out

    def inbound(self, cluster: Cluster, service: str, service_port: int) -> Cluster:
        """An inbound cluster with the connectionPool of the rule for the Service it serves
        (Istio applies only that group inbound; portLevelSettings by the service port)."""
        svc = self.by_host.get(resolve_host(service, self.namespace, self.domain))
        rule = self.rule_for(svc, inbound=True) if svc is not None and service else None
        if rule is None:
            return cluster
        groups = policy_settings.effective(rule.traffic_policy, None, service_port)
        return policy_settings.apply(cluster, policy_settings.Groups(None, groups.connection_pool))

    def subset_cluster(self, host: str, port: int, subset: str) -> str | None:
        """`outbound|PORT|SUBSET|HOST`, or None when there is no such subset cluster."""
        svc = self.by_host.get(host)
        if svc is None or all(p.port != port for p in svc.ports):
            return None
        rule = self.rule_for(svc)
        if rule is None or all(s.name != subset for s in rule.subsets):
            return None
        return f"outbound|{port}|{subset}|{host}"


def _base_cluster(svc: MeshService, port: MeshPort) -> Cluster:
    original_dst = svc.discovery is DiscoveryType.ORIGINAL_DST
    return Cluster(
        name=f"outbound|{port.port}||{svc.hostname}",
        discovery=svc.discovery,
        protocol=port.protocol,
        endpoints=() if original_dst else port.endpoints,
        dns_name=port.dns_name,
        dns_port=port.dns_port,
        service=svc.hostname,
        service_namespace=svc.namespace,
    )


def _subset_cluster(base: Cluster, svc: MeshService, port: MeshPort, subset: Subset) -> Cluster:
    endpoints = tuple(e for e in base.endpoints if subset.labels <= e.labels)
    # DNS endpoints carry their host names (the cluster resolves each one); a bare DNS host
    # (dns_name, no endpoints) has no labels, so only a subset without labels keeps it.
    dns_name, dns_port = ("", 0) if subset.labels else (base.dns_name, base.dns_port)
    return replace(
        base,
        name=f"outbound|{port.port}|{subset.name}|{svc.hostname}",
        endpoints=endpoints,
        dns_name=dns_name,
        dns_port=dns_port,
        subset=subset.name,
    )
