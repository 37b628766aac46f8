"""The values an access log operator prints, as text and as typed JSON.

Theory of operation: a `Field` is one compiled operator: a getter for format strings (Envoy's
`-` when the value is unset or empty) and one for format dictionaries (a JSON literal: numbers
as numbers, strings quoted by the json module's C helper, unset as null). The builders here wrap
a StreamInfo attribute or a getter in that pair once, at compile time; a plain attribute is also
marked (`attr`) so the compiler can fetch all of them with one C call per line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from operator import attrgetter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.runtime import StreamInfo

Getter = Callable[["StreamInfo"], object]  # str or int; the compiler's template applies str()
quote: Callable[[str], str] = encode_basestring_ascii  # C: '"' + escaped ASCII + '"'


@dataclass(frozen=True, slots=True)
class Field:
    """One compiled operator: its text and JSON getters, or a constant value."""

    text: Getter
    json: Getter
    constant: str | None = None  # the text value when it is the same for every request
    # A plain StreamInfo attribute the compiler may fetch with the others in one C call:
    # a string (unset "-" or empty: text "-", JSON null) or an int that is always set.
    attr: str | None = None
    number: bool = False


def is_unset(value: str) -> bool:
    return not value or value == "-"


def json_string(value: str) -> str:
    """A JSON string literal, or null for an unset value ("-" or empty)."""
    return "null" if is_unset(value) else quote(value)


def string_field(get: Callable[[StreamInfo], str], max_len: int | None = None) -> Field:
    """A string value: `-` / null when unset, truncated to `max_len` characters if given."""
    if max_len is None:

        def text(i: StreamInfo) -> str:
            return get(i) or "-"

        def json(i: StreamInfo) -> str:
            return json_string(get(i))

        return Field(text, json)

    def text_cut(i: StreamInfo) -> str:
        v = get(i)
        return "-" if is_unset(v) else v[:max_len]

    def json_cut(i: StreamInfo) -> str:
        v = get(i)
        return "null" if is_unset(v) else quote(v[:max_len])

    return Field(text_cut, json_cut)


def attr_field(name: str) -> Field:
    field = string_field(attrgetter(name))
    return Field(field.text, field.json, attr=name)


def always_string_field(name: str) -> Field:
    """A string Envoy renders as "-" even in typed JSON (PROTOCOL, RESPONSE_FLAGS)."""
    get: Callable[[StreamInfo], str] = attrgetter(name)
    return Field(get, lambda i: quote(get(i) or "-"))


def number_field(name: str) -> Field:
    """An int that is always set (bytes, response code, duration): a JSON number."""
    get: Getter = attrgetter(name)
    return Field(get, get, attr=name, number=True)


def optional_number_field(
    get: Callable[[StreamInfo], int | None], as_string: bool = False
) -> Field:
    """An int that may be unset (None); a JSON number, or a string when it is a header value."""

    def text(i: StreamInfo) -> object:
        v = get(i)
        return "-" if v is None else v

    def json(i: StreamInfo) -> object:
        v = get(i)
        if v is None:
            return "null"
        return quote(str(v)) if as_string else v

    return Field(text, json)


def constant_field(value: str) -> Field:
    text, literal = value or "-", json_string(value)
    return Field(lambda i: text, lambda i: literal, constant=text)
