"""Results of one harness run: per-path numbers, the markdown table, and the JSON file.

Theory of operation: `PathResult` collects what each scenario measured for one path (raw tool
results included). `table()` derives the compared columns: ratios of requests/s and of L4
bytes/s to the direct path and to nginx, and the p99 latency at the fixed rate minus direct's.
A cell whose measurement is missing is "-"; a number taken from a run that saw errors or non-2xx
responses is marked "!" and explained under the table.

The h2 and grpc scenarios (h2load) have their own table, `h2_table()`: req/s, its ratios, mean
time per request and CPU us/req per protocol. A protocol whose check or load failed on a path
(e.g. a proxy that does not speak HTTP/2 yet) shows "failed" there, the reason in the notes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from l4 import TransferResult
from loadgen import LoadResult

MIB = 1 << 20
GIB = 1 << 30


@dataclass
class H2Measure:
    """One h2load scenario (h2 or grpc) on one path; `failed` says why it has no numbers."""

    load: LoadResult | None = None
    cpu_us_per_request: float | None = None
    failed: str = ""

    @property
    def rps(self) -> float | None:
        """Requests/s of a clean-enough run (one that completed requests), else None."""
        return self.load.rps if self.load and not self.load.error else None


@dataclass
class PathResult:
    """Everything measured for one path in one run."""

    name: str
    description: str
    skipped: str = ""
    notes: list[str] = field(default_factory=list)
    wrk: LoadResult | None = None
    hey: LoadResult | None = None
    l4: TransferResult | None = None
    cpu_us_per_request: float | None = None
    l4_cpu_seconds_per_gib: float | None = None
    peak_rss_kib: int | None = None
    profiles: list[str] = field(default_factory=list)
    h2: H2Measure = field(default_factory=H2Measure)
    grpc: H2Measure = field(default_factory=H2Measure)
    h2_notes: list[str] = field(default_factory=list)  # under the h2 table


def _median_index(values: list[float | None]) -> int | None:
    present = sorted((v, i) for i, v in enumerate(values) if v is not None)
    return present[(len(present) - 1) // 2][1] if present else None


def median_of_rounds(rounds: list[PathResult]) -> PathResult:
    """One result from several rounds of a path: per scenario, the round with the median
    figure (wrk: req/s, hey: p99, L4: bytes/s), kept whole so its numbers stay consistent."""
    first = rounds[0]
    merged = PathResult(first.name, first.description, first.skipped)
    for r in rounds:
        merged.notes.extend(n for n in r.notes if n not in merged.notes)
        merged.h2_notes.extend(n for n in r.h2_notes if n not in merged.h2_notes)
        merged.profiles.extend(r.profiles)
    http = _median_index([_rps(r) for r in rounds])
    if http is not None:
        merged.wrk, merged.cpu_us_per_request = rounds[http].wrk, rounds[http].cpu_us_per_request
    fixed = _median_index([_latency(r.hey, "p99") for r in rounds])
    if fixed is not None:
        merged.hey = rounds[fixed].hey
    bulk = _median_index([_l4_rate(r) for r in rounds])
    if bulk is not None:
        merged.l4 = rounds[bulk].l4
        merged.l4_cpu_seconds_per_gib = rounds[bulk].l4_cpu_seconds_per_gib
    for scenario in ("h2", "grpc"):
        measures: list[H2Measure] = [getattr(r, scenario) for r in rounds]
        chosen = _median_index([m.rps for m in measures])
        setattr(merged, scenario, measures[0 if chosen is None else chosen])
    peaks = [r.peak_rss_kib for r in rounds if r.peak_rss_kib]
    merged.peak_rss_kib = max(peaks) if peaks else None
    if len(rounds) > 1 and not merged.skipped:
        for notes, label, rate in ((merged.notes, "req/s", _rps),
                                   (merged.h2_notes, "h2 req/s", _h2_rps),
                                   (merged.h2_notes, "gRPC req/s", _grpc_rps)):
            if any(rate(r) is not None for r in rounds):
                rates = ", ".join(_fmt(rate(r), 0) for r in rounds)
                notes.append(f"{len(rounds)} rounds, median shown; {label} per round: {rates}")
    return merged


def _fmt(value: float | None, digits: int = 1, mark: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" + ("!" if mark else "")


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def _rps(result: PathResult) -> float | None:
    return result.wrk.rps if result.wrk and not result.wrk.error else None


def _h2_rps(result: PathResult) -> float | None:
    return result.h2.rps


def _grpc_rps(result: PathResult) -> float | None:
    return result.grpc.rps


def _dirty(load: LoadResult | None) -> bool:
    return load is not None and (load.errors > 0 or load.non_2xx > 0)


def _latency(load: LoadResult | None, key: str) -> float | None:
    if load is None or load.error:
        return None
    return load.latency_ms.get(key)


def _l4_rate(result: PathResult) -> float | None:
    return result.l4.bytes_per_second if result.l4 else None


COLUMNS = ("path", "req/s", "x direct", "x nginx", "p50 ms", "p99 ms", "CPU us/req",
           "peak RSS MiB", "p99 @rate ms", "added p99 ms", "L4 MB/s", "L4 x direct",
           "L4 x nginx", "L4 CPU s/GiB")


def table(results: list[PathResult]) -> str:
    """The markdown comparison table, one row per path, with notes below it."""
    by_name = {r.name: r for r in results}
    direct, nginx = by_name.get("direct"), by_name.get("nginx")
    direct_rps = _rps(direct) if direct else None
    nginx_rps = _rps(nginx) if nginx else None
    direct_l4 = _l4_rate(direct) if direct else None
    nginx_l4 = _l4_rate(nginx) if nginx else None
    direct_p99 = _latency(direct.hey, "p99") if direct else None
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    notes: list[str] = []
    for r in results:
        if r.skipped:
            notes.append(f"{r.name}: skipped: {r.skipped}")
            continue
        rps, p99_rate, l4 = _rps(r), _latency(r.hey, "p99"), _l4_rate(r)
        added = p99_rate - direct_p99 if p99_rate is not None and direct_p99 is not None \
            else None
        rss = r.peak_rss_kib / 1024 if r.peak_rss_kib else None
        cells = [
            r.name, _fmt(rps, 0, _dirty(r.wrk)), _fmt(_ratio(rps, direct_rps), 2),
            _fmt(_ratio(rps, nginx_rps), 2), _fmt(_latency(r.wrk, "p50"), 2),
            _fmt(_latency(r.wrk, "p99"), 2), _fmt(r.cpu_us_per_request, 1), _fmt(rss, 1),
            _fmt(p99_rate, 1, _dirty(r.hey)), _fmt(added, 1),
            _fmt(l4 / 1e6 if l4 else None, 0), _fmt(_ratio(l4, direct_l4), 2),
            _fmt(_ratio(l4, nginx_l4), 2), _fmt(r.l4_cpu_seconds_per_gib, 2)]
        lines.append("| " + " | ".join(cells) + " |")
        for load in (r.wrk, r.hey):
            if load is not None and load.error:
                notes.append(f"{r.name}: {load.tool}: {load.error}")
            elif _dirty(load) and load is not None:
                notes.append(f"{r.name}: {load.tool}: {load.errors} socket errors, "
                             f"{load.non_2xx} non-2xx responses (marked !)")
        notes.extend(f"{r.name}: {note}" for note in r.notes)
    if notes:
        lines.append("")
        lines.extend(f"- {note}" for note in notes)
    return "\n".join(lines)


H2_COLUMNS = ("path", "h2 req/s", "h2 x direct", "h2 x nginx", "h2 mean ms", "h2 CPU us/req",
              "gRPC req/s", "gRPC x direct", "gRPC x nginx", "gRPC mean ms", "gRPC CPU us/req")


def _h2_cells(r: PathResult, scenario: str, direct: float | None,
              nginx: float | None) -> tuple[list[str], list[str]]:
    """The five cells of one h2load scenario for one path, and its notes."""
    label = "h2" if scenario == "h2" else "gRPC"
    m: H2Measure = getattr(r, scenario)
    load, notes = m.load, []
    if m.failed or (load is not None and load.error):
        notes.append(f"{r.name}: {label} failed: {m.failed or (load.error if load else '')}")
        return ["failed", "-", "-", "-", "-"], notes
    if _dirty(load) and load is not None:
        notes.append(f"{r.name}: {label}: h2load: {load.errors} failed/errored/timed-out "
                     f"requests, {load.non_2xx} non-2xx responses (marked !)")
    rps = m.rps
    return [_fmt(rps, 0, _dirty(load)), _fmt(_ratio(rps, direct), 2),
            _fmt(_ratio(rps, nginx), 2), _fmt(_latency(load, "mean"), 2),
            _fmt(m.cpu_us_per_request, 1)], notes


def h2_table(results: list[PathResult]) -> str:
    """The HTTP/2 and gRPC table (h2load), one row per path, with notes below it."""
    by_name = {r.name: r for r in results}
    direct, nginx = by_name.get("direct"), by_name.get("nginx")
    lines = ["| " + " | ".join(H2_COLUMNS) + " |", "|" + "---|" * len(H2_COLUMNS)]
    notes: list[str] = []
    for r in results:
        if r.skipped and not (r.h2.load or r.grpc.load):
            notes.append(f"{r.name}: skipped: {r.skipped}")
            continue
        cells = [r.name]
        for scenario in ("h2", "grpc"):
            base = [getattr(p, scenario).rps if p else None for p in (direct, nginx)]
            more, more_notes = _h2_cells(r, scenario, base[0], base[1])
            cells += more
            notes += more_notes
        lines.append("| " + " | ".join(cells) + " |")
        notes.extend(f"{r.name}: {note}" for note in r.h2_notes)
    if notes:
        lines.append("")
        lines.extend(f"- {note}" for note in notes)
    return "\n".join(lines)


def tables(results: list[PathResult], scenarios: set[str]) -> str:
    """The HTTP/1.1 table when an HTTP/1.1 or L4 scenario ran, the h2 table when one of h2 and
    grpc ran, in that order."""
    parts = []
    if scenarios & {"http", "fixed", "l4"}:
        parts.append(table(results))
    if scenarios & {"h2", "grpc"}:
        parts.append(h2_table(results))
    return "\n\n".join(parts)


def write(out_dir: Path, stamp: str, header: str, body: str, results: list[PathResult],
          settings: dict[str, object], rounds: list[list[PathResult]]) -> tuple[Path, Path]:
    """Write <stamp>.md (header + tables) and <stamp>.json (settings, table rows, rounds)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"bench-{stamp}.md"
    md.write_text(header + "\n\n" + body + "\n")
    raw = out_dir / f"bench-{stamp}.json"
    raw.write_text(json.dumps({"settings": settings,
                               "results": [asdict(r) for r in results],
                               "rounds": [[asdict(r) for r in one] for one in rounds]},
                              indent=2) + "\n")
    return md, raw
