"""`sidecar run | validate | iptables | demo | traces`: the command line.

`run` builds the Bootstrap (defaults < PROXY_CONFIG < Istio environment variables < flags), starts
the proxy on uvloop and serves until SIGTERM. Other subcommands register themselves from their
own packages so each stays beside the code it drives.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sidecar import __version__
from sidecar.bootstrap import Mode, OutboundPolicy, build
from sidecar.errors import SidecarError

log = logging.getLogger("sidecar")

# (flag, Bootstrap field, type, help). Defaults live in Bootstrap; unset flags stay None.
_RUN_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--pod-name", "pod_name", str, "workload name (env POD_NAME)"),
    ("--pod-namespace", "pod_namespace", str, "workload namespace (env POD_NAMESPACE)"),
    ("--instance-ip", "instance_ip", str, "workload IP (env INSTANCE_IP)"),
    ("--service-account", "service_account", str, "env SERVICE_ACCOUNT"),
    ("--cluster-domain", "cluster_domain", str, "default cluster.local"),
    ("--outbound-port", "outbound_port", int, "outbound capture port, 0 = off (15001)"),
    ("--inbound-port", "inbound_port", int, "inbound capture port, 0 = off (15006)"),
    ("--bind-address", "bind_address", str, "capture listeners' address (0.0.0.0)"),
    ("--admin-address", "admin_address", str, "admin address (127.0.0.1)"),
    ("--admin-port", "admin_port", int, "admin port, 0 = any free port (15000)"),
    ("--status-address", "status_address", str, "health address (0.0.0.0)"),
    ("--status-port", "status_port", int, "health port /healthz/ready, 0 = off (15021)"),
    ("--prometheus-port", "prometheus_port", int, "Prometheus port, 0 = off (15090)"),
    ("--concurrency", "concurrency", int, "worker processes (1)"),
    ("--drain-duration", "drain_duration", float, "seconds (45)"),
    ("--termination-drain-duration", "termination_drain_duration", float, "seconds (5)"),
    ("--protocol-detection-timeout", "protocol_detection_timeout", float,
     "seconds auto-detection waits for a client's first bytes, 0 = no limit (0.1)"),
    ("--access-log", "access_log", str, 'access log path; "" = off (/dev/stdout)'),
    ("--access-log-format", "access_log_format", str,
     "text (Istio's default) | json (Istio's keys) | envoy (Envoy's default) | an Envoy format "
     "string of %%COMMAND%% operators | a JSON object of them (json_format) (text)"),
    ("--log-level", "log_level", str, "debug | info | warning | error (info)"),
    ("--watch-interval", "watch_interval", float,
     "seconds between checks of the config files for changes (1)"),
    ("--stats-histogram-buckets", "stats_histogram_buckets", str,
     'histogram bounds by stat prefix, JSON as the annotation sidecar.istio.io/'
     'statsHistogramBuckets: {"istiocustom": [1, 5, 10]}; replaces its equal prefixes'),
)
# Flags that override one field of Bootstrap.tracing (PROXY_CONFIG tracing.*).
_TRACING_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--zipkin-address", "zipkin_address", str,
     "Zipkin collector host:port; spans are posted to /api/v2/spans (PROXY_CONFIG "
     "tracing.zipkin.address); empty = tracing off"),
    ("--trace-sampling", "sampling", float, "percent of requests traced (PROXY_CONFIG "
     "tracing.sampling; 1)"),
    ("--zipkin-flush-interval", "flush_interval", float, "seconds between posts of the "
     "queued spans, sooner when 256 are queued (Envoy's tracing.zipkin.flush_interval_ms; 5)"),
)


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the proxy")
    p.add_argument(
        "--config", "-c", action="append", default=[], metavar="FILE",
        help="mesh config YAML (repeatable); a directory means every *.yaml in it",
    )
    for flag, dest, typ, help_ in _RUN_FLAGS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    for flag, dest, typ, help_ in _TRACING_FLAGS:
        p.add_argument(flag, dest=f"tracing_{dest}", type=typ, default=None, help=help_)
    p.add_argument("--mode", choices=[m.value for m in Mode], default=None)
    p.add_argument(
        "--outbound-traffic-policy", dest="outbound_policy",
        choices=[m.value for m in OutboundPolicy], default=None,
        help="unknown destinations: ALLOW_ANY passes them through, REGISTRY_ONLY refuses them",
    )
    p.add_argument("--ipv6", action="store_true", default=None, help="also capture IPv6")
    p.add_argument(
        "--dns-resolver", dest="dns_resolvers", action="append", default=None, metavar="IP[:PORT]",
        help="nameserver for DNS clusters (repeatable); default: those of /etc/resolv.conf",
    )
    p.add_argument("--no-metrics", dest="metrics", action="store_false", default=None,
                   help="do not record Istio's standard metrics (istio_*); Envoy's stats stay")
    p.add_argument("--no-watch", dest="watch_config", action="store_false", default=None,
                   help="do not reload when config files change")
    p.set_defaults(func=_run)


def _config_files(items: Sequence[str]) -> tuple[Path, ...]:
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(q for q in path.iterdir() if q.suffix in (".yaml", ".yml")))
        else:
            files.append(path)
    return tuple(files)


def _run(args: argparse.Namespace) -> int:
    overrides = {
        dest: getattr(args, dest)
        for _, dest, _, _ in _RUN_FLAGS
    }
    overrides["config_files"] = _config_files(args.config) or None
    overrides["mode"] = Mode(args.mode) if args.mode else None
    overrides["outbound_policy"] = (
        OutboundPolicy(args.outbound_policy) if args.outbound_policy else None
    )
    overrides["ipv6"] = args.ipv6
    overrides["dns_resolvers"] = tuple(args.dns_resolvers) if args.dns_resolvers else None
    overrides["watch_config"] = args.watch_config
    overrides["metrics"] = args.metrics
    overrides["tracing"] = {
        dest: getattr(args, f"tracing_{dest}") for _, dest, _, _ in _TRACING_FLAGS
    }
    boot = build(overrides)
    _setup_logging(boot.log_level)
    if boot.concurrency > 1:
        log.warning(
            "concurrency %d requested: this build runs one worker process "
            "(multi-worker serving is not built yet)",
            boot.concurrency,
        )
    if not boot.config_files:
        log.warning("no --config given: no services known, every destination passes through")
    return _serve(boot)


def _serve(boot: Any) -> int:
    from sidecar.server import ProxyServer, StartupError

    async def main() -> int:
        server = ProxyServer(boot)
        try:
            await server.start()
        except StartupError as exc:
            log.error("%s", exc)
            return 1
        log.info("sidecar %s ready: node %s", __version__, boot.node_id)
        return await server.serve()

    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="[%(asctime)s][%(process)d][%(levelname)s][%(name)s] %(message)s",
        stream=sys.stderr,
    )


def parser() -> argparse.ArgumentParser:
    from sidecar.capture.cli import register as register_iptables
    from sidecar.config.validate import register as register_validate
    from sidecar.demo.cli import register as register_demo
    from sidecar.observability.collector import register as register_traces

    p = argparse.ArgumentParser(prog="sidecar", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"sidecar {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub)
    register_validate(sub)
    register_iptables(sub)
    register_demo(sub)
    register_traces(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SidecarError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
