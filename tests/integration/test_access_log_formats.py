"""Access log formats through the real `sidecar run`: Istio's text and JSON, Envoy's default, a
custom Envoy format string and a JSON format dictionary, each for a 200, a 503 UF and a TCP
connection; a bad format refused at start with the operator named."""

from __future__ import annotations

import http.client
import http.server
import json
import re
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .proxy_fixtures import free_port
from .sidecar_process import SidecarProcess, ingress_entry, sidecar_with_ingress

TIMEOUT = 10.0


class _Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"hello from upstream\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(TIMEOUT)
        while data := self.request.recv(65536):
            self.request.sendall(data)


class Servers:
    """A real HTTP upstream, a TCP echo server, and a port where nothing listens."""

    def __init__(self) -> None:
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
        self.echo = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
        self.echo.daemon_threads = self.http.daemon_threads = True
        self.dead = free_port()
        self.threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            for s in (self.http, self.echo)
        ]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        for s in (self.http, self.echo):
            s.shutdown()
            s.server_close()


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.close()


def mesh(ports: dict[str, int], servers: Servers) -> str:
    """Three explicit ingress listeners: HTTP to the upstream, HTTP to nothing, TCP to echo."""
    entries = (
        ("ok", "HTTP", servers.http.server_address[1]),
        ("dead", "HTTP", servers.dead),
        ("tcp", "TCP", servers.echo.server_address[1]),
    )
    return sidecar_with_ingress(*(
        ingress_entry(ports[name], upstream, proto, f"{proto.lower()}-{name}")
        for name, proto, upstream in entries
    ))


def get(port: int, path: str, request_id: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers={"user-agent": "fmt-test/1.0", "x-request-id": request_id,
                                           "x-forwarded-for": "10.1.2.3", "X-Tenant": "acme"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def tcp_roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def run_traffic(servers: Servers, *fmt_args: str) -> tuple[list[str], dict[str, int]]:
    """Start a sidecar with the format, send a 200, a 503 and a TCP exchange, stop it (which
    flushes the log) and return the log lines and the listener ports."""
    ports = {name: free_port() for name in ("ok", "dead", "tcp")}
    sc = SidecarProcess(mesh(ports, servers), "--no-watch", *fmt_args)
    log = sc.dir / "access.log"
    sc.args += ["--access-log", str(log)]
    sc.start()
    try:
        assert get(ports["ok"], "/ok?q=1", "rid-ok") == 200
        assert get(ports["dead"], "/dead", "rid-dead") == 503
        assert tcp_roundtrip(ports["tcp"], b"ping" * 10) == b"ping" * 10
    finally:
        assert sc.terminate() == 0, sc.stderr()
    lines = log.read_text().splitlines()
    assert len(lines) == 3, lines
    return lines, ports


def by_marker(lines: list[str], marker: str) -> str:
    (line,) = [x for x in lines if marker in x]
    return line


ISO_MS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_text_is_istios_default_format(servers: Servers) -> None:
    lines, ports = run_traffic(servers, "--access-log-format", "text")
    ok = by_marker(lines, "rid-ok")
    m = re.fullmatch(
        rf'\[{ISO_MS}\] "GET /ok\?q=1 HTTP/1.1" 200 - via_upstream - "-" 0 20 \d+ \d+ "10.1.2.3" '
        rf'"fmt-test/1.0" "rid-ok" "127.0.0.1:{ports["ok"]}" '
        rf'"127.0.0.1:{servers.http.server_address[1]}" inbound\|{ports["ok"]}\|\| '
        rf"127.0.0.1:\d+ 127.0.0.1:{ports['ok']} 127.0.0.1:\d+ - \S+",
        ok,
    )
    assert m, ok
    dead = by_marker(lines, "rid-dead")
    details = "upstream_reset_before_response_started{connection_failure}"
    assert f'"GET /dead HTTP/1.1" 503 UF {details} ' in dead, dead
    assert f'"127.0.0.1:{servers.dead}" inbound|{ports["dead"]}||' in dead, dead
    tcp = by_marker(lines, '"- - -"')
    assert re.match(rf'\[{ISO_MS}\] "- - -" 0 - - - "-" 40 40 \d+ - "-" "-" "-" "-" ', tcp), tcp
    assert f"127.0.0.1:{ports['tcp']}" in tcp


def test_json_has_istios_keys_and_envoys_types(servers: Servers) -> None:
    lines, ports = run_traffic(servers, "--access-log-format", "json")
    recs = [json.loads(x) for x in lines]
    ok = next(r for r in recs if r["request_id"] == "rid-ok")
    assert (ok["method"], ok["path"], ok["protocol"]) == ("GET", "/ok?q=1", "HTTP/1.1")
    assert (ok["response_code"], ok["response_flags"], ok["bytes_sent"]) == (200, "-", 20)
    assert ok["upstream_host"] == f"127.0.0.1:{servers.http.server_address[1]}"
    assert ok["x_forwarded_for"] == "10.1.2.3" and ok["requested_server_name"] is None
    assert re.fullmatch(ISO_MS, ok["start_time"]) and isinstance(ok["duration"], int)
    assert ok["response_code_details"] == "via_upstream"
    assert ok["upstream_service_time"].isdigit()  # a response header's value: a string
    dead = next(r for r in recs if r["request_id"] == "rid-dead")
    assert (dead["response_code"], dead["response_flags"]) == (503, "UF")
    assert dead["upstream_service_time"] is None  # the proxy's own reply
    tcp = next(r for r in recs if r["method"] is None)
    assert (tcp["protocol"], tcp["response_code"]) == ("-", 0)
    assert (tcp["bytes_received"], tcp["bytes_sent"]) == (40, 40)
    assert tcp["downstream_local_address"] == f"127.0.0.1:{ports['tcp']}"


def test_envoy_is_envoys_default_format(servers: Servers) -> None:
    lines, ports = run_traffic(servers, "--access-log-format", "envoy")
    up = servers.http.server_address[1]
    ok = by_marker(lines, "rid-ok")
    assert re.fullmatch(
        rf'\[{ISO_MS}\] "GET /ok\?q=1 HTTP/1.1" 200 - 0 20 \d+ \d+ "10.1.2.3" "fmt-test/1.0" '
        rf'"rid-ok" "127.0.0.1:{ports["ok"]}" "127.0.0.1:{up}"',
        ok,
    ), ok
    dead = by_marker(lines, "rid-dead")
    assert re.search(r'" 503 UF 0 \d+ \d+ - "10.1.2.3" "fmt-test/1.0" "rid-dead" ', dead), dead
    tcp = by_marker(lines, '"- - -"')
    echo = servers.echo.server_address[1]
    assert re.fullmatch(rf'\[{ISO_MS}\] "- - -" 0 - 40 40 \d+ - "-" "-" "-" "-" "127.0.0.1:{echo}"',
                        tcp), tcp


CUSTOM = (
    "%START_TIME(%s.%3f)% %REQ(:METHOD)% %REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)% "
    "code=%RESPONSE_CODE% flags=%RESPONSE_FLAGS_LONG% up=%UPSTREAM_HOST% "
    "from=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% to=%DOWNSTREAM_LOCAL_PORT% "
    "ua=%REQ(USER-AGENT):4% tries=%UPSTREAM_REQUEST_ATTEMPT_COUNT% rid=%REQ(X-REQUEST-ID)% 100%%"
)


def test_custom_format_string(servers: Servers) -> None:
    lines, ports = run_traffic(servers, "--access-log-format", CUSTOM)
    up = servers.http.server_address[1]
    ok = by_marker(lines, "rid=rid-ok")
    assert re.fullmatch(
        rf"\d{{10}}\.\d{{3}} GET /ok code=200 flags=- up=127.0.0.1:{up} from=127.0.0.1 "
        rf"to={ports['ok']} ua=fmt- tries=1 rid=rid-ok 100%",
        ok,
    ), ok
    dead = by_marker(lines, "rid=rid-dead")
    assert " code=503 flags=UpstreamConnectionFailure " in dead, dead
    tcp = by_marker(lines, "rid=-")
    assert re.fullmatch(
        rf"\d{{10}}\.\d{{3}} - - code=0 flags=- up=127.0.0.1:{servers.echo.server_address[1]} "
        rf"from=127.0.0.1 to={ports['tcp']} ua=- tries=1 rid=- 100%",
        tcp,
    ), tcp


HEADERS = (
    "rid=%REQ(X-REQUEST-ID)% tenant=%REQ(X-TENANT)% alt=%REQ(X-NONE?X-TENANT):3% "
    "type=[%RESP(CONTENT-TYPE)%] len=%RESP(CONTENT-LENGTH)% server=[%RESP(SERVER)%] "
    "none=%RESP(X-NONE)% trailer=%TRAILER(X-CHECKSUM)%"
)


def test_any_request_and_response_header(servers: Servers) -> None:
    """%REQ(X)% and %RESP(X)% of headers the proxy does not keep itself: the request's as
    sent upstream, the response's as received; "-" where there is none."""
    lines, _ = run_traffic(servers, "--access-log-format", HEADERS)
    ok = by_marker(lines, "rid=rid-ok")
    assert re.fullmatch(
        r"rid=rid-ok tenant=acme alt=acm type=\[-\] len=20 server=\[BaseHTTP/\S+ Python/\S+\] "
        r"none=- trailer=-",
        ok,
    ), ok
    dead = by_marker(lines, "rid=rid-dead")  # the proxy's own 503: no upstream response head
    assert dead == "rid=rid-dead tenant=acme alt=acm type=[-] len=- server=[-] none=- trailer=-"
    tcp = by_marker(lines, "rid=-")
    assert tcp == "rid=- tenant=- alt=- type=[-] len=- server=[-] none=- trailer=-", tcp


def test_json_format_dictionary(servers: Servers) -> None:
    fmt = json.dumps({
        "when": "%START_TIME(%Y/%m/%d)%",
        "req": {"line": "%REQ(:METHOD)% %REQ(:PATH)%", "id": "%REQ(X-REQUEST-ID)%"},
        "code": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "sent": "%BYTES_SENT%",
        "rx_ms": "%RESPONSE_DURATION%",
        "req_ms": "%REQUEST_DURATION%",
        "tx_ms": "%RESPONSE_TX_DURATION%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "source": "sidecar",
    })
    lines, _ = run_traffic(servers, "--access-log-format", fmt)
    recs = [json.loads(x) for x in lines]
    ok = next(r for r in recs if r["req"]["id"] == "rid-ok")
    assert re.fullmatch(r"\d{4}/\d\d/\d\d", ok["when"])
    assert ok["req"]["line"] == "GET /ok?q=1"
    assert (ok["code"], ok["flags"], ok["sent"], ok["source"]) == (200, "-", 20, "sidecar")
    # Durations are whole milliseconds from the request's start, as Envoy's.
    assert all(isinstance(ok[k], int) and ok[k] >= 0 for k in ("rx_ms", "req_ms", "tx_ms")), ok
    assert ok["req_ms"] <= ok["rx_ms"] and ok["details"] == "via_upstream"
    dead = next(r for r in recs if r["req"]["id"] == "rid-dead")
    assert (dead["code"], dead["flags"]) == (503, "UF")
    assert dead["rx_ms"] is None  # no upstream response: unset, null
    assert dead["details"] == "upstream_reset_before_response_started{connection_failure}"
    tcp = next(r for r in recs if r["req"]["id"] is None)
    assert tcp["req"]["line"] == "- -" and (tcp["code"], tcp["sent"]) == (0, 40)


@pytest.mark.parametrize(
    ("fmt", "named"),
    [
        ("[%START_TIME%] %UPSTREAM_HOST% %NOT_AN_OPERATOR%", "NOT_AN_OPERATOR"),
        ("%REQ(:PROTOCOL)%", ":protocol"),
        ('{"a": "%DYNAMIC_METADATA(envoy.lb)%"}', "DYNAMIC_METADATA"),
    ],
)
def test_bad_format_is_refused_at_start(fmt: str, named: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "run", "--outbound-port", "0", "--inbound-port",
         "0", "--admin-port", "0", "--status-port", "0", "--prometheus-port", "0",
         "--access-log", str(tmp_path / "a.log"), "--access-log-format", fmt],
        capture_output=True, text=True, timeout=TIMEOUT * 2,
    )  # fmt: skip
    assert proc.returncode != 0
    assert named in proc.stderr and "access log format" in proc.stderr, proc.stderr
