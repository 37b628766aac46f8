"""Load generators: wrk for throughput, hey for latency at a fixed request rate, h2load for
HTTP/2 (h2c) and gRPC throughput.

Theory of operation: each tool runs as a subprocess with a hard timeout (duration plus a
margin), its text output is kept verbatim in the results, and the numbers are parsed from it.
wrk (closed loop, N connections as fast as they go) gives requests/s and its --latency
percentiles; hey (`-q` per-worker rate limit times `-c` workers) holds a fixed offered rate, so
the latency it sees is the added cost of the path rather than queueing behind saturation.
hey prints latencies in seconds with four decimals: 0.1 ms resolution. h2load (closed loop,
N connections each keeping M streams in flight) gives requests/s over the measured part of the
run and the mean and max time per request; it has no percentiles. (h2.py warms up with a
separate run rather than --warm-up-time, so the CPU read around the measured run matches the
requests it reports.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
MARGIN = 30.0


@dataclass
class LoadResult:
    """What one load-generator run measured; `error` is set when it did not run cleanly."""

    tool: str
    command: list[str]
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    non_2xx: int = 0
    error: str = ""
    output: str = ""


def available(tool: str) -> bool:
    """Whether `tool` is on PATH."""
    return shutil.which(tool) is not None


def _run(result: LoadResult, timeout: float) -> str:
    try:
        done = subprocess.run(result.command, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        result.error = f"{result.tool} did not finish in {timeout:.0f}s"
        return ""
    result.output = done.stdout + done.stderr
    if done.returncode != 0:
        result.error = f"{result.tool} exited {done.returncode}: {done.stderr.strip()[:300]}"
    return done.stdout


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def run_wrk(url: str, duration: float, connections: int, threads: int,
            prefix: Sequence[str] = (), script: Path | None = None) -> LoadResult:
    """wrk -t threads -c connections -d duration --latency url (after `prefix`, e.g. taskset),
    with a Lua `script` building the requests when given."""
    command = [*prefix, "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s",
               "--timeout", "5s", "--latency", *(["-s", str(script)] if script else []), url]
    result = LoadResult("wrk", command)
    out = _run(result, duration + MARGIN)
    if not out:
        return result
    section = out.split("Latency Distribution", 1)[-1]
    for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", section,
                                       re.MULTILINE):
        result.latency_ms[f"p{pct}"] = _ms(value, unit)
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if total:
        result.requests = int(total.group(1))
        result.seconds = _ms(total.group(2), total.group(3)) / 1000.0
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps:
        result.rps = float(rps.group(1))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", out)
    if socket_errors:
        result.errors = sum(int(n) for n in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        result.non_2xx = int(non_2xx.group(1))
    if not result.error and result.requests == 0:
        result.error = "wrk completed no request"
    return result


def run_hey(url: str, duration: float, rate: float, workers: int,
            prefix: Sequence[str] = ()) -> LoadResult:
    """hey -z duration -c workers -q rate/workers url (keep-alive), a fixed offered rate."""
    per_worker = rate / workers
    command = [*prefix, "hey", "-z", f"{duration:g}s", "-c", str(workers),
               "-q", f"{per_worker:g}", url]
    result = LoadResult("hey", command)
    out = _run(result, duration + MARGIN)
    if not out:
        return result
    for pct, secs in re.findall(r"^\s+(\d+)% in ([\d.]+) secs", out, re.MULTILINE):
        result.latency_ms[f"p{pct}"] = float(secs) * 1000.0
    average = re.search(r"Average:\s+([\d.]+) secs", out)
    if average:
        result.latency_ms["mean"] = float(average.group(1)) * 1000.0
    total = re.search(r"Total:\s+([\d.]+) secs", out)
    if total:
        result.seconds = float(total.group(1))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps:
        result.rps = float(rps.group(1))
    for status, count in re.findall(r"\[(\d+)\]\s+(\d+) responses", out):
        result.requests += int(count)
        if not status.startswith("2"):
            result.non_2xx += int(count)
    errors = out.split("Error distribution:", 1)
    if len(errors) == 2:
        result.errors = sum(int(n) for n in re.findall(r"\[(\d+)\]", errors[1]))
    if not result.error and result.requests == 0:
        result.error = "hey completed no request"
    return result


def run_h2load(url: str, duration: float, clients: int, streams: int, count: int = 0,
               data: Path | None = None, headers: Sequence[str] = (),
               prefix: Sequence[str] = ()) -> LoadResult:
    """h2load over h2c (prior knowledge): `clients` connections with `streams` concurrent
    streams each, for `duration` seconds (or `count` requests when given); POSTs the file
    `data` when given, with the extra `headers`."""
    command = [*prefix, "h2load", "-c", str(clients), "-m", str(streams)]
    command += ["-n", str(count)] if count else ["-D", f"{max(1, round(duration))}"]
    if data is not None:
        command += ["-d", str(data)]
    for header in headers:
        command += ["-H", header]
    result = LoadResult("h2load", [*command, url])
    out = _run(result, duration + MARGIN)
    _parse_h2load(result, out)
    return result


def _parse_h2load(result: LoadResult, out: str) -> None:
    finished = re.search(r"finished in ([\d.]+)(us|ms|s|m), ([\d.]+) req/s", out)
    if finished:
        result.seconds = _ms(finished.group(1), finished.group(2)) / 1000.0
        result.rps = float(finished.group(3))
    counts = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    if counts:
        succeeded, *failures = (int(n) for n in counts.groups())
        result.requests = succeeded
        result.errors = sum(failures)
    codes = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if codes:
        result.non_2xx = sum(int(n) for n in codes.groups())
    timing = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+"
                       r"([\d.]+)(us|ms|s)", out)
    if timing and result.requests:
        result.latency_ms["max"] = _ms(timing.group(3), timing.group(4))
        result.latency_ms["mean"] = _ms(timing.group(5), timing.group(6))
    if not result.error and result.requests == 0:
        result.error = "h2load completed no request"
