"""L4 bulk transfer: a TCP sink that counts bytes, and a sender that times a transfer.

Theory of operation: the sender connects (directly or through a proxy), sends an 8-byte
big-endian length N and then N bytes. The sink reads the length, counts bytes until it has N (or
the peer closes), and answers with the 8-byte count it received. The sender's clock runs from
connect to that answer, so the time covers the whole transfer end to end, including what was
still in the proxy's buffers. No half-close is needed, so every proxy is measured the same way.
The transfer is bounded by a deadline; a transfer that misses it is reported as a failure.

Run as a script for the sink (`python l4.py sink --port P`); the harness calls `transfer()`
in-process for the sending side.
"""

from __future__ import annotations

import argparse
import socket
import struct
import threading
import time
from dataclasses import dataclass

HEADER = struct.Struct("!Q")
CHUNK = 1 << 20


@dataclass(frozen=True)
class TransferResult:
    """One bulk transfer: bytes the sink counted and the wall time it took."""

    sent: int
    received: int
    seconds: float

    @property
    def bytes_per_second(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0


def _recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < size:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        part = sock.recv(size - len(data))
        if not part:
            break
        data += part
    return bytes(data)


def transfer(port: int, nbytes: int, timeout: float, host: str = "127.0.0.1") -> TransferResult:
    """Send `nbytes` to host:port and wait for the sink's count, within `timeout` seconds."""
    payload = memoryview(b"\x5a" * CHUNK)
    start = time.monotonic()
    deadline = start + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(HEADER.pack(nbytes))
        sent = 0
        while sent < nbytes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sent {sent} of {nbytes} bytes in {timeout:.0f}s")
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            size = min(CHUNK, nbytes - sent)
            sock.sendall(payload[:size])
            sent += size
        answer = _recv_exact(sock, HEADER.size, deadline)
    elapsed = time.monotonic() - start
    if len(answer) != HEADER.size:
        raise ConnectionError(f"sink did not answer after {sent} bytes (closed or timed out)")
    (received,) = HEADER.unpack(answer)
    return TransferResult(sent=sent, received=received, seconds=elapsed)


def _serve_one(conn: socket.socket, idle_timeout: float) -> None:
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with conn:
        conn.settimeout(idle_timeout)
        try:
            header = _recv_exact(conn, HEADER.size, time.monotonic() + idle_timeout)
            if len(header) != HEADER.size:
                return
            (expected,) = HEADER.unpack(header)
            received = 0
            while received < expected:
                count = conn.recv_into(view, min(CHUNK, expected - received))
                if count == 0:
                    break
                received += count
            conn.sendall(HEADER.pack(received))
        except OSError:
            return


def serve_sink(port: int, host: str = "127.0.0.1", idle_timeout: float = 120.0) -> None:
    """Accept connections forever, one thread each, counting bytes as described above."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=_serve_one, args=(conn, idle_timeout), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sink = sub.add_parser("sink", help="count bytes on 127.0.0.1:PORT")
    sink.add_argument("--port", type=int, required=True)
    send = sub.add_parser("send", help="send BYTES to 127.0.0.1:PORT and print the rate")
    send.add_argument("--port", type=int, required=True)
    send.add_argument("--bytes", type=int, default=1 << 30)
    send.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if args.command == "sink":
        serve_sink(args.port)
    else:
        result = transfer(args.port, args.bytes, args.timeout)
        print(f"{result.received} bytes in {result.seconds:.3f}s: "
              f"{result.bytes_per_second / 1e6:.1f} MB/s")


if __name__ == "__main__":
    main()
