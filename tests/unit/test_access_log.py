"""The access log: lines in Istio's text and JSON formats, parsed back; failures never raise."""

from __future__ import annotations

import asyncio
import calendar
import io
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from sidecar.errors import BootstrapError
from sidecar.observability.access_log import (
    FileAccessLogger,
    NullAccessLogger,
    make_access_logger,
)
from sidecar.observability.access_log_istio import IstioFormatter
from sidecar.outcome import ResponseFlag
from sidecar.runtime import StreamInfo
from tests.conftest import require

# Istio's default text format, one group per %FIELD%.
TEXT_LINE = re.compile(
    r"\[(?P<start_time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "
    r'"(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" '
    r"(?P<response_code>\d+) (?P<response_flags>\S+) (?P<response_code_details>\S+) "
    r'(?P<connection_termination_details>\S+) "(?P<upstream_transport_failure_reason>[^"]*)" '
    r"(?P<bytes_received>\d+) (?P<bytes_sent>\d+) (?P<duration>\d+) "
    r'(?P<upstream_service_time>\S+) "(?P<x_forwarded_for>[^"]*)" "(?P<user_agent>[^"]*)" '
    r'"(?P<request_id>[^"]*)" "(?P<authority>[^"]*)" "(?P<upstream_host>[^"]*)" '
    r"(?P<upstream_cluster>\S+) (?P<upstream_local_address>\S+) "
    r"(?P<downstream_local_address>\S+) (?P<downstream_remote_address>\S+) "
    r"(?P<requested_server_name>\S+) (?P<route_name>\S+)\n"
)

ISTIO_JSON_KEYS = {
    "start_time", "route_name", "method", "path", "protocol", "response_code", "response_flags",
    "response_code_details", "connection_termination_details", "upstream_transport_failure_reason",
    "bytes_received", "bytes_sent", "duration", "upstream_service_time", "x_forwarded_for",
    "user_agent", "request_id", "authority", "upstream_host", "upstream_cluster",
    "upstream_local_address", "downstream_local_address", "downstream_remote_address",
    "requested_server_name",
}  # fmt: skip

START = calendar.timegm((2026, 11, 26, 6, 44, 47)) + 0.1234


def http_info() -> StreamInfo:
    info = StreamInfo(start_time=START)
    info.end_mono = info.start_mono + 0.0125
    info.protocol = "HTTP/1.1"
    info.method = "GET"
    info.path = "/reviews/0?x=1"
    info.authority = "reviews:9080"
    info.user_agent = "curl/8.5.0"
    info.request_id = "5f1b4e0a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    info.response_code = 503
    info.response_flags = ResponseFlag.UF | ResponseFlag.URX
    info.response_code_details = "upstream_reset_before_response_started{connection_failure}"
    info.bytes_received = 0
    info.bytes_sent = 91
    info.upstream_cluster = "outbound|9080||reviews.default.svc.cluster.local"
    info.upstream_host = "10.0.0.5:9080"
    info.upstream_service_time_ms = 11
    info.route_name = "default"
    info.downstream_local_address = "10.96.0.10:9080"
    info.downstream_remote_address = "10.0.0.9:51234"
    return info


def tcp_info() -> StreamInfo:
    info = StreamInfo(start_time=START)
    info.end_mono = info.start_mono + 2.0
    info.bytes_received = 10
    info.bytes_sent = 20
    info.upstream_cluster = "PassthroughCluster"
    info.upstream_host = "93.184.216.34:443"
    return info


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_text_line_parses_back(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = FileAccessLogger(str(path), "text")
    log.log(http_info())
    log.log(tcp_info())
    log.close()
    http_line, tcp_line = read_lines(path)
    m = TEXT_LINE.fullmatch(http_line)
    assert m is not None, http_line
    f = m.groupdict()
    assert f["start_time"] == "2026-11-26T06:44:47.123Z"
    assert (f["method"], f["path"], f["protocol"]) == ("GET", "/reviews/0?x=1", "HTTP/1.1")
    assert (f["response_code"], f["response_flags"]) == ("503", "UF,URX")
    assert f["duration"] == "12"
    assert f["upstream_service_time"] == "11"
    assert f["upstream_host"] == "10.0.0.5:9080"
    assert f["upstream_cluster"] == "outbound|9080||reviews.default.svc.cluster.local"
    assert f["user_agent"] == "curl/8.5.0"
    assert f["x_forwarded_for"] == "-"
    assert f["route_name"] == "default"
    t = TEXT_LINE.fullmatch(tcp_line)
    assert t is not None, tcp_line
    assert (t["method"], t["path"], t["protocol"], t["response_code"]) == ("-", "-", "-", "0")
    assert (t["bytes_received"], t["bytes_sent"], t["duration"]) == ("10", "20", "2000")


def test_json_line_has_istio_keys(tmp_path: Path) -> None:
    path = tmp_path / "access.json"
    log = FileAccessLogger(str(path), "json")
    log.log(http_info())
    log.log(tcp_info())
    log.close()
    http_rec, tcp_rec = (json.loads(line) for line in read_lines(path))
    assert set(http_rec) == ISTIO_JSON_KEYS
    assert http_rec["start_time"] == "2026-11-26T06:44:47.123Z"
    assert http_rec["response_code"] == 503
    assert http_rec["response_flags"] == "UF,URX"
    assert http_rec["duration"] == 12
    assert http_rec["upstream_service_time"] == "11"
    assert http_rec["x_forwarded_for"] is None
    assert tcp_rec["method"] is None
    assert tcp_rec["response_flags"] == "-"  # Envoy's typed JSON: a string, not null
    assert tcp_rec["protocol"] == "-"
    assert tcp_rec["requested_server_name"] is None
    assert tcp_rec["bytes_sent"] == 20


def test_json_escapes_hostile_values(tmp_path: Path) -> None:
    path = tmp_path / "access.json"
    log = FileAccessLogger(str(path), "json")
    info = http_info()
    info.user_agent = 'evil" \\ \u00e9\n'
    log.log(info)
    log.close()
    (line,) = read_lines(path)
    assert json.loads(line)["user_agent"] == 'evil" \\ \u00e9\n'


def test_start_time_rolls_over_seconds() -> None:
    fmt = IstioFormatter("text")
    assert fmt.start_time(START) == "2026-11-26T06:44:47.123Z"
    assert fmt.start_time(START + 1.0) == "2026-11-26T06:44:48.123Z"
    assert fmt.start_time(START + 0.8766) == "2026-11-26T06:44:48.000Z"


async def test_one_write_per_event_loop_turn(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = FileAccessLogger(str(path), "text")
    for _ in range(100):
        log.log(http_info())
    assert log.counters.write_buffered == 0  # nothing handed off inside the turn
    await asyncio.sleep(0)
    assert log.counters.write_buffered == 1
    assert log.flush(5.0)
    assert len(read_lines(path)) == 100
    log.close()


def test_full_disk_is_counted_not_raised() -> None:
    require_dev_full()
    log = FileAccessLogger("/dev/full", "text")
    log.log(http_info())
    log.log(http_info())
    assert log.flush(5.0)
    assert log.counters.write_failed == 2
    assert log.stats()["access_log.dropped_lines"] == 2
    log.close()


def require_dev_full() -> None:
    require(os.path.exists("/dev/full"), "no /dev/full here")


def test_closed_stream_is_counted_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    log = make_access_logger("/dev/stdout", "text")
    assert isinstance(log, FileAccessLogger)
    log.log(http_info())
    assert log.flush(5.0)
    assert TEXT_LINE.fullmatch(stream.getvalue())
    stream.close()
    log.log(http_info())
    assert log.flush(5.0)
    assert log.counters.write_failed == 1
    log.close()
    log.log(http_info())  # after close: ignored, no error


def test_unopenable_path_is_counted_not_raised(tmp_path: Path) -> None:
    log = FileAccessLogger(str(tmp_path), "text")  # a directory
    log.log(http_info())
    assert log.flush(5.0)
    assert log.counters.write_failed == 1
    log.close()


def test_stalled_writer_never_blocks_and_bounds_memory(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # open() of a FIFO blocks until a reader comes: the writer thread is stuck from the start
    log = FileAccessLogger(str(fifo), "text", flush_bytes=1, max_pending_bytes=4096)
    started = time.monotonic()
    for _ in range(1000):
        log.log(http_info())
    assert time.monotonic() - started < 1.0
    assert log.counters.dropped_lines > 900
    assert log.stats()["filesystem.write_total_buffered"] <= 4096
    # unstick the writer: read the FIFO until the logger is done with it
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(fifo.read_bytes()), daemon=True)
    reader.start()
    log.close(timeout=5.0)
    reader.join(5.0)
    assert got.count(b"\n") == 1000 - log.counters.dropped_lines


def test_reopen_follows_rotation(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = FileAccessLogger(str(path), "text")
    log.log(http_info())
    assert log.flush(5.0)
    path.rename(tmp_path / "access.log.1")
    log.reopen()
    log.log(tcp_info())
    log.close()
    assert len(read_lines(tmp_path / "access.log.1")) == 1
    assert len(read_lines(path)) == 1


def test_off_and_bad_format() -> None:
    off = make_access_logger("", "text")
    assert isinstance(off, NullAccessLogger)
    off.log(http_info())
    off.close()
    with pytest.raises(BootstrapError, match="text or json"):
        make_access_logger("/dev/stdout", "xml")
    with pytest.raises(BootstrapError, match="unknown command operator NOPE"):
        make_access_logger("", "%NOPE%")
