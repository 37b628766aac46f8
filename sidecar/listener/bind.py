"""Listening sockets for a listener, bound and listening before any await.

A listener's sockets are created, bound and put in the listening state synchronously, and only
then handed to the event loop (`loop.create_server(sock=...)`). From the moment `listen()`
returns, the kernel queues connections for us; so a reload that adds a listener has it accepting
by the time the reload returns (an admin `POST /reload` answered 200 never leaves a client a
window of "connection refused"), and a bind error is known at once.
"""

from __future__ import annotations

import socket

from sidecar.config.snapshot import Listener

BACKLOG = 1024
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux <netinet/in.h>


def listener_hosts(listener: Listener, ipv6: bool) -> list[str]:
    """The addresses to bind: the virtual (original destination) listener on 0.0.0.0 also takes
    IPv6 when the proxy handles IPv6, as Istio's dual-stack virtual outbound listener."""
    if listener.use_original_dst and ipv6 and listener.address == "0.0.0.0":
        return ["0.0.0.0", "::"]
    return [listener.address]


def listening_sockets(listener: Listener, ipv6: bool) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for `listener`; raises OSError (nothing left open)."""
    hosts = listener_hosts(listener, ipv6)
    out: list[socket.socket] = []
    try:
        for host in hosts:
            out.append(_listen(host, listener.port, listener.freebind, v6only=len(hosts) > 1))
    except OSError:
        for sock in out:
            sock.close()
        raise
    return out


def _listen(host: str, port: int, freebind: bool, v6only: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and v6only:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if freebind:
            # Envoy's listener `freebind`: the address need not be on this host yet, as a load
            # balancer's address routed to this node is not.
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)  # IPv4 option, honoured for IPv6
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
