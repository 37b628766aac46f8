"""Envoy's response flags: the one vocabulary for how a request or connection ended.

The same value feeds the access log (`%RESPONSE_FLAGS%`), the `response_flags` metric label, the
span tag and the synthetic response the proxy sends when it, not the upstream, answers.
"""

from __future__ import annotations

import enum


class ResponseFlag(enum.Flag):
    """Envoy response flags; the member name is the short code Envoy prints."""

    NONE = 0
    NR = enum.auto()  # no route configured
    UH = enum.auto()  # no healthy upstream host
    UF = enum.auto()  # upstream connection failure
    UO = enum.auto()  # upstream overflow (circuit breaker)
    URX = enum.auto()  # upstream retry limit exceeded
    UT = enum.auto()  # upstream request timeout
    UC = enum.auto()  # upstream connection termination
    UR = enum.auto()  # upstream remote reset
    LR = enum.auto()  # local reset
    DC = enum.auto()  # downstream connection termination
    DI = enum.auto()  # request delayed by fault injection
    FI = enum.auto()  # request aborted by fault injection
    RL = enum.auto()  # rate limited
    UAEX = enum.auto()  # unauthorized by external authz
    RLSE = enum.auto()  # rate limit service error
    IH = enum.auto()  # invalid header values (strict check)
    SI = enum.auto()  # stream idle timeout
    DPE = enum.auto()  # downstream protocol error
    UPE = enum.auto()  # upstream protocol error
    UMSDR = enum.auto()  # upstream max stream duration reached
    OM = enum.auto()  # overload manager
    DF = enum.auto()  # DNS resolution failure
    NC = enum.auto()  # upstream cluster not found
    # Not an Envoy flag: Envoy reports RBAC denials in the details ("rbac_access_denied...").
    RBAC = enum.auto()

    def code(self) -> str:
        """Envoy's text form: codes joined by ',' in declaration order, '-' when none."""
        if not self:
            return "-"
        return ",".join(m.name for m in ResponseFlag if m and m in self and m.name)


# What the proxy answers when it, not the upstream, ends a request (status, body detail).
SYNTHETIC_STATUS: dict[ResponseFlag, int] = {
    ResponseFlag.NR: 404,
    ResponseFlag.UH: 503,
    ResponseFlag.UF: 503,
    ResponseFlag.UO: 503,
    ResponseFlag.UC: 503,
    ResponseFlag.URX: 503,
    ResponseFlag.UR: 503,
    ResponseFlag.UT: 504,
    ResponseFlag.RL: 429,
    ResponseFlag.RBAC: 403,
    ResponseFlag.DPE: 400,
    ResponseFlag.UPE: 502,
    ResponseFlag.DF: 503,
    ResponseFlag.NC: 503,
}

# Envoy's body text for its locally generated responses.
SYNTHETIC_BODY: dict[ResponseFlag, bytes] = {
    ResponseFlag.NR: b"",
    ResponseFlag.UH: b"no healthy upstream",
    ResponseFlag.UF: b"upstream connect error or disconnect/reset before headers. reset reason: "
    b"connection failure",
    ResponseFlag.UO: b"upstream connect error or disconnect/reset before headers. reset reason: "
    b"overflow",
    ResponseFlag.UC: b"upstream connect error or disconnect/reset before headers. reset reason: "
    b"connection termination",
    ResponseFlag.UR: b"upstream connect error or disconnect/reset before headers. reset reason: "
    b"remote reset",
    ResponseFlag.URX: b"upstream connect error or disconnect/reset before headers. retried and the "
    b"latest reset reason: connection failure",
    ResponseFlag.UT: b"upstream request timeout",
    ResponseFlag.RL: b"local_rate_limited",
    ResponseFlag.RBAC: b"RBAC: access denied",
    ResponseFlag.DPE: b"Bad Request",
    ResponseFlag.UPE: b"upstream connect error or disconnect/reset before headers. reset reason: "
    b"protocol error",
    ResponseFlag.DF: b"dns resolution failure",
    ResponseFlag.NC: b"cluster not found",
}

# Envoy's %RESPONSE_CODE_DETAILS% when the proxy ends a request itself ("via_upstream" when the
# upstream answered).
DETAILS: dict[ResponseFlag, str] = {
    ResponseFlag.NR: "route_not_found",
    ResponseFlag.UH: "no_healthy_upstream",
    ResponseFlag.UF: "upstream_reset_before_response_started{connection_failure}",
    ResponseFlag.UO: "overflow",
    ResponseFlag.UC: "upstream_reset_before_response_started{connection_termination}",
    ResponseFlag.UR: "upstream_reset_before_response_started{remote_reset}",
    ResponseFlag.URX: "upstream_reset_before_response_started{connection_failure}",
    ResponseFlag.UT: "response_timeout",
    ResponseFlag.RBAC: "rbac_access_denied_matched_policy[none]",
    ResponseFlag.UPE: "upstream_reset_before_response_started{protocol_error}",
    ResponseFlag.DF: "dns_resolution_failure",
    ResponseFlag.NC: "cluster_not_found",
    ResponseFlag.FI: "fault_filter_abort",
    ResponseFlag.DC: "downstream_remote_disconnect",
    ResponseFlag.SI: "stream_idle_timeout",
}
VIA_UPSTREAM = "via_upstream"
DIRECT_RESPONSE = "direct_response"  # the route answered itself (directResponse, redirect)
