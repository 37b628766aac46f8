"""Admin views of the run-time state: /stats, /clusters, /listeners (text and JSON).

Theory of operation: nothing is registered ahead of time; each request walks the live objects
(`Runtime.counters`, each `ClusterState`'s counters and endpoints, the access log's counters) and
renders them in Envoy's formats. Server-wide counters (`ServerCounters`) aggregate every listener
and HTTP connection manager, so they are named with the stat prefix `all`
(`listener.all.downstream_cx_total`, `http.all.downstream_rq_total`); per-cluster counters are
Envoy's `cluster.<name>.<counter>`.

/clusters prints each endpoint with `cx_*`/`rq_*` values that are the CLUSTER's totals: the
cluster manager does not keep counters per endpoint yet.
"""

from __future__ import annotations

import re
import time
from dataclasses import fields
from typing import Any

from sidecar.admin.dump import STATE_CODES, server_state
from sidecar.admin.target import AdminTarget
from sidecar.observability.access_log import FileAccessLogger
from sidecar.upstream.cluster import ClusterCounters, ClusterState

# ServerCounters field -> Envoy stat name.
SERVER_STAT_NAMES = {
    "downstream_cx_total": "listener.all.downstream_cx_total",
    "downstream_cx_active": "listener.all.downstream_cx_active",
    "downstream_cx_destroy": "listener.all.downstream_cx_destroy",
    "downstream_rq_total": "http.all.downstream_rq_total",
    "downstream_rq_active": "http.all.downstream_rq_active",
    "downstream_rq_4xx": "http.all.downstream_rq_4xx",
    "downstream_rq_5xx": "http.all.downstream_rq_5xx",
    "downstream_cx_protocol_error": "http.all.downstream_cx_protocol_error",
}

_CLUSTER_FIELDS = tuple(f.name for f in fields(ClusterCounters))


def collect(target: AdminTarget) -> dict[str, int]:
    """Every stat, by Envoy name (unsorted)."""
    rt = target.runtime
    out: dict[str, int] = {
        "server.live": 1 if target.is_ready() else 0,
        "server.state": STATE_CODES[server_state(target)],
        "server.uptime": max(0, int(time.time() - target.started_at)),
        "server.concurrency": target.bootstrap.concurrency,
        "server.hot_restart_epoch": 0,
        "server.total_connections": rt.counters.downstream_cx_active,
        "listener_manager.total_listeners_active": len(target.listener_addresses()),
    }
    for field_name, stat in SERVER_STAT_NAMES.items():
        out[stat] = getattr(rt.counters, field_name)
    states = rt.cluster_manager.states()
    out["cluster_manager.active_clusters"] = len(states)
    for state in states:
        prefix = f"cluster.{state.cluster.name}."
        for name in _CLUSTER_FIELDS:
            out[prefix + name] = getattr(state.counters, name)
        out[prefix + "membership_total"] = len(state.endpoints)
        out[prefix + "membership_healthy"] = len(state.endpoints)
    if isinstance(rt.access_log, FileAccessLogger):
        out.update(rt.access_log.stats())
    if rt.tracer is not None:
        out.update(rt.tracer.stats())
    return out


def select(
    stats: dict[str, int], pattern: re.Pattern[str] | None, used_only: bool
) -> list[tuple[str, int]]:
    """Sorted by name; `?filter=` is a regex searched anywhere in the name (as Envoy does)."""
    return [
        (name, value)
        for name, value in sorted(stats.items())
        if (pattern is None or pattern.search(name)) and (not used_only or value)
    ]


def stats_text(items: list[tuple[str, int]]) -> str:
    return "".join(f"{name}: {value}\n" for name, value in items)


def stats_json(items: list[tuple[str, int]]) -> dict[str, Any]:
    return {"stats": [{"name": name, "value": value} for name, value in items]}


def _host_stats(c: ClusterCounters) -> list[tuple[str, int]]:
    """Envoy's per-host stats, from the cluster's counters (see the module comment)."""
    return [
        ("cx_active", c.upstream_cx_active),
        ("cx_connect_fail", c.upstream_cx_connect_fail),
        ("cx_total", c.upstream_cx_total),
        ("rq_active", c.upstream_rq_active),
        ("rq_error", c.upstream_rq_5xx),
        ("rq_success", c.upstream_rq_2xx + c.upstream_rq_3xx + c.upstream_rq_4xx),
        ("rq_timeout", c.upstream_rq_timeout),
        ("rq_total", c.upstream_rq_total),
    ]


_GAUGES = frozenset({"cx_active", "rq_active"})


def _locality(locality: str) -> tuple[str, str, str]:
    parts = [*locality.split("/"), "", "", ""][:3]
    return parts[0], parts[1], parts[2]


def _sorted_states(target: AdminTarget) -> list[ClusterState]:
    return sorted(target.runtime.cluster_manager.states(), key=lambda s: s.cluster.name)


def clusters_text(target: AdminTarget) -> str:
    lines: list[str] = []
    for state in _sorted_states(target):
        name = state.cluster.name
        lines.append(f"{name}::observability_name::{name}")
        lines.append(f"{name}::added_via_api::true")
        host_stats = _host_stats(state.counters)
        for ep in state.endpoints:
            host = f"{name}::{ep.address}:{ep.port}"
            lines.extend(f"{host}::{stat}::{value}" for stat, value in host_stats)
            region, zone, sub_zone = _locality(ep.locality)
            lines.extend(
                [
                    f"{host}::hostname::{ep.workload}",
                    f"{host}::health_flags::healthy",
                    f"{host}::weight::{ep.weight}",
                    f"{host}::region::{region}",
                    f"{host}::zone::{zone}",
                    f"{host}::sub_zone::{sub_zone}",
                    f"{host}::canary::false",
                    f"{host}::priority::0",
                    f"{host}::success_rate::-1.0",
                    f"{host}::local_origin_success_rate::-1.0",
                ]
            )
    return "".join(line + "\n" for line in lines)


def clusters_json(target: AdminTarget) -> dict[str, Any]:
    statuses: list[dict[str, Any]] = []
    for state in _sorted_states(target):
        host_stats = [
            {"type": "GAUGE", "name": stat, "value": str(value)}
            if stat in _GAUGES
            else {"name": stat, "value": str(value)}
            for stat, value in _host_stats(state.counters)
        ]
        hosts = []
        for ep in state.endpoints:
            region, zone, sub_zone = _locality(ep.locality)
            hosts.append(
                {
                    "address": {"socket_address": {"address": ep.address, "port_value": ep.port}},
                    "stats": host_stats,
                    "health_status": {"eds_health_status": "HEALTHY"},
                    "weight": ep.weight,
                    "hostname": ep.workload,
                    "locality": {"region": region, "zone": zone, "sub_zone": sub_zone},
                }
            )
        statuses.append(
            {
                "name": state.cluster.name,
                "observability_name": state.cluster.name,
                "added_via_api": True,
                "host_statuses": hosts,
            }
        )
    return {"cluster_statuses": statuses}


def listeners_text(target: AdminTarget) -> str:
    """Envoy's form: `name::address:port`, IPv6 addresses in brackets."""
    return "".join(
        f"{n}::[{a}]:{p}\n" if ":" in a else f"{n}::{a}:{p}\n"
        for n, a, p in target.listener_addresses()
    )


def listeners_json(target: AdminTarget) -> dict[str, Any]:
    return {
        "listener_statuses": [
            {"name": n, "local_address": {"socket_address": {"address": a, "port_value": p}}}
            for n, a, p in target.listener_addresses()
        ]
    }
