"""Request header edits the connection manager makes on every proxied request.

Theory of operation: the codec has already lifted x-forwarded-for, x-forwarded-proto and
x-request-id out of the header list (stream.py), so each edit is an attribute store: append the
downstream address to x-forwarded-for, set x-forwarded-proto when absent, generate x-request-id
when absent.

Request ids need to be unique, not secret, so they come from a userspace PRNG (Mersenne Twister)
seeded once from os.urandom, and reseeded in a forked child so that two processes never share a
sequence: about 0.7 us per id and no syscall (os.urandom is a getrandom(2) call per request).
The generator is the one piece of module state here, like the `random` module's own.
"""

from __future__ import annotations

import os
import random

from sidecar.http.stream import RequestHead

_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)  # the version and variant bits
_SET = (0x4 << 76) | (0x2 << 62)  # version 4, variant RFC 4122
_RNG = random.Random(os.urandom(32))
_bits = _RNG.getrandbits  # stays bound to _RNG when a forked child reseeds it


def _reseed() -> None:
    _RNG.seed(os.urandom(32))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> bytes:
    """A random UUID4 in its canonical text form, as bytes."""
    h = b"%032x" % ((_bits(128) & _CLEAR) | _SET)
    return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


def apply_forwarding(head: RequestHead, remote_ip: bytes) -> None:
    """x-forwarded-for (append), x-forwarded-proto (default http), x-request-id (generate)."""
    xff = head.forwarded_for
    head.forwarded_for = remote_ip if xff is None else xff + b", " + remote_ip
    if head.forwarded_proto is None:
        head.forwarded_proto = b"http"
    if head.request_id is None:
        head.request_id = new_request_id()
