"""Envoy's access log command operators: what each %COMMAND% reads from a StreamInfo.

Theory of operation: `operator_field(name, arg, max_len)` runs once per operator when a format is
compiled (at start) and returns a `Field` of two getters: `text` gives the value for a format
string (Envoy's `-` when unset) and `json` a JSON literal for a format dictionary (numbers as
numbers, strings quoted, unset as null, as Envoy's typed JSON). Everything that can be decided at
compile time (which attribute, the fallback header, the truncation, the time format) is captured
in the getter's closure, so a request only runs getters. Values that are the same for every
request (HOSTNAME, ENVIRONMENT) are constants, which the compiler folds into its literal text.
Operators the proxy cannot fill, and request headers it does not keep
(access_log_headers.py), are refused with the operator named, never printed as a silent `-`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING

from sidecar.errors import BootstrapError
from sidecar.observability.access_log_fields import (
    Field,
    always_string_field,
    attr_field,
    constant_field,
    is_unset,
    number_field,
    optional_number_field,
    quote,
    string_field,
)
from sidecar.observability.access_log_headers import grpc_status, request_header, response_value
from sidecar.observability.access_log_time import StartTime
from sidecar.outcome import ResponseFlag

if TYPE_CHECKING:
    from sidecar.runtime import StreamInfo


# Response flags ------------------------------------------------------------------------------

_LONG_FLAGS = {
    ResponseFlag.NR: "NoRouteFound", ResponseFlag.UH: "NoHealthyUpstream",
    ResponseFlag.UF: "UpstreamConnectionFailure", ResponseFlag.UO: "UpstreamOverflow",
    ResponseFlag.URX: "UpstreamRetryLimitExceeded", ResponseFlag.UT: "UpstreamRequestTimeout",
    ResponseFlag.UC: "UpstreamConnectionTermination", ResponseFlag.UR: "UpstreamRemoteReset",
    ResponseFlag.LR: "LocalReset", ResponseFlag.DC: "DownstreamConnectionTermination",
    ResponseFlag.DI: "DelayInjected", ResponseFlag.FI: "FaultInjected",
    ResponseFlag.RL: "RateLimited", ResponseFlag.UAEX: "UnauthorizedExternalService",
    ResponseFlag.RLSE: "RateLimitServiceError", ResponseFlag.IH: "InvalidEnvoyRequestHeaders",
    ResponseFlag.SI: "StreamIdleTimeout", ResponseFlag.DPE: "DownstreamProtocolError",
    ResponseFlag.UPE: "UpstreamProtocolError",
    ResponseFlag.UMSDR: "UpstreamMaxStreamDurationReached",
    ResponseFlag.OM: "OverloadManagerTerminated", ResponseFlag.DF: "DnsResolutionFailed",
    ResponseFlag.NC: "NoClusterFound", ResponseFlag.RBAC: "RBAC",
}  # fmt: skip


def _long_code(flags: ResponseFlag) -> str:
    if not flags:
        return "-"
    return ",".join(long for flag, long in _LONG_FLAGS.items() if flag in flags)


def _flags(render: Callable[[ResponseFlag], str]) -> Field:
    """Flags as text, each distinct combination rendered once and then looked up."""
    cache: dict[ResponseFlag, str] = {}

    def text(i: StreamInfo) -> str:
        flags = i.response_flags
        code = cache.get(flags)
        if code is None:
            code = cache[flags] = render(flags)
        return code

    return Field(text, lambda i: quote(text(i)))


# Times and addresses -------------------------------------------------------------------------


def _start_time(arg: str | None) -> Field:
    render = StartTime(arg)

    def text(i: StreamInfo) -> str:
        return render(i.start_time)

    return Field(text, lambda i: quote(render(i.start_time)))  # always a string, as Envoy


def _span_ms(start: str, end: str) -> Field:
    """Milliseconds between two monotonic marks of the StreamInfo, unset while either is 0."""
    first: Callable[[StreamInfo], float] = attrgetter(start)
    last: Callable[[StreamInfo], float] = attrgetter(end)

    def get(i: StreamInfo) -> int | None:
        a, b = first(i), last(i)
        return int((b - a) * 1000) if a and b else None

    return optional_number_field(get)


def _host_of(address: str) -> str:
    if is_unset(address):
        return "-"
    host = address.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


def _port_of(address: str) -> int | None:
    port = address.rpartition(":")[2]
    return int(port) if port.isdigit() else None


def _address_fields(attr: str) -> tuple[Field, Field, Field]:
    """ADDRESS, ADDRESS_WITHOUT_PORT and PORT of one address the StreamInfo keeps."""
    get: Callable[[StreamInfo], str] = attrgetter(attr)

    def host(i: StreamInfo) -> str:
        return _host_of(get(i))

    def port(i: StreamInfo) -> int | None:
        return _port_of(get(i))

    return attr_field(attr), string_field(host), optional_number_field(port)


def _addresses() -> dict[str, Callable[[], Field]]:
    sources = {
        "DOWNSTREAM_LOCAL": "downstream_local_address",
        "DOWNSTREAM_REMOTE": "downstream_remote_address",
        "DOWNSTREAM_DIRECT_REMOTE": "downstream_direct_remote_address",
        "UPSTREAM_LOCAL": "upstream_local_address",
        "UPSTREAM_REMOTE": "upstream_host",
    }
    out: dict[str, Callable[[], Field]] = {}
    for prefix, attr in sources.items():
        for n, suffix in enumerate(("_ADDRESS", "_ADDRESS_WITHOUT_PORT", "_PORT")):
            out[prefix + suffix] = partial(lambda a, k: _address_fields(a)[k], attr, n)
    return out


def _attempts() -> Field:
    """One attempt when an upstream host was chosen, none otherwise (no retries yet)."""

    def get(i: StreamInfo) -> int:
        return 0 if i.upstream_host == "-" else 1

    return Field(get, get)


def _environment(arg: str | None) -> Field:
    if not arg:
        raise BootstrapError("access log format: %ENVIRONMENT(NAME)% needs a variable name")
    return constant_field(os.environ.get(arg, ""))


# Operators without an argument, by name: each call builds a fresh Field.
_FIXED: dict[str, Callable[[], Field]] = {
    "PROTOCOL": partial(always_string_field, "protocol"),
    "RESPONSE_CODE": partial(number_field, "response_code"),
    "RESPONSE_CODE_DETAILS": partial(attr_field, "response_code_details"),
    "CONNECTION_TERMINATION_DETAILS": partial(attr_field, "connection_termination_details"),
    "RESPONSE_FLAGS": partial(_flags, ResponseFlag.code),
    "RESPONSE_FLAGS_LONG": partial(_flags, _long_code),
    "BYTES_RECEIVED": partial(number_field, "bytes_received"),
    "BYTES_SENT": partial(number_field, "bytes_sent"),
    "DURATION": partial(number_field, "duration_ms"),
    "REQUEST_DURATION": partial(_span_ms, "start_mono", "request_end_mono"),
    "RESPONSE_DURATION": partial(_span_ms, "start_mono", "response_start_mono"),
    "RESPONSE_TX_DURATION": partial(_span_ms, "response_start_mono", "end_mono"),
    "UPSTREAM_HOST": partial(attr_field, "upstream_host"),
    "UPSTREAM_CLUSTER": partial(attr_field, "upstream_cluster"),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": partial(attr_field, "upstream_transport_failure_reason"),
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": _attempts,
    "REQUESTED_SERVER_NAME": partial(attr_field, "requested_server_name"),
    "ROUTE_NAME": partial(attr_field, "route_name"),
    "GRPC_STATUS_NUMBER": partial(optional_number_field, attrgetter("grpc_status")),
    "HOSTNAME": lambda: constant_field(socket.gethostname()),
    **_addresses(),
}
# Operators with an optional (argument).
_WITH_ARGUMENT: dict[str, Callable[[str | None], Field]] = {
    "START_TIME": _start_time,
    "GRPC_STATUS": grpc_status,
    "ENVIRONMENT": _environment,
}
# Header operators take (X?Y) and an optional :Z length.
_HEADER_OPERATORS = {"REQ", "REQUEST_HEADER", "RESP", "RESPONSE_HEADER", "TRAILER",
                     "RESPONSE_TRAILER", "REQ_WITHOUT_QUERY"}  # fmt: skip
# Envoy operators this proxy has no data for: refused as such rather than "unknown".
UNAVAILABLE = {
    "CONNECTION_ID", "UPSTREAM_PROTOCOL", "REQUEST_HEADERS_BYTES", "RESPONSE_HEADERS_BYTES",
    "RESPONSE_TRAILERS_BYTES", "REQUEST_TX_DURATION", "UPSTREAM_WIRE_BYTES_SENT",
    "UPSTREAM_WIRE_BYTES_RECEIVED", "UPSTREAM_HEADER_BYTES_SENT", "UPSTREAM_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_SENT", "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_HEADER_BYTES_SENT", "DOWNSTREAM_HEADER_BYTES_RECEIVED", "DYNAMIC_METADATA",
    "CLUSTER_METADATA", "UPSTREAM_METADATA", "FILTER_STATE", "UPSTREAM_FILTER_STATE",
    "VIRTUAL_CLUSTER_NAME", "DOWNSTREAM_PEER_URI_SAN", "DOWNSTREAM_LOCAL_URI_SAN",
    "DOWNSTREAM_PEER_SUBJECT", "DOWNSTREAM_LOCAL_SUBJECT", "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TLS_CIPHER", "DOWNSTREAM_TLS_SESSION_ID", "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_CERT", "DOWNSTREAM_TRANSPORT_FAILURE_REASON", "UPSTREAM_PEER_URI_SAN",
    "LOCAL_REPLY_BODY", "ACCESS_LOG_TYPE", "STREAM_ID", "UNIQUE_ID", "TRACE_ID",
}  # fmt: skip


def operator_field(name: str, arg: str | None, max_len: int | None) -> Field:
    """The compiled Field of `%NAME(arg):max_len%`; BootstrapError names what is refused."""
    spelled = f"%{name}{'' if arg is None else f'({arg})'}"
    spelled += f"{'' if max_len is None else f':{max_len}'}%"
    if name in _HEADER_OPERATORS:
        if not arg:
            raise BootstrapError(
                f"access log format: {spelled}: needs a header name, as %{name}(X)%"
            )
        if name in ("REQ", "REQUEST_HEADER", "REQ_WITHOUT_QUERY"):
            return request_header(spelled, arg, max_len, name == "REQ_WITHOUT_QUERY")
        short = "RESP" if name in ("RESP", "RESPONSE_HEADER") else "TRAILER"
        return response_value(spelled, short, arg, max_len)
    fixed = _FIXED.get(name)
    with_argument = _WITH_ARGUMENT.get(name)
    if fixed is None and with_argument is None:
        if name in UNAVAILABLE:
            raise BootstrapError(
                f"access log format: {spelled}: Envoy's operator {name} has no data in this proxy"
            )
        raise BootstrapError(f"access log format: {spelled}: unknown command operator {name}")
    if max_len is not None:
        raise BootstrapError(f"access log format: {spelled}: {name} takes no :length")
    if with_argument is not None:
        return with_argument(arg)
    if arg is not None:
        raise BootstrapError(f"access log format: {spelled}: {name} takes no (argument)")
    assert fixed is not None
    return fixed()
