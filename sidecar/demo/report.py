"""What the demo prints: an introduction, each request's way and answer, a summary.

Theory of operation: pure formatting. The driver hands over plain data (rows, an `Exchange`
per request) and a text stream; nothing here starts processes or reads files.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from sidecar.demo.client import Answer
from sidecar.demo.trail import Hop

RULE_WIDTH = 78
INDENT = "    "


@dataclass(frozen=True)
class Exchange:
    """One demo request: what was sent, what came back, and the hops it left in the logs."""

    number: int
    url: str
    request_id: str
    answer: Answer
    hops: tuple[Hop, ...] = ()

    @property
    def complete(self) -> bool:
        """Answered 200 and every hop logged with 200."""
        return self.answer.status == 200 and all(h.response_code == 200 for h in self.hops)


def introduction(out: TextIO, title: str, rows: Sequence[tuple[str, str, str]]) -> None:
    out.write(f"sidecar demo: {title}\n\n")
    width = [max(len(r[i]) for r in rows) for i in (0, 1)]
    for who, where, what in rows:
        out.write(f"  {who:<{width[0]}}  {where:<{width[1]}}  {what}\n")
    out.write(
        "\nEach sidecar writes one access-log line per request it proxies (Envoy's format);"
        "\nthe demo finds a request's lines by the x-request-id it sent.\n\n"
    )


def exchange(out: TextIO, ex: Exchange, total: int) -> None:
    heading = f"--- request {ex.number} of {total} "
    out.write(f"{heading}{'-' * max(0, RULE_WIDTH - len(heading))}\n")
    out.write(f"$ curl -H {shlex.quote('x-request-id: ' + ex.request_id)} {ex.url}\n\n")
    out.write("  its way through the sidecars (their access-log lines, in path order):\n")
    label_width = max((len(f"{h.spec.proxy} {h.spec.direction}") for h in ex.hops), default=0)
    for i, hop in enumerate(ex.hops, 1):
        label = f"{hop.spec.proxy} {hop.spec.direction}"
        line = hop.line or "(no access-log line with this request id)"
        out.write(f"  {i}. {label:<{label_width}}  {line}\n")
    out.write("\n  the answer:\n")
    answer = ex.answer
    if answer.error:
        out.write(f"{INDENT}no answer: {answer.error}\n\n")
        return
    out.write(f"{INDENT}HTTP {answer.status} {answer.reason}\n")
    for line in answer.body.rstrip("\n").splitlines():
        out.write(f"{INDENT}{line}\n")
    out.write("\n")


def summary(out: TextIO, exchanges: Sequence[Exchange]) -> None:
    answered = sum(1 for ex in exchanges if ex.answer.status == 200)
    logged = sum(1 for ex in exchanges if all(h.line for h in ex.hops))
    n = len(exchanges)
    out.write(f"{answered} of {n} requests answered 200; ")
    out.write(f"{logged} of {n} left all {len(exchanges[0].hops) if n else 0} access-log lines.\n")


def failure(out: TextIO, what: str, label: str = "", tail: str = "") -> None:
    out.write(f"\nsidecar demo: FAILED: {what}\n")
    if tail:
        out.write(f"  last lines from {label}:\n")
        for line in tail.splitlines():
            out.write(f"{INDENT}{line}\n")
