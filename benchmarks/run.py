"""Benchmark harness: direct vs nginx vs HAProxy vs the sidecar, on loopback, in one run.

Theory of operation: the upstreams (nginx returning a static body, and a TCP byte sink) start
once. Then, for each path in turn, its proxy starts (one process), is checked with one GET, and
three scenarios run one after another, never two loads at once (the machine has 2 cores):
  1. throughput: a short wrk warm-up, then wrk for --duration, proxy CPU read around it;
  2. latency: hey at a fixed --rate for --duration (the added-latency measurement);
  3. L4: one bulk transfer of --l4-bytes through the path's TCP listener, CPU read around it.
Then its peak RSS is read and the proxy is stopped before the next path starts. With the h2
and grpc scenarios selected, the path's proxy then starts again with h2c listeners and h2load
runs through it (h2.py), shown in a second table. Every process
is stopped by pid on the way out, also on failure or Ctrl-C. The table goes to stdout and,
with the raw numbers, to benchmarks/results/. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import h2
import l4
import loadgen
import proxies
import report
from procs import (
    HarnessError,
    Pinning,
    ProcessSet,
    cpu_seconds,
    peak_rss_kib,
    process_tree,
    tail,
)
from upstream import Upstreams, start_upstreams

HERE = Path(__file__).resolve().parent
PY_SPY = HERE.parent / ".venv" / "bin" / "py-spy"
H1_SCENARIOS = ("http", "fixed", "l4")
SCENARIOS = (*H1_SCENARIOS, *h2.SCENARIOS)
DEFAULT_SCENARIOS = SCENARIOS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare direct, nginx, HAProxy and the sidecar on loopback.",
        epilog="paths: " + proxies.describe())
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of each wrk and hey run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of unmeasured wrk before the measured run (default 2)")
    parser.add_argument("--only", help="comma-separated paths: direct,nginx,haproxy,sidecar")
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                        help="comma-separated subset of " + ",".join(SCENARIOS)
                        + " (default " + ",".join(DEFAULT_SCENARIOS) + ")")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--threads", type=int, default=1,
                        help="wrk threads (default 1: fastest on 2 cores, see README)")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="hey fixed offered rate, requests/s (default 1000)")
    parser.add_argument("--rate-workers", type=int, default=5,
                        help="hey workers sharing --rate (default 5, see README)")
    parser.add_argument("--l4-bytes", type=int, default=1 << 30,
                        help="bytes sent in the L4 transfer (default 1 GiB)")
    parser.add_argument("--l4-timeout", type=float, default=60.0,
                        help="seconds before an L4 transfer counts as failed (default 60)")
    parser.add_argument("--h2-clients", type=int, default=8,
                        help="h2load connections in the h2 and grpc scenarios (default 8)")
    parser.add_argument("--h2-streams", type=int, default=32,
                        help="h2load concurrent streams per connection (default 32)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every path N times, interleaved; the table shows the "
                             "median round per scenario (default 1)")
    parser.add_argument("--pin", action="store_true",
                        help="pin the proxy to CPU 1 and the upstream, sink and load "
                             "generators to CPU 0 (taskset; see README)")
    parser.add_argument("--profile", action="store_true",
                        help="record the sidecar with py-spy during its runs (flamegraph SVGs "
                             "in the results dir; perturbs the sidecar's numbers)")
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="output directory (default benchmarks/results)")
    parser.add_argument("--keep-temp", action="store_true",
                        help="keep the temp dir with rendered configs and logs")
    args = parser.parse_args(argv)
    wanted = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    if not wanted <= set(SCENARIOS):
        parser.error(f"--scenarios: unknown {sorted(wanted - set(SCENARIOS))}")
    args.scenario_set = wanted
    args.pinning = Pinning(proxy="1", load="0") if args.pin else Pinning()
    return args


class Profiler:
    """py-spy attached to the sidecar for one scenario; SIGINT makes it write the SVG."""

    def __init__(self, procs: ProcessSet, pid: int, svg: Path) -> None:
        self.svg = svg
        self._procs = procs
        self._started = procs.start(f"py-spy-{svg.stem}", [
            str(PY_SPY), "record", "--pid", str(pid), "--rate", "200", "--nonblocking",
            "--subprocesses",
            "--format", "flamegraph", "--output", str(svg)])

    def finish(self) -> None:
        self._procs.interrupt(self._started, timeout=60.0)


def check_http(port: int) -> str | None:
    """One GET through the path; an error message, or None when it answered 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5.0) as response:
            body = response.read()
            return None if response.status == 200 and body else f"status {response.status}"
    except OSError as err:
        return f"GET failed: {err}"


class PathBench:
    """The scenarios for one started path, filling in its `PathResult`."""

    def __init__(self, args: argparse.Namespace, procs: ProcessSet, path: proxies.RunningPath,
                 result: report.PathResult, stamp: str) -> None:
        self.args = args
        self.procs = procs
        self.path = path
        self.result = result
        self.stamp = stamp
        self.pids = process_tree(path.pid) if path.pid else []
        self.load_prefix = args.pinning.wrap([], "load")
        self.profiling = bool(args.profile and path.name == "sidecar" and path.pid)

    def _profiler(self, scenario: str) -> Profiler | None:
        if not self.profiling or self.path.pid is None:
            return None
        svg = self.args.results / f"flame-sidecar-{scenario}-{self.stamp}.svg"
        self.args.results.mkdir(parents=True, exist_ok=True)
        self.result.profiles.append(str(svg))
        return Profiler(self.procs, self.path.pid, svg)

    def run(self) -> None:
        """Run the selected scenarios in order, then read peak RSS."""
        scenarios, path, result = self.args.scenario_set, self.path, self.result
        if path.note:
            result.notes.append(path.note)
        if path.http_port and scenarios & {"http", "fixed"}:
            problem = check_http(path.http_port)
            if problem:
                result.notes.append(f"HTTP check failed, HTTP scenarios skipped: {problem}")
            else:
                self.throughput(path.http_port)
                self.fixed_rate(path.http_port)
        if "l4" in scenarios:
            if path.tcp_port is None:
                result.notes.append("no TCP listener on this path: L4 skipped")
            else:
                self.bulk(path.tcp_port)
        if path.pid:
            result.peak_rss_kib = peak_rss_kib(process_tree(path.pid))
            if any("failed" in note for note in result.notes):
                self._note_log_tail(path.pid)
        if self.profiling:
            result.notes.append("profiled with py-spy (its CPU and rates are perturbed): "
                                + ", ".join(result.profiles))
        for started in self.procs.running():
            if started.proc.poll() is not None:
                result.notes.append(f"{started.name} exited with {started.proc.returncode} "
                                    f"during the run; log {started.log}")

    def _note_log_tail(self, pid: int) -> None:
        """Put the proxy's last log lines under the table (the temp dir may be removed)."""
        for started in self.procs.running():
            if started.pid == pid:
                last = tail(started.log, 4).replace("\n", " | ")
                self.result.notes.append(f"last lines of its log: {last}")

    def throughput(self, port: int) -> None:
        """wrk warm-up, then the measured wrk run with the proxy's CPU read around it."""
        if "http" not in self.args.scenario_set:
            return
        if not loadgen.available("wrk"):
            self.result.notes.append("wrk is not installed: throughput skipped")
            return
        args, url = self.args, f"http://127.0.0.1:{port}/"
        if args.warmup > 0:
            loadgen.run_wrk(url, args.warmup, args.connections, args.threads,
                            self.load_prefix)
        profiler = self._profiler("http")
        before = cpu_seconds(self.pids)
        self.result.wrk = loadgen.run_wrk(url, args.duration, args.connections, args.threads,
                                          self.load_prefix)
        spent = cpu_seconds(self.pids) - before
        if profiler:
            profiler.finish()
        if self.pids and self.result.wrk.requests:
            self.result.cpu_us_per_request = spent * 1e6 / self.result.wrk.requests

    def fixed_rate(self, port: int) -> None:
        """hey at the fixed offered rate: latency with the path far from saturation."""
        if "fixed" not in self.args.scenario_set:
            return
        if not loadgen.available("hey"):
            self.result.notes.append("hey is not installed: fixed-rate latency skipped")
            return
        self.result.hey = loadgen.run_hey(f"http://127.0.0.1:{port}/", self.args.duration,
                                          self.args.rate, self.args.rate_workers,
                                          self.load_prefix)

    def bulk(self, port: int) -> None:
        """A 64 MiB warm-up transfer, then the measured one with CPU read around it."""
        args, result = self.args, self.result
        try:
            l4.transfer(port, min(args.l4_bytes, 64 << 20), args.l4_timeout)
            profiler = self._profiler("l4")
            before = cpu_seconds(self.pids)
            result.l4 = l4.transfer(port, args.l4_bytes, args.l4_timeout)
            spent = cpu_seconds(self.pids) - before
            if profiler:
                profiler.finish()
        except OSError as err:
            result.notes.append(f"L4 transfer failed: {err}")
            return
        if result.l4.received != args.l4_bytes:
            result.notes.append(f"L4: sink counted {result.l4.received} of {args.l4_bytes}")
        if self.pids and result.l4.received:
            result.l4_cpu_seconds_per_gib = spent * report.GIB / result.l4.received


def measure_path(spec: proxies.PathSpec, args: argparse.Namespace, up: Upstreams, tmp: Path,
                 stamp: str) -> report.PathResult:
    """Start one path, run the selected scenarios through it, stop it (also on failure)."""
    result = report.PathResult(spec.name, spec.description)
    missing = spec.missing()
    if missing:
        result.skipped = missing
    elif args.scenario_set & set(H1_SCENARIOS):
        with ProcessSet(tmp, args.pinning) as procs:
            try:
                path = spec.start(procs, tmp, up)
            except HarnessError as err:
                result.skipped = f"did not start: {err}"
            else:
                PathBench(args, procs, path, result, stamp).run()
    if args.scenario_set & set(h2.SCENARIOS):
        h2.measure(spec, args, up, tmp, result)
    return result


def tool_versions() -> dict[str, str]:
    """First line of each tool's version output, or "missing"."""
    commands = {"nginx": ["nginx", "-v"], "haproxy": ["haproxy", "-v"], "wrk": ["wrk", "-v"],
                "hey": ["hey", "-h"], "h2load": ["h2load", "--version"],
                "py-spy": [str(PY_SPY), "--version"]}
    versions = {}
    for tool, command in commands.items():
        if shutil.which(command[0]) is None:
            versions[tool] = "missing"
            continue
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        lines = (done.stdout + done.stderr).strip().splitlines()
        versions[tool] = lines[0] if lines and tool != "hey" else "present"
    return versions


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C and SIGTERM both unwind through the ProcessSets, which stop what they started
    # (SIGINT is set explicitly: a shell starting us in the background may have ignored it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse_args(argv)
    specs = proxies.select(args.only)
    now = datetime.datetime.now()
    stamp = now.strftime("%Y%m%d-%H%M%S")
    versions = tool_versions()
    for tool in ("wrk", "hey", "h2load", "nginx", "haproxy"):
        if versions[tool] == "missing":
            print(f"NOTE: {tool} is not installed; the scenarios needing it are skipped",
                  file=sys.stderr)
    if args.profile and not PY_SPY.exists():
        print(f"NOTE: {PY_SPY} missing (.venv/bin/pip install py-spy): no profile",
              file=sys.stderr)
        args.profile = False
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    rounds: list[list[report.PathResult]] = []
    try:
        if args.pinning.load:  # the L4 sender runs in this process
            os.sched_setaffinity(0, {int(cpu) for cpu in args.pinning.load.split(",")})
        with ProcessSet(tmp, args.pinning) as procs:
            with_h2 = bool(args.scenario_set & set(h2.SCENARIOS))
            up = start_upstreams(procs, tmp, h2.upstream_grpc_body() if with_h2 else None)
            for number in range(1, max(1, args.rounds) + 1):
                one: list[report.PathResult] = []
                for spec in specs:
                    print(f"== round {number}: {spec.name}: {spec.description}",
                          file=sys.stderr, flush=True)
                    one.append(measure_path(spec, args, up, tmp, f"{stamp}-r{number}"))
                rounds.append(one)
    except KeyboardInterrupt:
        print("interrupted: every started process was stopped", file=sys.stderr)
        return 130
    except HarnessError as err:
        print(f"benchmark failed: {err}", file=sys.stderr)
        return 1
    finally:
        if args.keep_temp:
            print(f"configs and logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results = [report.median_of_rounds([one[i] for one in rounds]) for i in range(len(specs))]
    settings: dict[str, object] = {
        "date": now.isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "host": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus, "
                f"Python {platform.python_version()}",
        "tools": versions, "upstream": up.http_server,
        **{k: v for k, v in vars(args).items() if k not in ("scenario_set", "pinning")},
        "results": str(args.results)}
    header = "\n".join([
        f"# Benchmark run {settings['date']}", "",
        f"- command: `{settings['command']}`", f"- host: {settings['host']}",
        f"- upstream: {up.http_server}",
        *(["- h2 upstream: nginx h2c (h2: return 200; grpc: the body read, then 200 with a "
           "gRPC message and grpc-status 0 trailer)"] if up.h2_port else []),
        f"- wrk: -t{args.threads} -c{args.connections} -d{args.duration:g}s "
        f"(warm-up {args.warmup:g}s); hey: {args.rate:g} req/s over {args.rate_workers} "
        f"workers for {args.duration:g}s; L4: {args.l4_bytes} bytes; "
        + (f"h2load (h2, grpc): -c{args.h2_clients} -m{args.h2_streams} "
           f"-D{max(1, round(args.duration))} after a {args.warmup:g}s warm-up run; "
           if up.h2_port else "") + f"rounds: {args.rounds}",
        "- CPU pinning: " + (f"proxy on CPU {args.pinning.proxy}, upstream, sink and load "
                             f"generators on CPU {args.pinning.load}" if args.pin else "none"),
        "- tools: " + ", ".join(f"{k}: {v}" for k, v in versions.items())])
    body = report.tables(results, args.scenario_set)
    print(header + "\n\n" + body)
    md, raw = report.write(args.results, stamp, header, body, results, settings, rounds)
    print(f"\nwritten: {md} and {raw}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
