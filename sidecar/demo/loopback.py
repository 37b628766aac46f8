"""The loopback demo: two apps and two sidecars on 127.x addresses, no root, no iptables.

Theory of operation: each workload's "pod IP" is a loopback address of its own (a: 127.0.0.10,
b: 127.0.0.20). The Sidecar resources in config/demo/mesh.yaml use captureMode NONE, so each
sidecar binds explicit listeners instead of capture ports: a's inbound 127.0.0.10:9080 in front
of app a (127.0.0.10:18081), a's egress 127.0.0.1:9080 that app a calls b through, b's inbound
127.0.0.20:9080 in front of app b (127.0.0.20:18082), and the canary: b v2 on 127.0.0.30 with
its own sidecar; a's sidecar splits b's traffic by the VirtualService and DestinationRule.
Each sidecar serves Prometheus on its pod IP's 15090 and posts spans (default 1% sampling) to a
`sidecar traces` collector on a free 127.0.0.1 port.
Before starting, every address is checked free, so a second demo or a stray process is reported
by name rather than as a crash.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from sidecar.demo.processes import LocalSite, ProcessGroup, Site
from sidecar.demo.stage import (
    B_AUTHORITY,
    FAIL_EVERY,
    PROMETHEUS_PORT,
    Canary,
    Endpoint,
    SidecarSpec,
    Waiter,
    access_log_path,
    demo_hops,
    python_module,
    repo_file,
    start_collector,
    start_sidecar,
)

A_IP, B_IP, B2_IP = "127.0.0.10", "127.0.0.20", "127.0.0.30"
APP_A, APP_B, APP_B2 = (A_IP, 18081), (B_IP, 18082), (B2_IP, 18082)  # each on its own pod IP
CANARY = Canary(
    requests=200,
    weights=(("v1", 95), ("v2", 5)),
    rule=(
        "VirtualService b: User-Agent containing Android -> v2; everything else 95 % v1, 5 % v2;"
        "\n  both rewrite /api/v1/ to / (b is asked for /hello). DestinationRule b: subsets by"
        "\n  label version."
    ),
    header=("user-agent", "Mozilla/5.0 (Linux; Android 14; Pixel 8)"),
    header_version="v2",
)
EGRESS = ("127.0.0.1", 9080)
COLLECTOR_HOST = "127.0.0.1"
SERVICE_PORT = 9080


class LoopbackStage:
    """Both workloads on this host's loopback interface (see the module comment)."""

    title = "two services on loopback, each with its own sidecar (captureMode NONE, no root)"
    entry_url = f"http://{A_IP}:{SERVICE_PORT}/"

    def __init__(self, config: Path | None = None) -> None:
        self.config = config or repo_file("config", "demo", "mesh.yaml")
        self.client: Site = LocalSite()
        self.hops = demo_hops("a-1", "b-1", "b-2")
        self.canary: Canary | None = CANARY
        self.sidecars = (
            SidecarSpec("a-1", A_IP, A_IP, "a", self.config),
            SidecarSpec("b-1", B_IP, B_IP, "b", self.config),
            SidecarSpec("b-2", B2_IP, B2_IP, "b", self.config),
        )
        self.collector_port = _free_port(COLLECTOR_HOST)  # the kernel's choice, free right now

    def describe(self) -> list[tuple[str, str, str]]:
        return [
            ("app a", _hp(APP_A), f"on GET / calls http://{B_AUTHORITY}/hello via {_hp(EGRESS)}"),
            ("sidecar a-1", f"{A_IP}:{SERVICE_PORT}", f"inbound -> app a; outbound {_hp(EGRESS)}"),
            ("app b v1", _hp(APP_B), 'answers "hello from b (v1)"'),
            ("sidecar b-1", f"{B_IP}:{SERVICE_PORT}", "inbound -> app b v1"),
            (
                "app b v2",
                _hp(APP_B2),
                f'answers "hello from b (v2)": the canary; every {FAIL_EVERY}th answer is a 503',
            ),
            ("sidecar b-2", f"{B2_IP}:{SERVICE_PORT}", "inbound -> app b v2"),
            (
                "sidecar traces",
                f"{COLLECTOR_HOST}:{self.collector_port}",
                "Zipkin v2 collector the sidecars post spans to",
            ),
            ("client", "this program", f"GET {self.entry_url}"),
        ]

    def preflight(self) -> str | None:
        if not self.config.is_file():
            return f"mesh config {self.config} not found (run from the source tree)"
        wanted = [APP_A, APP_B, APP_B2, EGRESS]
        for ip in (A_IP, B_IP, B2_IP):
            wanted += [(ip, SERVICE_PORT), (ip, 15000), (ip, 15021), (ip, PROMETHEUS_PORT)]
        busy = [_hp(addr) for addr in wanted if _in_use(addr)]
        if busy:
            return f"in use: {', '.join(busy)} (is another demo running?)"
        return None

    def start(self, group: ProcessGroup) -> list[Waiter]:
        site = self.client
        b_argv = python_module("sidecar.demo.apps", "b", "--listen", _hp(APP_B))
        b = group.start("app-b", b_argv, site)
        b2_argv = python_module(
            "sidecar.demo.apps", "b", "--listen", _hp(APP_B2), "--version", "v2",
            "--fail-every", str(FAIL_EVERY),
        )  # fmt: skip
        b2 = group.start("app-b2", b2_argv, site)
        a_argv = python_module(
            "sidecar.demo.apps", "a", "--listen", _hp(APP_A),
            "--upstream", _hp(EGRESS), "--upstream-host", B_AUTHORITY,
        )  # fmt: skip
        a = group.start("app-a", a_argv, site)
        waiters = [
            Waiter(b, f"http://{_hp(APP_B)}/healthz", site),
            Waiter(b2, f"http://{_hp(APP_B2)}/healthz", site),
            Waiter(a, f"http://{_hp(APP_A)}/healthz", site),
        ]
        waiters.append(start_collector(group, site, COLLECTOR_HOST, self.collector_port))
        extra = (
            "--outbound-port", "0", "--inbound-port", "0",  # explicit binds only
            "--zipkin-address", f"{COLLECTOR_HOST}:{self.collector_port}",
            "--zipkin-flush-interval", "0.5",  # the demo shows its trace at once
        )  # fmt: skip
        waiters += [start_sidecar(group, spec, site, None, extra) for spec in self.sidecars]
        return waiters

    def metrics(self) -> list[Endpoint]:
        return [Endpoint(spec.pod, spec.metrics_url, self.client) for spec in self.sidecars]

    def collector(self) -> Endpoint | None:
        return Endpoint("traces", f"http://{COLLECTOR_HOST}:{self.collector_port}", self.client)

    def access_logs(self, group: ProcessGroup) -> dict[str, Path]:
        return {spec.pod: access_log_path(group, spec.pod) for spec in self.sidecars}

    def close(self) -> list[str]:
        """Nothing beyond processes to undo on loopback."""
        return []


def _hp(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def _free_port(host: str) -> int:
    """A TCP port nothing listens on at host right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _in_use(addr: tuple[str, int]) -> bool:
    """Whether a TCP listener could not bind addr right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
