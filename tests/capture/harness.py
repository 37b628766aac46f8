"""The scenario the capture end-to-end tests share: a pod namespace, a peer namespace, a mesh.

Theory of operation. `build_mesh(topology)` makes two namespaces joined by a veth pair and
nothing else: "pod" (the app's HTTP server on 8080, and later the sidecar, run as uid 1337) and
"peer" (the Service endpoint's HTTP server on 8000, plus an address outside the mesh on its lo
with a TCP echo server on 9000 and an HTTP server on 80). The pod routes the service range and
the outside address to the peer, like a pod's default route but only to the peer namespace: no
traffic leaves the test. The Service's ClusterIP belongs to nobody, so only the sidecar, reached
through the OUTPUT capture, can turn it into the peer's address. The same builder serves IPv4
and IPv6 (`Topology` holds the addresses); the namespaces, and every process started in them,
are gone when the context exits, failure or not.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sidecar.capture.netns import Namespace, available, veth_pair
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
SIDECAR = ROOT / ".venv" / "bin" / "sidecar"
SERVERS = Path(__file__).with_name("servers.py")
PROXY_UID, APP_UID = 1337, 1000
READY_TIMEOUT_S = 30.0
SERVER_START_S = 10.0
LOG_WAIT_S = 5.0


@dataclass(frozen=True)
class Topology:
    """The addresses of one scenario (all IPv4 or all IPv6)."""

    pod_ip: str
    peer_ip: str
    outside_ip: str  # on the peer's lo: a destination outside the mesh
    cluster_ip: str  # the peer Service's VIP, owned by nobody
    app_cluster_ip: str  # the pod's own Service
    service_range: str  # routed to the peer, like a pod's default route
    prefix_len: int

    @property
    def ipv6(self) -> bool:
        return ":" in self.pod_ip

    @property
    def any_address(self) -> str:
        return "::" if self.ipv6 else "0.0.0.0"

    def url_host(self, address: str) -> str:
        return f"[{address}]" if ":" in address else address


V4 = Topology(
    pod_ip="10.200.7.2",
    peer_ip="10.200.7.3",
    outside_ip="10.201.0.77",
    cluster_ip="10.96.7.10",
    app_cluster_ip="10.96.7.20",
    service_range="10.96.0.0/12",
    prefix_len=24,
)

SERVICES_YAML = """\
apiVersion: v1
kind: Service
metadata: {{name: peer, namespace: default}}
spec:
  clusterIP: {cluster_ip}{families}
  selector: {{app: peer}}
  ports:
  - {{name: http, port: 80, targetPort: 8000}}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {{name: peer-1, namespace: default}}
spec:
  address: {peer_ip}
  labels: {{app: peer}}
---
apiVersion: v1
kind: Service
metadata: {{name: app, namespace: default}}
spec:
  clusterIP: {app_cluster_ip}{families}
  selector: {{app: app}}
  ports:
  - {{name: http, port: 8080, targetPort: 8080}}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {{name: app-1, namespace: default}}
spec:
  address: {pod_ip}
  labels: {{app: app}}
"""

RAW_CLIENT = """\
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
local_port = s.getsockname()[1]
s.sendall(b"ping through the mesh")
data = b""
while data.count(b"\\n") < 1 or not data.endswith(b"ping through the mesh"):
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
seen, _, echoed = data.partition(b"\\n")
print(json.dumps({"local_port": local_port, "seen": seen.decode(), "echo": echoed.decode()}))
"""


def services_yaml(topo: Topology) -> str:
    """The Services and WorkloadEntries of the scenario, as a user would write them."""
    families = "\n  ipFamilies: [IPv6]" if topo.ipv6 else ""
    return SERVICES_YAML.format(
        cluster_ip=topo.cluster_ip,
        app_cluster_ip=topo.app_cluster_ip,
        peer_ip=topo.peer_ip,
        pod_ip=topo.pod_ip,
        families=families,
    )


@dataclass
class Mesh:
    """The running scenario: both namespaces, the outside echo server, the scratch directory."""

    topo: Topology
    pod: Namespace
    peer: Namespace
    outside_echo: subprocess.Popen[bytes]
    workdir: Path

    @property
    def log(self) -> Path:
        """The sidecar's stdout and stderr."""
        return self.workdir / "sidecar.log"


def wait_ready(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a server's READY line (bounded)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], SERVER_START_S)
    assert ready and proc.stdout.readline().strip() == b"READY", "test server did not start"


def curl(
    ns: Namespace, url: str, user: int | None = None, *extra: str
) -> subprocess.CompletedProcess[str]:
    return ns.run(["curl", "-sS", "--max-time", "5", *extra, url], check=False, user=user)


def start_server(ns: Namespace, *args: str) -> subprocess.Popen[bytes]:
    proc = ns.popen([sys.executable, str(SERVERS), *args], stdout=subprocess.PIPE)
    wait_ready(proc)
    return proc


def server_lines(proc: subprocess.Popen[bytes], wait_s: float) -> list[str]:
    """What a test server printed since last asked, waiting up to wait_s for the first line."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = b""
    deadline = time.monotonic() + wait_s
    while True:
        left = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([fd], [], [], 0.0 if out else left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    return out.decode().splitlines()


def raw_client(
    ns: Namespace, host: str, port: int, user: int | None = APP_UID
) -> subprocess.CompletedProcess[str]:
    """Raw TCP from `ns` (as the app's uid by default): send a line, read what comes back."""
    return ns.run([sys.executable, "-c", RAW_CLIENT, host, str(port)], check=False, user=user)


@contextmanager
def build_mesh(topo: Topology) -> Iterator[Mesh]:
    """Both namespaces with their servers; everything removed at exit, even on failure."""
    require(*available())
    require(shutil.which("curl") is not None, "curl not found")
    require(SIDECAR.exists(), f"{SIDECAR} not installed")
    workdir = Path(tempfile.mkdtemp(prefix="capture-e2e-"))
    workdir.chmod(0o755)  # the sidecar runs as uid 1337 and must read its config
    try:
        with Namespace.create("pod") as pod, Namespace.create("peer") as peer:
            veth_pair(pod, topo.pod_ip, peer, topo.peer_ip, topo.prefix_len)
            host_len = 128 if topo.ipv6 else 32
            nodad = ["nodad"] if topo.ipv6 else []
            peer.run(["ip", "addr", "add", f"{topo.outside_ip}/{host_len}", "dev", "lo", *nodad])
            for net in (topo.service_range, f"{topo.outside_ip}/{host_len}"):
                pod.run(["ip", "route", "add", net, "via", topo.peer_ip])
            any_addr = topo.any_address
            start_server(peer, "http", "8000", "peer", any_addr)
            echo = start_server(peer, "echo", "9000", any_addr)
            start_server(peer, "http", "80", "outside", any_addr)
            start_server(pod, "http", "8080", "app", any_addr)
            yield Mesh(topo, pod, peer, echo, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def sidecar_file(m: Mesh, name: str) -> Path:
    """An empty file in the scratch directory that the sidecar (uid 1337) may write."""
    path = m.workdir / name
    path.touch()
    os.chown(path, PROXY_UID, PROXY_UID)
    return path


def start_sidecar(m: Mesh, config: str, *flags: str) -> subprocess.Popen[bytes]:
    """`sidecar run` as uid 1337 in the pod with `config` as its mesh; waits until ready."""
    path = m.workdir / "mesh.yaml"
    path.write_text(config)
    path.chmod(0o644)
    argv = [str(SIDECAR), "run", "--config", str(path), "--pod-name", "app-1",
            "--pod-namespace", "default", "--instance-ip", m.topo.pod_ip, *flags]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp"}
    with m.log.open("wb") as log:
        proc = m.pod.popen(argv, user=PROXY_UID, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sidecar exited with {proc.returncode}:\n{m.log.read_text()}")
        done = m.pod.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time",
                          "1", "http://127.0.0.1:15021/healthz/ready"], check=False)
        if done.stdout == "200":
            return proc
        time.sleep(0.2)
    pytest.fail(f"sidecar not ready within {READY_TIMEOUT_S}s:\n{m.log.read_text()}")


def access_log_entry(log_file: Path, /, **want: Any) -> dict[str, Any]:
    """The first JSON access log line whose fields equal `want`, waiting up to LOG_WAIT_S."""
    deadline = time.monotonic() + LOG_WAIT_S
    entries: list[dict[str, Any]] = []
    while True:
        text = log_file.read_text() if log_file.exists() else ""
        entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        for entry in entries:
            if all(entry.get(k) == v for k, v in want.items()):
                return entry
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    pytest.fail(f"no access log line with {want}; the log has:\n{json.dumps(entries, indent=1)}")
