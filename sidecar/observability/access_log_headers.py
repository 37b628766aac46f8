"""Header operators (%REQ(X?Y):Z%, %RESP(X)%, %TRAILER(X)%) and %GRPC_STATUS(STYLE)%.

Theory of operation: a StreamInfo keeps a few request headers as attributes (method, path,
authority, user agent, x-forwarded-for, x-request-id) and three response values (the upstream
service time, the status, grpc-status); an operator on one of those compiles to a getter of the
attribute. Any other header is looked up by name when a line is written, in the request head,
response head or trailers the StreamInfo refers to (as they went: the request with this proxy's
edits, the response as received from upstream), repeated headers joined by ",", the headers
a codec lifted out of the list (x-request-id, content-length, ...) included; `-` when absent (a
local reply has no response head, a TCP connection neither). A pseudo-header other than
:method, :path, :authority and :scheme is refused at start.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, NoReturn

from sidecar.errors import BootstrapError
from sidecar.http.stream import find_header
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
_DECODE = "latin-1"


def _refuse_pseudo(spelled: str, where: str, name: str, available: str) -> NoReturn:
    raise BootstrapError(
        f"access log format: {spelled}: {where} pseudo-header {name!r} is not known "
        f"(available: {available})"
    )


def _or_else(
    first: Callable[[StreamInfo], str], second: Callable[[StreamInfo], str]
) -> Callable[[StreamInfo], str]:
    """`%X?Y%`: the first header's value, else the second's."""

    def get(i: StreamInfo) -> str:
        v = first(i)
        return second(i) if is_unset(v) else v

    return get


def _request_getter(header: str, spelled: str) -> Callable[[StreamInfo], str]:
    """The value of request header `header` (lower case) of a StreamInfo, "-" when absent."""
    attr = REQUEST_HEADERS.get(header)
    if attr is not None:
        return attrgetter(attr)
    if header.startswith(":") and header != ":scheme":
        _refuse_pseudo(spelled, "request", header, ":authority, :method, :path, :scheme")
    name = header.encode(_DECODE)

    def get(i: StreamInfo) -> str:
        head = i.request_head
        value = head.header(name) if head is not None else None
        return value.decode(_DECODE) if value else "-"

    return get


def request_header(
    spelled: str, arg: str, max_len: int | None, without_query: bool = False
) -> Field:
    main, _, alt = arg.lower().partition("?")
    if main == _ORIGINAL_PATH and alt == ":path":
        main, alt = ":path", ""  # the StreamInfo's path is the one received, before rewrites
    if main in REQUEST_HEADERS and not alt and not without_query and max_len is None:
        return attr_field(REQUEST_HEADERS[main])
    get = _request_getter(main, spelled)
    if alt:
        get = _or_else(get, _request_getter(alt, spelled))
    if without_query:
        whole = get

        def get(i: StreamInfo) -> str:
            return whole(i).partition("?")[0]

    return string_field(get, max_len)


def response_value(spelled: str, operator: str, arg: str, max_len: int | None) -> Field:
    """RESP(X?Y):Z and TRAILER(X?Y):Z: a value the StreamInfo keeps (a JSON string of a
    number), else the header as received."""
    main, _, alt = arg.lower().partition("?")
    if not alt and max_len is None:
        kept = _kept_response_value(operator, main)
        if kept is not None:
            return optional_number_field(kept, as_string=True)
    get = _response_getter(spelled, operator, main)
    if alt:
        get = _or_else(get, _response_getter(spelled, operator, alt))
    return string_field(get, max_len)


def _kept_response_value(operator: str, name: str) -> Callable[[StreamInfo], int | None] | None:
    if operator == "RESP" and name == "x-envoy-upstream-service-time":
        return attrgetter("upstream_service_time_ms")
    if operator == "RESP" and name == ":status":
        return lambda i: i.response_code or None
    if name == "grpc-status":  # a header of trailers-only replies, else a trailer
        return attrgetter("grpc_status")
    return None


def _response_getter(spelled: str, operator: str, name: str) -> Callable[[StreamInfo], str]:
    """The value of response header (or trailer) `name` of a StreamInfo, "-" when absent."""
    kept = _kept_response_value(operator, name)
    if kept is not None:
        number = kept

        def get_kept(i: StreamInfo) -> str:
            v = number(i)
            return "-" if v is None else str(v)

        return get_kept
    if name.startswith(":"):
        _refuse_pseudo(spelled, "response", name, ":status")
    lname = name.encode(_DECODE)

    def from_trailers(i: StreamInfo) -> str:
        trailers = i.response_trailers
        value = find_header(trailers, lname) if trailers is not None else None
        return value.decode(_DECODE) if value else "-"

    def from_head(i: StreamInfo) -> str:
        head = i.response_head
        value = head.header(lname) if head is not None else None
        return value.decode(_DECODE) if value else "-"

    return from_trailers if operator == "TRAILER" else from_head


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
