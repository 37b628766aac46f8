"""What the demo prints: an introduction, each request's way and answer, a summary.

Theory of operation: pure formatting. The driver hands over plain data (rows, an `Exchange`
per request) and a text stream; nothing here starts processes or reads files.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from sidecar.demo.client import Answer
from sidecar.demo.trail import Hop

RULE_WIDTH = 78
INDENT = "    "
_RELAYED = re.compile(r"answered (\d{3}):")  # app a's line saying what b answered


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
        """a answered 200, its sidecar logged 200, and every later hop logged the status b
        answered a with (200, or the canary's 503)."""
        relayed = _RELAYED.search(self.answer.body)
        if self.answer.status != 200 or relayed is None or not self.hops:
            return False
        codes = [h.response_code for h in self.hops]
        return codes[0] == 200 and all(c == int(relayed.group(1)) for c in codes[1:])


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
    heading(out, f"request {ex.number} of {total}")
    out.write(f"$ curl -H {shlex.quote('x-request-id: ' + ex.request_id)} {ex.url}\n\n")
    out.write("  its way through the sidecars (their access-log lines, in path order):\n")
    labels = [f"{hop.proxy or '/'.join(hop.spec.proxies)} {hop.spec.direction}" for hop in ex.hops]
    label_width = max((len(label) for label in labels), default=0)
    for i, (hop, label) in enumerate(zip(ex.hops, labels, strict=True), 1):
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


def heading(out: TextIO, title: str) -> None:
    start = f"--- {title} "
    out.write(f"{start}{'-' * max(0, RULE_WIDTH - len(start))}\n")


def failure(out: TextIO, what: str, label: str = "", tail: str = "") -> None:
    out.write(f"\nsidecar demo: FAILED: {what}\n")
    if tail:
        out.write(f"  last lines from {label}:\n")
        for line in tail.splitlines():
            out.write(f"{INDENT}{line}\n")


@dataclass(frozen=True)
class Split:
    """How many canary requests each version of b answered (and how many got no answer)."""

    counts: tuple[tuple[str, int], ...]  # (version, answers), in the VirtualService's order
    failed: int

    @property
    def total(self) -> int:
        return sum(n for _, n in self.counts) + self.failed

    def count(self, version: str) -> int:
        return next((n for v, n in self.counts if v == version), 0)


def canary(out: TextIO, rule: str, weights: Sequence[tuple[str, int]], split: Split,
           header: tuple[str, str], header_split: Split) -> None:
    heading(out, "the canary")
    out.write(f"  {rule}\n\n")
    n = split.total
    out.write(f"  {n} requests to a; b answered from:\n")
    for version, percent in weights:
        got = split.count(version)
        share = 100.0 * got / n if n else 0.0
        # Two standard deviations of a binomial share: what a fair split stays within 95% of runs.
        spread = 200.0 * (percent / 100.0 * (1 - percent / 100.0) / n) ** 0.5 if n else 0.0
        out.write(f"    {version}: {got:4d}  ({share:5.1f} %; configured {percent} %, "
                  f"+-{spread:.1f} % is normal at this count)\n")
    if split.failed:
        out.write(f"    no answer from b: {split.failed}\n")
    name, value = header
    sent = header_split.total
    out.write(f"\n  {sent} requests with {name}: {value}\n")
    for version, _ in weights:
        out.write(f"    {version}: {header_split.count(version):4d}\n")
    out.write("\n")
