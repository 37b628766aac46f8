"""Check Zipkin v2 JSON (spans, traces) against the definitions of `shared/specs/zipkin2-api.yaml`.

Theory of operation: the spec file is read with PyYAML and its `definitions` are interpreted as
the JSON-schema subset Swagger 2.0 uses: `$ref`, `type`, `required`, `properties`,
`additionalProperties`, `items`, `enum`, `pattern` (matched against the whole string),
`minLength`/`maxLength`, `format` (int32, int64, ipv4, ipv6), `minimum`/`maximum`, `uniqueItems`.
A keyword this module does not know is reported as an error rather than skipped, so a spec that
grows a constraint cannot pass unnoticed. Nothing about spans is hard-coded except three rules the
spec states only in prose; each applies only while its property's description still says it:
a traceId is 16 or 32 characters ("16 or 32 lowercase hex"), a port is not zero ("don't set to
zero"), and an epoch-microseconds timestamp lies between 2000 and 2100 (which catches
milliseconds and nanoseconds). Unlike Zipkin's lenient reader, properties the definitions do not
name are errors by default (`allow_unknown=False`): for checking what our proxy sends, a
misspelled field should fail.

Use: `errors(value, "ListOfSpans")` gives a list of "path: problem" strings (empty: valid);
`assert_valid(value, "ListOfSpans")` raises AssertionError listing them.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

SPEC_PATH = Path(
    os.environ.get("ZIPKIN_SPEC")
    or Path(__file__).resolve().parents[3] / "shared" / "specs" / "zipkin2-api.yaml"
)
_ANNOTATIONS = frozenset({"description", "title", "example", "default"})
_KEYWORDS = frozenset({
    "$ref", "type", "required", "properties", "additionalProperties", "items", "enum",
    "pattern", "minLength", "maxLength", "format", "minimum", "maximum", "uniqueItems",
}) | _ANNOTATIONS
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_EPOCH_US = (946_684_800_000_000, 4_102_444_800_000_000)  # 2000-01-01 .. 2100-01-01 UTC


def _trace_id_length(value: Any) -> str | None:
    ok = not isinstance(value, str) or len(value) in (16, 32)
    return None if ok else f"must be 16 or 32 characters, got {len(value)}"


def _not_zero(value: Any) -> str | None:
    return "must not be zero" if value == 0 and not isinstance(value, bool) else None


def _epoch_micros(value: Any) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    low, high = _EPOCH_US
    return None if low <= value < high else f"{value} is not epoch microseconds (2000..2100)"


# (definition, property, phrase its description must contain, check)
_PROSE_RULES: tuple[tuple[str, str, str, Callable[[Any], str | None]], ...] = (
    ("Span", "traceId", "16 or 32 lowercase hex", _trace_id_length),
    ("Endpoint", "port", "don't set to zero", _not_zero),
    ("Span", "timestamp", "epoch microseconds", _epoch_micros),
    ("Annotation", "timestamp", "epoch **microseconds**", _epoch_micros),
)


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    python = {"object": dict, "array": list, "string": str, "boolean": bool}.get(kind)
    if python is None:
        raise ValueError(f"schema type {kind!r} is not understood")
    return isinstance(value, python)


class ZipkinSchema:
    """The spec's definitions, ready to check values against any one of them."""

    def __init__(self, spec: Mapping[str, Any], allow_unknown: bool = False) -> None:
        self.definitions: Mapping[str, Any] = spec["definitions"]
        self.allow_unknown = allow_unknown
        self._prose: dict[tuple[str, str], Callable[[Any], str | None]] = {}
        for definition, prop, phrase, check in _PROSE_RULES:
            described = self.definitions[definition]["properties"][prop].get("description", "")
            if phrase.lower() in " ".join(described.split()).lower():
                self._prose[(definition, prop)] = check

    @classmethod
    def load(cls, path: Path = SPEC_PATH, allow_unknown: bool = False) -> ZipkinSchema:
        return cls(yaml.safe_load(path.read_text()), allow_unknown)

    def errors(self, value: Any, definition: str = "ListOfSpans") -> list[str]:
        """Every problem of `value` as the named definition, as "path: problem" strings."""
        found: list[str] = []
        self._walk({"$ref": f"#/definitions/{definition}"}, value, "$", found, None)
        return found

    def assert_valid(self, value: Any, definition: str = "ListOfSpans") -> None:
        problems = self.errors(value, definition)
        if problems:
            raise AssertionError(
                f"not a valid Zipkin v2 {definition}:\n  " + "\n  ".join(problems)
            )

    def _walk(
        self, schema: Mapping[str, Any], value: Any, path: str, out: list[str], owner: str | None
    ) -> None:
        unknown = set(schema) - _KEYWORDS
        if unknown:
            out.append(f"{path}: schema keyword(s) {sorted(unknown)} not understood")
            return
        if "$ref" in schema:
            name = schema["$ref"].removeprefix("#/definitions/")
            self._walk(self.definitions[name], value, path, out, name)
            return
        kind = schema.get("type")
        if kind is not None and not _type_ok(kind, value):
            out.append(f"{path}: must be {kind}, got {json.dumps(value)[:60]}")
            return
        if "enum" in schema and value not in schema["enum"]:
            out.append(f"{path}: must be one of {schema['enum']}, got {value!r}")
        if isinstance(value, str):
            self._string(schema, value, path, out)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self._number(schema, value, path, out)
        elif isinstance(value, list):
            self._array(schema, value, path, out)
        elif isinstance(value, dict):
            self._object(schema, value, path, out, owner)

    def _string(self, schema: Mapping[str, Any], value: str, path: str, out: list[str]) -> None:
        if "minLength" in schema and len(value) < schema["minLength"]:
            out.append(f"{path}: shorter than {schema['minLength']} characters: {value!r}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            out.append(f"{path}: longer than {schema['maxLength']} characters: {value!r}")
        if "pattern" in schema and re.fullmatch(schema["pattern"], value) is None:
            out.append(f"{path}: does not match {schema['pattern']}: {value!r}")
        fmt = schema.get("format")
        if fmt in ("ipv4", "ipv6"):
            try:
                ok = ipaddress.ip_address(value).version == int(fmt[-1])
            except ValueError:
                ok = False
            if not ok:
                out.append(f"{path}: not an {fmt} address: {value!r}")
        elif fmt is not None:
            out.append(f"{path}: string format {fmt!r} not understood")

    def _number(self, schema: Mapping[str, Any], value: float, path: str, out: list[str]) -> None:
        fmt = schema.get("format")
        if fmt is not None:
            if fmt not in _INT_RANGES:
                out.append(f"{path}: number format {fmt!r} not understood")
            elif not _INT_RANGES[fmt][0] <= value <= _INT_RANGES[fmt][1]:
                out.append(f"{path}: {value} out of {fmt} range")
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{path}: {value} is less than the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{path}: {value} is more than the maximum {schema['maximum']}")

    def _array(self, schema: Mapping[str, Any], value: list[Any], path: str,
               out: list[str]) -> None:
        items = schema.get("items")
        if items is not None:
            for i, item in enumerate(value):
                self._walk(items, item, f"{path}[{i}]", out, None)
        if schema.get("uniqueItems"):
            keys = [json.dumps(item, sort_keys=True) for item in value]
            if len(set(keys)) != len(keys):
                out.append(f"{path}: items must be unique")

    def _object(self, schema: Mapping[str, Any], value: dict[str, Any], path: str,
                out: list[str], owner: str | None) -> None:
        for name in schema.get("required", ()):
            if name not in value:
                out.append(f"{path}: required property {name!r} is missing")
        props: Mapping[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            where = f"{path}.{key}"
            if key in props:
                self._walk(props[key], item, where, out, None)
                rule = self._prose.get((owner or "", key))
                problem = rule(item) if rule is not None else None
                if problem:
                    out.append(f"{where}: {problem}")
            elif isinstance(extra, dict):
                self._walk(extra, item, where, out, None)
            elif extra is False or (extra is None and not self.allow_unknown):
                out.append(f"{where}: not a property of {owner or 'this object'}")


@functools.cache
def schema() -> ZipkinSchema:
    """The strict schema of the project's spec file, read once."""
    return ZipkinSchema.load()


def errors(value: Any, definition: str = "ListOfSpans") -> list[str]:
    """Problems of `value` as the named definition of the spec (empty: valid)."""
    return schema().errors(value, definition)


def assert_valid(value: Any, definition: str = "ListOfSpans") -> None:
    """Raise AssertionError listing every problem of `value` as the named definition."""
    schema().assert_valid(value, definition)
