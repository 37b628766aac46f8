"""A request's way through the mesh, read back from the sidecars' access logs.

Theory of operation: the driver gives each request its own `x-request-id`; the apps forward it
and also report the id they saw. Every access-log line (Envoy's text format quotes the request
id; the JSON format has it as a field) that mentions one of a request's ids belongs to that
request. Each `Hop` the demo expects - (sidecar, direction) - is filled with the first such line
of that sidecar (or of an alternative: a canary's sidecars) that the hop's test accepts: an
outbound line names the `outbound|` cluster or the called service's host; an inbound line is
any other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# `"GET / HTTP/1.1" 200 ` in Envoy's default text format.
_TEXT_CODE = re.compile(r'"[A-Z]+ \S+ [^"]*" (\d{1,3}) ')


@dataclass(frozen=True)
class HopSpec:
    """One place a request passes: a sidecar's log, in one direction."""

    proxy: str  # label of the sidecar, e.g. "a-1"
    direction: str  # "inbound" | "outbound"
    outbound_marker: str = ""  # text only this sidecar's outbound lines carry (the called host)
    alternatives: tuple[str, ...] = ()  # other sidecars the hop may pass instead (a canary's)

    @property
    def proxies(self) -> tuple[str, ...]:
        return (self.proxy, *self.alternatives)

    def accepts(self, line: str) -> bool:
        marked = bool(self.outbound_marker) and self.outbound_marker in line
        outbound = "outbound|" in line or marked
        return outbound == (self.direction == "outbound")


@dataclass(frozen=True)
class Hop:
    """A hop with the access-log line found for it ("" if none)."""

    spec: HopSpec
    line: str
    proxy: str = ""  # the sidecar whose log had the line ("" when none had)

    @property
    def response_code(self) -> int | None:
        return response_code(self.line)


def response_code(line: str) -> int | None:
    """The response code an access-log line records (text or JSON format)."""
    if line.startswith("{"):
        try:
            value = json.loads(line).get("response_code")
        except (ValueError, AttributeError):
            return None
        return int(value) if isinstance(value, int | str) and str(value).isdigit() else None
    match = _TEXT_CODE.search(line)
    return int(match.group(1)) if match else None


def mentions(line: str, ids: Iterable[str]) -> bool:
    """Whether the line carries one of the request ids (quoted in text, a value in JSON)."""
    return any(f'"{rid}"' in line for rid in ids if rid and rid != "-")


def read_log(path: Path) -> list[str]:
    """All complete lines of a log file so far (none if it does not exist yet)."""
    if not path.exists():
        return []
    text = path.read_text("utf-8", "replace")
    complete = text if text.endswith("\n") else text.rpartition("\n")[0]
    return [line for line in complete.splitlines() if line.strip()]


def trail(
    specs: Sequence[HopSpec], logs: Mapping[str, Sequence[str]], ids: Iterable[str]
) -> list[Hop]:
    """For each expected hop, the first line of its sidecar's log for this request."""
    wanted = set(ids)
    hops = []
    for spec in specs:
        found = Hop(spec, "")
        for proxy in spec.proxies:
            lines = (ln for ln in logs.get(proxy, ()) if mentions(ln, wanted) and spec.accepts(ln))
            line = next(lines, "")
            if line:
                found = Hop(spec, line, proxy)
                break
        hops.append(found)
    return hops
