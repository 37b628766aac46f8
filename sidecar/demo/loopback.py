"""The loopback demo: two apps and two sidecars on 127.x addresses, no root, no iptables.

Theory of operation: each workload's "pod IP" is a loopback address of its own (a: 127.0.0.10,
b: 127.0.0.20). The Sidecar resources in config/demo/mesh.yaml use captureMode NONE, so each
sidecar binds explicit listeners instead of capture ports: a's inbound 127.0.0.10:9080 in front
of app a (127.0.0.10:18081), a's egress 127.0.0.1:9080 that app a calls b through, b's inbound
127.0.0.20:9080 in front of app b (127.0.0.20:18082). Before starting, every address is checked
free, so a second demo or a stray process is reported by name rather than as a crash.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from sidecar.demo.processes import LocalSite, ProcessGroup, Site
from sidecar.demo.stage import (
    B_AUTHORITY,
    SidecarSpec,
    Waiter,
    access_log_path,
    demo_hops,
    python_module,
    repo_file,
    start_sidecar,
)

A_IP, B_IP = "127.0.0.10", "127.0.0.20"
APP_A, APP_B = (A_IP, 18081), (B_IP, 18082)  # each app on its own pod IP
EGRESS = ("127.0.0.1", 9080)
SERVICE_PORT = 9080


class LoopbackStage:
    """Both workloads on this host's loopback interface (see the module comment)."""

    title = "two services on loopback, each with its own sidecar (captureMode NONE, no root)"
    entry_url = f"http://{A_IP}:{SERVICE_PORT}/"

    def __init__(self, config: Path | None = None) -> None:
        self.config = config or repo_file("config", "demo", "mesh.yaml")
        self.client: Site = LocalSite()
        self.hops = demo_hops("a-1", "b-1")
        self.sidecars = (
            SidecarSpec("a-1", A_IP, A_IP, "a", self.config),
            SidecarSpec("b-1", B_IP, B_IP, "b", self.config),
        )

    def describe(self) -> list[tuple[str, str, str]]:
        return [
            ("app a", _hp(APP_A), f"on GET / calls http://{B_AUTHORITY}/hello via {_hp(EGRESS)}"),
            ("sidecar a-1", f"{A_IP}:{SERVICE_PORT}", f"inbound -> app a; outbound {_hp(EGRESS)}"),
            ("app b", _hp(APP_B), 'answers "hello from b (v1)"'),
            ("sidecar b-1", f"{B_IP}:{SERVICE_PORT}", "inbound -> app b"),
            ("client", "this program", f"GET {self.entry_url}"),
        ]

    def preflight(self) -> str | None:
        if not self.config.is_file():
            return f"mesh config {self.config} not found (run from the source tree)"
        wanted = [APP_A, APP_B, EGRESS]
        for ip in (A_IP, B_IP):
            wanted += [(ip, SERVICE_PORT), (ip, 15000), (ip, 15021)]
        busy = [_hp(addr) for addr in wanted if _in_use(addr)]
        if busy:
            return f"in use: {', '.join(busy)} (is another demo running?)"
        return None

    def start(self, group: ProcessGroup) -> list[Waiter]:
        site = self.client
        b_argv = python_module("sidecar.demo.apps", "b", "--listen", _hp(APP_B))
        b = group.start("app-b", b_argv, site)
        a_argv = python_module(
            "sidecar.demo.apps", "a", "--listen", _hp(APP_A),
            "--upstream", _hp(EGRESS), "--upstream-host", B_AUTHORITY,
        )  # fmt: skip
        a = group.start("app-a", a_argv, site)
        waiters = [
            Waiter(b, f"http://{_hp(APP_B)}/healthz", site),
            Waiter(a, f"http://{_hp(APP_A)}/healthz", site),
        ]
        no_capture = ("--outbound-port", "0", "--inbound-port", "0")  # explicit binds only
        waiters += [start_sidecar(group, spec, site, None, no_capture) for spec in self.sidecars]
        return waiters

    def access_logs(self, group: ProcessGroup) -> dict[str, Path]:
        return {spec.pod: access_log_path(group, spec.pod) for spec in self.sidecars}

    def close(self) -> list[str]:
        """Nothing beyond processes to undo on loopback."""
        return []


def _hp(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def _in_use(addr: tuple[str, int]) -> bool:
    """Whether a TCP listener could not bind addr right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
