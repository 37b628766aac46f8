"""The capture demo: the same two services, each in a network namespace with iptables capture.

Theory of operation: three namespaces, none with a route out of the demo:

    client (10.250.1.2) --veth-- a (10.250.1.1 | pod IP 10.250.0.1) --veth-- b (pod IP 10.250.0.2)

In `a` and `b`, `sidecar iptables apply` installs Istio's rules (outbound -> 15001, inbound ->
15006, uid 1337 exempt) and a sidecar runs as uid 1337 with config/demo/mesh-capture.yaml, which
has no Sidecar resources, so the capture listeners do the work. The apps listen on 0.0.0.0:9080
and know nothing of the mesh: app a calls b by b's ClusterIP 10.96.0.20, which nobody owns; a's
route for 10.96.0.0/16 only lets the connect() start, and iptables hands it to a's sidecar. The
client, in a namespace with no capture, calls a's pod IP; iptables in `a` hands that connection
to a's sidecar on its way in. Every probe and request is made from inside a namespace by running
`sidecar.demo.client` there.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from sidecar.capture import netns
from sidecar.demo.client import Answer
from sidecar.demo.processes import ProcessGroup, Site
from sidecar.demo.stage import (
    B_AUTHORITY,
    PROXY_UID,
    Canary,
    Endpoint,
    SidecarSpec,
    Waiter,
    access_log_path,
    demo_hops,
    python_module,
    repo_file,
    start_sidecar,
)

A_IP, B_IP = "10.250.0.1", "10.250.0.2"  # pod IPs, on the a-b link
A_CLIENT_SIDE, CLIENT_IP = "10.250.1.1", "10.250.1.2"  # the client-a link
B_CLUSTER_IP = "10.96.0.20"
SERVICE_CIDR = "10.96.0.0/16"
PORT = 9080
CAPTURE_FLAGS = (
    "-p", "15001", "-z", "15006", "-u", str(PROXY_UID), "-m", "REDIRECT",
    "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020",
)  # fmt: skip
PROBE_GRACE = 5.0  # seconds a request from inside a namespace may take beyond its own timeout


class NamespaceSite:
    """A network namespace as a place to run processes and send requests from."""

    def __init__(self, ns: netns.Namespace, name: str) -> None:
        self.ns = ns
        self.name = name

    def popen(
        self, argv: Sequence[str], user: int | None, stdout: IO[bytes], stderr: IO[bytes]
    ) -> subprocess.Popen[bytes]:
        return self.ns.popen(
            list(argv),
            user=user,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )

    def fetch(self, url: str, headers: Sequence[tuple[str, str]], timeout: float) -> Answer:
        argv = python_module("sidecar.demo.client", url, "--timeout", str(timeout))
        for name, value in headers:
            argv += ["-H", f"{name}: {value}"]
        try:
            done = self.ns.run(argv, check=False, timeout=timeout + PROBE_GRACE)
        except subprocess.TimeoutExpired:
            return Answer(error=f"no answer from inside {self.name} in {timeout:.0f} s")
        last = done.stdout.strip().splitlines()[-1:] or [""]
        if last[0].startswith("{"):
            return Answer.from_json(last[0])
        return Answer(error=f"client in {self.name} failed: {done.stderr.strip()[-300:]}")


class CaptureStage:
    """a and b in network namespaces of their own, with iptables capture (needs root)."""

    title = "two services in network namespaces, with iptables capture (root)"
    entry_url = f"http://{A_IP}:{PORT}/"

    def __init__(self, config: Path | None = None) -> None:
        self.config = config or repo_file("config", "demo", "mesh-capture.yaml")
        self.hops = demo_hops("a-1", "b-1")
        self.canary: Canary | None = None  # one version of b: the canary is the loopback's
        self.sidecars = (
            SidecarSpec("a-1", A_IP, "127.0.0.1", "a", self.config),
            SidecarSpec("b-1", B_IP, "127.0.0.1", "b", self.config),
        )
        self.namespaces: list[netns.Namespace] = []
        self._client: Site | None = None
        self._sites: list[Site] = []  # where each sidecar runs, in self.sidecars' order

    @property
    def client(self) -> Site:
        if self._client is None:
            raise RuntimeError("CaptureStage.start() has not run")
        return self._client

    def describe(self) -> list[tuple[str, str, str]]:
        return [
            ("netns a", f"{A_IP}:{PORT}", f"app a; calls http://{B_AUTHORITY}/hello"),
            ("", "", f"  by its ClusterIP {B_CLUSTER_IP}, which nobody owns"),
            ("", "", "sidecar a-1 (uid 1337) on 15001/15006, iptables capture"),
            ("netns b", f"{B_IP}:{PORT}", 'app b, answers "hello from b (v1)"'),
            ("", "", "sidecar b-1 (uid 1337) on 15001/15006, iptables capture"),
            ("netns client", CLIENT_IP, f"GET {self.entry_url}"),
        ]  # fmt: skip

    def preflight(self) -> str | None:
        if not self.config.is_file():
            return f"mesh config {self.config} not found (run from the source tree)"
        ok, reason = netns.available()
        return None if ok else f"--capture {reason}"

    def start(self, group: ProcessGroup) -> list[Waiter]:
        ns_a, ns_b, ns_c = (self._namespace(f"sdemo-{x}") for x in "abc")
        netns.veth_pair(ns_a, A_IP, ns_b, B_IP)
        netns.veth_pair(ns_c, CLIENT_IP, ns_a, A_CLIENT_SIDE)
        _must(ns_c, ["ip", "route", "add", f"{A_IP}/32", "via", A_CLIENT_SIDE])
        _must(ns_a, ["ip", "route", "add", SERVICE_CIDR, "via", B_IP])
        capture = python_module("sidecar.cli", "iptables", "apply", *CAPTURE_FLAGS)
        for ns in (ns_a, ns_b):
            _must(ns, capture)
        site_a, site_b = NamespaceSite(ns_a, "netns a"), NamespaceSite(ns_b, "netns b")
        self._client = NamespaceSite(ns_c, "netns client")
        self._sites = [site_a, site_b]
        listen = f"0.0.0.0:{PORT}"
        b_argv = python_module("sidecar.demo.apps", "b", "--listen", listen)
        b = group.start("app-b", b_argv, site_b)
        a_argv = python_module(
            "sidecar.demo.apps", "a", "--listen", listen,
            "--upstream", f"{B_CLUSTER_IP}:{PORT}", "--upstream-host", B_AUTHORITY,
        )  # fmt: skip
        a = group.start("app-a", a_argv, site_a)
        health = f"http://127.0.0.1:{PORT}/healthz"
        return [
            Waiter(b, health, site_b),
            Waiter(a, health, site_a),
            start_sidecar(group, self.sidecars[0], site_a, PROXY_UID),
            start_sidecar(group, self.sidecars[1], site_b, PROXY_UID),
        ]

    def access_logs(self, group: ProcessGroup) -> dict[str, Path]:
        return {spec.pod: access_log_path(group, spec.pod) for spec in self.sidecars}

    def metrics(self) -> list[Endpoint]:
        """Scraped from inside each sidecar's namespace, where its status address is."""
        return [
            Endpoint(spec.pod, spec.metrics_url, site)
            for spec, site in zip(self.sidecars, self._sites, strict=True)
        ]

    def collector(self) -> Endpoint | None:
        """No collector here: the sidecars run without tracing (the loopback demo shows it)."""
        return None

    def close(self) -> list[str]:
        """Delete every namespace this stage made, even if one deletion fails."""
        problems = []
        while self.namespaces:
            ns = self.namespaces.pop()
            try:
                ns.delete()
            except (OSError, subprocess.SubprocessError) as exc:
                problems.append(f"could not delete network namespace {ns.name}: {exc}")
        return problems

    def _namespace(self, prefix: str) -> netns.Namespace:
        ns = netns.Namespace.create(prefix)
        self.namespaces.append(ns)
        return ns


def _must(ns: netns.Namespace, argv: list[str]) -> None:
    """Run a setup command inside ns; its error output in the exception when it fails."""
    done = ns.run(argv, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-500:]
        raise OSError(f"in {ns.name}: {' '.join(argv)} failed: {tail}")
