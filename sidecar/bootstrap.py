"""Bootstrap: who this proxy is and how it runs, kept apart from the mesh config.

Sources, weakest first: Istio's defaults, the `PROXY_CONFIG` environment variable (Istio's
ProxyConfig as YAML or JSON), Istio's other environment variables (`POD_NAME`, `POD_NAMESPACE`,
`INSTANCE_IP`, `SERVICE_ACCOUNT`, ...), then command-line flags. The result is one frozen
`Bootstrap` that the translator and server read.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from sidecar.errors import BootstrapError
from sidecar.observability import metrics_buckets
from sidecar.observability.access_log_format import check_format as check_access_log_format
from sidecar.upstream.dns_conf import parse_server


class Mode(enum.Enum):
    """`sidecar` beside one workload, or `router` for a gateway."""

    SIDECAR = "sidecar"
    ROUTER = "router"


class OutboundPolicy(enum.Enum):
    """Istio's meshConfig.outboundTrafficPolicy.mode for destinations outside the registry."""

    ALLOW_ANY = "ALLOW_ANY"
    REGISTRY_ONLY = "REGISTRY_ONLY"


@dataclass(frozen=True)
class Tracing:
    """ProxyConfig.tracing: where spans go and what share of requests is sampled."""

    zipkin_address: str = ""  # "host:port"; empty = tracing off
    sampling: float = 1.0  # percent, Istio's default
    # Seconds between posts of the spans queued (sooner when a batch is full): Envoy's runtime
    # default for tracing.zipkin.flush_interval_ms. Not in ProxyConfig; a flag only.
    flush_interval: float = 5.0


@dataclass(frozen=True)
class Bootstrap:
    """Everything the proxy needs to know that is not mesh config."""

    config_files: tuple[Path, ...] = ()
    pod_name: str = ""
    pod_namespace: str = "default"
    instance_ip: str = ""
    service_account: str = "default"
    cluster_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    mode: Mode = Mode.SIDECAR
    outbound_policy: OutboundPolicy = OutboundPolicy.ALLOW_ANY
    # Ports, with Istio's defaults.
    outbound_port: int = 15001
    inbound_port: int = 15006
    admin_port: int = 15000
    admin_address: str = "127.0.0.1"
    status_port: int = 15021  # ProxyConfig.statusPort
    status_address: str = "0.0.0.0"  # kubelet probes reach it on the pod IP
    prometheus_port: int = 15090
    bind_address: str = "0.0.0.0"  # capture listeners' address
    ipv6: bool = False  # also listen on [::] for captured IPv6 traffic
    inbound_passthrough_ipv4: str = "127.0.0.6"
    inbound_passthrough_ipv6: str = "::6"
    # Lifecycle (seconds).
    concurrency: int = 1
    drain_duration: float = 45.0  # ProxyConfig.drainDuration
    termination_drain_duration: float = 5.0  # ProxyConfig.terminationDrainDuration
    watch_config: bool = True
    metrics: bool = True  # Istio's standard metrics recorded (the proxy's own stats always are)
    # Histogram bounds by stat prefix (--stats-histogram-buckets JSON, as Istio's annotation
    # sidecar.istio.io/statsHistogramBuckets, whose prefixes these replace); sorted by prefix.
    stats_histogram_buckets: metrics_buckets.Overrides = ()
    watch_interval: float = 1.0
    # Protocol detection on auto ports waits this long for the client's first bytes before
    # treating the connection as TCP (server-first protocols); 0 = wait for ever. Istio: 100ms.
    protocol_detection_timeout: float = 0.1
    # Nameservers for DNS clusters, "ip" or "ip:port"; empty = those of /etc/resolv.conf
    # (whose search, ndots, timeout and attempts options apply either way).
    dns_resolvers: tuple[str, ...] = ()
    # Observability.
    log_level: str = "info"
    access_log: str = "/dev/stdout"  # path, or "" for off
    access_log_format: str = "text"  # "text" (Envoy's default) or "json"
    tracing: Tracing = field(default_factory=Tracing)

    @property
    def node_id(self) -> str:
        """Istio's node id: sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN."""
        return (
            f"{self.mode.value}~{self.instance_ip or '127.0.0.1'}~{self.pod_name}."
            f"{self.pod_namespace}~{self.pod_namespace}.svc.{self.cluster_domain}"
        )


# ProxyConfig field (camelCase) -> Bootstrap field, with a converter.
def _duration(value: Any) -> float:
    """Parse a protobuf Duration as Istio writes it ("45s", "1m", "500ms", "1.5s") or a number."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    units = (("ms", 0.001), ("us", 1e-6), ("h", 3600.0), ("m", 60.0), ("s", 1.0))
    for suffix, scale in units:
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * scale
            except ValueError:
                break
    raise BootstrapError(f"invalid duration {value!r}: expected a number with unit s, ms, m or h")


_PROXY_CONFIG_FIELDS: dict[str, tuple[str, Any]] = {
    "concurrency": ("concurrency", int),
    "drainDuration": ("drain_duration", _duration),
    "terminationDrainDuration": ("termination_drain_duration", _duration),
    "statusPort": ("status_port", int),
    "proxyAdminPort": ("admin_port", int),
}

_ENV_FIELDS: dict[str, tuple[str, Any]] = {
    "POD_NAME": ("pod_name", str),
    "POD_NAMESPACE": ("pod_namespace", str),
    "INSTANCE_IP": ("instance_ip", str),
    "SERVICE_ACCOUNT": ("service_account", str),
    "ISTIO_META_CLUSTER_ID": ("cluster_id", str),
    "CLUSTER_DOMAIN": ("cluster_domain", str),
}


def from_proxy_config(text: str) -> dict[str, Any]:
    """Bootstrap overrides from Istio's ProxyConfig given as YAML or JSON text."""
    try:
        doc = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise BootstrapError(f"PROXY_CONFIG: not YAML or JSON: {exc}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise BootstrapError("PROXY_CONFIG: expected a mapping (ProxyConfig)")
    out: dict[str, Any] = {}
    for key, (name, conv) in _PROXY_CONFIG_FIELDS.items():
        if key in doc:
            try:
                out[name] = conv(doc[key])
            except (TypeError, ValueError) as exc:
                raise BootstrapError(f"PROXY_CONFIG: {key}: {exc}") from exc
    tracing = doc.get("tracing")
    if isinstance(tracing, dict):
        zipkin = tracing.get("zipkin") or {}
        sampling = tracing.get("sampling", Tracing.sampling)
        try:
            out["tracing"] = Tracing(
                zipkin_address=str(zipkin.get("address", "")) if isinstance(zipkin, dict) else "",
                sampling=float(sampling),
            )
        except (TypeError, ValueError) as exc:
            raise BootstrapError(f"PROXY_CONFIG: tracing.sampling: {exc}") from exc
    elif tracing is not None:
        raise BootstrapError("PROXY_CONFIG: tracing: expected a mapping")
    return out


def from_environment(env: Mapping[str, str]) -> dict[str, Any]:
    """Bootstrap overrides from Istio's environment variables (PROXY_CONFIG included)."""
    out: dict[str, Any] = {}
    if env.get("PROXY_CONFIG"):
        out.update(from_proxy_config(env["PROXY_CONFIG"]))
    for var, (name, conv) in _ENV_FIELDS.items():
        if env.get(var):
            out[name] = conv(env[var])
    return out


def build(overrides: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Bootstrap:
    """Defaults, then the environment, then `overrides` (flags: only those the user gave;
    `tracing` may be a mapping of some Tracing fields, which override only those)."""
    values = from_environment(os.environ if env is None else env)
    tracing = overrides.get("tracing")
    if isinstance(tracing, Mapping):  # flags: the tracing fields given, over PROXY_CONFIG's
        given = {k: v for k, v in tracing.items() if v is not None}
        values["tracing"] = replace(values.get("tracing", Tracing()), **given)
        overrides = {k: v for k, v in overrides.items() if k != "tracing"}
    values.update({k: v for k, v in overrides.items() if v is not None})
    buckets = values.get("stats_histogram_buckets")
    if isinstance(buckets, str):  # the flag's JSON text
        try:
            values["stats_histogram_buckets"] = metrics_buckets.parse(buckets)
        except ValueError as exc:
            raise BootstrapError(f"--stats-histogram-buckets: {exc}") from None
    known = {f.name for f in fields(Bootstrap)}
    unknown = set(values) - known
    if unknown:
        raise BootstrapError(f"unknown bootstrap settings: {', '.join(sorted(unknown))}")
    boot = replace(Bootstrap(), **values)
    _check(boot)
    return boot


def _check(boot: Bootstrap) -> None:
    ports = {
        "outbound_port": boot.outbound_port,
        "inbound_port": boot.inbound_port,
        "admin_port": boot.admin_port,
        "status_port": boot.status_port,
        "prometheus_port": boot.prometheus_port,
    }
    for name, port in ports.items():
        if not 0 <= port <= 65535:
            raise BootstrapError(f"{name}: {port} is not a TCP port")
    if boot.concurrency < 1:
        raise BootstrapError(f"concurrency: {boot.concurrency}: must be at least 1")
    if not 0.0 <= boot.tracing.sampling <= 100.0:
        raise BootstrapError(f"tracing.sampling: {boot.tracing.sampling}: must be 0..100 percent")
    if not boot.tracing.flush_interval > 0:
        raise BootstrapError(
            f"tracing.flush_interval: {boot.tracing.flush_interval}: must be > 0 seconds"
        )
    if boot.protocol_detection_timeout < 0:
        raise BootstrapError(
            f"protocol_detection_timeout: {boot.protocol_detection_timeout}: must be >= 0"
        )
    if not boot.watch_interval > 0:
        raise BootstrapError(f"watch_interval: {boot.watch_interval}: must be > 0 seconds")
    for server in boot.dns_resolvers:
        parse_server(server)  # raises BootstrapError
    check_access_log_format(boot.access_log_format)  # raises BootstrapError naming the operator


def to_json(boot: Bootstrap) -> dict[str, Any]:
    """The bootstrap as JSON data, for /server_info and /config_dump."""
    out: dict[str, Any] = {}
    for f in fields(Bootstrap):
        v = getattr(boot, f.name)
        if isinstance(v, enum.Enum):
            v = v.value
        elif isinstance(v, tuple):
            v = [str(p) for p in v]
        elif isinstance(v, Tracing):
            v = {"zipkin_address": v.zipkin_address, "sampling": v.sampling,
                 "flush_interval": v.flush_interval}  # fmt: skip
        elif f.name == "stats_histogram_buckets":
            v = metrics_buckets.to_json(v)
        out[f.name] = v
    out["node_id"] = boot.node_id
    return json.loads(json.dumps(out))  # type: ignore[no-any-return]
