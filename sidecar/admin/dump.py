"""Admin views of the configuration and the server: /server_info, /config_dump, server state.

Theory of operation: everything is computed on request from the target's bootstrap, its current
snapshot (`Snapshot.to_json()`) and `bootstrap.to_json()`, shaped like Envoy's admin protos
(`ServerInfo`, `ConfigDump` with Bootstrap/Listeners/Clusters/Routes sections) so the tools people
point at Envoy (istioctl proxy-config style scripts, jq one-liners) find fields where they expect.
"""

from __future__ import annotations

import platform
import time
from typing import Any

from sidecar import __version__
from sidecar.admin.target import AdminTarget
from sidecar.bootstrap import to_json as bootstrap_json

ADMIN_TYPE = "type.googleapis.com/envoy.admin.v3."

# Envoy's server.state gauge values.
STATE_CODES = {"LIVE": 0, "DRAINING": 1, "PRE_INITIALIZING": 2, "INITIALIZING": 3}

# config_dump section -> (section type, the list field in it, the type of one item of that list)
_SECTIONS = {
    "listeners": ("ListenersConfigDump", "dynamic_listeners", "DynamicListener"),
    "clusters": ("ClustersConfigDump", "dynamic_active_clusters", "DynamicCluster"),
    "routes": ("RoutesConfigDump", "dynamic_route_configs", "DynamicRouteConfig"),
}


def server_state(target: AdminTarget) -> str:
    """Envoy's server state: LIVE; DRAINING once bound but draining or health-failed; else
    PRE_INITIALIZING (listeners not bound yet)."""
    if target.is_ready():
        return "LIVE"
    if target.runtime.draining or target.listener_addresses():
        return "DRAINING"
    return "PRE_INITIALIZING"


def version_string() -> str:
    """Envoy's shape: build/version/status/type/ssl; ours names the Python it runs on."""
    python = f"{platform.python_implementation()}-{platform.python_version()}"
    return f"sidecar/{__version__}/Clean/RELEASE/{python}"


def uptime_seconds(target: AdminTarget) -> int:
    return max(0, int(time.time() - target.started_at))


def node(target: AdminTarget) -> dict[str, Any]:
    """The node as Istio's bootstrap describes it: id, cluster (app.namespace), metadata."""
    boot = target.bootstrap
    workload = target.snapshot.workload
    app = workload.label("app") or workload.name or boot.pod_name or "sidecar"
    return {
        "id": boot.node_id,
        "cluster": f"{app}.{boot.pod_namespace}",
        "metadata": {
            "NAME": boot.pod_name,
            "NAMESPACE": boot.pod_namespace,
            "INSTANCE_IPS": boot.instance_ip,
            "SERVICE_ACCOUNT": boot.service_account,
            "CLUSTER_ID": boot.cluster_id,
            "LABELS": dict(sorted(workload.labels)),
        },
        "user_agent_name": "sidecar",
        "user_agent_version": __version__,
    }


def server_info(target: AdminTarget) -> dict[str, Any]:
    uptime = f"{uptime_seconds(target)}s"
    return {
        "version": version_string(),
        "state": server_state(target),
        "hot_restart_version": "disabled",
        "command_line_options": bootstrap_json(target.bootstrap),
        "node": node(target),
        "uptime_current_epoch": uptime,
        "uptime_all_epochs": uptime,
    }


def config_dump(target: AdminTarget) -> dict[str, Any]:
    """All sections, in Envoy's order: bootstrap, clusters, listeners, routes (+ our snapshot)."""
    snap = target.snapshot
    data = snap.to_json()
    version = snap.version
    boot = bootstrap_json(target.bootstrap)
    boot["node"] = node(target)
    listeners = [
        {"name": lst["name"], "active_state": {"version_info": version, "listener": lst}}
        for lst in data["listeners"]
    ]
    clusters = [
        {"version_info": version, "cluster": c} for _, c in sorted(data["clusters"].items())
    ]
    routes = [
        {"version_info": version, "route_config": r}
        for _, r in sorted(data["route_configs"].items())
    ]
    items = {"listeners": listeners, "clusters": clusters, "routes": routes}
    configs: list[dict[str, Any]] = [
        {"@type": ADMIN_TYPE + "BootstrapConfigDump", "bootstrap": boot},
    ]
    for key in ("clusters", "listeners", "routes"):
        section, field, _ = _SECTIONS[key]
        configs.append({"@type": ADMIN_TYPE + section, "version_info": version, field: items[key]})
    configs.append(
        {
            "@type": "type.googleapis.com/sidecar.admin.SnapshotConfigDump",  # not Envoy's
            "version_info": version,
            "workload": data["workload"],
            "warnings": data["warnings"],
        }
    )
    return {"configs": configs}


def config_dump_resource(target: AdminTarget, resource: str) -> dict[str, Any] | None:
    """`?resource=dynamic_listeners` and the like: each item typed on its own; None if unknown."""
    for section, field, item in _SECTIONS.values():
        if field != resource:
            continue
        dump = config_dump(target)
        found = next(c for c in dump["configs"] if c["@type"] == ADMIN_TYPE + section)
        typed = [{"@type": f"{ADMIN_TYPE}{section}.{item}", **entry} for entry in found[field]]
        return {"configs": typed}
    return None
