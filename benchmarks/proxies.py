"""The paths under test: direct, nginx, HAProxy and the sidecar, each one process.

Theory of operation: a `PathSpec` knows whether its tools are installed (`missing()` says why
not) and how to start its proxy with a config rendered from benchmarks/configs/ into the run's
temp dir. Starting returns a `RunningPath`: the HTTP and TCP ports a client connects to and the
pid whose process tree is the proxy (for CPU and peak RSS). Each proxy serves both the HTTP and
the L4 scenario from the same process; scenarios run one after another, never two at once.
"direct" has no proxy: the client talks to the upstreams themselves (the limit).

The h2 and grpc scenarios use a second process per path, started by `start_h2` after the
HTTP/1.1 one is stopped (configs/*-h2.*): two h2c listeners, one to the h2c upstream, one to the
gRPC upstream. Keeping it separate leaves the HTTP/1.1 configs as they were and lets one
protocol fail to start without taking the other's numbers with it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from procs import HarnessError, ProcessSet, Started, free_port, wait_for_port
from render import render
from upstream import Upstreams, nginx_binary, stream_module

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 20.0
SIDECAR_BIN = ROOT / ".venv" / "bin" / "sidecar"


@dataclass(frozen=True)
class RunningPath:
    """A started path: where clients connect and which process is the proxy."""

    name: str
    http_port: int | None
    tcp_port: int | None
    pid: int | None
    note: str = ""
    h2_port: int | None = None
    grpc_port: int | None = None


class PathSpec:
    """A path to the upstreams; subclasses start one proxy process."""

    name = ""
    description = ""

    def missing(self) -> str | None:
        """Why this path cannot run here, or None if it can."""
        return None

    def start(self, procs: ProcessSet, tmp: Path, up: Upstreams) -> RunningPath:
        raise NotImplementedError

    def start_h2(self, procs: ProcessSet, tmp: Path, up: Upstreams) -> RunningPath:
        """Start the h2c proxy (h2 and grpc listeners); `up` has its h2 and gRPC ports."""
        raise NotImplementedError


class Direct(PathSpec):
    """No proxy: the load generator talks to the upstream and the sink directly."""

    name = "direct"
    description = "client -> upstream (no proxy; the limit)"

    def start(self, procs: ProcessSet, tmp: Path, up: Upstreams) -> RunningPath:
        return RunningPath(self.name, up.http_port, up.sink_port, None)

    def start_h2(self, procs: ProcessSet, tmp: Path, up: Upstreams) -> RunningPath:
        return RunningPath(self.name, None, None, None, h2_port=up.h2_port,
                           grpc_port=up.grpc_port)


class Nginx(PathSpec):
    """nginx reverse proxy (HTTP) and stream proxy (L4), one process."""

    name = "nginx"
    description = "nginx proxy_pass, upstream keepalive 64; stream for L4"

    def missing(self) -> str | None:
        return None if nginx_binary() else "nginx is not installed"

    def start(self, procs: ProcessSet, tmp: Path, up: Upstreams) -> RunningPath:
        nginx = nginx_binary()
        assert nginx is not None
        http_port, tcp_port = free_port(), free_port()
        module = stream_module()
        load, stream, note = "", "", ""
        if module is not None:
            load = f"load_module {module};"
            stream = ("stream {\n    server {\n"
                      f"        listen 127.0.0.1:{tcp_port};\n"
                      f"        proxy_pass 127.0.0.1:{up.sink_port};\n"
                      "    }\n}\n")
        else:
            note = "nginx stream module missing (apt-get install libnginx-mod-stream): no L4"
        conf = render("nginx-proxy.conf", {
            "TMP": tmp, "HTTP_PORT": http_port, "UPSTREAM_PORT": up.http_port,
            "LOAD_STREAM": load, "STREAM_BLOCK": stream}, tmp / "proxy-nginx.conf")
        started = procs.start("proxy-nginx", [nginx, "-p", str(tmp), "-c", str(conf)],
                               role="proxy")
        wait_for_port(http_port, started.proc, STARTUP_TIMEOUT, started.log)
        return RunningPath(self.name, http_port, tcp_port if module else None,
                           started.pid, note)

    def start_h2(self, procs: ProcessSet, tmp: Path, up: Upstreams) -> RunningPath:
        nginx = nginx_binary()
        assert nginx is not None
        h2_port, grpc_port = free_port(), free_port()
        conf = render("nginx-h2-proxy.conf", {"TMP": tmp, **_h2_ports(h2_port, grpc_port, up)},
                      tmp / "proxy-h2-nginx.conf")
        started = procs.start("proxy-h2-nginx", [nginx, "-p", str(tmp), "-c", str(conf)],
                               role="proxy")
        _wait_ports(started, h2_port, grpc_port)
        return RunningPath(self.name, None, None, started.pid, "h2 and grpc both through "
                           "grpc_pass (nginx's HTTP/2 upstream: one request per upstream "
                           "connection at a time), keepalive 256", h2_port, grpc_port)


class Haproxy(PathSpec):
    """HAProxy, one thread: mode http with http-reuse always, mode tcp for L4."""

    name = "haproxy"
    description = "HAProxy nbthread 1, mode http, http-reuse always; mode tcp for L4"

    def missing(self) -> str | None:
        return None if shutil.which("haproxy") else "haproxy is not installed"

    def start(self, procs: ProcessSet, tmp: Path, up: Upstreams) -> RunningPath:
        haproxy = shutil.which("haproxy")
        assert haproxy is not None
        http_port, tcp_port = free_port(), free_port()
        conf = render("haproxy.cfg", {
            "HTTP_PORT": http_port, "TCP_PORT": tcp_port, "UPSTREAM_PORT": up.http_port,
            "SINK_PORT": up.sink_port}, tmp / "haproxy.cfg")
        started = procs.start("proxy-haproxy", [haproxy, "-db", "-f", str(conf)],
                               role="proxy")
        wait_for_port(http_port, started.proc, STARTUP_TIMEOUT, started.log)
        wait_for_port(tcp_port, started.proc, STARTUP_TIMEOUT, started.log)
        return RunningPath(self.name, http_port, tcp_port, started.pid)

    def start_h2(self, procs: ProcessSet, tmp: Path, up: Upstreams) -> RunningPath:
        haproxy = shutil.which("haproxy")
        assert haproxy is not None
        h2_port, grpc_port = free_port(), free_port()
        conf = render("haproxy-h2.cfg", _h2_ports(h2_port, grpc_port, up), tmp / "haproxy-h2.cfg")
        started = procs.start("proxy-h2-haproxy", [haproxy, "-db", "-f", str(conf)],
                               role="proxy")
        _wait_ports(started, h2_port, grpc_port)
        return RunningPath(self.name, None, None, started.pid, h2_port=h2_port,
                           grpc_port=grpc_port)


class Sidecar(PathSpec):
    """This project's proxy, `sidecar run` with captureMode NONE ingress listeners."""

    name = "sidecar"
    description = "sidecar run, Sidecar ingress captureMode NONE (HTTP and TCP listeners)"

    def missing(self) -> str | None:
        return None if SIDECAR_BIN.exists() else f"{SIDECAR_BIN} does not exist"

    def start(self, procs: ProcessSet, tmp: Path, up: Upstreams) -> RunningPath:
        http_port, tcp_port = free_port(), free_port()
        conf = render("sidecar.yaml", {
            "HTTP_PORT": http_port, "TCP_PORT": tcp_port, "UPSTREAM_PORT": up.http_port,
            "SINK_PORT": up.sink_port}, tmp / "sidecar.yaml")
        started = self._run(procs, conf, "proxy-sidecar", http_port, tcp_port)
        return RunningPath(self.name, http_port, tcp_port, started.pid)

    def start_h2(self, procs: ProcessSet, tmp: Path, up: Upstreams) -> RunningPath:
        h2_port, grpc_port = free_port(), free_port()
        conf = render("sidecar-h2.yaml", _h2_ports(h2_port, grpc_port, up),
                      tmp / "sidecar-h2.yaml")
        started = self._run(procs, conf, "proxy-h2-sidecar", h2_port, grpc_port)
        return RunningPath(self.name, None, None, started.pid, h2_port=h2_port,
                           grpc_port=grpc_port)

    @staticmethod
    def _run(procs: ProcessSet, conf: Path, name: str, *ports: int) -> Started:
        """`sidecar run` with `conf`; returns once `ports` accept and /ready answers."""
        admin, status, prom = free_port(), free_port(), free_port()
        argv = [str(SIDECAR_BIN), "run", "--config", str(conf), "--pod-name", "bench-1",
                "--pod-namespace", "default", "--admin-port", str(admin),
                "--status-port", str(status), "--prometheus-port", str(prom),
                "--access-log", "",
                # No iptables here: the capture listeners are off (0), not on fixed ports.
                "--outbound-port", "0", "--inbound-port", "0", "--no-watch"]
        started = procs.start(name, argv, cwd=ROOT, role="proxy")
        _wait_ports(started, *ports)
        _wait_ready(admin, STARTUP_TIMEOUT)
        return started


def _h2_ports(h2_port: int, grpc_port: int, up: Upstreams) -> dict[str, str | int | Path]:
    """The placeholders every *-h2 template has: its listeners and the h2c upstreams."""
    if up.h2_port is None or up.grpc_port is None:
        raise HarnessError("no h2c upstream (it needs nginx)")
    return {"H2_PORT": h2_port, "GRPC_PORT": grpc_port, "H2_UPSTREAM_PORT": up.h2_port,
            "GRPC_UPSTREAM_PORT": up.grpc_port}


def _wait_ports(started: Started, *ports: int) -> None:
    for port in ports:
        wait_for_port(port, started.proc, STARTUP_TIMEOUT, started.log)


def _wait_ready(admin_port: int, timeout: float) -> None:
    """Best effort: wait for the admin /ready to answer 200 (listeners already accept)."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{admin_port}/ready"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    print(f"  note: sidecar admin {url} did not answer 200 in {timeout:.0f}s; going on",
          file=sys.stderr)


ALL_PATHS: tuple[PathSpec, ...] = (Direct(), Nginx(), Haproxy(), Sidecar())


def select(only: str | None) -> list[PathSpec]:
    """The paths named in a comma-separated `--only` value (all when None)."""
    if not only:
        return list(ALL_PATHS)
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    known = {spec.name: spec for spec in ALL_PATHS}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise HarnessError(f"unknown path(s) {unknown}; known: {sorted(known)}")
    return [known[name] for name in wanted]


def describe() -> str:
    """One line per path, for --help."""
    return json.dumps({spec.name: spec.description for spec in ALL_PATHS}, indent=1)
