"""The Zipkin v2 span validator (tests/integration/zipkin_schema.py) against valid and broken spans,
and the collector's own span check agreeing with it wherever the spec is explicit."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.observability.trace_store import check_span
from tests.integration.zipkin_schema import SPEC_PATH, ZipkinSchema, assert_valid, errors, schema

TS = 1_700_000_000_000_000  # epoch microseconds, 2023


def full_span() -> dict[str, Any]:
    return {
        "traceId": "4e441824ec2b6a44ffdc9bb9a6453df3",
        "id": "ffdc9bb9a6453df3",
        "parentId": "6b221d5bc9e6496c",
        "name": "reviews.default.svc.cluster.local:9080/*",
        "kind": "CLIENT",
        "timestamp": TS,
        "duration": 1431,
        "debug": False,
        "shared": False,
        "localEndpoint": {"serviceName": "productpage.default", "ipv4": "10.0.0.1", "port": 9080},
        "remoteEndpoint": {"ipv6": "2001:db8::c001", "port": 15006},
        "annotations": [
            {"timestamp": TS + 10, "value": "ws"},
            {"timestamp": TS + 20, "value": "wr"},
        ],
        "tags": {"http.status_code": "200", "component": "proxy"},
    }


def test_the_specs_own_example_is_valid() -> None:
    example = schema().definitions["Span"]["example"]
    assert errors(example, "Span") == []
    assert errors([example, full_span()]) == []
    assert_valid([[example], [full_span()]], "ListOfTraces")


def test_minimal_span_is_valid() -> None:
    assert errors([{"traceId": "5af7183fb1d4cf5f", "id": "352bff9a74ca9ad2"}]) == []


def _set(path: str, value: Any) -> dict[str, Any]:
    span = full_span()
    *parents, last = path.split(".")
    target: Any = span
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return span


_DELETE = object()

# (field path, bad value, what the error says, the collector also refuses it)
BROKEN: list[tuple[str, Any, str, bool]] = [
    ("id", _DELETE, "required property 'id'", True),
    ("traceId", _DELETE, "required property 'traceId'", True),
    ("traceId", "4e441824ec2b6a44ffdc", "16 or 32 characters", True),
    ("traceId", "4E441824EC2B6A44", "does not match", True),
    ("traceId", "4e441824ec2b6a44ffdc9bb9a6453df3a", "longer than 32", True),
    ("traceId", 1234567890123456, "must be string", True),
    ("id", "ffdc9bb9a6453df", "shorter than 16", True),
    ("parentId", "6b221d5bc9e6496g", "does not match", True),
    ("kind", "client", "must be one of", True),
    ("kind", "LOCAL", "must be one of", True),
    ("timestamp", 1.5e15, "must be integer", True),
    ("timestamp", str(TS), "must be integer", True),
    ("timestamp", True, "must be integer", True),
    ("timestamp", TS // 1000, "not epoch microseconds", False),
    ("timestamp", TS * 1000, "not epoch microseconds", False),
    ("duration", 0, "less than the minimum 1", True),
    ("duration", 2**63, "out of int64 range", True),
    ("debug", "true", "must be boolean", True),
    ("shared", 1, "must be boolean", True),
    ("name", 7, "must be string", True),
    ("tags.http.status_code", 200, "must be string", True),
    ("tags", ["a"], "must be object", True),
    ("localEndpoint.port", 0, "must not be zero", False),
    ("localEndpoint.port", "9080", "must be integer", True),
    ("localEndpoint.ipv4", "300.1.1.1", "not an ipv4 address", True),
    ("remoteEndpoint.ipv6", "10.0.0.1", "not an ipv6 address", True),
    ("localEndpoint.serviceName", None, "must be string", False),
    ("localEndpoint", "productpage", "must be object", True),
    ("annotations", [{"timestamp": TS, "value": "ws"}] * 2, "items must be unique", False),
    ("annotations", [{"timestamp": TS}], "required property 'value'", True),
    ("annotations", [{"timestamp": TS, "value": 3}], "must be string", True),
    ("annotations", {"ws": TS}, "must be array", True),
    ("traceID", "5af7183fb1d4cf5f", "not a property of Span", False),
]


@pytest.mark.parametrize(("field", "value", "message", "collector_refuses"), BROKEN,
                         ids=[f"{b[0]}={b[1]!r}"[:50] for b in BROKEN])
def test_broken_span_is_reported(
    field: str, value: Any, message: str, collector_refuses: bool
) -> None:
    if field.startswith("tags."):
        span = full_span()
        span["tags"][field.removeprefix("tags.")] = value
    else:
        span = _set(field, value)
    found = errors([span])
    assert any(message in e for e in found), found
    assert all(e.startswith("$[0]") for e in found)
    with pytest.raises(AssertionError, match="not a valid Zipkin v2 ListOfSpans"):
        assert_valid([span])
    _, collector_error = check_span(span)
    assert (collector_error is not None) == collector_refuses, collector_error


def test_every_problem_is_listed_with_its_path() -> None:
    span = full_span()
    span["id"] = "XYZ"
    span["tags"]["n"] = 1
    found = errors([full_span(), span])
    assert any(e.startswith("$[1].id: shorter than 16") for e in found), found
    assert any(e.startswith("$[1].id: does not match") for e in found), found
    assert any(e.startswith("$[1].tags.n: must be string") for e in found), found


def test_payload_must_be_a_list_of_objects() -> None:
    assert errors({"traceId": "5af7183fb1d4cf5f", "id": "352bff9a74ca9ad2"})[0].startswith(
        "$: must be array"
    )
    assert errors(["span"]) == ['$[0]: must be object, got "span"']


def test_unknown_properties_allowed_when_asked() -> None:
    lenient = ZipkinSchema.load(allow_unknown=True)
    assert lenient.errors([{**full_span(), "extra": 1}]) == []


def _edited_spec(tmp_path: Path, edit: Any) -> ZipkinSchema:
    spec = yaml.safe_load(SPEC_PATH.read_text())
    edit(spec["definitions"])
    path = tmp_path / "zipkin.yaml"
    path.write_text(yaml.safe_dump(spec))
    return ZipkinSchema.load(path)


def test_follows_the_spec_file(tmp_path: Path) -> None:
    def edit(defs: dict[str, Any]) -> None:
        defs["Span"]["properties"]["kind"]["enum"].append("LOCAL")
        defs["Span"]["properties"]["traceId"]["description"] = "any length"
        defs["Span"]["required"].append("name")

    edited = _edited_spec(tmp_path, edit)
    span = _set("kind", "LOCAL")
    span["traceId"] = "4e441824ec2b6a44ffdc"
    assert edited.errors([span]) == []
    assert errors([span]) != []
    nameless = copy.deepcopy(span)
    del nameless["name"]
    assert edited.errors([nameless]) == ["$[0]: required property 'name' is missing"]


def test_a_keyword_it_does_not_know_is_an_error(tmp_path: Path) -> None:
    def edit(defs: dict[str, Any]) -> None:
        defs["Span"]["properties"]["duration"]["multipleOf"] = 10

    edited = _edited_spec(tmp_path, edit)
    found = edited.errors([full_span()])
    assert found == ["$[0].duration: schema keyword(s) ['multipleOf'] not understood"]
