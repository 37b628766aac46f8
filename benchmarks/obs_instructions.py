"""What observability costs per request, in instructions: the sidecar under callgrind.

Theory of operation: on this VM, throughput ratios move by a percent or two from run to run,
as much as the costs being measured. Instruction counts do not: the same requests through the
same build execute the same instructions, to a few in a thousand. So each arm here is one
`sidecar run` (the config and flags of benchmarks/observability.py's arm) under valgrind's
callgrind with collection off; one keep-alive client sends warm-up GETs, then collection is
switched on (`callgrind_control -i on`), `--requests` GETs are sent one after another, a few
seconds pass for a post in flight to finish (a sampled arm's export thread counts: every thread
of the process is counted), collection is switched off and the counts dumped. The
result is the instructions per request of each arm and its difference to `off`.

Tracing at 1% is not run as an arm: over a few thousand requests its count would depend on
which requests were drawn, and on whether the export thread's first (cold) post lands in the
counted window. The `sampled` arm (every request sampled) and `trace0` give the two ends
instead: one sampled request costs their difference, and `trace0 + (sampled - trace0) / 100`
is what 1% costs on average. The flush timer is set far out (--flush), so spans are posted
by full batches of 256 only, as under load (1% of a few thousand requests per second is a few
hundred spans per 5 s post): the number of posts in the counted window then depends only on
the number of requests, not on how fast they went under callgrind, and the warm-up's first
(cold) post is not counted.

With --connections N the counted GETs go over N keep-alive connections at once (hey), as
under load, where several requests share each loop turn. (On 2026-11-27, 16 connections gave
the same count per request as one, 175.4k vs 174.7k for "off": the loop's per-turn work is
not what makes a request cheaper under wrk.)

Run: .venv/bin/python benchmarks/obs_instructions.py --arms off,metrics,trace0,sampled
"""

from __future__ import annotations

import argparse
import http.client
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procs import HarnessError, ProcessSet, Started, free_port, wait_for_port
from proxies import SIDECAR_BIN
from render import render
from upstream import start_upstreams

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
# The flags of each arm (benchmarks/observability.py's, plus "sampled": every request).
ARMS: dict[str, list[str]] = {
    "off": ["--no-metrics"],
    "metrics": [],
    "trace0": ["--trace-sampling", "0"],
    "sampled": ["--trace-sampling", "100"],
}
TRACED = ("trace0", "sampled")
_TOTALS = re.compile(rb"^totals: (\d+)", re.MULTILINE)


def start(procs: ProcessSet, tmp: Path, arm: str, upstream: int, h2_upstream: int,
          collector: str, flush: float) -> tuple[Started, int, Path]:
    """The arm's sidecar under callgrind (collection off); returns once it listens."""
    http_port, h2_port = free_port(), free_port()
    conf = render("sidecar-obs.yaml", {"HTTP_PORT": http_port, "UPSTREAM_PORT": upstream,
                                       "H2_PORT": h2_port, "H2_UPSTREAM_PORT": h2_upstream},
                  tmp / f"sidecar-{arm}.yaml")
    out = tmp / f"callgrind-{arm}.out"
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            str(PYTHON), str(SIDECAR_BIN), "run", "--config", str(conf),
            "--pod-name", "bench-1", "--pod-namespace", "default",
            "--admin-port", str(free_port()), "--status-port", "0",
            "--prometheus-port", str(free_port()), "--access-log", "", "--outbound-port", "0",
            "--inbound-port", "0", "--no-watch", *ARMS[arm]]
    if arm in TRACED:
        argv += ["--zipkin-address", collector, "--zipkin-flush-interval", str(flush)]
    started = procs.start(f"sidecar-{arm}", argv, cwd=ROOT)
    wait_for_port(http_port, started.proc, 300.0, started.log)
    return started, http_port, out


def get(conn: http.client.HTTPConnection, count: int) -> None:
    """`count` GETs on one keep-alive connection, each answered 200."""
    for _ in range(count):
        conn.request("GET", "/", headers={"User-Agent": "obs-instructions"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise HarnessError(f"GET answered {response.status}")


def load(port: int, count: int, connections: int) -> None:
    """`count` GETs over `connections` keep-alive connections at once (hey), as under load:
    several requests then share each loop turn's reads, writes and flushes."""
    out = subprocess.run(["hey", "-n", str(count), "-c", str(connections), "-t", "60",
                          "-H", "User-Agent: obs-instructions", f"http://127.0.0.1:{port}/"],
                         check=True, capture_output=True, text=True).stdout
    if f"[200]\t{count} responses" not in out:
        raise HarnessError(f"hey: not {count} answers of 200:\n{out}")


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def measure(procs: ProcessSet, tmp: Path, arm: str, args: argparse.Namespace, upstream: int,
            h2_upstream: int, collector: str) -> float:
    """Instructions per request of one arm."""
    started, port, out = start(procs, tmp, arm, upstream, h2_upstream, collector, args.flush)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60.0)
    get(conn, args.warmup)
    if args.connections > 1:  # hey sends count // connections on each connection
        load(port, args.warmup - args.warmup % args.connections, args.connections)
    time.sleep(args.settle)  # the warm-up's post done before counting starts
    control(started.pid, "-i", "on")
    requests: int = args.requests - args.requests % args.connections
    if args.connections > 1:
        load(port, requests, args.connections)
    else:
        get(conn, requests)
    time.sleep(args.settle)  # and the last full batch's post while counting
    control(started.pid, "-i", "off")
    control(started.pid, "-d")
    conn.close()
    procs.stop(started, grace=60.0)
    counts = [int(m.group(1)) for f in tmp.glob(f"{out.name}*")
              for m in [_TOTALS.search(f.read_bytes())] if m]
    if not counts:
        raise HarnessError(f"no callgrind totals for {arm}")
    return max(counts) / requests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--arms", default="off,metrics,trace0,sampled",
                   help=f"comma-separated, 'off' first, of {sorted(ARMS)}")
    p.add_argument("--requests", type=int, default=1500, help="GETs counted per arm")
    p.add_argument("--warmup", type=int, default=300, help="GETs before counting starts")
    p.add_argument("--connections", type=int, default=1,
                   help="keep-alive connections at once (hey) for the counted GETs; 1: one after "
                        "another on one connection")
    p.add_argument("--flush", type=float, default=3600.0,
                   help="the span flush interval (s); posts by full batches only when long")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds for a post in flight to finish, after warm-up and after")
    args = p.parse_args(argv)
    arms = args.arms.split(",")
    if arms[0] != "off" or not set(arms) <= set(ARMS):
        p.error(f"--arms: 'off' first, then any of {sorted(ARMS)}")
    tmp = Path(tempfile.mkdtemp(prefix="obs-instructions-"))
    results: dict[str, float] = {}
    with ProcessSet(tmp) as procs:
        up = start_upstreams(procs, tmp, grpc_body="x")
        if up.h2_port is None:
            raise HarnessError("nginx is needed for the upstreams")
        collector = f"127.0.0.1:{free_port()}"
        c = procs.start("collector", [str(SIDECAR_BIN), "traces", "--listen", collector,
                                      "--no-print"])
        wait_for_port(int(collector.rsplit(":", 1)[1]), c.proc, 20.0, c.log)
        for arm in arms:
            results[arm] = measure(procs, tmp, arm, args, up.http_port, up.h2_port, collector)
            base = results["off"]
            print(f"{arm:8s} {results[arm] / 1000:8.1f}k instructions/request   "
                  f"{(results[arm] - base) / 1000:+7.1f}k  ({results[arm] / base:.3f} x off)",
                  flush=True)
    if "sampled" in results and "trace0" in results:
        one = results["sampled"] - results["trace0"]
        print(f"one sampled request: {one / 1000:+.1f}k; at 1%: "
              f"{(results['trace0'] + one / 100 - results['off']) / 1000:+.1f}k over off "
              f"({(results['trace0'] + one / 100) / results['off']:.3f} x off)")
    print(f"logs and callgrind files: {tmp}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
