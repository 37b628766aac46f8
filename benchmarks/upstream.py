"""The upstreams every path forwards to: an HTTP server and the L4 byte sink.

Theory of operation: the HTTP upstream is nginx (the fastest real HTTP/1.1 server installed
here), one process, answering every request with `return 200` and a small static body from
memory, keep-alive with no request limit and no access log. It is the same server for every
path, so its cost is the same in every ratio. When nginx is missing, a small asyncio server
stands in (much slower: every ratio is then bounded by it, and the harness says so).

The L4 upstream is `l4.py sink`, a separate Python process that counts bytes (see l4.py).

The h2 and grpc scenarios have their own upstream, started only when they run: a second nginx
speaking h2c on two ports, one with the same static body, one a synthetic gRPC unary server
(configs/nginx-h2-upstream.conf; h2.py holds the gRPC messages). Without nginx there is none.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from procs import ProcessSet, free_port, wait_for_port
from render import render

HERE = Path(__file__).resolve().parent
BODY = "hello from the benchmark upstream\\n"  # nginx unescapes \n; 34 bytes on the wire
STREAM_MODULE_DIRS = (Path("/usr/lib/nginx/modules"), Path("/usr/share/nginx/modules"))
STARTUP_TIMEOUT = 10.0

_FALLBACK_SERVER = """
import asyncio
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        while b"\\r\\n\\r\\n" in self.buf:
            _, self.buf = self.buf.split(b"\\r\\n\\r\\n", 1)
            self.t.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 34\\r\\n"
                         b"Content-Type: text/plain\\r\\n\\r\\n"
                         b"hello from the benchmark upstream\\n")
async def main(port):
    s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", port)
    await s.serve_forever()
import sys; asyncio.run(main(int(sys.argv[1])))
"""


def nginx_binary() -> str | None:
    """Path of the nginx binary, or None."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def stream_module() -> Path | None:
    """The dynamic ngx_stream_module shared object, if it is installed."""
    for directory in STREAM_MODULE_DIRS:
        candidate = directory / "ngx_stream_module.so"
        if candidate.exists():
            return candidate
    return None


@dataclass(frozen=True)
class Upstreams:
    """Where the upstreams listen, and which server plays the HTTP one."""

    http_port: int
    sink_port: int
    http_server: str
    h2_port: int | None = None
    grpc_port: int | None = None


def start_upstreams(procs: ProcessSet, tmp: Path, grpc_body: str | None = None) -> Upstreams:
    """Start the HTTP upstream and the byte sink; return once both accept connections.

    With `grpc_body` (the gRPC response message as nginx config text), also the h2c upstream
    of the h2 and grpc scenarios, when nginx is installed."""
    http_port = free_port()
    nginx = nginx_binary()
    if nginx is not None:
        conf = render("nginx-upstream.conf", {"TMP": tmp, "PORT": http_port, "BODY": BODY},
                      tmp / "upstream-nginx.conf")
        server = procs.start("upstream-nginx", [nginx, "-p", str(tmp), "-c", str(conf)])
        kind = "nginx (return 200, one process)"
    else:
        server = procs.start("upstream-python", [sys.executable, "-c", _FALLBACK_SERVER,
                                                 str(http_port)])
        kind = "python asyncio fallback (nginx missing: ratios are bounded by it)"
    wait_for_port(http_port, server.proc, STARTUP_TIMEOUT, server.log)

    sink_port = free_port()
    sink = procs.start("l4-sink", [sys.executable, str(HERE / "l4.py"), "sink",
                                   "--port", str(sink_port)])
    wait_for_port(sink_port, sink.proc, STARTUP_TIMEOUT, sink.log)
    h2_port = grpc_port = None
    if nginx is not None and grpc_body is not None:
        h2_port, grpc_port = free_port(), free_port()
        conf = render("nginx-h2-upstream.conf", {
            "TMP": tmp, "H2_PORT": h2_port, "GRPC_PORT": grpc_port, "BODY": BODY,
            "GRPC_BODY": grpc_body}, tmp / "upstream-h2-nginx.conf")
        h2 = procs.start("upstream-h2-nginx", [nginx, "-p", str(tmp), "-c", str(conf)])
        wait_for_port(h2_port, h2.proc, STARTUP_TIMEOUT, h2.log)
        wait_for_port(grpc_port, h2.proc, STARTUP_TIMEOUT, h2.log)
    return Upstreams(http_port=http_port, sink_port=sink_port, http_server=kind,
                     h2_port=h2_port, grpc_port=grpc_port)
