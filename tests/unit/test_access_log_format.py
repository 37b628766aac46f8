"""The access log format compiler: Envoy format strings and format dictionaries, operators,
typed JSON, and formats refused at start with the operator named."""

from __future__ import annotations

import json
import socket

import pytest

from sidecar.bootstrap import build
from sidecar.errors import BootstrapError
from sidecar.http.stream import RequestHead, ResponseHead
from sidecar.observability.access_log_format import (
    ISTIO_JSON,
    ISTIO_TEXT,
    compile_format,
    compile_json,
    compile_text,
)
from sidecar.observability.access_log_istio import IstioFormatter
from sidecar.observability.access_log_time import StartTime
from sidecar.outcome import ResponseFlag
from sidecar.runtime import StreamInfo

from .test_access_log import START, http_info, tcp_info


def one(fmt: str, info: StreamInfo) -> str:
    """A format string's line without its newline."""
    return compile_text(fmt).format(info).removesuffix("\n")


def odd_infos() -> list[StreamInfo]:
    """StreamInfos that exercise every branch of the built-in formats."""
    plain, tcp = http_info(), tcp_info()
    empty = http_info()
    empty.user_agent = ""  # an empty header prints "-" (text) / null (JSON)
    empty.forwarded_for = "10.0.0.1, 10.0.0.2"
    empty.response_flags = ResponseFlag.NONE
    empty.upstream_service_time_ms = None
    hostile = http_info()
    hostile.path = '/a"b\\c%d{e}\u00e9'
    hostile.requested_server_name = "reviews.example"
    hostile.downstream_remote_address = "[::1]:4321"
    return [plain, tcp, empty, hostile]


@pytest.mark.parametrize("info", odd_infos())
def test_builtin_fast_paths_equal_the_compiled_formats(info: StreamInfo) -> None:
    assert IstioFormatter("text").format(info) == compile_text(ISTIO_TEXT).format(info)
    assert IstioFormatter("json").format(info) == compile_json(ISTIO_JSON).format(info)


def test_envoy_default_format() -> None:
    line = compile_format("envoy").format(http_info())
    assert line == (
        '[2026-11-26T06:44:47.123Z] "GET /reviews/0?x=1 HTTP/1.1" 503 UF,URX 0 91 12 11 "-" '
        '"curl/8.5.0" "5f1b4e0a-1c2d-4e5f-8a9b-0c1d2e3f4a5b" "reviews:9080" "10.0.0.5:9080"\n'
    )
    tcp = compile_format("envoy").format(tcp_info())
    assert tcp == '[2026-11-26T06:44:47.123Z] "- - -" 0 - 10 20 2000 - "-" "-" "-" "-" ' \
        '"93.184.216.34:443"\n'


@pytest.mark.parametrize(
    ("arg", "want"),
    [
        (None, "2026-11-26T06:44:47.123Z"),
        ("%s", "1795675487"),
        ("%s.%3f", "1795675487.123"),
        ("%s.%6f", "1795675487.123399"),
        ("%Y/%m/%dT%H:%M:%S%z", "2026/11/26T06:44:47+0000"),
        ("%H:%M 100%%", "06:44 100%"),
    ],
)
def test_start_time_formats(arg: str | None, want: str) -> None:
    assert StartTime(arg)(START) == want
    spelled = "%START_TIME%" if arg is None else f"%START_TIME({arg})%"
    assert one(spelled, http_info()) == want


def test_start_time_nanoseconds_and_next_second() -> None:
    render = StartTime("%S.%9f")
    assert render(START).startswith("47.1233")
    assert len(render(START)) == len("47.123399999")
    assert render(START + 1.0).startswith("48.1233")


def test_request_headers_fallback_truncation_and_query() -> None:
    info = http_info()
    assert one("%REQ(:AUTHORITY)% %REQ(host)% %REQ(USER-AGENT):4%", info) == (
        "reviews:9080 reviews:9080 curl"
    )
    assert one("%REQ(X-FORWARDED-FOR?USER-AGENT)%", info) == "curl/8.5.0"  # first one unset
    assert one("%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%", info) == "/reviews/0"
    assert one("%REQ(X-FORWARDED-FOR):3%", info) == "-"
    assert one("%REQUEST_HEADER(:METHOD)%", info) == "GET"


def test_response_values_and_grpc_status() -> None:
    info = http_info()
    info.grpc_status = 14
    assert one("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %RESP(:STATUS)% %TRAILER(GRPC-STATUS)%",
               info) == "11 503 14"  # fmt: skip
    assert one("%GRPC_STATUS% %GRPC_STATUS(SNAKE_STRING)% %GRPC_STATUS_NUMBER%", info) == (
        "Unavailable UNAVAILABLE 14"
    )
    assert one("%GRPC_STATUS% %RESP(:STATUS)%", tcp_info()) == "- -"


def with_heads() -> StreamInfo:
    """An HTTP StreamInfo with its request head, response head and trailers, as the request
    path leaves them: names as received (any case), some headers lifted out of the list."""
    info = http_info()
    head = RequestHead(b"GET", b"/reviews/0?x=1", [
        (b"X-Tenant", b"acme"), (b"accept", b"text/html"), (b"accept", b"*/*"),
        (b"x-b3-traceid", b"463ac35c9f6413ad48485a3953bb6124"),
    ])  # fmt: skip
    head.request_id = b"5f1b4e0a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    head.scheme = b"https"
    info.request_head = head
    info.response_head = ResponseHead(503, b"", [
        (b"Content-Type", b"application/json"), (b"set-cookie", b"a=1"),
    ])  # fmt: skip
    info.response_trailers = [(b"grpc-message", b"backend down")]
    return info


def test_any_request_header_by_name() -> None:
    info = with_heads()
    assert one("%REQ(x-tenant)% %REQ(X-TENANT):2% %REQ(ACCEPT)% %REQ(X-B3-TRACEID)%", info) == (
        "acme ac text/html,*/* 463ac35c9f6413ad48485a3953bb6124"
    )  # names match in any case; repeated headers are joined by ","
    assert one("%REQ(X-NONE)% %REQ(X-NONE?X-TENANT)% %REQ(X-TENANT?X-NONE)%", info) == (
        "- acme acme"
    )
    assert one("%REQ(:SCHEME)% %REQ(X-REQUEST-ID)%", info) == (
        "https 5f1b4e0a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    )  # lifted out of the list by the codec, still found
    assert one("%REQ(X-TENANT)% %REQ(X-NONE?X-TENANT)%", http_info()) == "- -"  # no head kept
    assert one("%REQ(X-TENANT)%", tcp_info()) == "-"
    rec = json.loads(compile_format('{"t": "%REQ(X-TENANT)%", "n": "%REQ(X-NONE)%"}').format(info))
    assert rec == {"t": "acme", "n": None}


def test_any_response_header_and_trailer_by_name() -> None:
    info = with_heads()
    fmt = ("%RESP(CONTENT-TYPE)% %RESP(content-type):4% %RESP(SET-COOKIE)% %RESP(X-NONE)% "
           "%RESP(X-NONE?CONTENT-TYPE)% %TRAILER(GRPC-MESSAGE)% %TRAILER(CONTENT-TYPE)%")
    assert one(fmt, info) == (
        "application/json appl a=1 - application/json backend down -"
    )  # a trailer is not a header, nor the other way round
    assert one("%RESP(:STATUS?X-NONE)% %RESP(X-NONE?:STATUS)% %RESP(:STATUS):2%", info) == (
        "503 503 50"
    )
    local = http_info()  # a local reply: no response head from upstream
    assert one("%RESP(CONTENT-TYPE)% %TRAILER(GRPC-MESSAGE)%", local) == "- -"
    rec = json.loads(compile_format(
        '{"ct": "%RESP(CONTENT-TYPE)%", "none": "%RESP(X-NONE)%", "st": "%RESP(:STATUS)%"}'
    ).format(info))  # fmt: skip
    assert rec == {"ct": "application/json", "none": None, "st": "503"}


def test_addresses_flags_durations_and_counts() -> None:
    info = http_info()
    info.downstream_remote_address = "[fd00::9]:51234"
    assert one(
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_REMOTE_PORT% "
        "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_PORT% "
        "%UPSTREAM_REMOTE_ADDRESS% %UPSTREAM_LOCAL_ADDRESS% %UPSTREAM_LOCAL_PORT%",
        info,
    ) == "fd00::9 51234 10.96.0.10 9080 10.0.0.5:9080 - -"
    assert one("%RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG%", info) == (
        "UF,URX UpstreamConnectionFailure,UpstreamRetryLimitExceeded"
    )
    assert one("%DURATION% %REQUEST_DURATION% %RESPONSE_DURATION% %RESPONSE_TX_DURATION%",
               info) == "12 - - -"  # fmt: skip
    info.request_end_mono = info.start_mono + 0.0025
    info.response_start_mono = info.start_mono + 0.0105  # end_mono is start + 12.5 ms
    assert one("%REQUEST_DURATION% %RESPONSE_DURATION% %RESPONSE_TX_DURATION%", info) == "2 10 2"
    assert one("%UPSTREAM_REQUEST_ATTEMPT_COUNT%", info) == "1"
    assert one("%UPSTREAM_REQUEST_ATTEMPT_COUNT% %ROUTE_NAME%", StreamInfo()) == "0 -"


def test_constants_and_literals() -> None:
    info = http_info()
    assert one("%HOSTNAME%", info) == socket.gethostname()
    assert one("%ENVIRONMENT(SIDECAR_SURELY_UNSET_VAR)% 50%% {x}", info) == "- 50% {x}"
    assert compile_text("plain").format(info) == "plain\n"  # a newline is added when missing
    assert compile_text("two\n").format(info) == "two\n"


def test_json_dictionary_types() -> None:
    fmt = compile_json({
        "code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%", "proto": "%PROTOCOL%",
        "ua": "%REQ(USER-AGENT)%", "xff": "%REQ(X-FORWARDED-FOR)%",
        "ust": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "port": "%DOWNSTREAM_LOCAL_PORT%",
        "line": "%REQ(:METHOD)% %REQ(X-FORWARDED-FOR)% 100%%", "nested": {"dur": "%DURATION%"},
        "lit": "sidecar", "n": 7, "b": True, "none": None, "empty": "", "t": "%START_TIME(%s)%",
    })  # fmt: skip
    rec = json.loads(fmt.format(http_info()))
    assert rec == {
        "code": 503, "flags": "UF,URX", "proto": "HTTP/1.1", "ua": "curl/8.5.0", "xff": None,
        "ust": "11", "port": 9080, "line": "GET - 100%", "nested": {"dur": 12},
        "lit": "sidecar", "n": 7, "b": True, "none": None, "empty": "", "t": "1795675487",
    }  # fmt: skip
    tcp = json.loads(fmt.format(tcp_info()))
    assert (tcp["code"], tcp["flags"], tcp["proto"], tcp["ua"], tcp["ust"]) == (
        0, "-", "-", None, None
    )


def test_json_escapes_hostile_values() -> None:
    info = http_info()
    info.user_agent = 'evil" \\ \u00e9\n%s{0}'
    rec = json.loads(compile_format('{"ua": "%REQ(USER-AGENT)%", "m": "<%REQ(USER-AGENT)%>"}')
                     .format(info))  # fmt: skip
    assert rec == {"ua": info.user_agent, "m": f"<{info.user_agent}>"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("%NOPE%", "unknown command operator NOPE"),
        ("x %START_TIME% %UPSTREAM_HOSTS%", "%UPSTREAM_HOSTS%: unknown command operator"),
        ("%REQ(:PROTOCOL)%", "%REQ(:PROTOCOL)%: request pseudo-header ':protocol' is not known"),
        ("%REQ(X-A?:NOPE):3%", "%REQ(X-A?:NOPE):3%: request pseudo-header ':nope'"),
        ("%RESP(:REASON)%", "%RESP(:REASON)%: response pseudo-header ':reason' is not known"),
        ("%TRAILER(X-T?:S)%", "response pseudo-header ':s' is not known"),
        ("%REQ%", "needs a header name"),
        ("%DYNAMIC_METADATA(a:b)%", "DYNAMIC_METADATA has no data in this proxy"),
        ("%BYTES_SENT:3%", "BYTES_SENT takes no :length"),
        ("%DURATION(x)%", "DURATION takes no (argument)"),
        ("%GRPC_STATUS(HEX)%", "expected CAMEL_STRING"),
        ("50% off", "no command operator at position 2"),
        ("%start_time%", "no command operator at position 0"),
        ("xml", "text or json"),
        ('{"a": ', "not a JSON object"),
        ('{"a": ["%START_TIME%"]}', "key 'a': lists are not supported"),
        ('{"a": {"b": "%NOPE%"}}', "unknown command operator NOPE"),
    ],
)
def test_bad_formats_are_refused_with_the_operator_named(spec: str, message: str) -> None:
    with pytest.raises(BootstrapError, match=r"access[ _]log[ _]format") as err:
        compile_format(spec)
    assert message in str(err.value)


def test_bootstrap_refuses_a_bad_format() -> None:
    with pytest.raises(BootstrapError, match="unknown command operator FOO"):
        build(overrides={"access_log_format": "[%START_TIME%] %FOO%"}, env={})
    boot = build(overrides={"access_log_format": "%START_TIME% %RESPONSE_CODE%"}, env={})
    assert boot.access_log_format == "%START_TIME% %RESPONSE_CODE%"
