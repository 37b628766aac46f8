"""Histogram bucket bounds per stat-name prefix, as Istio's `statsHistogramBuckets` annotation.

Theory of operation: Istio reads the Pod annotation `sidecar.istio.io/statsHistogramBuckets`, a
JSON object of stat-name prefix -> list of bucket upper bounds, and writes it into Envoy's
bootstrap as `histogram_bucket_settings`, sorted by prefix; Envoy gives each histogram the bounds
of the first setting whose prefix its stat name starts with, else its defaults. Istio's standard
metrics are named `istiocustom.<metric>` there (`istiocustom.istio_request_duration_milliseconds`,
...), so `{"istiocustom": [...]}` sets all three request histograms and a longer prefix can set
one of them, provided no shorter prefix sorts before it and matches too (Envoy's first match).

Here the same object comes from the proxy's own Pod (or its Deployment's pod template) in the
mesh config and from `--stats-histogram-buckets JSON`; the flag's prefixes replace the
annotation's equal ones (flags win over config, as everywhere in the bootstrap). Values are
validated when read (`parse`): a JSON object of non-empty prefixes to non-empty lists of positive,
strictly ascending numbers; a bad value raises ValueError with the reason, which the caller turns
into a ConfigIssue (file, object, field) or a BootstrapError.

Bounds are fixed for the life of the process (as Envoy's bootstrap is): `MetricsStore` resolves
them once, from the first snapshot and the bootstrap.
"""

from __future__ import annotations

import json
import math

ANNOTATION = "sidecar.istio.io/statsHistogramBuckets"

# Envoy's stat names of Istio's request histograms (the stats plugin's `istiocustom` prefix).
DURATION_STAT = "istiocustom.istio_request_duration_milliseconds"
REQUEST_BYTES_STAT = "istiocustom.istio_request_bytes"
RESPONSE_BYTES_STAT = "istiocustom.istio_response_bytes"

Bounds = tuple[float, ...]
Overrides = tuple[tuple[str, Bounds], ...]  # sorted by prefix: Envoy's match order


def parse(text: str) -> Overrides:
    """The annotation's JSON value, validated; ValueError says what is wrong."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object of stat prefix -> list of bucket bounds")
    out: dict[str, Bounds] = {}
    for prefix, value in doc.items():
        if not prefix:
            raise ValueError("empty stat prefix")
        out[prefix] = _bounds(prefix, value)
    return tuple(sorted(out.items()))


def _bounds(prefix: str, value: object) -> Bounds:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{prefix!r}: expected a non-empty list of numbers")
    bounds: list[float] = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{prefix!r}: {v!r} is not a number")
        if v <= 0:
            raise ValueError(f"{prefix!r}: bucket bound {v!r} must be positive")
        if bounds and v <= bounds[-1]:
            raise ValueError(
                f"{prefix!r}: bucket bounds must be ascending ({v!r} follows {bounds[-1]!r})"
            )
        bounds.append(float(v))
    return tuple(bounds)


def merge(base: Overrides, over: Overrides) -> Overrides:
    """`base` with `over`'s prefixes replacing equal ones, sorted again."""
    return tuple(sorted({**dict(base), **dict(over)}.items()))


def bounds_for(stat: str, overrides: Overrides, default: Bounds) -> Bounds:
    """The bounds of the first prefix (in sorted order) that `stat` starts with, else `default`."""
    for prefix, bounds in overrides:
        if stat.startswith(prefix):
            return bounds
    return default


def to_json(overrides: Overrides) -> dict[str, list[float]]:
    return {prefix: list(bounds) for prefix, bounds in overrides}
