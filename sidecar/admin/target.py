"""What the admin and status servers need from the proxy server that owns them.

The server (sidecar/server.py) implements `AdminTarget`; the admin endpoints only read it and call
its few commands, so tests can stand up the admin server against a small target of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sidecar.bootstrap import Bootstrap
    from sidecar.config.snapshot import Snapshot
    from sidecar.runtime import Runtime


class AdminTarget(Protocol):
    """The proxy server as the admin (15000) and status (15021) servers see it."""

    bootstrap: Bootstrap
    runtime: Runtime  # counters, cluster_manager, connections, draining
    started_at: float  # time.time() at start

    @property
    def snapshot(self) -> Snapshot: ...

    def is_ready(self) -> bool:
        """Listeners bound, not draining, not health-failed."""
        ...

    def listener_addresses(self) -> list[tuple[str, str, int]]:
        """(listener name, address, port) for each socket actually bound."""
        ...

    def request_shutdown(self) -> None:
        """POST /quitquitquit: exit gracefully soon after the answer is sent."""
        ...

    def drain_listeners(self, inbound_only: bool, graceful: bool) -> None:
        """POST /drain_listeners."""
        ...

    def fail_health(self) -> None:
        """POST /healthcheck/fail."""
        ...

    def ok_health(self) -> None:
        """POST /healthcheck/ok."""
        ...

    def reload(self) -> list[str]:
        """Re-read config files now; the issues found (empty = applied). Raises nothing."""
        ...
