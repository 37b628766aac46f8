"""Header operators (%REQ(X?Y):Z%, %RESP(X)%, %TRAILER(X)%) and %GRPC_STATUS(STYLE)%.

Theory of operation: a StreamInfo keeps a few request headers as attributes (method, path,
authority, user agent, x-forwarded-for, x-request-id) and three response values (the upstream
service time, the status, grpc-status); a header operator is compiled to a getter of those, with
its fallback header and truncation, or refused at start naming the header that is not kept.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING

from sidecar.errors import BootstrapError
from sidecar.observability.access_log_fields import (
    Field,
    attr_field,
    is_unset,
    optional_number_field,
    string_field,
)

if TYPE_CHECKING:
    from sidecar.runtime import StreamInfo

# The request headers a StreamInfo keeps, by lower-case name.
REQUEST_HEADERS = {
    ":method": "method", ":path": "path", ":authority": "authority", "host": "authority",
    "user-agent": "user_agent", "x-forwarded-for": "forwarded_for",
    "x-request-id": "request_id",
}  # fmt: skip
_ORIGINAL_PATH = "x-envoy-original-path"


def _request_attr(header: str, spelled: str) -> str:
    attr = REQUEST_HEADERS.get(header)
    if attr is None:
        kept = ", ".join(sorted({*REQUEST_HEADERS, f"{_ORIGINAL_PATH}?:path"}))
        raise BootstrapError(
            f"access log format: {spelled}: request header {header!r} is not kept by this "
            f"proxy (available: {kept})"
        )
    return attr


def request_header(
    spelled: str, arg: str, max_len: int | None, without_query: bool = False
) -> Field:
    main, _, alt = arg.lower().partition("?")
    if main == _ORIGINAL_PATH and alt == ":path":
        main, alt = ":path", ""  # the StreamInfo's path is the one received, before rewrites
    attr = _request_attr(main, spelled)
    if not alt and not without_query and max_len is None:
        return attr_field(attr)
    first: Callable[[StreamInfo], str] = attrgetter(attr)
    get = first
    if alt:
        second: Callable[[StreamInfo], str] = attrgetter(_request_attr(alt, spelled))

        def get(i: StreamInfo) -> str:
            v = first(i)
            return second(i) if is_unset(v) else v

    if without_query:
        whole = get

        def get(i: StreamInfo) -> str:
            return whole(i).partition("?")[0]

    return string_field(get, max_len)


def response_value(operator: str, arg: str) -> Field:
    """RESP(X) and TRAILER(X): the proxy keeps only a few response values."""
    name = arg.lower()
    if operator == "RESP" and name == "x-envoy-upstream-service-time":
        return optional_number_field(attrgetter("upstream_service_time_ms"), as_string=True)
    if operator == "RESP" and name == ":status":
        return optional_number_field(lambda i: i.response_code or None, as_string=True)
    if name == "grpc-status":
        return optional_number_field(attrgetter("grpc_status"), as_string=True)
    available = "x-envoy-upstream-service-time, :status, grpc-status"
    where = "response header"
    if operator == "TRAILER":
        available, where = "grpc-status", "response trailer"
    raise BootstrapError(
        f"access log format: %{operator}({arg})%: {where} {name!r} is not kept by this proxy "
        f"(available: {available})"
    )


_GRPC_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip


def grpc_status(arg: str | None) -> Field:
    style = (arg or "CAMEL_STRING").upper()
    if style == "NUMBER":
        return optional_number_field(attrgetter("grpc_status"))
    if style not in ("CAMEL_STRING", "SNAKE_STRING"):
        raise BootstrapError(
            f"access log format: %GRPC_STATUS({arg})%: expected CAMEL_STRING, SNAKE_STRING or "
            "NUMBER"
        )
    names: tuple[str, ...] = _GRPC_NAMES
    if style == "CAMEL_STRING":
        names = tuple("".join(w.capitalize() for w in n.split("_")) for n in _GRPC_NAMES)
    # Envoy prints the OK name as "OK" in both string styles.
    names = ("OK", *names[1:])

    def get(i: StreamInfo) -> str:
        code = i.grpc_status
        if code is None:
            return "-"
        return names[code] if 0 <= code < len(names) else str(code)

    return string_field(get)
