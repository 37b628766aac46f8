"""Run the real `sidecar run` as a subprocess for end-to-end tests.

`SidecarProcess` writes the mesh config, starts the proxy with free admin/status ports and capture
listeners off, waits until admin `/ready` answers 200, and on stop sends SIGTERM and returns the
exit code. stdout (the access log) and stderr are kept in files so tests can read them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .proxy_fixtures import free_port


def ingress_entry(port: int, upstream_port: int, protocol: str = "HTTP", name: str = "") -> str:
    """One explicit (captureMode NONE) Sidecar ingress entry on 127.0.0.1:`port`."""
    return f"""\
  - port:
      number: {port}
      protocol: {protocol}
      name: {name or protocol.lower() + "-in"}
    bind: 127.0.0.1
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:{upstream_port}
"""


def sidecar_with_ingress(*entries: str) -> str:
    """A namespace-wide Sidecar with these `ingress_entry` entries."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
  namespace: default
spec:
  ingress:
{"".join(entries)}"""


def ingress_sidecar_yaml(
    port: int, upstream_port: int, protocol: str = "HTTP", tls: str = ""
) -> str:
    """A namespace-wide Sidecar with one explicit (captureMode NONE) ingress listener; `tls`
    is the YAML of its `tls:` mapping, indented for the entry."""
    return sidecar_with_ingress(ingress_entry(port, upstream_port, protocol)) + tls


class SidecarProcess:
    """One `sidecar run` subprocess with its config file, logs and admin port."""

    def __init__(self, config_text: str, *extra: str, env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sidecar-test-"))
        self.config = self.dir / "mesh.yaml"
        self.config.write_text(config_text)
        self.admin_port = free_port()
        self.status_port = free_port()
        self.stdout_path = self.dir / "stdout.log"
        self.stderr_path = self.dir / "stderr.log"
        self.args = [
            sys.executable,
            "-m",
            "sidecar.cli",
            "run",
            "--config",
            str(self.config),
            "--outbound-port",
            "0",
            "--inbound-port",
            "0",
            "--admin-port",
            str(self.admin_port),
            "--status-address",
            "127.0.0.1",
            "--status-port",
            str(self.status_port),
            "--prometheus-port",
            "0",
            *extra,
        ]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0, expect_ready: bool = True) -> SidecarProcess:
        self.proc = subprocess.Popen(
            self.args,
            stdout=self.stdout_path.open("wb"),
            stderr=self.stderr_path.open("wb"),
            env=self.env,
        )
        if expect_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited {self.proc.returncode}:\n{self.stderr()}")
            try:
                status, _ = self.admin("GET", "/ready")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"sidecar not ready in {timeout}s:\n{self.stderr()}")

    def admin(self, method: str, path: str) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 10.0, stream: str = "stderr") -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stderr() if stream == "stderr" else self.stdout()
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in {stream} after {timeout}s:\n{self.stderr()}")

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_peak_kib(self) -> int:
        for line in Path(f"/proc/{self.pid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait for exit (killing after `timeout`), return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def __enter__(self) -> SidecarProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def wait_port(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")
