"""Network namespaces for capture tests and the demo's `--capture` mode.

Theory of operation. A `Namespace` is a named network namespace (`ip netns add`) with only `lo`
up: no interface to the host and no route out. `veth_pair` links two of them with a veth pair
created inside the first namespace and moved straight into the second, so no interface ever
appears in the host namespace. Everything that runs inside goes through `ip netns exec`, so
iptables calls made here change only the namespace's own tables, never the host's.

Names are `prefix + pid + "-" + n`, with n the first number not yet used under /run/netns (no
module-level counter). `popen` remembers the processes it starts; `delete` terminates those (and
only those), then removes the namespace. `delete` is idempotent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

NETNS_DIR = Path("/run/netns")
MAX_NAME_TRIES = 1000
CMD_TIMEOUT_S = 30.0
STOP_WAIT_S = 5.0


def _ip(*args: str) -> None:
    done = subprocess.run(
        ["ip", *args], text=True, capture_output=True, timeout=CMD_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def _as_user(argv: list[str], user: int | None) -> list[str]:
    if user is None:
        return argv
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--", *argv]


class Namespace:
    """A network namespace made for a test or a demo, deleted with everything it started."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._procs: list[subprocess.Popen[bytes]] = []
        self._links = 0

    @classmethod
    def create(cls, prefix: str) -> Namespace:
        """Add a namespace with a unique name and bring its loopback up."""
        base = f"{prefix}{os.getpid()}-"
        for n in range(MAX_NAME_TRIES):
            name = f"{base}{n}"
            if (NETNS_DIR / name).exists():
                continue
            _ip("netns", "add", name)
            ns = cls(name)
            try:
                ns.run(["ip", "link", "set", "lo", "up"])
            except subprocess.CalledProcessError:
                ns.delete()
                raise
            return ns
        raise OSError(f"no free namespace name under {base}*")

    def exec_argv(self, argv: list[str], user: int | None = None) -> list[str]:
        """The command line that runs argv inside this namespace (as `user`, if given)."""
        return ["ip", "netns", "exec", self.name, *_as_user(argv, user)]

    def run(
        self, argv: list[str], check: bool = True, user: int | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion inside the namespace; text output captured; bounded in time."""
        kw.setdefault("timeout", CMD_TIMEOUT_S)
        return subprocess.run(
            self.exec_argv(argv, user), check=check, text=True, capture_output=True, **kw
        )

    def popen(self, argv: list[str], user: int | None = None, **kw: Any) -> subprocess.Popen[bytes]:
        """Start a process inside the namespace (as uid=gid=`user` when given)."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.exec_argv(argv, user), **kw)
        self._procs.append(proc)
        return proc

    def next_link_name(self) -> str:
        """A veth name not yet used by this object in this namespace."""
        self._links += 1
        return f"veth{self._links}"

    def delete(self) -> None:
        """Stop the processes this object started, then remove the namespace (idempotent)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_WAIT_S)
        self._procs.clear()
        if (NETNS_DIR / self.name).exists():
            _ip("netns", "del", self.name)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


def veth_pair(a: Namespace, a_ip: str, b: Namespace, b_ip: str, prefix_len: int = 24) -> None:
    """Link two namespaces with a veth pair and address both ends; no route beyond the link."""
    a_if, b_if = a.next_link_name(), b.next_link_name()
    _ip("-n", a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
    for ns, ifname, addr in ((a, a_if, a_ip), (b, b_if, b_ip)):
        flags = ["nodad"] if ":" in addr else []
        _ip("-n", ns.name, "addr", "add", f"{addr}/{prefix_len}", "dev", ifname, *flags)
        _ip("-n", ns.name, "link", "set", ifname, "up")


def available() -> tuple[bool, str]:
    """Whether namespaces and iptables work here; the reason when they do not."""
    if os.geteuid() != 0:
        return False, "needs root (network namespaces and iptables)"
    for tool in ("ip", "iptables-restore", "iptables-save", "setpriv"):
        if shutil.which(tool) is None:
            return False, f"{tool} not found"
    try:
        with Namespace.create("probe") as ns:
            done = ns.run(["iptables-save", "-t", "nat"], check=False)
            if done.returncode != 0:
                return False, f"iptables does not work in a netns: {done.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"cannot create a network namespace: {exc}"
    return True, ""
