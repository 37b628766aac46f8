"""The demo driver: start, wait until ready, send requests, show their way, stop.

Theory of operation: everything runs in child processes (two apps, two sidecars) started in a
`ProcessGroup` over a temporary work directory; the driver itself only waits, asks and reads.
Readiness: every child's URL must answer 200 within READY_DEADLINE, and a child that exits
early fails the demo at once with the tail of its output. Each request carries a fresh
`x-request-id`; after the requests, the sidecars' access logs are read until every hop has
its line (LOG_DEADLINE; the logs are read once more after the sidecars stop, which flushes
them). Children are stopped (SIGTERM, then SIGKILL, by pid) and the stage's namespaces removed
on every way out, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TextIO

from sidecar.demo import observe, report
from sidecar.demo.processes import ProcessGroup, Started
from sidecar.demo.report import Exchange
from sidecar.demo.stage import Canary, Stage, Waiter
from sidecar.demo.trail import read_log, trail

READY_DEADLINE = 25.0  # seconds for all children to become ready
LOG_DEADLINE = 3.0  # seconds to wait for access-log lines while the sidecars run
REQUEST_TIMEOUT = 10.0
PROBE_INTERVAL = 0.2


def run_demo(stage: Stage, requests: int, keep_running: bool, out: TextIO) -> int:
    """Run the demo on `stage`; 0 when every request was answered and logged at every hop."""
    reason = stage.preflight()
    if reason:
        report.failure(out, f"cannot start: {reason}")
        return 2
    report.introduction(out, stage.title, stage.describe())
    with _sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="sidecar-demo-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # sidecars running as the proxy uid write their logs here
        code = 1
        try:
            with ProcessGroup(workdir) as group:
                code = _run(stage, group, requests, keep_running, out)
        except KeyboardInterrupt:
            out.write("\ninterrupted; stopping everything\n")
            code = 130
        except BrokenPipeError:  # the reader went away (`sidecar demo | head`): just clean up
            code = 1
        except (OSError, subprocess.SubprocessError) as exc:
            report.failure(out, f"{type(exc).__name__}: {exc}")
        finally:
            problems = stage.close()
        for problem in problems:
            report.failure(out, problem)
        return code or (1 if problems else 0)


def _run(stage: Stage, group: ProcessGroup, requests: int, keep_running: bool, out: TextIO) -> int:
    began = time.monotonic()
    waiters = stage.start(group)
    out.write(f"starting {len(group.started)} processes ... ")
    out.flush()
    if not _wait_ready(waiters, group, out):
        return 1
    out.write(f"all ready in {time.monotonic() - began:.1f} s\n\n")
    sending = time.monotonic()
    exchanges = [_ask(stage, i) for i in range(1, requests + 1)]
    exchanges = _with_hops(stage, group, exchanges, LOG_DEADLINE)
    if not keep_running and not all(_logged(ex) for ex in exchanges):
        group.stop()  # a sidecar that buffers its log writes it out when it stops
        exchanges = _with_hops(stage, group, exchanges, 0.0)
    for ex in exchanges:
        report.exchange(out, ex, requests)
    report.summary(out, exchanges)
    ok = all(ex.complete for ex in exchanges)
    sent = requests
    if stage.canary is not None:
        out.write("\n")
        ok = _canary(stage, stage.canary, out) and ok
        sent += stage.canary.requests + stage.canary.header_requests
    ok = observe.finale(stage, sent, sending, out) and ok
    if not ok:
        for started in group.started:
            if started.label in stage.access_logs(group):
                out.write(f"\n  {started.label} said:\n")
                out.write("".join(f"{report.INDENT}{ln}\n" for ln in started.tail().splitlines()))
    if keep_running and ok:
        for where in [*stage.metrics(), stage.collector()]:
            if where is not None:
                out.write(f"\n  {where.label}: {where.url}")
        out.write(f"\nkeeping everything running; try {stage.entry_url} yourself. Ctrl-C stops.\n")
        out.flush()
        try:
            dead = _wait_for_death(group)
        except KeyboardInterrupt:  # the way a user ends --keep-running: not a failure
            out.write("\nstopping everything\n")
            group.stop()
            return 0
        report.failure(out, f"{dead.label} exited", dead.label, dead.tail())
        return 1
    group.stop()
    out.write(f"stopped everything; {time.monotonic() - began:.1f} s in all.\n")
    if not ok:
        report.failure(
            out,
            "not every request was answered and logged by both sidecars, or the golden "
            "signals or the trace did not show it",
        )
    return 0 if ok else 1


def _canary(stage: Stage, canary: Canary, out: TextIO) -> bool:
    """Send the canary's requests, count which version of b answered; True when all did and
    the header rule held."""
    versions = tuple(v for v, _ in canary.weights)
    split = _split(stage, versions, canary.requests, [])
    by_header = _split(stage, versions, canary.header_requests, [canary.header])
    report.canary(out, canary.rule, canary.weights, split, canary.header, by_header)
    return split.failed == 0 and by_header.count(canary.header_version) == by_header.total


def _split(
    stage: Stage, versions: Sequence[str], n: int, headers: list[tuple[str, str]]
) -> report.Split:
    counts = dict.fromkeys(versions, 0)
    failed = 0
    for _ in range(n):
        answer = stage.client.fetch(stage.entry_url, headers, REQUEST_TIMEOUT)
        version = next((v for v in versions if f" from b ({v})" in answer.body), None)
        if answer.status != 200 or version is None:
            failed += 1
        else:
            counts[version] += 1
    return report.Split(tuple(counts.items()), failed)


def _wait_ready(waiters: Sequence[Waiter], group: ProcessGroup, out: TextIO) -> bool:
    pending = list(waiters)
    end = time.monotonic() + READY_DEADLINE
    while pending:
        dead = group.first_dead()
        if dead is not None:
            code = dead.proc.returncode
            report.failure(out, f"{dead.label} exited with status {code}", dead.label, dead.tail())
            return False
        pending = [w for w in pending if w.site.fetch(w.url, (), 1.0).status != 200]
        if not pending:
            return True
        if time.monotonic() >= end:
            first = pending[0]
            what = f"{first.started.label} not ready after {READY_DEADLINE:.0f} s ({first.url})"
            report.failure(out, what, first.started.label, first.started.tail())
            return False
        time.sleep(PROBE_INTERVAL)
    return True


def _ask(stage: Stage, number: int) -> Exchange:
    request_id = str(uuid.uuid4())
    answer = stage.client.fetch(stage.entry_url, [("x-request-id", request_id)], REQUEST_TIMEOUT)
    return Exchange(number, stage.entry_url, request_id, answer)


def _ids(ex: Exchange) -> set[str]:
    """The request ids the driver sent and the apps saw (a proxy may have replaced it)."""
    seen = (ex.answer.header(f"x-demo-seen-request-id-{app}") for app in ("a", "b"))
    return {ex.request_id, *(rid for rid in seen if rid)}


def _logged(ex: Exchange) -> bool:
    return all(hop.line for hop in ex.hops)


def _with_hops(
    stage: Stage, group: ProcessGroup, exchanges: Sequence[Exchange], deadline: float
) -> list[Exchange]:
    """The exchanges with their access-log lines, waiting up to `deadline` s for them all."""
    end = time.monotonic() + deadline
    while True:
        logs = {label: read_log(path) for label, path in stage.access_logs(group).items()}
        found = [
            Exchange(ex.number, ex.url, ex.request_id, ex.answer,
                     tuple(trail(stage.hops, logs, _ids(ex))))
            for ex in exchanges
        ]  # fmt: skip
        if all(_logged(ex) for ex in found) or time.monotonic() >= end:
            return found
        time.sleep(PROBE_INTERVAL)


def _wait_for_death(group: ProcessGroup) -> Started:
    while True:
        dead = group.first_dead()
        if dead is not None:
            return dead
        time.sleep(0.5)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM to the driver cleans up like Ctrl-C does."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
