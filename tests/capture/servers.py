"""Tiny servers for the capture tests, run as a script inside a test namespace.

`servers.py http PORT NAME [HOST]`: answers every GET with JSON {"server", "client": [host,
port], "path"}, so a test can see who connected (the sidecar's 127.0.0.6 or ::6, a pod IP).
`servers.py echo PORT [HOST]`: sends "HOST PORT\\n" (the peer it saw), then echoes; it also prints
"CONN HOST PORT" on stdout for every connection, so a test can tell whether anything arrived.
HOST defaults to 0.0.0.0; "::" listens on IPv6 (and IPv4-mapped). Both print READY once listening
and stop after MAX_LIFETIME_S on their own.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_LIFETIME_S = 300.0


def http_handler(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # head and body are two writes: no 40 ms stall

        def do_GET(self) -> None:
            body = json.dumps(
                {"server": name, "client": list(self.client_address[:2]), "path": self.path}
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


class HTTPServer6(ThreadingHTTPServer):
    """The threading HTTP server on an IPv6 socket."""

    address_family = socket.AF_INET6


async def serve_http(port: int, name: str, host: str) -> None:
    cls = HTTPServer6 if ":" in host else ThreadingHTTPServer
    server = cls((host, port), http_handler(name))
    server.daemon_threads = True
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    task = loop.run_in_executor(None, server.serve_forever)
    await asyncio.sleep(MAX_LIFETIME_S)
    server.shutdown()
    await task


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    host, port = writer.get_extra_info("peername")[:2]
    print(f"CONN {host} {port}", flush=True)
    writer.write(f"{host} {port}\n".encode())
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def serve_echo(port: int, host: str) -> None:
    server = await asyncio.start_server(echo, host, port)
    print("READY", flush=True)
    async with server:
        await asyncio.sleep(MAX_LIFETIME_S)


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    if kind == "http":
        host = argv[3] if len(argv) > 3 else "0.0.0.0"
        asyncio.run(serve_http(port, argv[2], host))
    else:
        asyncio.run(serve_echo(port, argv[2] if len(argv) > 2 else "0.0.0.0"))


if __name__ == "__main__":
    main(sys.argv[1:])
