"""Fault injection, as Envoy's fault filter applies a route's Istio `fault` block.

Theory of operation: per request, a delay is sampled with `delay_percent` % probability; a
delayed request waits (flag DI; its body is buffered, then the downstream paused, meanwhile) and
then goes on as if nothing happened. After the delay, an abort is sampled with `abort_percent` %
probability (flag FI): the proxy answers in the upstream's place with the HTTP status and Envoy's
body "fault filter abort", or, when the fault names a gRPC status, as a gRPC server would (HTTP
200, trailers-only, grpc-status). An HTTP abort status on a gRPC call is turned into a gRPC
status by the gRPC local reply (Envoy's HTTP-to-gRPC mapping).
"""

from __future__ import annotations

import random

from sidecar.config.snapshot_routes import Fault

ABORT_BODY = b"fault filter abort"


class FaultPolicy:
    """A compiled fault: sample with `delay()` and `abort()` once per request."""

    __slots__ = ("_abort_pct", "_delay_pct", "delay_seconds", "grpc_status", "http_status")

    def __init__(self, fault: Fault) -> None:
        self.delay_seconds = fault.delay if fault.delay is not None and fault.delay > 0 else None
        self._delay_pct = fault.delay_percent
        self.http_status = fault.abort_status
        self.grpc_status = fault.abort_grpc_status
        has_abort = fault.abort_status is not None or fault.abort_grpc_status is not None
        self._abort_pct = fault.abort_percent if has_abort else 0.0

    def delay(self) -> float | None:
        """Seconds to delay this request, or None."""
        if self.delay_seconds is None or not _sampled(self._delay_pct):
            return None
        return self.delay_seconds

    def abort(self) -> bool:
        """Whether to abort this request."""
        return self._abort_pct > 0 and _sampled(self._abort_pct)


def _sampled(percent: float) -> bool:
    if percent >= 100.0:
        return True
    return random.random() * 100.0 < percent
