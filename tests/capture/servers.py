"""Tiny servers for the capture tests, run as a script inside a test namespace.

`servers.py http PORT NAME`: answers every GET with JSON {"server", "client": [host, port],
"path"}, so a test can see who connected (the sidecar's 127.0.0.6, a pod IP). `servers.py echo
PORT`: sends "HOST PORT\\n" (the peer it saw), then echoes. Both print READY once listening and
stop after MAX_LIFETIME_S on their own.
"""

from __future__ import annotations

import asyncio
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_LIFETIME_S = 300.0


def http_handler(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

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


async def serve_http(port: int, name: str) -> None:
    server = ThreadingHTTPServer(("0.0.0.0", port), http_handler(name))
    server.daemon_threads = True
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    task = loop.run_in_executor(None, server.serve_forever)
    await asyncio.sleep(MAX_LIFETIME_S)
    server.shutdown()
    await task


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    host, port = writer.get_extra_info("peername")[:2]
    writer.write(f"{host} {port}\n".encode())
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def serve_echo(port: int) -> None:
    server = await asyncio.start_server(echo, "0.0.0.0", port)
    print("READY", flush=True)
    async with server:
        await asyncio.sleep(MAX_LIFETIME_S)


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    if kind == "http":
        asyncio.run(serve_http(port, argv[2]))
    else:
        asyncio.run(serve_echo(port))


if __name__ == "__main__":
    main(sys.argv[1:])
