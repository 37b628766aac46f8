"""One trace as an ASCII waterfall for the terminal (what `sidecar traces` prints).

Theory of operation: spans become a tree. A span's parent is the span whose id is its `parentId`;
when two spans share an id (a client span and the server span that joined it, `shared: true`), the
shared one hangs under the other, and children of that id hang under the shared (server) one. Spans
whose parent is missing, and any left unreached (a cycle), are roots. Siblings are ordered by start
time. Each span is one line: indented service and name, kind, start offset from the trace's first
timestamp and duration (ms), a bar placed and scaled on the trace's time axis, and status tags.

    trace 5af7183fb1d4cf5f: 3 spans, services backend, frontend, 12.000 ms
    frontend get /api        SERVER   +0.000ms  12.000ms |##############################| 200
      frontend get /db       CLIENT   +1.000ms   5.000ms |   ############             | 200
        backend get /db      SERVER   +1.500ms   4.000ms |    #########               | 200
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Span = Mapping[str, Any]
MIN_BAR = 10  # narrowest bar, whatever the terminal width
MAX_LABEL = 48  # widest service + name column
MIN_LABEL = 16  # narrowest, when the terminal is narrow
MAX_INDENT = 12  # deeper spans stop indenting further
_STATUS_TAGS = ("http.status_code", "grpc.status_code", "response_flags")


def _parents(spans: Sequence[Span]) -> list[int | None]:
    """Index of each span's parent (None: a root)."""
    unshared: dict[str, int] = {}
    shared: dict[str, int] = {}
    for i, span in enumerate(spans):
        (shared if span.get("shared") else unshared).setdefault(str(span.get("id")), i)
    parents: list[int | None] = []
    for i, span in enumerate(spans):
        parent: int | None = None
        if span.get("shared"):
            parent = unshared.get(str(span.get("id")))
        if parent is None and span.get("parentId"):
            pid = str(span["parentId"])
            parent = shared.get(pid, unshared.get(pid))
        parents.append(None if parent == i else parent)
    return parents


def _start(span: Span) -> float:
    stamp = span.get("timestamp")
    return float(stamp) if stamp else float("inf")


def order(spans: Sequence[Span]) -> list[tuple[int, int]]:
    """(span index, depth) in depth-first, start-time order; every span exactly once."""
    parents = _parents(spans)
    children: dict[int | None, list[int]] = {}
    for i, parent in enumerate(parents):
        children.setdefault(parent, []).append(i)
    for kids in children.values():
        kids.sort(key=lambda i: (_start(spans[i]), str(spans[i].get("name", ""))))
    out: list[tuple[int, int]] = []
    seen: set[int] = set()
    # roots first, then whatever a cycle left unreached
    for root in [*children.get(None, []), *range(len(spans))]:
        if root in seen:
            continue
        stack = [(root, 0)]
        while stack:
            i, depth = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            out.append((i, depth))
            stack.extend((kid, depth + 1) for kid in reversed(children.get(i, [])))
    return out


def _label(span: Span, depth: int) -> str:
    local = span.get("localEndpoint") or {}
    service = local.get("serviceName") or "?"
    return f"{'  ' * min(depth, MAX_INDENT)}{service} {span.get('name') or '-'}"


def _tags(span: Span) -> str:
    tags: Mapping[str, str] = span.get("tags") or {}
    parts = [tags[k] for k in _STATUS_TAGS if tags.get(k) not in (None, "", "-")]
    error = tags.get("error")
    if error is not None:
        parts.append("error" if error in ("", "true") else f"error={error}")
    return " ".join(parts)


def _ms(micros: float) -> str:
    return f"{micros / 1000:.3f}ms"


def _bar(offset: float | None, duration: float, total: float, width: int) -> str:
    if offset is None:
        return " " * width
    first = min(width - 1, int(offset / total * width))
    last = max(first + 1, min(width, round((offset + duration) / total * width)))
    return " " * first + "#" * (last - first) + " " * (width - last)


def render(spans: Sequence[Span], width: int) -> str:
    """The waterfall of one trace's spans as text lines (no trailing newline) at most `width`
    columns wide when the terminal allows the narrowest bar."""
    if not spans:
        return ""
    stamped = [s for s in spans if s.get("timestamp")]
    t0 = min((s["timestamp"] for s in stamped), default=0)
    t1 = max((s["timestamp"] + s.get("duration", 0) for s in stamped), default=t0)
    total = max(t1 - t0, 1)
    rows = order(spans)
    labels = [_label(spans[i], depth) for i, depth in rows]
    tags = [_tags(spans[i]) for i, _ in rows]
    # label kind start duration |bar| tags: the label gives way first, then the bar
    others = 1 + 8 + 1 + 11 + 1 + 10 + 2 + 2 + max(len(x) for x in tags)
    longest = max(len(x) for x in labels)
    label_w = min(longest, max(MIN_LABEL, min(MAX_LABEL, width - others - MIN_BAR)))
    bar_w = max(MIN_BAR, width - others - label_w)
    services = sorted({str((s.get("localEndpoint") or {}).get("serviceName", "?")) for s in spans})
    lines = [
        f"trace {spans[0].get('traceId', '?')}: {len(spans)} span{'s' if len(spans) > 1 else ''}, "
        f"services {', '.join(services)}, {_ms(total)}"
    ]
    for (i, _), label, tag in zip(rows, labels, tags, strict=True):
        span = spans[i]
        if len(label) > label_w:
            label = label[: label_w - 3] + "..."
        stamp = span.get("timestamp")
        offset = None if not stamp else float(stamp - t0)
        duration = float(span.get("duration", 0))
        start = "?" if offset is None else "+" + _ms(offset)
        lines.append(
            f"{label:<{label_w}} {span.get('kind', '-'):<8} {start:>11} "
            f"{_ms(duration) if 'duration' in span else '?':>10} "
            f"|{_bar(offset, duration, total, bar_w)}| {tag}".rstrip()
        )
    return "\n".join(lines)
