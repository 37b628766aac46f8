"""The proxy process as an operator sees it: start, reload, drain on SIGTERM, quit via admin."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .proxy_fixtures import free_port
from .sidecar_process import SidecarProcess, ingress_sidecar_yaml


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = "?"

    def do_GET(self) -> None:
        delay = float(self.headers.get("x-delay", "0"))
        time.sleep(delay)
        body = f"from {self.server.name}\n".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _upstream(name: str) -> tuple[ThreadingHTTPServer, int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.name = name  # type: ignore[attr-defined]
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


@pytest.fixture
def upstreams() -> Iterator[tuple[int, int]]:
    a, pa = _upstream("a")
    b, pb = _upstream("b")
    yield pa, pb
    a.shutdown()
    b.shutdown()


def _get(
    port: int, conn: http.client.HTTPConnection | None = None, **headers: str
) -> tuple[int, str, str]:
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/", headers=headers)
    r = c.getresponse()
    body = r.read().decode()
    return r.status, body, r.getheader("connection", "")


def test_reload_swaps_config_without_dropping_connections(upstreams: tuple[int, int]) -> None:
    pa, pb = upstreams
    port = free_port()
    with SidecarProcess(ingress_sidecar_yaml(port, pa)) as sc:
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        assert _get(port, kept)[:2] == (200, "from a\n")
        _, before = sc.admin("GET", "/config_dump")
        sc.config.write_text(ingress_sidecar_yaml(port, pb))
        sc.wait_log("adopted")
        # New connections see the new config ...
        assert _get(port)[:2] == (200, "from b\n")
        # ... and the connection opened before the reload still works.
        assert _get(port, kept)[0] == 200
        _, after = sc.admin("GET", "/config_dump")
        assert before != after
        assert sc.terminate() == 0


def test_invalid_reload_is_refused_and_the_running_config_stays(upstreams: tuple[int, int]) -> None:
    pa, _ = upstreams
    port = free_port()
    with SidecarProcess(ingress_sidecar_yaml(port, pa)) as sc:
        sc.config.write_text(
            ingress_sidecar_yaml(port, pa).replace(f"number: {port}", "number: 70000")
        )
        text = sc.wait_log("config rejected")
        assert "mesh.yaml" in text and "70000" in text
        assert _get(port)[:2] == (200, "from a\n")
        assert sc.terminate() == 0


def test_bad_config_at_start_exits_nonzero_naming_the_problem() -> None:
    sc = SidecarProcess(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  ports:\n  - port: -1\n"
    )
    sc.start(expect_ready=False)
    assert sc.proc is not None
    assert sc.proc.wait(15) == 1
    err = sc.stderr()
    assert "mesh.yaml" in err and "Service/default/x" in err and "spec.ports[0].port" in err


def test_sigterm_drains_in_flight_requests_then_exits_zero(upstreams: tuple[int, int]) -> None:
    pa, _ = upstreams
    port = free_port()
    with SidecarProcess(ingress_sidecar_yaml(port, pa), "--termination-drain-duration", "5") as sc:
        idle = socket.create_connection(("127.0.0.1", port))
        result: list[tuple[int, str, str]] = []
        slow = threading.Thread(target=lambda: result.append(_get(port, **{"x-delay": "1.0"})))
        slow.start()
        time.sleep(0.3)  # the slow request is in flight
        t0 = time.monotonic()
        assert sc.proc is not None
        sc.proc.terminate()
        # The idle keep-alive connection is closed promptly.
        idle.settimeout(3)
        assert idle.recv(1) == b""
        slow.join(10)
        assert result and result[0][0] == 200 and result[0][1] == "from a\n"
        assert result[0][2].lower() == "close"
        assert sc.proc.wait(10) == 0
        assert time.monotonic() - t0 < 5
        # Not accepting any more.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).recv(1)


def test_quitquitquit_and_health_fail(upstreams: tuple[int, int]) -> None:
    pa, _ = upstreams
    port = free_port()
    with SidecarProcess(ingress_sidecar_yaml(port, pa)) as sc:
        assert sc.admin("GET", "/ready")[0] == 200
        assert sc.admin("POST", "/healthcheck/fail")[0] == 200
        assert sc.admin("GET", "/ready")[0] == 503
        assert sc.admin("POST", "/healthcheck/ok")[0] == 200
        assert sc.admin("POST", "/quitquitquit")[0] == 200
        assert sc.proc is not None and sc.proc.wait(10) == 0


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_listener_added_by_reload_accepts_once_reload_answers(upstreams: tuple[int, int]) -> None:
    """POST /reload answered 200 means the new listeners already accept (no refused window)."""
    pa, _ = upstreams
    ports = free_port(), free_port()
    with SidecarProcess(ingress_sidecar_yaml(ports[0], pa), "--no-watch") as sc:
        for i in range(1, 21):
            port = ports[i % 2]
            sc.config.write_text(ingress_sidecar_yaml(port, pa))
            assert sc.admin("POST", "/reload")[0] == 200
            assert not _refused(port), f"reload {i}: listener on {port} refused a connection"
            assert _refused(ports[(i + 1) % 2]), f"reload {i}: the removed listener still accepts"
        assert _get(ports[0])[:2] == (200, "from a\n")
        assert sc.terminate() == 0


def test_a_config_file_caught_half_written_is_not_applied(upstreams: tuple[int, int]) -> None:
    """A file written in two steps (truncate + write, as most tools do) is read only once it
    stops changing: the half that parses but lacks the listener never removes it."""
    pa, pb = upstreams
    port = free_port()
    whole = {name: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n---\n"
             + ingress_sidecar_yaml(port, p) for name, p in (("a", pa), ("b", pb))}
    with SidecarProcess(whole["a"], "--watch-interval", "0.02") as sc:
        for i in range(6):
            text = whole["b" if i % 2 == 0 else "a"]
            with sc.config.open("w") as f:
                f.write(text[: text.index("---")])  # a valid stream without the Sidecar
                f.flush()
                time.sleep(0.1)  # the watcher looks 5 times meanwhile
                f.write(text[text.index("---"):])
            time.sleep(0.4)
            assert not _refused(port), f"write {i}: the listener was removed"
        assert _get(port)[:2] == (200, "from a\n")
        assert "removed" not in sc.stderr()
        assert sc.terminate() == 0
