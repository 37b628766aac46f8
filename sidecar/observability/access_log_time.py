"""Envoy's %START_TIME(FORMAT)%: strftime in UTC plus Envoy's own %s and %f / %Nf specifiers.

Theory of operation: the format is split once into strftime text and Envoy's specifiers (`%s`
epoch seconds, `%f` nanoseconds, `%Nf` N fractional digits). Everything but the fraction changes
only once a second, so a `StartTime` renders the second into a `%`-pattern when the second
changes (the fractions left as `%0Nd` slots) and per call only fills in the fractional digits.
Without an argument the output is Envoy's default, `2026-11-26T06:44:47.123Z`.
"""

from __future__ import annotations

import re
import time

DEFAULT_FORMAT = "%Y-%m-%dT%H:%M:%S.%3fZ"
# Envoy's own specifiers; a doubled %% is strftime's and is left to it.
_SPECIFIER = re.compile(r"%%|%([1-9]?)f|%s")


class StartTime:
    """Formats a wall-clock time stamp (seconds since the epoch, float) as one format says."""

    __slots__ = ("_pattern", "_scales", "_second", "_tokens")

    def __init__(self, fmt: str | None) -> None:
        fmt = fmt or DEFAULT_FORMAT
        # tokens: ("strftime", text) | ("epoch", "") | ("fraction", digits)
        self._tokens: list[tuple[str, str]] = []
        pos = 0
        for m in _SPECIFIER.finditer(fmt):
            if m.group(0) == "%%":
                continue  # stays in the strftime text
            if m.start() > pos:
                self._tokens.append(("strftime", fmt[pos : m.start()]))
            pos = m.end()
            if m.group(0) == "%s":
                self._tokens.append(("epoch", ""))
            else:
                self._tokens.append(("fraction", m.group(1) or "9"))
        if pos < len(fmt):
            self._tokens.append(("strftime", fmt[pos:]))
        self._scales = tuple(10 ** int(d) for kind, d in self._tokens if kind == "fraction")
        self._second = -1
        self._pattern = ""

    def _render_second(self, sec: int) -> None:
        tm = time.gmtime(sec)
        parts: list[str] = []
        for kind, value in self._tokens:
            if kind == "strftime":
                parts.append(time.strftime(value, tm).replace("%", "%%"))
            elif kind == "epoch":
                parts.append(str(sec))
            else:
                parts.append(f"%0{value}d")
        self._second = sec
        self._pattern = "".join(parts)

    def __call__(self, t: float) -> str:
        sec = int(t)
        if sec != self._second:
            self._render_second(sec)
        scales = self._scales
        if len(scales) == 1:
            return self._pattern % int((t - sec) * scales[0])
        frac = t - sec
        return self._pattern % tuple([int(frac * scale) for scale in scales])
