"""Processes the harness starts, and what it reads about them from /proc.

Theory of operation: every server the harness needs (upstream nginx, the TCP sink, each proxy)
is started through one `ProcessSet`, which remembers the Popen objects and their log files. The
set is a context manager: leaving it, normally, on failure or on Ctrl-C, stops every process it
started, by pid, in reverse order (SIGTERM, a bounded wait, then SIGKILL). Processes start in
their own session so that a Ctrl-C in the terminal reaches only the harness, which then stops
them itself.

CPU time is read from /proc/<pid>/stat (utime + stime, clock ticks, all threads of the process)
and summed over the process and its descendants; peak memory is VmHWM from /proc/<pid>/status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class HarnessError(RuntimeError):
    """A server could not be started or a tool failed in a way that stops a scenario."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    """Wait until 127.0.0.1:port accepts a connection; fail if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"exited with {proc.returncode} before listening on {port}; "
                               f"log {log}:\n{tail(log)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise HarnessError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s; "
                       f"log {log}:\n{tail(log)}")


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants that are alive now."""
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes, in seconds (processes gone are skipped)."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15.
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def peak_rss_kib(pids: list[int]) -> int:
    """Sum of VmHWM (peak resident set) over the given processes, in KiB."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total


@dataclass(frozen=True)
class Pinning:
    """CPU lists (taskset syntax) for the proxy under test and for everything else; "" = free."""

    proxy: str = ""
    load: str = ""

    def wrap(self, argv: list[str], role: str) -> list[str]:
        """`argv` behind `taskset -c CPUS` for its role ("proxy" or "load"), if pinned."""
        cpus = self.proxy if role == "proxy" else self.load
        return ["taskset", "-c", cpus, *argv] if cpus else argv


@dataclass
class Started:
    """One process the harness started: its name, Popen handle and log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


class ProcessSet:
    """Starts processes and guarantees they are stopped, by pid, when the set is left."""

    def __init__(self, log_dir: Path, pinning: Pinning | None = None) -> None:
        self._log_dir = log_dir
        self.pinning = pinning or Pinning()
        self._started: list[Started] = []

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()

    def start(self, name: str, argv: list[str], cwd: Path | None = None,
              role: str = "load") -> Started:
        """Start `argv` in its own session, stdout and stderr to <log_dir>/<name>.log.

        `role` "proxy" marks the proxy under test for CPU pinning (taskset execs the command,
        so the pid is still the command's own)."""
        argv = self.pinning.wrap(argv, role)
        log = self._log_dir / f"{name}.log"
        with log.open("wb") as out:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, cwd=cwd,
                                        start_new_session=True)
            except OSError as err:
                raise HarnessError(f"cannot start {name}: {err}") from err
        started = Started(name, proc, log)
        self._started.append(started)
        return started

    def stop(self, started: Started, grace: float = 5.0) -> None:
        """Stop one process: SIGTERM, wait up to `grace` seconds, then SIGKILL."""
        proc = started.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace)
        if started in self._started:
            self._started.remove(started)

    def interrupt(self, started: Started, timeout: float) -> None:
        """SIGINT one process (py-spy writes its output on it), then stop it if it lingers."""
        if started.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(started.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                started.proc.wait(timeout=timeout)
        self.stop(started)

    def running(self) -> list[Started]:
        """The processes started and not yet stopped by this set (some may have exited)."""
        return list(self._started)

    def stop_all(self) -> None:
        """Stop everything still running, last started first."""
        for started in reversed(list(self._started)):
            self.stop(started)
