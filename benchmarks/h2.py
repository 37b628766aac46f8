"""HTTP/2 (h2c) and gRPC unary scenarios: h2load through each path, beside the HTTP/1.1 ones.

Theory of operation: after a path's HTTP/1.1 scenarios, its proxy is started a second time
with an h2c configuration (`PathSpec.start_h2`: two listeners, prior knowledge, one to the h2c
upstream and one to the synthetic gRPC upstream, both nginx: see upstream.py). Each scenario
first checks the path with one request: h2 with `h2load -n 1`, grpc with a real grpcio client
(`python h2.py grpc-check --port P`, a subprocess so grpc's threads stay out of the harness),
which must see StatusCode.OK and the upstream's reply. A path that fails the check (a proxy
that does not speak HTTP/2 yet, say) is marked failed with the reason and the rest goes on.
Then an unmeasured h2load warm-up (`--warmup` seconds, fills the proxy's upstream
connections), then the measured h2load run (`--duration`) with the proxy's CPU read around it,
so CPU us/req counts exactly the requests h2load reports.

grpc: every request is a POST of one 5-byte-length-prefixed protobuf message (field 1, the
string "world") to /bench.Echo/Call with content-type application/grpc and te: trailers; the
upstream answers 200, a prefixed message and the trailer grpc-status 0.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import loadgen
import proxies
from procs import HarnessError, ProcessSet, cpu_seconds, process_tree, tail
from report import H2Measure, PathResult
from upstream import Upstreams

SCENARIOS = ("h2", "grpc")
GRPC_METHOD = "/bench.Echo/Call"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
GRPC_REQUEST = b"\x0a\x05world"  # protobuf: field 1 (length-delimited) = "world"
GRPC_REPLY = b"\x0a\x05hello"
CHECK_TIMEOUT = 15.0


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def upstream_grpc_body() -> str:
    """The framed reply as text for nginx's `return 200 "..."` (raw bytes, NULs included:
    nginx keeps them; the reply has no quote, backslash or `$` that nginx would interpret)."""
    body = grpc_frame(GRPC_REPLY).decode("latin-1")
    assert not set(body) & set('"\\$'), "the reply must not need escaping in nginx config"
    return body


class H2Bench:
    """The h2 and grpc scenarios for one started h2c path, filling in its `PathResult`."""

    def __init__(self, args: argparse.Namespace, path: proxies.RunningPath,
                 result: PathResult, request_file: Path) -> None:
        self.args = args
        self.path = path
        self.result = result
        self.request_file = request_file
        self.pids = process_tree(path.pid) if path.pid else []
        self.prefix = args.pinning.wrap([], "load")

    def run(self) -> None:
        """Run the selected scenarios: check, warm up, measure."""
        ports = {"h2": self.path.h2_port, "grpc": self.path.grpc_port}
        for scenario in SCENARIOS:
            port = ports[scenario]
            if scenario not in self.args.scenario_set or port is None:
                continue
            measure: H2Measure = getattr(self.result, scenario)
            problem = self._check(scenario, port)
            if problem:
                measure.failed = f"check failed: {problem}"
                continue
            if self.args.warmup > 0:
                self._load(scenario, port, self.args.warmup)
            before = cpu_seconds(self.pids)
            measure.load = self._load(scenario, port, self.args.duration)
            spent = cpu_seconds(self.pids) - before
            if self.pids and measure.load.requests:
                measure.cpu_us_per_request = spent * 1e6 / measure.load.requests

    def _url(self, scenario: str, port: int) -> str:
        return f"http://127.0.0.1:{port}" + (GRPC_METHOD if scenario == "grpc" else "/")

    def _load(self, scenario: str, port: int, seconds: float,
              count: int = 0) -> loadgen.LoadResult:
        grpc = scenario == "grpc"
        clients, streams = (1, 1) if count else (self.args.h2_clients, self.args.h2_streams)
        return loadgen.run_h2load(
            self._url(scenario, port), seconds, clients, streams, count=count,
            data=self.request_file if grpc else None, headers=GRPC_HEADERS if grpc else (),
            prefix=self.prefix)

    def _check(self, scenario: str, port: int) -> str:
        """Why one request through the path did not succeed, or "" when it did."""
        if scenario == "grpc" and importlib.util.find_spec("grpc") is not None:
            return grpc_check_subprocess(port)
        one = self._load(scenario, port, 0.0, count=1)
        if one.error:
            return one.error
        if one.errors or one.non_2xx:
            return f"{one.errors} failed requests, {one.non_2xx} non-2xx responses"
        return ""


def measure(spec: proxies.PathSpec, args: argparse.Namespace, up: Upstreams, tmp: Path,
            result: PathResult) -> None:
    """Start `spec`'s h2c proxy, run the selected h2 scenarios through it, stop it."""
    wanted: list[H2Measure] = [getattr(result, s) for s in SCENARIOS if s in args.scenario_set]
    problem = ("h2load is not installed" if not loadgen.available("h2load")
               else "no h2c upstream (it needs nginx)" if up.h2_port is None else "")
    if not problem and spec.missing():
        problem = f"skipped: {spec.missing()}"
    if problem:
        for m in wanted:
            m.failed = problem
        return
    request_file = tmp / "grpc-request.bin"
    request_file.write_bytes(grpc_frame(GRPC_REQUEST))
    with ProcessSet(tmp, args.pinning) as procs:
        try:
            path = spec.start_h2(procs, tmp, up)
        except HarnessError as err:
            for m in wanted:
                m.failed = f"did not start: {err}".replace("\n", " | ")
            return
        if path.note:
            result.h2_notes.append(path.note)
        H2Bench(args, path, result, request_file).run()
        for started in procs.running():
            if started.proc.poll() is not None:
                result.h2_notes.append(f"{started.name} exited with {started.proc.returncode}"
                                       f" during the run")
            if any(m.failed for m in wanted):
                last = tail(started.log, 4).replace("\n", " | ")
                result.h2_notes.append(f"last lines of {started.name}'s log: {last}")


def grpc_check_subprocess(port: int) -> str:
    """Run the grpcio check in a child process; its complaint, or "" on success."""
    command = [sys.executable, str(Path(__file__).resolve()), "grpc-check", "--port", str(port)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired:
        return f"grpcio check did not finish in {CHECK_TIMEOUT:.0f}s"
    if done.returncode != 0:
        return "grpcio: " + (done.stdout + done.stderr).strip().replace("\n", " | ")[-300:]
    return ""


def grpc_check(port: int) -> int:
    """One unary call with grpcio (raw bytes in and out); 0 when it is OK with the reply."""
    grpc: Any = importlib.import_module("grpc")  # no type stubs installed for grpcio
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(GRPC_METHOD, request_serializer=bytes,
                                   response_deserializer=bytes)
        try:
            reply, info = call.with_call(GRPC_REQUEST, timeout=5.0)
        except grpc.RpcError as err:
            print(f"{err.code()}: {err.details()}")
            return 1
    if info.code() != grpc.StatusCode.OK or reply != GRPC_REPLY:
        print(f"status {info.code()}, reply {reply!r} (expected {GRPC_REPLY!r})")
        return 1
    print("OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gRPC unary check against a path")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("grpc-check", help="one grpcio unary call to 127.0.0.1:PORT")
    check.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    return grpc_check(args.port)


if __name__ == "__main__":
    sys.exit(main())
