"""Route-table scaling: per-request cost with 1, 100 and 10,000 virtual hosts, beside nginx.

Theory of operation: for each count N, a mesh config with N Kubernetes Services (one HTTP port)
and one VirtualService per service (five routes: an exact path, two prefixes, a header match and
a regex, then a catch-all) is rendered, and `sidecar run` serves it on a Sidecar egress
listener, so its route config "PORT" holds N virtual hosts with the domains Istio gives each
service. Every route sends to one `backend` Service (the nginx upstream), so the upstream
connection pool is the same at every N and only the route table grows. nginx gets the same N host
names as N `server` blocks. wrk drives both with a Lua script that picks a random service host
and a random path for every request, so no lookup is served from one warm entry. The proxy's
CPU is read around the measured run: CPU us/request at N divided by the same at N=1 is the
number the route table must keep flat (the issue's bar: within 10%). With --rounds R the counts
run R times, interleaved (1, 100, 10000, 1, 100, ...), and the table shows each one's median
round: the first process measured in a run is often a little slower, whatever its N.

Run: .venv/bin/python benchmarks/vhosts.py [--counts 1,100,10000] [--duration 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import loadgen
from procs import (
    HarnessError,
    Pinning,
    ProcessSet,
    Started,
    cpu_seconds,
    free_port,
    process_tree,
)
from proxies import SIDECAR_BIN, _wait_ports, _wait_ready
from upstream import nginx_binary, start_upstreams

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("/", "/api/v1/items", "/static/app.js", "/reviews/7", "/ratings/42")
STARTUP_TIMEOUT = 600.0  # seconds: 10,000 services and VirtualServices load in well under


@dataclass
class Row:
    """One proxy at one virtual-host count."""

    proxy: str
    count: int
    rps: float = 0.0
    cpu_us: float = 0.0
    startup_s: float = 0.0
    rss_mib: float = 0.0
    error: str = ""


def host(i: int) -> str:
    return f"svc-{i}.default.svc.cluster.local"


def mesh_config(count: int, port: int, upstream_port: int) -> str:
    """N Services + N VirtualServices behind one egress listener on 127.0.0.1:port."""
    docs = [f"""apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {{name: upstream, namespace: default}}
spec: {{address: 127.0.0.1, labels: {{app: upstream}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {{name: bench-1, namespace: default}}
spec: {{address: 127.0.0.2, labels: {{app: bench}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: Sidecar
metadata: {{name: bench, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: bench}}}}
  egress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: ["./*"]
---
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: default}}
spec:
  clusterIP: 10.95.0.1
  selector: {{app: upstream}}
  ports: [{{name: http, port: {port}, targetPort: {upstream_port}}}]
"""]
    for i in range(count):
        name = f"svc-{i}"
        docs.append(f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: 10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}
  selector: {{app: {name}}}
  ports: [{{name: http, port: {port}, targetPort: {upstream_port}}}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}]
  http:
  - match: [{{uri: {{exact: /api/v1/items}}}}]
    route: [{{destination: {{host: backend}}}}]
  - match: [{{uri: {{prefix: /static/}}}}, {{uri: {{prefix: /assets/}}}}]
    route: [{{destination: {{host: backend}}}}]
  - match: [{{headers: {{x-canary: {{exact: "yes"}}}}}}]
    route: [{{destination: {{host: backend}}}}]
  - match: [{{uri: {{regex: "/reviews/[0-9]+"}}}}]
    route: [{{destination: {{host: backend}}}}]
  - route: [{{destination: {{host: backend}}}}]
""")
    return "---\n".join(docs)


def nginx_config(tmp: Path, count: int, port: int, upstream_port: int) -> str:
    servers = "\n".join(
        f"    server {{ listen 127.0.0.1:{port}; server_name {host(i)}; "
        f"location / {{ proxy_pass http://app; proxy_http_version 1.1; "
        f'proxy_set_header Connection ""; }} }}'
        for i in range(count))
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {tmp}/vhosts-nginx.pid;
error_log {tmp}/vhosts-nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/vh-body;
    proxy_temp_path {tmp}/vh-proxy;
    fastcgi_temp_path {tmp}/vh-fastcgi;
    uwsgi_temp_path {tmp}/vh-uwsgi;
    scgi_temp_path {tmp}/vh-scgi;
    server_names_hash_max_size 65536;
    server_names_hash_bucket_size 128;
    keepalive_requests 100000000;
    upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
{servers}
}}
"""


def wrk_script(count: int, path: Path) -> Path:
    """A wrk Lua script sending each request to a random host and path."""
    hosts = ",".join(f'"{host(i)}"' for i in range(count))
    paths = ",".join(f'"{p}"' for p in PATHS)
    path.write_text(f"""local hosts = {{{hosts}}}
local paths = {{{paths}}}
math.randomseed({random.randrange(1 << 30)})
request = function()
  local h = hosts[math.random(#hosts)]
  return wrk.format("GET", paths[math.random(#paths)], {{["Host"] = h}})
end
""")
    return path


def measure(started: Started, port: int, count: int, script: Path, args: argparse.Namespace,
            row: Row) -> None:
    url = f"http://127.0.0.1:{port}/"
    pids = process_tree(started.pid)
    prefix = args.pinning.wrap([], "load")
    if args.warmup > 0:
        loadgen.run_wrk(url, args.warmup, args.connections, 1, prefix, script=script)
    before = cpu_seconds(pids)
    load = loadgen.run_wrk(url, args.duration, args.connections, 1, prefix, script=script)
    spent = cpu_seconds(pids) - before
    if load.error or load.non_2xx or load.errors:
        row.error = load.error or f"{load.non_2xx} non-2xx, {load.errors} socket errors"
    row.rps = load.rps
    if load.requests:
        row.cpu_us = spent * 1e6 / load.requests
    row.rss_mib = _rss_mib(started.pid)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_sidecar(procs: ProcessSet, tmp: Path, count: int, upstream_port: int,
                script: Path, args: argparse.Namespace) -> Row:
    row = Row("sidecar", count)
    port = free_port()
    conf = tmp / f"vhosts-{count}.yaml"
    conf.write_text(mesh_config(count, port, upstream_port))
    admin, status, prom = free_port(), free_port(), free_port()
    argv = [str(SIDECAR_BIN), "run", "--config", str(conf), "--pod-name", "bench-1",
            "--pod-namespace", "default", "--admin-port", str(admin),
            "--status-port", str(status), "--prometheus-port", str(prom), "--access-log", "",
            "--outbound-port", "0", "--inbound-port", "0", "--no-watch"]
    began = time.monotonic()
    started = procs.start(f"vhosts-sidecar-{count}", argv, cwd=ROOT, role="proxy")
    try:
        _wait_ports_long(started, port)
        _wait_ready(admin, 30.0)
        row.startup_s = time.monotonic() - began
        measure(started, port, count, script, args, row)
    except HarnessError as err:
        row.error = str(err).replace("\n", " | ")
    finally:
        procs.stop(started)
    return row


def _wait_ports_long(started: Started, port: int) -> None:
    from procs import wait_for_port

    wait_for_port(port, started.proc, STARTUP_TIMEOUT, started.log)


def run_nginx(procs: ProcessSet, tmp: Path, count: int, upstream_port: int,
              script: Path, args: argparse.Namespace) -> Row:
    row = Row("nginx", count)
    nginx = nginx_binary()
    if nginx is None:
        row.error = "nginx is not installed"
        return row
    port = free_port()
    conf = tmp / f"vhosts-nginx-{count}.conf"
    conf.write_text(nginx_config(tmp, count, port, upstream_port))
    began = time.monotonic()
    started = procs.start(f"vhosts-nginx-{count}", [nginx, "-p", str(tmp), "-c", str(conf)],
                          role="proxy")
    try:
        _wait_ports(started, port)
        row.startup_s = time.monotonic() - began
        measure(started, port, count, script, args, row)
    except HarnessError as err:
        row.error = str(err).replace("\n", " | ")
    finally:
        procs.stop(started)
    return row


def table(rows: list[Row]) -> str:
    base = {r.proxy: r for r in rows if r.count == min(x.count for x in rows)}
    nginx = {r.count: r for r in rows if r.proxy == "nginx"}
    lines = ["| proxy | virtual hosts | req/s | CPU us/req | CPU vs fewest hosts | x nginx req/s "
             "| start-up s | RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.proxy} | {r.count:,} | failed: {r.error} | | | | | |")
            continue
        b = base.get(r.proxy)
        vs = f"{r.cpu_us / b.cpu_us:.2f}x" if b and b.cpu_us and r.cpu_us else "-"
        n = nginx.get(r.count)
        xn = f"{r.rps / n.rps:.2f}" if n and n.rps and not n.error else "-"
        lines.append(f"| {r.proxy} | {r.count:,} | {r.rps:,.0f} | {r.cpu_us:.1f} | {vs} | {xn} "
                     f"| {r.startup_s:.1f} | {r.rss_mib:.0f} |")
    return "\n".join(lines)


def route_lookup_ns(count: int, port: int = 18080, lookups: int = 50_000) -> float:
    """In-process: nanoseconds per `RouteTable.route()` for random hosts and paths, best of 5
    (the route table alone, without the network: the matching cost the issue bounds)."""
    from sidecar.bootstrap import Bootstrap
    from sidecar.config.load import load_text
    from sidecar.config.translate import translate
    from sidecar.http.router import route_table
    from sidecar.http.stream import RequestHead

    boot = Bootstrap(pod_name="bench-1", pod_namespace="default", outbound_port=0,
                     inbound_port=0)
    snap = translate(load_text(mesh_config(count, port, 8080)), boot)
    table = route_table(snap.route_configs[str(port)])
    rng = random.Random(count)
    heads = []
    for _ in range(lookups):
        head = RequestHead(b"GET", rng.choice(PATHS).encode(), [(b"x-canary", b"no")])
        head.authority = host(rng.randrange(count)).encode()
        heads.append(head)
    if any(table.route(h) is None for h in heads[:100]):
        raise HarnessError(f"{count} hosts: a request found no route")
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter_ns()
        for h in heads:
            table.route(h)
        best = min(best, (time.perf_counter_ns() - began) / lookups)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--counts", default="1,100,10000", help="virtual-host counts")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of each wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured wrk seconds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--only", default="nginx,sidecar", help="proxies: nginx,sidecar")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median)")
    parser.add_argument("--pin", action="store_true",
                        help="the proxy on CPU 1, upstream and wrk on CPU 0 (taskset)")
    parser.add_argument("--micro", action="store_true",
                        help="only time the route table in-process (ns per lookup)")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    args.pinning = Pinning(proxy="1", load="0") if args.pin else Pinning()
    only = {p.strip() for p in args.only.split(",")}
    if args.micro:
        base = 0.0
        print("| virtual hosts | ns per route lookup | vs fewest hosts |\n|---|---|---|")
        for count in counts:
            ns = route_lookup_ns(count)
            base = base or ns
            print(f"| {count:,} | {ns:,.0f} | {ns / base:.2f}x |", flush=True)
        return 0
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="sidecar-vhosts-") as tmp_name, \
            ProcessSet(Path(tmp_name), args.pinning) as procs:
        tmp = Path(tmp_name)
        up = start_upstreams(procs, tmp)
        for _ in range(args.rounds):
            for count in counts:
                script = wrk_script(count, tmp / f"vhosts-{count}.lua")
                if "nginx" in only:
                    rows.append(run_nginx(procs, tmp, count, up.http_port, script, args))
                if "sidecar" in only:
                    rows.append(run_sidecar(procs, tmp, count, up.http_port, script, args))
                print(table(rows), file=sys.stderr, flush=True)
    result = medians(rows)
    print(table(result))
    return 1 if any(r.error for r in result) else 0


def medians(rows: list[Row]) -> list[Row]:
    """Per (proxy, count), the round with the median CPU per request (first seen order)."""
    groups: dict[tuple[str, int], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.proxy, r.count), []).append(r)
    out = []
    for group in groups.values():
        ok = sorted((r for r in group if not r.error), key=lambda r: r.cpu_us)
        out.append(ok[len(ok) // 2] if ok else group[0])
    return sorted(out, key=lambda r: (r.count, r.proxy != "nginx"))


if __name__ == "__main__":
    sys.exit(main())
