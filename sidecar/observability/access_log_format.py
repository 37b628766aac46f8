"""Access log formats: Envoy format strings and format dictionaries, compiled once at start.

Theory of operation: `compile_format(spec)` turns `text` (Istio's default), `json` (Istio's keys),
`envoy` (Envoy's default), any Envoy format string with %COMMAND% operators, or a JSON object
mapping keys to format strings (Envoy's json_format) into a `CompiledFormat`: one `%`-template
holding every literal piece (with a `%s` slot per operator) and the tuple of getters that fill the
slots (access_log_operators.py). Per request `format()` runs the getters and applies the template,
both loops in C: no parsing, no regex, no per-field string concatenation. A format dictionary's
keys and constant values are literal text of the same template; a value that is one operator
takes the operator's typed JSON getter (numbers, strings, null), a value mixing text and
operators is a nested format string rendered and quoted. Anything wrong in a format is a
BootstrapError that names the operator, so a bad flag stops the proxy at start.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from itertools import repeat
from operator import attrgetter, call, itemgetter
from typing import TYPE_CHECKING, Any

from sidecar.errors import BootstrapError
from sidecar.observability.access_log_fields import Field, Getter, json_string
from sidecar.observability.access_log_fields import quote as quote_json
from sidecar.observability.access_log_operators import operator_field

if TYPE_CHECKING:
    from sidecar.runtime import StreamInfo

# Istio's default text format (meshConfig.accessLogEncoding TEXT without accessLogFormat).
ISTIO_TEXT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)
# Envoy's default format string (no access_log format configured).
ENVOY_TEXT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)
# Istio's JSON keys (meshConfig.accessLogEncoding JSON), in Istio's order.
ISTIO_JSON: dict[str, str] = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
}

# %NAME%, %NAME(ARG)%, %NAME(ARG):LENGTH%; used at compile time only.
_COMMAND = re.compile(r"%([A-Z][A-Z0-9_]*)(?:\(([^)]*)\))?(?::([0-9]+))?%")
# A piece of a parsed format string: literal text, or an operator.
Piece = str | Field


_NULLS = {'"-"': "null", '""': "null"}  # a quoted unset string -> JSON null


def _fetch(names: list[str]) -> Callable[[StreamInfo], tuple[Any, ...]]:
    """One call returning the named attributes as a tuple (attrgetter: a C loop)."""
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        one = attrgetter(names[0])
        return lambda info: (one(info),)
    return lambda info: ()


def _pick(order: list[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """Reorders a tuple in one C call (itemgetter); the identity when already in order."""
    if order == sorted(order) and order == list(range(len(order))):
        return lambda values: values
    if len(order) == 1:
        one = order[0]
        return lambda values: (values[one],)
    return itemgetter(*order)


class CompiledFormat:
    """A format ready to run: a `%`-template and what fills its slots.

    Slots come in three groups, each fetched in bulk: plain string attributes (one attrgetter
    call; `-` for empty in text, null for unset in JSON, the rest quoted by the json module's C
    helper), plain int attributes (one attrgetter call), and the computed operators' getters (one
    Python call each). One itemgetter call puts the values in the template's order.
    """

    __slots__ = ("_computed", "_numbers", "_order", "_strings", "_template", "format", "source")

    def __init__(self, pieces: list[Piece], as_json: bool, source: str) -> None:
        strings: list[str] = []
        numbers: list[str] = []
        computed: list[Getter] = []
        slots: list[tuple[int, int]] = []  # (group, index in group), in template order
        parts: list[str] = []
        for piece in pieces:
            if isinstance(piece, str):
                parts.append(piece.replace("%", "%%"))
                continue
            parts.append("%s")
            if piece.attr is None:
                slots.append((2, len(computed)))
                computed.append(piece.json if as_json else piece.text)
            elif piece.number:
                slots.append((1, len(numbers)))
                numbers.append(piece.attr)
            else:
                slots.append((0, len(strings)))
                strings.append(piece.attr)
        offsets = (0, len(strings), len(strings) + len(numbers))
        self._order = _pick([offsets[group] + index for group, index in slots])
        self._template = "".join(parts)
        self._strings = _fetch(strings)
        self._numbers = _fetch(numbers)
        self._computed = tuple(computed)
        self.format: Callable[[StreamInfo], str] = self._json if as_json else self._text
        self.source = source

    def _text(self, info: StreamInfo) -> str:
        strings = self._strings(info)
        if "" in strings:
            strings = tuple([v or "-" for v in strings])
        return self._template % self._order(
            strings + self._numbers(info) + tuple(map(call, self._computed, repeat(info)))
        )

    def _json(self, info: StreamInfo) -> str:
        quoted = tuple(map(quote_json, self._strings(info)))
        return self._template % self._order(
            tuple(map(_NULLS.get, quoted, quoted))
            + self._numbers(info)
            + tuple(map(call, self._computed, repeat(info)))
        )


def parse_format_string(fmt: str) -> list[Piece]:
    """Split an Envoy format string into literal text and compiled operators (`%%` is `%`)."""
    pieces: list[Piece] = []
    literal: list[str] = []
    pos = 0
    while pos < len(fmt):
        at = fmt.find("%", pos)
        if at < 0:
            literal.append(fmt[pos:])
            break
        literal.append(fmt[pos:at])
        if fmt.startswith("%%", at):
            literal.append("%")
            pos = at + 2
            continue
        m = _COMMAND.match(fmt, at)
        if m is None:
            raise BootstrapError(
                f"access log format: no command operator at position {at}: "
                f"{fmt[at:at + 24]!r} (an operator is %NAME%, %NAME(ARG)% or %NAME(ARG):LENGTH%; "
                "a literal % is %%)"
            )
        field = operator_field(m[1], m[2], None if m[3] is None else int(m[3]))
        if field.constant is not None:
            literal.append(field.constant)
        else:
            pieces.append("".join(literal))
            literal.clear()
            pieces.append(field)
        pos = m.end()
    pieces.append("".join(literal))
    return [p for p in pieces if p != ""]


def compile_text(fmt: str) -> CompiledFormat:
    """An Envoy format string; a line gets its newline if the format has none (as Istio)."""
    if not fmt.endswith("\n"):
        fmt += "\n"
    return CompiledFormat(parse_format_string(fmt), as_json=False, source=fmt)


def _json_value(key: str, value: Any) -> list[Piece]:
    """The JSON text of one dictionary value, as literal pieces and typed getters."""
    if isinstance(value, Mapping):
        return _json_object(value)
    if not isinstance(value, str):
        if isinstance(value, list):
            raise BootstrapError(f"access log format: key {key!r}: lists are not supported")
        return [json.dumps(value)]  # a literal number, boolean or null
    pieces = parse_format_string(value)
    if not pieces:
        return ['""']
    if len(pieces) == 1:
        (only,) = pieces
        if isinstance(only, str):  # no operator (or only constant ones)
            constant_operator = _COMMAND.fullmatch(value) is not None  # e.g. %HOSTNAME%
            return [json_string(only) if constant_operator else quote_json(only)]
        return [only]  # one operator alone: its typed JSON value
    nested = CompiledFormat(pieces, as_json=False, source=value)

    def mixed(i: StreamInfo) -> str:
        return quote_json(nested.format(i))

    return [Field(mixed, mixed)]


def _json_object(obj: Mapping[Any, Any]) -> list[Piece]:
    pieces: list[Piece] = ["{"]
    for n, (key, value) in enumerate(obj.items()):
        if not isinstance(key, str):
            raise BootstrapError(f"access log format: JSON key {key!r} is not a string")
        pieces.append(("," if n else "") + quote_json(key) + ":")
        pieces.extend(_json_value(key, value))
    pieces.append("}")
    return pieces


def compile_json(obj: Mapping[Any, Any]) -> CompiledFormat:
    """A format dictionary (Envoy's json_format): one JSON object per line, typed values."""
    return CompiledFormat([*_json_object(obj), "\n"], as_json=True, source=json.dumps(obj))


def compile_format(spec: str) -> CompiledFormat:
    """The access log format a flag names or spells out; BootstrapError if it is not one."""
    name = spec.strip()
    if name == "text":
        return compile_text(ISTIO_TEXT)
    if name == "json":
        return compile_json(ISTIO_JSON)
    if name == "envoy":
        return compile_text(ENVOY_TEXT)
    if name.startswith("{"):
        try:
            obj = json.loads(name)
        except ValueError as exc:
            raise BootstrapError(f"access log format: not a JSON object: {exc}") from None
        if not isinstance(obj, dict):
            raise BootstrapError("access log format: a JSON format must be an object")
        return compile_json(obj)
    if "%" in spec:
        return compile_text(spec)
    raise BootstrapError(
        f"access_log_format: {spec!r} is not a format: text or json (Istio's), envoy (Envoy's "
        "default), an Envoy format string with %COMMAND% operators, or a JSON object of them"
    )


def check_format(spec: str) -> None:
    """Refuse a bad access log format at start (bootstrap's check)."""
    compile_format(spec)
