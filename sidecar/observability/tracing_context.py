"""Trace context in request headers: B3 (multi-header and single `b3`) and W3C `traceparent`.

Theory of operation: `extract` reads a request's headers once and returns what the caller sent:
a `Context` with the trace id, the caller's span id and its sampling decision (any of them may be
missing: B3 allows a bare `x-b3-sampled: 0`). Precedence is B3 multi-header, then single `b3`,
then `traceparent`, as Envoy's Zipkin tracer reads them. Malformed ids are ignored (a new trace
starts) but a well-formed sampling decision still counts. `inject` replaces every trace header of
the request with the child context this proxy sends upstream; `tracestate` passes through.

`x-envoy-decorator-operation` is Envoy's span name travelling with the request: the client-side
proxy sends its route's operation, and the server-side proxy names its span after it and removes
it (the application never sees it), so both spans of one hop carry the same name.
"""

from __future__ import annotations

from sidecar.http.stream import TRACE_HEADERS, Headers

DECORATOR = b"x-envoy-decorator-operation"
# Headers this proxy replaces when it injects a context (tracestate is kept as received).
REPLACED = TRACE_HEADERS
_REPLACED_LENGTHS = frozenset(len(n) for n in REPLACED)  # most names are none: skip lower()
_HEX = frozenset(b"0123456789abcdefABCDEF")


class Context:
    """What a caller's trace headers said; ids are ints (0 = absent)."""

    __slots__ = ("debug", "operation", "sampled", "span_id", "trace_id")

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0
        self.sampled: bool | None = None  # None: the caller left the decision to us
        self.debug = False
        self.operation = b""  # x-envoy-decorator-operation from the caller's proxy


def _hex_id(value: bytes, lengths: tuple[int, ...]) -> int:
    """The id as an int, or 0 when `value` is not hex of one of `lengths`, or all zeros."""
    value = value.strip()
    if len(value) not in lengths or not _HEX.issuperset(value):
        return 0
    return int(value, 16)


def _sampled(value: bytes) -> bool | None:
    v = value.strip().lower()
    if v in (b"1", b"true", b"d"):
        return True
    if v in (b"0", b"false"):
        return False
    return None


def extract(headers: Headers) -> Context:
    """The caller's context; `NO_CONTEXT` (shared, never modified) when no trace header is
    present, the usual case, which allocates nothing."""
    found: dict[bytes, bytes] | None = None
    for name, value in headers:
        if len(name) in _REPLACED_LENGTHS:
            lname = name.lower()
            if lname in REPLACED:
                if found is None:
                    found = {}
                found[lname] = value
    if found is None:
        return NO_CONTEXT
    ctx = Context()
    ctx.operation = found.get(DECORATOR, b"").strip()
    if b"x-b3-traceid" in found or b"x-b3-sampled" in found or b"x-b3-flags" in found:
        _b3_multi(ctx, found)
    elif b"b3" in found:
        _b3_single(ctx, found[b"b3"])
    elif b"traceparent" in found:
        _traceparent(ctx, found[b"traceparent"])
    return ctx


NO_CONTEXT = Context()  # no trace header at all


def _b3_multi(ctx: Context, found: dict[bytes, bytes]) -> None:
    trace_id = _hex_id(found.get(b"x-b3-traceid", b""), (16, 32))
    span_id = _hex_id(found.get(b"x-b3-spanid", b""), (16,))
    if trace_id and span_id:
        ctx.trace_id, ctx.span_id = trace_id, span_id
    if found.get(b"x-b3-flags", b"").strip() == b"1":
        ctx.debug = True
    sampled = found.get(b"x-b3-sampled")
    if sampled is not None:
        ctx.sampled = _sampled(sampled)
        ctx.debug = ctx.debug or sampled.strip().lower() == b"d"
    if ctx.debug:
        ctx.sampled = True


def _b3_single(ctx: Context, value: bytes) -> None:
    parts = value.strip().split(b"-")
    if len(parts) == 1:  # "0", "1" or "d": a decision only
        ctx.sampled = _sampled(parts[0])
        ctx.debug = parts[0].lower() == b"d"
        return
    trace_id, span_id = _hex_id(parts[0], (16, 32)), _hex_id(parts[1], (16,))
    if trace_id and span_id:
        ctx.trace_id, ctx.span_id = trace_id, span_id
    if len(parts) >= 3:
        ctx.sampled = _sampled(parts[2])
        ctx.debug = parts[2].lower() == b"d"


def _traceparent(ctx: Context, value: bytes) -> None:
    parts = value.strip().split(b"-")
    if len(parts) < 4 or parts[0] == b"ff" or len(parts[3]) != 2 or not _HEX.issuperset(parts[3]):
        return
    trace_id, span_id = _hex_id(parts[1], (32,)), _hex_id(parts[2], (16,))
    if trace_id and span_id:
        ctx.trace_id, ctx.span_id = trace_id, span_id
        ctx.sampled = bool(int(parts[3], 16) & 1)


def inject(
    headers: Headers, replace: bool, trace_id: int, span_id: int, parent_id: int, debug: bool,
    operation: bytes = b"",
) -> Headers:  # fmt: skip
    """`headers` with the trace headers of the child context (sampled) in place of the caller's,
    and `operation` (when given) as x-envoy-decorator-operation."""
    out = [h for h in headers if h[0].lower() not in REPLACED] if replace else headers
    if operation:
        out.append((DECORATOR, operation))
    tid = b"%032x" % trace_id
    sid = b"%016x" % span_id
    out.append((b"x-b3-traceid", tid))
    out.append((b"x-b3-spanid", sid))
    if parent_id:
        out.append((b"x-b3-parentspanid", b"%016x" % parent_id))
    out.append((b"x-b3-sampled", b"1"))
    if debug:
        out.append((b"x-b3-flags", b"1"))
    out.append((b"traceparent", b"00-" + tid + b"-" + sid + b"-01"))
    return out


def inject_unsampled(headers: Headers, ctx: Context) -> Headers:
    """Propagate a "not sampled" decision on a request that came with a context (`ctx`; without
    one, `RequestHead.not_sampled` says it): the caller's ids pass through as received, with
    `x-b3-sampled: 0` added when the caller had not decided; a decorator header is removed."""
    decided = ctx.sampled is False
    if decided and not ctx.operation:
        return headers
    drop = (DECORATOR,) if decided else (DECORATOR, b"x-b3-sampled")
    out = [h for h in headers if h[0].lower() not in drop]
    if not decided:
        out.append((b"x-b3-sampled", b"0"))
    return out
