"""Istio's bookinfo, on loopback: one real sidecar for productpage, one real upstream per version.

Theory of operation: the mesh config is Istio's sample files as they are (read from
../shared/samples/istio-bookinfo: bookinfo-kube.yaml's Services, a DestinationRule file and the
VirtualService file under test) plus `LOCAL_YAML`: a WorkloadEntry per workload version (labels
app/version as bookinfo's Deployments, address 127.0.41.N, serviceAccount bookinfo-<app>) so the
Services select them, and a Sidecar for productpage with one egress listener on
127.0.41.1:9080 (captureMode NONE, hosts "./*"). Every bookinfo service uses port 9080, so that
one listener serves all of them, picked by the Host header ("reviews:9080", as productpage
calls it).

`Upstreams` runs one HTTP/1.1 server per workload version on its IP:9080 in a background event
loop thread; each answers 200 with body "<app>-<version> <path>" and header x-upstream.
`Bookinfo` is the running sidecar (`sidecar run --pod-name productpage-v1 ...`); `use(...)`
rewrites its config file and asks the admin port to reload (the file watcher would do the same
within a second), so one sidecar process serves every sample. `Client` is a keep-alive
http.client connection to the egress listener.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .http_helpers import Request, Upstream, _UpstreamConn, ok
from .sidecar_process import SidecarProcess

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "istio-bookinfo"
PORT = 9080
LISTENER_IP = "127.0.41.1"
NAMESPACE = "default"
CLIENT_POD = "productpage-v1"

# (app, version, address): bookinfo's Deployments, plus the versions the samples route to that
# bookinfo-kube.yaml does not deploy (details-v2, ratings-v2, ratings-v2-mysql).
WORKLOADS: tuple[tuple[str, str, str], ...] = (
    ("productpage", "v1", "127.0.41.10"),
    ("details", "v1", "127.0.41.11"),
    ("details", "v2", "127.0.41.12"),
    ("ratings", "v1", "127.0.41.13"),
    ("ratings", "v2", "127.0.41.14"),
    ("ratings", "v2-mysql", "127.0.41.15"),
    ("reviews", "v1", "127.0.41.16"),
    ("reviews", "v2", "127.0.41.17"),
    ("reviews", "v3", "127.0.41.18"),
)

JASON = {"end-user": "jason"}


def _workload_entry(app: str, version: str, address: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {app}-{version}
  namespace: {NAMESPACE}
spec:
  address: {address}
  labels:
    app: {app}
    version: {version}
  serviceAccount: bookinfo-{app}
"""


SIDECAR_YAML = f"""\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: productpage
  namespace: {NAMESPACE}
spec:
  workloadSelector:
    labels:
      app: productpage
  egress:
  - port:
      number: {PORT}
      protocol: HTTP
      name: http
    bind: {LISTENER_IP}
    captureMode: NONE
    hosts:
    - "./*"
"""

LOCAL_YAML = "---\n".join([*(_workload_entry(*w) for w in WORKLOADS), SIDECAR_YAML])


def sample(name: str) -> str:
    """The text of one of Istio's bookinfo sample files, as it is."""
    return (SAMPLES / name).read_text()


def mesh_yaml(*samples: str) -> str:
    """bookinfo-kube.yaml, the given sample files and the local workloads, as one YAML stream."""
    texts = [sample("bookinfo-kube.yaml"), *(sample(s) for s in samples), LOCAL_YAML]
    return "\n---\n".join(texts)


def _answer(name: str) -> Upstream:
    def handle(req: Request, t: asyncio.Transport) -> None:
        t.write(ok(f"{name} {req.path}".encode(), b"x-upstream: %s\r\n" % name.encode()))

    return Upstream(handle, keep_bodies=False)


@dataclass
class _BoundUpstream:
    """An `Upstream` bound to a workload's own address and port."""

    name: str
    address: str
    upstream: Upstream

    async def start(self) -> None:
        up = self.upstream
        loop = asyncio.get_running_loop()
        up.server = await loop.create_server(
            lambda: _UpstreamConn(up), self.address, PORT, reuse_address=True
        )
        up.port = PORT


@dataclass
class Upstreams:
    """One upstream per bookinfo workload version, served by an event loop in its own thread."""

    servers: dict[str, _BoundUpstream] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    thread: threading.Thread | None = None

    def start(self) -> Upstreams:
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        for app, version, address in WORKLOADS:
            name = f"{app}-{version}"
            self.servers[name] = _BoundUpstream(name, address, _answer(name))
        for server in self.servers.values():
            asyncio.run_coroutine_threadsafe(server.start(), self.loop).result(5)
        return self

    def requests(self, name: str) -> list[Request]:
        """What workload `name` (e.g. "ratings-v1") has received so far."""
        return list(self.servers[name].upstream.requests)

    def stop(self) -> None:
        def close_all() -> None:
            for server in self.servers.values():
                server.upstream.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(close_all)
        if self.thread is not None:
            self.thread.join(5)
        self.loop.close()


@dataclass
class Reply:
    """One response as the client saw it: status, which upstream answered (if any), and body."""

    status: int
    upstream: str | None
    body: str
    seconds: float


class Client:
    """A keep-alive HTTP/1.1 connection to productpage's egress listener."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.conn = http.client.HTTPConnection(LISTENER_IP, PORT, timeout=timeout)

    def get(self, service: str, path: str = "/", headers: dict[str, str] | None = None) -> Reply:
        start = time.monotonic()
        self.conn.request("GET", path, headers={"Host": f"{service}:{PORT}", **(headers or {})})
        resp = self.conn.getresponse()
        body = resp.read().decode("latin-1")
        return Reply(resp.status, resp.getheader("x-upstream"), body, time.monotonic() - start)

    def tally(self, service: str, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
        """Send `n` requests; count answers by upstream ("<status>" when none answered)."""
        seen: Counter[str] = Counter()
        for i in range(n):
            reply = self.get(service, f"/{service}/{i}", headers)
            seen[reply.upstream or str(reply.status)] += 1
        return seen

    def close(self) -> None:
        self.conn.close()


@dataclass
class Bookinfo:
    """The running productpage sidecar over the bookinfo upstreams."""

    sidecar: SidecarProcess
    upstreams: Upstreams

    def use(self, *samples: str) -> None:
        """Switch the sidecar's config to these sample files (and bookinfo-kube + locals)."""
        self.write(*samples)
        status, body = self.sidecar.admin("POST", "/reload")
        assert status == 200, body.decode(errors="replace")

    def write(self, *samples: str) -> None:
        """Rewrite the config file only (the sidecar's watcher picks it up within ~1 s)."""
        self.sidecar.config.write_text(mesh_yaml(*samples))

    @contextmanager
    def client(self, timeout: float = 10.0) -> Iterator[Client]:
        c = Client(timeout)
        try:
            yield c
        finally:
            c.close()


@contextmanager
def running_bookinfo(*samples: str) -> Iterator[Bookinfo]:
    """Upstreams for every workload version and a productpage sidecar configured with `samples`."""
    upstreams = Upstreams().start()
    sidecar = SidecarProcess(
        mesh_yaml(*samples),
        "--pod-name", CLIENT_POD,
        "--pod-namespace", NAMESPACE,
        "--access-log", "",
    )  # fmt: skip
    try:
        with sidecar:
            yield Bookinfo(sidecar, upstreams)
    finally:
        upstreams.stop()


def binomial_window(n: int, p: float, sigmas: float = 5.0) -> tuple[float, float]:
    """Where a Binomial(n, p) count falls but with probability ~6e-7 (5 sigma, two-sided)."""
    sd = (n * p * (1.0 - p)) ** 0.5
    return n * p - sigmas * sd, n * p + sigmas * sd
