"""One exception hierarchy for the whole package.

Config errors carry where the problem is (file, line, object, field path); protocol errors carry the
HTTP status the proxy answers with. Nothing here is used for control flow on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Severity(Enum):
    """How bad a config issue is: errors refuse the load, warnings are reported and ignored."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found in mesh config, located as precisely as the loader can tell."""

    severity: Severity
    file: str
    obj: str  # "Kind/namespace/name", or "" when the document has no identity yet
    path: str  # field path such as "spec.ports[0].port", or "" for the whole object
    reason: str
    line: int | None = None  # 1-based line of the object (or field) in the file

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        parts = [where, self.severity.value]
        if self.obj:
            parts.append(self.obj)
        if self.path:
            parts.append(self.path)
        return ": ".join(parts) + f": {self.reason}"


class SidecarError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(SidecarError):
    """Mesh config or bootstrap that cannot be used; the running config stays."""

    def __init__(self, issues: tuple[ConfigIssue, ...] | list[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class BootstrapError(SidecarError):
    """Flags, environment or PROXY_CONFIG that cannot be used."""


class ProtocolError(SidecarError):
    """A peer broke the protocol; `status` is what the proxy answers downstream, if it still can."""

    def __init__(self, reason: str, status: int = 400) -> None:
        self.reason = reason
        self.status = status
        super().__init__(f"{status} {reason}")


class CaptureError(SidecarError):
    """iptables rules could not be rendered, applied or cleaned."""
