"""Two real sidecar processes on loopback, client workload a and server workload b.

Theory of operation (modelled on config/demo/mesh.yaml): workload a (WorkloadEntry a-1,
127.0.0.10) has a sidecar with one egress listener (captureMode NONE, bind 127.0.0.1:PORT, hosts
"./*"); workload b (WorkloadEntry b-1, 127.0.0.20) backs Service b whose port PORT carries the
given name (`grpc`, `http2`, `http`, ...); b's sidecar has one ingress listener on
127.0.0.20:PORT whose defaultEndpoint is the application at 127.0.0.20:APP_PORT. A client dials
127.0.0.1:PORT with authority `b.default.svc.cluster.local:PORT`; a's sidecar routes to b's
WorkloadEntry address, b's sidecar hands the call to the application.

Each sidecar is started with --pod-name/--instance-ip so it picks its own Sidecar resource, and
logs its access log to stdout (kept in a file by SidecarProcess).
"""

from __future__ import annotations

from dataclasses import dataclass

from .proxy_fixtures import free_port
from .sidecar_process import SidecarProcess

A_IP, B_IP = "127.0.0.10", "127.0.0.20"
NAMESPACE = "default"


def mesh_two_yaml(port: int, app_port: int, port_name: str, protocol: str, extra: str = "") -> str:
    """Service b (port `port_name`), WorkloadEntries a-1 and b-1, and both Sidecar resources."""
    return f"""\
apiVersion: v1
kind: Service
metadata:
  name: b
  namespace: {NAMESPACE}
spec:
  clusterIP: 10.96.0.20
  selector:
    app: b
  ports:
  - name: {port_name}
    port: {port}
    targetPort: {port}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata:
  name: a-1
  namespace: {NAMESPACE}
spec:
  address: {A_IP}
  labels:
    app: a
  serviceAccount: a
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata:
  name: b-1
  namespace: {NAMESPACE}
spec:
  address: {B_IP}
  labels:
    app: b
  serviceAccount: b
---
apiVersion: networking.istio.io/v1beta1
kind: Sidecar
metadata:
  name: a
  namespace: {NAMESPACE}
spec:
  workloadSelector:
    labels:
      app: a
  egress:
  - port:
      number: {port}
      protocol: {protocol}
      name: {port_name}
    bind: 127.0.0.1
    captureMode: NONE
    hosts:
    - "./*"
---
apiVersion: networking.istio.io/v1beta1
kind: Sidecar
metadata:
  name: b
  namespace: {NAMESPACE}
spec:
  workloadSelector:
    labels:
      app: b
  ingress:
  - port:
      number: {port}
      protocol: {protocol}
      name: {port_name}
    bind: {B_IP}
    captureMode: NONE
    defaultEndpoint: 0.0.0.0:{app_port}  # Istio: 0.0.0.0 = the instance IP, {B_IP}
{extra}"""


@dataclass
class MeshTwo:
    """The running pair: `a` (client side) and `b` (server side) sidecars, and where to dial."""

    a: SidecarProcess
    b: SidecarProcess
    port: int  # a's egress listener on 127.0.0.1, also Service b's port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def authority(self) -> str:
        return f"b.{NAMESPACE}.svc.cluster.local:{self.port}"

    def stop(self) -> None:
        for sc in (self.a, self.b):
            sc.__exit__(None)

    def __enter__(self) -> MeshTwo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _sidecar(config: str, pod: str, ip: str, account: str) -> SidecarProcess:
    return SidecarProcess(
        config,
        "--pod-name", pod,
        "--pod-namespace", NAMESPACE,
        "--instance-ip", ip,
        "--service-account", account,
        "--no-watch",
    )  # fmt: skip


def start_mesh_two(
    app_port: int, port_name: str = "grpc", protocol: str = "GRPC", extra: str = ""
) -> MeshTwo:
    """Start b's then a's sidecar (both ready) in front of the application at B_IP:app_port."""
    port = free_port()
    config = mesh_two_yaml(port, app_port, port_name, protocol, extra)
    b = _sidecar(config, "b-1", B_IP, "b").start()
    try:
        a = _sidecar(config, "a-1", A_IP, "a").start()
    except BaseException:
        b.__exit__(None)
        raise
    return MeshTwo(a, b, port)
