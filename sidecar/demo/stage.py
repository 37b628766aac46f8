"""What a demo setting (loopback or capture) gives the driver, and the command lines it uses.

Theory of operation: the driver (`sidecar.demo.run`) does the same thing in both settings - start
two apps and two sidecars, wait until each answers its readiness URL, send requests, read the
sidecars' access logs, stop everything. A `Stage` is everything that differs: where processes
run, which addresses they use, where the client stands, and which hops a request should pass.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sidecar.demo.processes import ProcessGroup, Site, Started
from sidecar.demo.trail import HopSpec

NAMESPACE = "default"
A_SERVICE = "a.default.svc.cluster.local"
B_SERVICE = "b.default.svc.cluster.local"
B_AUTHORITY = f"{B_SERVICE}:9080"  # what app a calls b by
PROXY_UID = 1337
PROMETHEUS_PORT = 15090  # each sidecar's /stats/prometheus, on its status address
FAIL_EVERY = 4  # the canary b v2 answers every 4th request with 503 (the bug it is caught with)


@dataclass(frozen=True)
class Endpoint:
    """An HTTP base URL of the demo (a sidecar's metrics, the trace collector), reached from
    `site`; `label` names whose it is."""

    label: str
    url: str
    site: Site


@dataclass(frozen=True)
class Waiter:
    """A started process and the URL that answers 200 once it is ready, probed from `site`."""

    started: Started
    url: str
    site: Site


class Stage(Protocol):
    """One demo setting: loopback (`LoopbackStage`) or network namespaces (`CaptureStage`)."""

    title: str
    entry_url: str  # where the client sends its requests
    hops: tuple[HopSpec, ...]  # the access-log lines each request should leave, in path order
    canary: Canary | None  # the canary split to show after the requests (None: not staged)

    @property
    def client(self) -> Site:
        """Where the client stands (valid once start() has run)."""
        ...

    def describe(self) -> list[tuple[str, str, str]]:
        """(who, address, what) rows for the introduction."""
        ...

    def preflight(self) -> str | None:
        """Why this stage cannot run here (None when it can)."""
        ...

    def start(self, group: ProcessGroup) -> list[Waiter]:
        """Set up and start the apps and sidecars; what to wait for."""
        ...

    def access_logs(self, group: ProcessGroup) -> dict[str, Path]:
        """Sidecar label -> its access-log file."""
        ...

    def metrics(self) -> list[Endpoint]:
        """Each sidecar's Prometheus scrape URL (valid once start() has run)."""
        ...

    def collector(self) -> Endpoint | None:
        """The `sidecar traces` collector's base URL (None: this stage runs none)."""
        ...

    def close(self) -> list[str]:
        """Undo what start() set up beyond processes (namespaces); problems met doing so."""
        ...


def repo_file(*parts: str) -> Path:
    """A file of the source tree (the demo's mesh configs live in config/demo/)."""
    return Path(__file__).resolve().parents[2].joinpath(*parts)


def access_log_path(group: ProcessGroup, label: str) -> Path:
    return group.workdir / f"{label}.access.log"


def python_module(module: str, *args: str) -> list[str]:
    """argv running a module of this package with the current interpreter."""
    return [sys.executable, "-m", module, *args]


@dataclass(frozen=True)
class SidecarSpec:
    """How to start one demo sidecar with `sidecar run`."""

    pod: str  # pod (WorkloadEntry) name, also the process label
    instance_ip: str
    admin_address: str
    service_account: str
    config: Path

    def argv(self, access_log: Path, extra: Sequence[str] = ()) -> list[str]:
        return python_module(
            "sidecar.cli",
            "run",
            "--config", str(self.config),
            "--pod-name", self.pod,
            "--pod-namespace", NAMESPACE,
            "--instance-ip", self.instance_ip,
            "--service-account", self.service_account,
            "--admin-address", self.admin_address,
            "--admin-port", "15000",
            "--status-address", self.admin_address,
            "--status-port", "15021",
            "--prometheus-port", str(PROMETHEUS_PORT),
            "--access-log", str(access_log),
            "--drain-duration", "1",
            "--no-watch",
            *extra,
        )  # fmt: skip

    @property
    def ready_url(self) -> str:
        return f"http://{self.admin_address}:15021/healthz/ready"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.admin_address}:{PROMETHEUS_PORT}/stats/prometheus"


def start_sidecar(
    group: ProcessGroup,
    spec: SidecarSpec,
    site: Site,
    user: int | None = None,
    extra: Sequence[str] = (),
) -> Waiter:
    """Start one sidecar; its access log is a file of its own, writable by `user`."""
    log = access_log_path(group, spec.pod)
    log.touch()
    log.chmod(0o666)  # the sidecar may run as the proxy uid
    started = group.start(spec.pod, spec.argv(log, extra), site, user)
    return Waiter(started, spec.ready_url, site)


def start_collector(group: ProcessGroup, site: Site, host: str, port: int) -> Waiter:
    """Start `sidecar traces` on host:port (it keeps the spans; the demo prints the waterfall)."""
    argv = python_module("sidecar.cli", "traces", "--listen", f"{host}:{port}", "--no-print")
    return Waiter(group.start("traces", argv, site), f"http://{host}:{port}/health", site)


def demo_hops(a_pod: str, *b_pods: str) -> tuple[HopSpec, ...]:
    """The way every demo request goes: into a's sidecar, out of it, into one of b's sidecars."""
    return (
        HopSpec(a_pod, "inbound", B_AUTHORITY),
        HopSpec(a_pod, "outbound", B_AUTHORITY),
        HopSpec(b_pods[0], "inbound", alternatives=b_pods[1:]),  # b's: inbound requests only
    )


@dataclass(frozen=True)
class Canary:
    """The canary part of a demo: how b's traffic is split, and how to show it."""

    requests: int  # requests sent to count the split
    weights: tuple[tuple[str, int], ...]  # (version, percent) as the VirtualService says
    rule: str  # the routing rules in words, for the printout
    header: tuple[str, str]  # a request header the rules send to one version
    header_version: str  # the version that header is routed to
    header_requests: int = 5
