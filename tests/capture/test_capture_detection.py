"""Protocol detection under real capture: one Service, four ports named without a protocol.

The peer Service's ports are auto ("web", "grpcish", "blob", "greet": no Istio prefix), so the
sidecar must look at each connection: HTTP/1.1 (curl) and h2c (curl --http2-prior-knowledge) go
through the HTTP connection manager (the access log shows the protocol, method and path), opaque
client-first bytes are relayed as TCP, and a server-first protocol (the echo server greets before
the client says anything) falls back to TCP after the detection timeout instead of hanging.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from sidecar.capture.iptables import Runner, apply
from sidecar.capture.options import CaptureOptions
from tests.capture.harness import (
    APP_UID,
    V4,
    Mesh,
    access_log_entry,
    build_mesh,
    curl,
    start_sidecar,
    wait_ready,
)

pytestmark = [pytest.mark.capture, pytest.mark.timeout(120)]

CLUSTER_IP = V4.cluster_ip
H2C_PORT = 8200
DETECTION_TIMEOUT = 0.1

AUTO_SERVICE = f"""\
apiVersion: v1
kind: Service
metadata: {{name: peer, namespace: default}}
spec:
  clusterIP: {CLUSTER_IP}
  selector: {{app: peer}}
  ports:
  - {{name: web, port: 80, targetPort: 8000}}
  - {{name: grpcish, port: 82, targetPort: {H2C_PORT}}}
  - {{name: blob, port: 90, targetPort: 9000}}
  - {{name: greet, port: 91, targetPort: 9000}}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {{name: peer-1, namespace: default}}
spec:
  address: {V4.peer_ip}
  labels: {{app: peer}}
"""

# A small h2c (prior knowledge) server on the `h2` library: answers every stream 200 "h2 <path>".
H2C_SERVER = """\
import socket, sys, h2.config, h2.connection, h2.events, threading
def serve(sock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection(); sock.sendall(conn.data_to_send())
    while data := sock.recv(65536):
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                path = dict(ev.headers)[b":path"]
                body = b"h2 " + path
                conn.send_headers(ev.stream_id, [(":status", "200"),
                                                 ("content-length", str(len(body)))])
                conn.send_data(ev.stream_id, body, end_stream=True)
        sock.sendall(conn.data_to_send())
    sock.close()
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("READY", flush=True)
srv.settimeout(90)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Client-first opaque bytes; the echo server's greeting line comes first, then the echo.
OPAQUE_CLIENT = """\
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"\\x00\\x01 opaque \\xff")
data = b""
while not data.endswith(b"\\x00\\x01 opaque \\xff"):
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(json.dumps({"got": data.decode("latin-1")}))
"""

# Server-first: say nothing, wait for the greeting, time it.
GREET_CLIENT = """\
import json, socket, sys, time
start = time.monotonic()
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
line = b""
while not line.endswith(b"\\n"):
    chunk = s.recv(1)
    if not chunk:
        break
    line += chunk
print(json.dumps({"greeting": line.decode(), "seconds": time.monotonic() - start}))
"""


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    with build_mesh(V4) as m:
        h2c = m.peer.popen(
            [sys.executable, "-c", H2C_SERVER, str(H2C_PORT)], stdout=subprocess.PIPE
        )
        try:
            wait_ready(h2c)
            yield m
        finally:
            h2c.kill()
            h2c.wait(5)


def _json_run(m: Mesh, script: str, port: int) -> dict[str, object]:
    done = m.pod.run(
        [sys.executable, "-c", script, CLUSTER_IP, str(port)], check=False, user=APP_UID
    )
    assert done.returncode == 0, f"{done.stderr}\n{m.log.read_text()}"
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_each_auto_port_is_detected(mesh: Mesh) -> None:
    opts = CaptureOptions.from_flags(
        inbound_ports="*", inbound_ports_exclude="15090,15021,15020", outbound_cidrs="*"
    )
    apply(opts, Runner.in_netns(mesh.pod.name))
    start_sidecar(
        mesh,
        AUTO_SERVICE,
        "--access-log-format",
        "json",
        "--protocol-detection-timeout",
        str(DETECTION_TIMEOUT),
    )
    log = mesh.log

    # HTTP/1.1 on an auto port: routed as HTTP.
    h1 = curl(mesh.pod, f"http://{CLUSTER_IP}:80/detect-h1", APP_UID)
    assert h1.returncode == 0, f"{h1.stderr}\n{log.read_text()}"
    assert json.loads(h1.stdout)["path"] == "/detect-h1"
    entry = access_log_entry(log, path="/detect-h1")
    assert (entry["protocol"], entry["method"]) == ("HTTP/1.1", "GET")

    # Opaque client-first bytes: relayed as TCP (the greeting, then the echo).
    seen = _json_run(mesh, OPAQUE_CLIENT, 90)
    assert str(seen["got"]).endswith("\x00\x01 opaque \xff")
    access_log_entry(log, upstream_cluster="outbound|90||peer.default.svc.cluster.local")

    # Server-first: the client says nothing; the greeting arrives after the detection timeout.
    start = time.monotonic()
    greet = _json_run(mesh, GREET_CLIENT, 91)
    assert time.monotonic() - start < 5
    assert str(greet["greeting"]).endswith("\n") and len(str(greet["greeting"]).split()) == 2
    assert DETECTION_TIMEOUT * 0.9 <= float(str(greet["seconds"])) < DETECTION_TIMEOUT + 1.0
    access_log_entry(log, upstream_cluster="outbound|91||peer.default.svc.cluster.local")

    # h2c with prior knowledge: the HTTP/2 connection manager (lands with the lead's HTTP/2).
    h2 = curl(mesh.pod, f"http://{CLUSTER_IP}:82/detect-h2", APP_UID, "--http2-prior-knowledge")
    assert h2.returncode == 0, f"{h2.stderr}\n{log.read_text()}"
    assert h2.stdout == "h2 /detect-h2"
    entry = access_log_entry(log, path="/detect-h2")
    assert (entry["protocol"], entry["method"]) == ("HTTP/2", "GET")
