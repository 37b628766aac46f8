"""The processes a demo starts, and the places they run in.

Theory of operation: a `Site` is where a process runs and where HTTP requests come from - the
host itself (`LocalSite`, the loopback demo) or a network namespace (the capture demo provides
its own Site). A `ProcessGroup` starts processes at sites, sends each one's stdout and stderr to
its own file in a work directory (files survive the process, so a failure can show its last
lines), and stops them all: SIGTERM to each pid, a bounded wait, then SIGKILL to whoever is
left. Nothing is ever signalled by name, only the pids this group started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

from sidecar.demo.client import Answer, fetch

STOP_GRACE = 8.0  # seconds between SIGTERM and SIGKILL
TAIL_LINES = 15


class Site(Protocol):
    """A place to run processes and to send requests from."""

    name: str

    def popen(
        self, argv: Sequence[str], user: int | None, stdout: IO[bytes], stderr: IO[bytes]
    ) -> subprocess.Popen[bytes]:
        """Start argv here (as `user` when given), in a session of its own."""
        ...

    def fetch(self, url: str, headers: Sequence[tuple[str, str]], timeout: float) -> Answer:
        """`GET url` from here."""
        ...


class LocalSite:
    """The host's own network namespace (the loopback demo)."""

    name = "host"

    def popen(
        self, argv: Sequence[str], user: int | None, stdout: IO[bytes], stderr: IO[bytes]
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # Ctrl-C reaches the driver only; it stops children in order
            user=user,
        )

    def fetch(self, url: str, headers: Sequence[tuple[str, str]], timeout: float) -> Answer:
        return fetch(url, headers, timeout)


@dataclass
class Started:
    """One process the group started, with the files its output goes to."""

    label: str
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines of its stderr (stdout when stderr is empty)."""
        for path in (self.stderr, self.stdout):
            text = path.read_text("utf-8", "replace") if path.exists() else ""
            if text.strip():
                return "\n".join(text.rstrip().splitlines()[-lines:])
        return "(no output)"


class ProcessGroup:
    """Processes started for one demo run; a context manager that stops them all on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Started] = []

    def start(
        self, label: str, argv: Sequence[str], site: Site, user: int | None = None
    ) -> Started:
        """Start argv at site; its stdout and stderr go to files named after label."""
        out_path = self.workdir / f"{label}.stdout"
        err_path = self.workdir / f"{label}.stderr"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            if user is not None:  # the process may reopen /dev/stdout under its own uid
                os.chown(out_path, user, -1)
                os.chown(err_path, user, -1)
            proc = site.popen(argv, user, out, err)
        started = Started(label, proc, out_path, err_path)
        self.started.append(started)
        return started

    def first_dead(self) -> Started | None:
        """A process that has exited, if any."""
        return next((s for s in self.started if s.proc.poll() is not None), None)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every live process (newest first), wait up to `grace` s, then SIGKILL."""
        live = [s for s in reversed(self.started) if s.proc.poll() is None]
        for s in live:
            _signal(s.proc, signal.SIGTERM)
        end = time.monotonic() + grace
        for s in live:
            try:
                s.proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(s.proc, signal.SIGKILL)
                s.proc.wait(timeout=5.0)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal one child by its pid; it may have exited in the meantime."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
