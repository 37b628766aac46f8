"""Istio traffic-management tasks as a user writes them, through the real `sidecar run` process.

Theory of operation: a test writes the mesh a user would (a Kubernetes Service per app in
namespace `shop`, one WorkloadEntry per version with labels app/version whose `ports` point the
service port at a real upstream on 127.0.0.1, then the Istio resources under test) and runs one
client-side proxy for the pod `shop/sleep`: a Sidecar whose egress listeners are explicit
(captureMode NONE, `bind` on a loopback address of the test's own), so no iptables are needed
and real clients (curl, httpx, grpcio, h2load) talk to `bind:port` with the Host they would use
in a cluster. `Mesh.apply(...)` rewrites the config file and asks the admin port to reload
(the file watcher would do it within a second). Upstreams are `routing_helpers.echo` servers:
they answer with JSON naming themselves and echoing what they received.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.conftest import require

from .http_helpers import curl
from .sidecar_process import SidecarProcess

NS = "shop"
CLIENT_POD = "sleep"


def service(name: str, *ports: tuple[str, int], headless: bool = False) -> str:
    """A Kubernetes Service selecting app=`name` with `ports` as (name, port)."""
    port_list = ", ".join(f"{{name: {n}, port: {p}}}" for n, p in ports)
    cluster_ip = "\n  clusterIP: None" if headless else ""
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NS}}}
spec:
  selector: {{app: {name}}}{cluster_ip}
  ports: [{port_list}]
"""


def workload(app: str, version: str, ports: dict[str, int], address: str = "127.0.0.1") -> str:
    """A WorkloadEntry for `app` `version`: service port name -> the upstream's real port."""
    port_map = ", ".join(f"{n}: {p}" for n, p in ports.items())
    return f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {app}-{version}, namespace: {NS}}}
spec:
  address: {address}
  labels: {{app: {app}, version: {version}}}
  ports: {{{port_map}}}
"""


def subsets_rule(host: str, *versions: str, policy: str = "") -> str:
    """A DestinationRule with one subset per version (labels version=...), and an optional
    `trafficPolicy:` block (YAML, indented for spec)."""
    subsets = "".join(f"  - {{name: {v}, labels: {{version: {v}}}}}\n" for v in versions)
    return f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host.split('.')[0]}, namespace: {NS}}}
spec:
  host: {host}
{policy}  subsets:
{subsets}"""


def egress_sidecar(bind: str, *ports: tuple[int, str]) -> str:
    """The client pod's Sidecar: one explicit egress listener per (port, protocol) on `bind`."""
    entries = "".join(
        f"""\
  - port: {{number: {number}, protocol: {protocol}, name: {protocol.lower()}-{number}}}
    bind: {bind}
    captureMode: NONE
    hosts: ["./*"]
"""
        for number, protocol in ports
    )
    return f"""\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: {NS}}}
spec:
  egress:
{entries}"""


def join(*docs: str) -> str:
    return "---\n".join(d if d.endswith("\n") else d + "\n" for d in docs)


@dataclass
class Mesh:
    """The running client-side proxy and its config file."""

    proc: SidecarProcess

    def apply(self, config: str) -> None:
        """Replace the whole mesh config and have it adopted now (raises if refused)."""
        self.proc.config.write_text(config)
        status, body = self.proc.admin("POST", "/reload")
        assert status == 200, body.decode()


@contextmanager
def running(config: str, *extra: str) -> Iterator[Mesh]:
    """`sidecar run` as the pod shop/sleep with `config`."""
    require(shutil.which("curl") is not None, "curl is not installed")
    proc = SidecarProcess(config, "--pod-name", CLIENT_POD, "--pod-namespace", NS, *extra)
    with proc:
        yield Mesh(proc)


async def http(url: str, *args: str, timeout: float = 10.0) -> tuple[int, str]:
    """curl `url` with `args`; (status, body). A transport failure fails the test."""
    code, out, err = await curl("-s", "-w", "\n%{http_code}", *args, url, timeout=timeout)
    assert code == 0, err.decode()
    body, _, status = out.decode().rpartition("\n")
    return int(status), body


async def loop_curl(url: str, n: int, *args: str) -> list[str]:
    """One curl process making `n` requests to `url` (reusing its connection); the `x-up`
    response header of each (the upstream that answered), in order."""
    urls = [a for _ in range(n) for a in ("-o", "/dev/null", url)]
    code, out, err = await curl("-s", "-w", "%header{x-up}\\n", *args, *urls, timeout=30)
    assert code == 0, err.decode()
    return out.decode().splitlines()
