"""Request header edits the connection manager makes on every proxied request.

Theory of operation: the codec has already lifted x-forwarded-for, x-forwarded-proto and
x-request-id out of the header list (stream.py), so each edit is an attribute store: append the
downstream address to x-forwarded-for, set x-forwarded-proto when absent, generate x-request-id
when absent. Request ids are UUID4-formatted from os.urandom (about 1 us; `uuid.uuid4()` costs
several times that).
"""

from __future__ import annotations

import os

from sidecar.http.stream import RequestHead


def new_request_id() -> bytes:
    """A random UUID4 in its canonical text form, as bytes."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex().encode("ascii")
    return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


def apply_forwarding(head: RequestHead, remote_ip: bytes) -> None:
    """x-forwarded-for (append), x-forwarded-proto (default http), x-request-id (generate)."""
    xff = head.forwarded_for
    head.forwarded_for = remote_ip if xff is None else xff + b", " + remote_ip
    if head.forwarded_proto is None:
        head.forwarded_proto = b"http"
    if head.request_id is None:
        head.request_id = new_request_id()
