"""What observability costs the sidecar: the same build with metrics and tracing off and on.

Theory of operation: the nginx upstreams (HTTP/1.1 and h2c, upstream.py) and one span
collector (`sidecar traces --no-print`) start once. Then, for every round, three arms of the
same build run one after another, each a fresh `sidecar run` with one HTTP/1.1 and one h2c
ingress listener (configs/sidecar-obs.yaml):
  off      `--no-metrics`, no Zipkin address (both off: the baseline)
  metrics  Istio's metrics on (the default), no Zipkin address
  on       metrics on and `--zipkin-address` the collector with `--trace-sampling 1` (1%)
The arms' order rotates each round (off, metrics, on / metrics, on, off / ...), so drift on
this VM hits all of them alike. Per arm: one GET must answer 200; wrk warms up, then the
measured wrk run (HTTP/1.1 keep-alive) with the sidecar's CPU (process tree, all threads: the
span export thread counts) read around it; then, optionally, the same with h2load (h2c).
While each measured run goes, a thread in this process GETs the Prometheus endpoint every
--scrape-interval seconds (in every arm, so rendering is paid alike; in "off" it renders only
Envoy's own stats). After the run, the last scrape's istio_requests_total and the admin's
tracing.zipkin.spans_sent show that each arm did what it claims. The table gives, per arm, the
median over rounds of req/s and of CPU us/request, each with its ratio to "off" and the
median of the per-round ratios (each round's arm divided by the same round's "off": "paired"),
and below it each arm's mean req/s ratio per round with its 95% confidence interval
(interval.py): the number to hold against a bar such as "within 5% of off".
A run that saw errors, non-2xx or a failed check is left out of the medians (listed below).

With --together the arms of a round run at the same time instead, each under its own wrk,
all sidecars pinned to the same CPU (--pin) with the start order rotating: the VM's noise (other
tenants, steal) then hits every arm alike, and since the CPU is shared, the req/s ratios are the
inverse ratios of CPU per request. The `off2` arm (identical to `off`) is an A/A check: its
ratio shows what the harness itself contributes.

With --base-tree DIR (another checkout, e.g. `git worktree add /tmp/base main`), arms named
ARM@base run that checkout's sources (PYTHONPATH) with ARM's flags, beside this build's: on this
VM, comparing two builds is only trustworthy within one run.

With --profile, one more "on" run is recorded by py-spy (with --together: every arm of round
1) and its samples grouped by concern (obs_profile.py). Results go to
benchmarks/results/obs-<stamp>.md and .json.

Run: .venv/bin/python benchmarks/observability.py --together --rounds 10 --duration 8 --pin \
         --scrape-interval 15 --arms off,metrics,trace0,on,off2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import loadgen
import obs_profile
from interval import mean_interval
from procs import (
    HarnessError,
    Pinning,
    ProcessSet,
    Started,
    cpu_seconds,
    free_port,
    process_tree,
    tail,
)
from proxies import SIDECAR_BIN, _wait_ports, _wait_ready
from render import render
from upstream import Upstreams, start_upstreams

ROOT = Path(__file__).resolve().parent.parent
PY_SPY = ROOT / ".venv" / "bin" / "py-spy"
ARMS: dict[str, str] = {
    "off": "--no-metrics, no Zipkin address (metrics and tracing off)",
    "metrics": "metrics on (default), tracing off",
    "on": "metrics on, --zipkin-address (sidecar traces), --trace-sampling 1",
    # not run by default (--arms): the tracer on every request, but no span ever sampled
    "trace0": "metrics on, --zipkin-address, --trace-sampling 0 (no span, no export thread)",
    # an A/A check of the harness: a second "off"; its ratio to "off" shows the harness's bias
    "off2": "the same as off (A/A check)",
}
DEFAULT_ARMS = "off,metrics,on"
BASE = "@base"  # arm suffix: the same arm from the --base-tree checkout (e.g. "on@base")


def describe(arm: str) -> str:
    """What an arm runs ("X@base": arm X from the --base-tree checkout)."""
    mode = arm.removesuffix(BASE)
    return ARMS[mode] + (" (--base-tree build)" if mode != arm else "")
START_RETRIES = 3  # other sessions edit the tree: a start may catch it half-edited
_ISTIO_REQUESTS = re.compile(r"^istio_requests_total\{[^}]*\} (\d+(?:\.\d+)?)", re.MULTILINE)
_SPANS_SENT = re.compile(r"^tracing\.zipkin\.spans_sent: (\d+)", re.MULTILINE)


@dataclass
class ArmRun:
    """One arm in one round: the loads' numbers and what the sidecar reported."""

    arm: str
    round: int
    rps: float = 0.0
    cpu_us: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    problems: list[str] = field(default_factory=list)
    h2_rps: float = 0.0
    h2_cpu_us: float = 0.0
    scrapes: int = 0
    scrape_ms_mean: float = 0.0
    scrape_bytes: int = 0
    istio_requests_total: float = 0.0
    spans_sent: int = 0


class Scraper:
    """A thread that GETs a metrics URL every `interval` seconds until stopped."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.count = 0
        self.seconds = 0.0
        self.last = ""
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Scraper:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def scrape(self) -> None:
        """One GET, timed; the body kept as `last`."""
        began = time.monotonic()
        try:
            with urllib.request.urlopen(self.url, timeout=5.0) as response:
                self.last = response.read().decode("utf-8", "replace")
        except OSError:
            self.failures += 1
            return
        self.seconds += time.monotonic() - began
        self.count += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.scrape()


@dataclass(frozen=True)
class Sidecar:
    """A started sidecar of one arm and its ports."""

    started: Started
    http_port: int
    h2_port: int
    admin_port: int
    prom_port: int


def start_sidecar(procs: ProcessSet, tmp: Path, up: Upstreams, arm: str,
                  collector: str, base_tree: Path | None = None) -> Sidecar:
    """`sidecar run` with the arm's observability flags; returns once it is ready."""
    assert up.h2_port is not None
    http_port, h2_port = free_port(), free_port()
    conf = render("sidecar-obs.yaml", {"HTTP_PORT": http_port, "UPSTREAM_PORT": up.http_port,
                                       "H2_PORT": h2_port, "H2_UPSTREAM_PORT": up.h2_port},
                  tmp / f"sidecar-obs-{arm}.yaml")
    admin, prom = free_port(), free_port()
    argv = [str(SIDECAR_BIN), "run", "--config", str(conf), "--pod-name", "bench-1",
            "--pod-namespace", "default", "--admin-port", str(admin), "--status-port", "0",
            "--prometheus-port", str(prom), "--access-log", "", "--outbound-port", "0",
            "--inbound-port", "0", "--no-watch"]
    mode = arm.removesuffix(BASE)
    if mode != arm:  # the other checkout's sources first on the path; its own flags the same
        assert base_tree is not None
        argv = ["env", f"PYTHONPATH={base_tree}", *argv]
        arm = mode
    if arm in ("off", "off2"):
        argv.append("--no-metrics")
    if arm in ("on", "trace0"):
        argv += ["--zipkin-address", collector, "--trace-sampling", "1" if arm == "on" else "0"]
    started = procs.start(f"sidecar-{arm}", argv, cwd=ROOT, role="proxy")
    _wait_ports(started, http_port, h2_port, prom)
    _wait_ready(admin, 20.0)
    return Sidecar(started, http_port, h2_port, admin, prom)


def start_with_retries(procs: ProcessSet, tmp: Path, up: Upstreams, arm: str,
                       collector: str, base_tree: Path | None = None) -> Sidecar:
    """start_sidecar, retried a minute later when the tree was caught half-edited."""
    for attempt in range(1, START_RETRIES + 1):
        try:
            return start_sidecar(procs, tmp, up, arm, collector, base_tree)
        except HarnessError as err:
            if attempt == START_RETRIES:
                raise
            print(f"  {arm}: did not start ({str(err).splitlines()[0]}); retrying in 60 s",
                  file=sys.stderr, flush=True)
            time.sleep(60.0)
    raise AssertionError("unreachable")


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5.0) as response:
            return str(response.read().decode("utf-8", "replace"))
    except OSError as err:
        return f"GET failed: {err}"


def measure(procs: ProcessSet, sc: Sidecar, run: ArmRun, args: argparse.Namespace,
            profile_to: Path | None = None) -> None:
    """Check, warm up, measure with wrk (and h2load) while the scraper runs."""
    if "hello" not in _get(f"http://127.0.0.1:{sc.http_port}/"):
        run.problems.append("the check GET did not get the upstream's body")
    pids, prefix = process_tree(sc.started.pid), args.pinning.wrap([], "load")
    url = f"http://127.0.0.1:{sc.http_port}/"
    scraper = Scraper(f"http://127.0.0.1:{sc.prom_port}/stats/prometheus", args.scrape_interval)
    if args.warmup > 0:
        loadgen.run_wrk(url, args.warmup, args.connections, 1, prefix)
    spy = _start_py_spy(procs, sc, profile_to) if profile_to else None
    with scraper:
        before = cpu_seconds(pids)
        wrk = loadgen.run_wrk(url, args.duration, args.connections, 1, prefix)
        spent = cpu_seconds(pids) - before
    if spy is not None:
        procs.interrupt(spy, timeout=60.0)
    run.rps, run.requests = wrk.rps, wrk.requests
    run.cpu_us = spent * 1e6 / wrk.requests if wrk.requests else 0.0
    run.p50_ms, run.p99_ms = wrk.latency_ms.get("p50", 0.0), wrk.latency_ms.get("p99", 0.0)
    if wrk.error or wrk.errors or wrk.non_2xx:
        run.problems.append(f"wrk: {wrk.error or ''} {wrk.errors} socket errors, "
                            f"{wrk.non_2xx} non-2xx")
    scraper.scrape()  # one more after the load: the final counts
    run.scrapes, run.scrape_bytes = scraper.count, len(scraper.last)
    run.scrape_ms_mean = 1000.0 * scraper.seconds / scraper.count if scraper.count else 0.0
    run.istio_requests_total = sum(float(v) for v in _ISTIO_REQUESTS.findall(scraper.last))
    if "h2" in args.loads and profile_to is None:
        h2_url = f"http://127.0.0.1:{sc.h2_port}/"
        if args.warmup > 0:
            loadgen.run_h2load(h2_url, args.warmup, args.h2_clients, args.h2_streams,
                               prefix=prefix)
        with Scraper(scraper.url, scraper.interval):
            before = cpu_seconds(pids)
            h2 = loadgen.run_h2load(h2_url, args.duration, args.h2_clients, args.h2_streams,
                                    prefix=prefix)
            spent = cpu_seconds(pids) - before
        run.h2_rps = h2.rps
        run.h2_cpu_us = spent * 1e6 / h2.requests if h2.requests else 0.0
        if h2.error or h2.errors or h2.non_2xx:
            run.problems.append(f"h2load: {h2.error or ''} {h2.errors} failed, "
                                f"{h2.non_2xx} non-2xx")
    time.sleep(1.5)  # the export thread posts the last sampled spans
    spans = _SPANS_SENT.search(_get(f"http://127.0.0.1:{sc.admin_port}/stats"))
    run.spans_sent = int(spans.group(1)) if spans else 0


def _start_py_spy(procs: ProcessSet, sc: Sidecar, out: Path) -> Started:
    """py-spy recording the sidecar (collapsed stacks) until interrupted."""
    started = procs.start(f"py-spy-{out.stem}", [
        str(PY_SPY), "record", "--pid", str(sc.started.pid), "--rate", "500", "--nonblocking",
        "--format", "raw", "--output", str(out)])
    time.sleep(0.5)  # attached before the load starts
    return started


def one_arm(arm: str, number: int, args: argparse.Namespace, up: Upstreams, tmp: Path,
            collector: str, profile_to: Path | None = None) -> ArmRun:
    """Start the arm's sidecar, measure it, stop it."""
    run = ArmRun(arm, number)
    print(f"== round {number}: {arm}: {describe(arm)}", file=sys.stderr, flush=True)
    with ProcessSet(tmp, args.pinning) as procs:
        sc = start_with_retries(procs, tmp, up, arm, collector, args.base_tree)
        measure(procs, sc, run, args, profile_to)
        if run.problems:
            run.problems.append("its log ends: " + tail(sc.started.log, 3).replace("\n", " | "))
    for problem in run.problems:
        print(f"  {arm}: {problem}", file=sys.stderr)
    return run


def round_together(number: int, arms: list[str], args: argparse.Namespace, up: Upstreams,
                   tmp: Path, collector: str) -> list[ArmRun]:
    """Every arm's sidecar at once, each under its own wrk, all at the same moment (and, with
    --pin, on the same CPU): whatever else the machine does hits every arm alike."""
    shift = (number - 1) % len(arms)  # start order rotates: no arm is always first
    arms = arms[shift:] + arms[:shift]
    runs = [ArmRun(arm, number) for arm in arms]
    print(f"== round {number}: {', '.join(arms)} together", file=sys.stderr, flush=True)
    with ProcessSet(tmp, args.pinning) as procs:
        sidecars = [start_with_retries(procs, tmp, up, arm, collector, args.base_tree)
                    for arm in arms]
        spy_dir = args.results if args.profile and number == 1 else None
        if spy_dir is not None:
            spy_dir.mkdir(parents=True, exist_ok=True)
        threads = [threading.Thread(target=measure, daemon=True, args=(
            procs, sc, run, args,
            None if spy_dir is None else spy_dir / f"obs-profile-together-{run.arm}.txt"))
            for sc, run in zip(sidecars, runs, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=3 * (args.duration + args.warmup) + 60.0)
        for sc, run in zip(sidecars, runs, strict=True):
            if run.problems:
                run.problems.append("its log ends: " + tail(sc.started.log, 3).replace("\n", " | "))
            for problem in run.problems:
                print(f"  {run.arm}: {problem}", file=sys.stderr)
    return runs


def _median(values: list[float]) -> float:
    present = [v for v in values if v > 0]
    return statistics.median(present) if present else 0.0


def summary(runs: list[ArmRun], with_h2: bool) -> str:
    """The markdown table: per arm, medians over rounds and ratios to "off"."""
    clean = [r for r in runs if not r.problems]  # a run with errors is no fair comparison
    by_arm = {arm: [r for r in clean if r.arm == arm] for arm in dict.fromkeys(r.arm for r in runs)}
    base = {r.round: r for r in by_arm["off"]}
    off_rps, off_cpu = (_median([r.rps for r in by_arm["off"]]),
                        _median([r.cpu_us for r in by_arm["off"]]))
    cols = ["arm", "req/s", "x off", "paired x off", "CPU us/req", "x off", "paired x off",
            "p50 ms",
            "p99 ms", "scrapes/run", "scrape ms", "istio_requests_total", "spans sent"]
    if with_h2:
        cols += ["h2 req/s", "h2 x off", "h2 CPU us/req", "h2 CPU x off"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    off_h2 = _median([r.h2_rps for r in by_arm["off"]])
    off_h2_cpu = _median([r.h2_cpu_us for r in by_arm["off"]])
    for arm, rs in by_arm.items():
        rps, cpu = _median([r.rps for r in rs]), _median([r.cpu_us for r in rs])
        paired = _median([r.rps / base[r.round].rps for r in rs
                          if r.round in base and base[r.round].rps])
        paired_cpu = _median([r.cpu_us / base[r.round].cpu_us for r in rs
                              if r.round in base and base[r.round].cpu_us])
        cells = [arm, f"{rps:,.0f}", _x(rps, off_rps), f"{paired:.3f}", f"{cpu:.1f}",
                 _x(cpu, off_cpu), f"{paired_cpu:.3f}", f"{_median([r.p50_ms for r in rs]):.2f}",
                 f"{_median([r.p99_ms for r in rs]):.2f}",
                 f"{_median([float(r.scrapes) for r in rs]):.0f}",
                 f"{_median([r.scrape_ms_mean for r in rs]):.1f}",
                 f"{_median([r.istio_requests_total for r in rs]):,.0f}",
                 f"{_median([float(r.spans_sent) for r in rs]):,.0f}"]
        if with_h2:
            h2, h2_cpu = _median([r.h2_rps for r in rs]), _median([r.h2_cpu_us for r in rs])
            cells += [f"{h2:,.0f}", _x(h2, off_h2), f"{h2_cpu:.1f}", _x(h2_cpu, off_h2_cpu)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for r in runs:
        lines += [f"- {r.arm} round {r.round} left out of the medians: {p}" for p in r.problems]
    for arm, rs in by_arm.items():
        ratios = [r.rps / base[r.round].rps for r in rs if r.round in base and base[r.round].rps]
        if arm != "off" and len(ratios) >= 2:
            mean, low, high = mean_interval(ratios)
            lines.append(f"- {arm}: req/s x off per round: mean {mean:.3f}, 95% interval "
                         f"{low:.3f}-{high:.3f} ({len(ratios)} rounds)")
    for arm, rs in by_arm.items():
        lines.append(f"- {arm}: {describe(arm)}; req/s per round: "
                     + ", ".join(f"{r.rps:,.0f}" for r in rs) + "; CPU us/req per round: "
                     + ", ".join(f"{r.cpu_us:.1f}" for r in rs))
    return "\n".join(lines)


def _x(value: float, base: float) -> str:
    return f"{value / base:.3f}" if base else "-"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Observability cost: metrics/tracing off vs on.")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the arms (5)")
    p.add_argument("--arms", default=DEFAULT_ARMS,
                   help=f"arms to run, 'off' first ({DEFAULT_ARMS}; also trace0)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    p.add_argument("--loads", default="http", help="http and/or h2 (h2load h2c), e.g. http,h2")
    p.add_argument("--h2-clients", type=int, default=8, help="h2load connections (8)")
    p.add_argument("--h2-streams", type=int, default=32, help="h2load streams per connection")
    p.add_argument("--scrape-interval", type=float, default=1.0,
                   help="seconds between scrapes of /stats/prometheus (1: harsh; 15: usual)")
    p.add_argument("--pin", action="store_true",
                   help="sidecar on CPU 1; upstream, collector, wrk and scraper on CPU 0")
    p.add_argument("--together", action="store_true",
                   help="run the arms at the same time, each under its own wrk (with --pin: "
                        "sharing the proxy CPU, so req/s ratios are inverse CPU-cost ratios "
                        "and the VM's noise hits every arm alike)")
    p.add_argument("--profile", action="store_true",
                   help="after the rounds, one more 'on' run under py-spy: shares by concern")
    p.add_argument("--base-tree", type=Path, metavar="DIR",
                   help="another checkout (its root, holding sidecar/): arms named ARM@base "
                        "run it, e.g. --arms off,on,off@base,on@base compares two builds in "
                        "one run (ratios are to this build's off)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="measure nothing: print the table of a saved obs-<stamp>.json")
    args = p.parse_args(argv)
    args.loads = {s.strip() for s in args.loads.split(",") if s.strip()}
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not args.arms or args.arms[0] != "off" or not all(
            a.removesuffix(BASE) in ARMS for a in args.arms):
        p.error(f"--arms: 'off' first, then any of {sorted(ARMS)} (or ARM{BASE})")
    if any(a.endswith(BASE) for a in args.arms) and (
            args.base_tree is None or not (args.base_tree / "sidecar").is_dir()):
        p.error(f"--arms ARM{BASE} needs --base-tree DIR (a checkout's root, holding sidecar/)")
    args.pinning = Pinning(proxy="1", load="0") if args.pin else Pinning()
    return args


def report(saved: Path) -> int:
    """Print the table of a saved run (obs-<stamp>.json) again."""
    data = json.loads(saved.read_text())
    runs = [ArmRun(**r) for r in data["runs"]]
    print(f"command: `{data['command']}`\n")
    print(summary(runs, any(r.h2_rps for r in runs)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args.report)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-obs-"))
    runs: list[ArmRun] = []
    shares: obs_profile.Shares | None = None
    arms: list[str] = args.arms
    try:
        if args.pinning.load:  # the scraper thread runs in this process
            os.sched_setaffinity(0, {int(cpu) for cpu in args.pinning.load.split(",")})
        with ProcessSet(tmp, args.pinning) as procs:
            up = start_upstreams(procs, tmp, grpc_body="x")  # for its h2c port; no gRPC here
            collector = f"127.0.0.1:{free_port()}"
            procs.start("collector", [str(SIDECAR_BIN), "traces", "--listen", collector,
                                      "--no-print"], cwd=ROOT)
            for number in range(1, args.rounds + 1):
                if args.together:
                    runs.extend(round_together(number, arms, args, up, tmp, collector))
                    continue
                shift = (number - 1) % len(arms)
                for arm in arms[shift:] + arms[:shift]:
                    runs.append(one_arm(arm, number, args, up, tmp, collector))
            if args.profile and PY_SPY.exists():
                args.results.mkdir(parents=True, exist_ok=True)
                raw = args.results / f"obs-profile-on-{stamp}.txt"
                one_arm("on", 0, args, up, tmp, collector, profile_to=raw)
                shares = obs_profile.parse_raw(raw)
    except HarnessError as err:
        print(f"benchmark failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every started process was stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    command = shlex.join([".venv/bin/python", "benchmarks/observability.py", *sys.argv[1:]])
    body = summary(runs, "h2" in args.loads)
    if shares is not None:
        body += "\n\nProfile of one more 'on' run (py-spy):\n\n" + obs_profile.table(shares)
    header = (f"# Observability cost {stamp}\n\n- command: `{command}`\n- wrk -t1 "
              f"-c{args.connections} -d{args.duration:g}s, {args.rounds} rounds, scrape every "
              f"{args.scrape_interval:g}s, pinning: {'on' if args.pin else 'off'}, arms "
              f"{'together' if args.together else 'one after another'}\n")
    print(header + "\n" + body)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"obs-{stamp}.md").write_text(header + "\n" + body + "\n")
    (args.results / f"obs-{stamp}.json").write_text(json.dumps(
        {"command": command, "runs": [asdict(r) for r in runs],
         "profile": asdict(shares) if shares else None}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
