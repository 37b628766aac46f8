"""Recover where a REDIRECTed connection was going: SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST.

iptables REDIRECT rewrites the destination to the proxy's port; netfilter's conntrack still knows
the original. Linux answers `getsockopt(SOL_IP, SO_ORIGINAL_DST)` with a `sockaddr_in` for IPv4 and
`getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` with a `sockaddr_in6` for IPv6 (both option number 80).
A connection that was not redirected has no conntrack NAT entry: the call fails with ENOENT and we
answer None.
"""

from __future__ import annotations

import socket
import struct

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
_SOL_IP = getattr(socket, "SOL_IP", 0)
_SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """The pre-REDIRECT destination of an accepted TCP socket, or None if it was not redirected."""
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(_SOL_IP, SO_ORIGINAL_DST, 16)
            port, packed = struct.unpack_from("!2xH4s", raw)
            return socket.inet_ntop(socket.AF_INET, packed), port
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(_SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port, packed = struct.unpack_from("!2xH4x16s", raw)
            return socket.inet_ntop(socket.AF_INET6, packed), port
    except OSError:
        return None
    return None
