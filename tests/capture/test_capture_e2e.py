"""End to end: Istio's capture rules in a pod namespace send real traffic through `sidecar run`.

Two namespaces joined by a veth pair, nothing else: "pod" (10.200.7.2: an app on 8080 and the
sidecar, run as uid 1337) and "peer" (10.200.7.3: the service endpoint on 8000; 10.201.0.77 on
its lo: a TCP echo server outside the mesh). The Service's ClusterIP 10.96.7.10 belongs to
nobody; only the sidecar, reached through the OUTPUT capture, can turn it into the peer's address.
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
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.capture.iptables import Runner, apply
from sidecar.capture.netns import Namespace, available, veth_pair
from sidecar.capture.options import CaptureOptions
from tests.conftest import require

pytestmark = [pytest.mark.capture, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
SIDECAR = ROOT / ".venv" / "bin" / "sidecar"
SERVERS = Path(__file__).with_name("servers.py")
POD_IP, PEER_IP, OUTSIDE_IP = "10.200.7.2", "10.200.7.3", "10.201.0.77"
CLUSTER_IP = "10.96.7.10"
PROXY_UID, APP_UID = 1337, 1000
READY_TIMEOUT_S = 30.0

MESH = f"""\
apiVersion: v1
kind: Service
metadata: {{name: peer, namespace: default}}
spec:
  clusterIP: {CLUSTER_IP}
  selector: {{app: peer}}
  ports:
  - {{name: http, port: 80, targetPort: 8000}}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {{name: peer-1, namespace: default}}
spec:
  address: {PEER_IP}
  labels: {{app: peer}}
---
apiVersion: v1
kind: Service
metadata: {{name: app, namespace: default}}
spec:
  clusterIP: 10.96.7.20
  selector: {{app: app}}
  ports:
  - {{name: http, port: 8080, targetPort: 8080}}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {{name: app-1, namespace: default}}
spec:
  address: {POD_IP}
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


@dataclass
class Mesh:
    """The running scenario: both namespaces, and where the sidecar's log goes."""

    pod: Namespace
    peer: Namespace
    log: Path


def wait_ready(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a server's READY line (bounded)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    assert ready and proc.stdout.readline().strip() == b"READY", "test server did not start"


def curl(ns: Namespace, url: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    return ns.run(["curl", "-sS", "--max-time", "5", url], check=False, user=user)


def start_server(ns: Namespace, *args: str) -> None:
    proc = ns.popen([sys.executable, str(SERVERS), *args], stdout=subprocess.PIPE)
    wait_ready(proc)


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    require(*available())
    require(shutil.which("curl") is not None, "curl not found")
    require(SIDECAR.exists(), f"{SIDECAR} not installed")
    workdir = Path(tempfile.mkdtemp(prefix="capture-e2e-"))
    workdir.chmod(0o755)  # the sidecar runs as uid 1337 and must read its config
    with Namespace.create("pod") as pod, Namespace.create("peer") as peer:
        veth_pair(pod, POD_IP, peer, PEER_IP)
        peer.run(["ip", "addr", "add", f"{OUTSIDE_IP}/32", "dev", "lo"])
        # like a pod's default route, but only to the peer namespace: nothing leaves the test
        for net in ("10.96.0.0/12", f"{OUTSIDE_IP}/32"):
            pod.run(["ip", "route", "add", net, "via", PEER_IP])
        start_server(peer, "http", "8000", "peer")
        start_server(peer, "echo", "9000")
        start_server(pod, "http", "8080", "app")
        yield Mesh(pod, peer, workdir / "sidecar.log")
    shutil.rmtree(workdir, ignore_errors=True)


def start_sidecar(m: Mesh) -> subprocess.Popen[bytes]:
    config = m.log.with_name("mesh.yaml")
    config.write_text(MESH)
    config.chmod(0o644)
    argv = [str(SIDECAR), "run", "--config", str(config), "--pod-name", "app-1",
            "--pod-namespace", "default", "--instance-ip", POD_IP]
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


def test_traffic_is_captured_and_proxied(mesh: Mesh) -> None:
    opts = CaptureOptions.from_flags(
        inbound_ports="*", inbound_ports_exclude="15090,15021,15020", outbound_cidrs="*"
    )
    apply(opts, Runner.in_netns(mesh.pod.name))

    # captured but nobody on 15001 yet: the ClusterIP is unreachable, so the capture is live
    before = curl(mesh.pod, f"http://{CLUSTER_IP}:80/", user=APP_UID)
    assert before.returncode != 0, before.stdout

    start_sidecar(mesh)
    log = mesh.log

    # (a) outbound: the app calls the Service's ClusterIP; the sidecar sends it to the peer
    out = curl(mesh.pod, f"http://{CLUSTER_IP}:80/outbound", user=APP_UID)
    assert out.returncode == 0, f"{out.stderr}\n{log.read_text()}"
    body = json.loads(out.stdout)
    assert body["server"] == "peer" and body["path"] == "/outbound"
    assert body["client"][0] == POD_IP

    # (b) inbound: the peer calls the pod; the sidecar's inbound listener hands it to the app
    inbound = curl(mesh.peer, f"http://{POD_IP}:8080/inbound")
    assert inbound.returncode == 0, f"{inbound.stderr}\n{log.read_text()}"
    body = json.loads(inbound.stdout)
    assert body["server"] == "app" and body["path"] == "/inbound"
    assert body["client"][0] == "127.0.0.6"

    # (c) outside the mesh: raw TCP passes through the sidecar (ALLOW_ANY) to the real address
    raw = mesh.pod.run([sys.executable, "-c", RAW_CLIENT, OUTSIDE_IP, "9000"], check=False,
                       user=APP_UID)
    assert raw.returncode == 0, f"{raw.stderr}\n{log.read_text()}"
    seen = json.loads(raw.stdout)
    assert seen["echo"] == "ping through the mesh"
    host, port = seen["seen"].split()
    assert host == POD_IP
    assert int(port) != seen["local_port"], "the echo server saw the app's own socket: not proxied"
