"""Accept a connection on a listener and hand it to the network filter of its filter chain.

Theory of operation: each bound listener socket has a `ListenerHandle`, which holds the current
`Listener` and its compiled `ChainSelector`; a reload replaces both in place, so the socket stays
bound and connections in flight keep the snapshot they were accepted with. `AcceptProtocol` lives
only for the instant of `connection_made`: it reads the addresses (and SO_ORIGINAL_DST on capture
listeners), picks the chain, builds the `Downstream` record, then swaps in the network filter's
protocol (`HttpConnectionManagerProtocol` or `TcpProxyProtocol`) on the same transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from sidecar.config.snapshot import HttpConnectionManager, Listener, Snapshot
from sidecar.http.connection_manager import HttpConnectionManagerProtocol
from sidecar.listener.filter_chain import ChainSelector
from sidecar.listener.original_dst import original_dst
from sidecar.runtime import Address, Downstream, Runtime
from sidecar.tcp.tcp_proxy import TcpProxyProtocol

log = logging.getLogger(__name__)


class ListenerHandle:
    """A bound listener: its socket server and the config new connections are accepted with."""

    __slots__ = ("listener", "selector", "server", "snapshot")

    def __init__(self, listener: Listener, snapshot: Snapshot) -> None:
        self.listener = listener
        self.snapshot = snapshot
        self.selector = ChainSelector(listener)
        self.server: asyncio.Server | None = None

    def update(self, listener: Listener, snapshot: Snapshot) -> None:
        """Adopt a new snapshot; the selector is rebuilt only when the listener changed."""
        if listener != self.listener:
            self.selector = ChainSelector(listener)
        self.listener = listener
        self.snapshot = snapshot

    def bound_addresses(self) -> list[Address]:
        if self.server is None:
            return []
        out: list[Address] = []
        for sock in self.server.sockets:
            name = sock.getsockname()
            out.append((str(name[0]), int(name[1])))
        return out


def _pair(addr: object) -> Address:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return str(addr[0]), int(addr[1])
    return ("0.0.0.0", 0)


class AcceptProtocol(asyncio.Protocol):
    """Classifies one accepted connection, then hands its transport to the chosen filter."""

    __slots__ = ("_handle", "_runtime")

    def __init__(self, runtime: Runtime, handle: ListenerHandle) -> None:
        self._runtime = runtime
        self._handle = handle

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transports are not subclasses
        handle = self._handle
        listener = handle.listener
        remote = _pair(transport.get_extra_info("peername"))
        direct_local = _pair(transport.get_extra_info("sockname"))
        local = direct_local
        orig: Address | None = None
        if listener.use_original_dst:
            sock = transport.get_extra_info("socket")
            orig = original_dst(sock) if sock is not None else None
            if orig is None or orig == direct_local:
                # Not redirected: a connection straight to the capture port. Forwarding it to its
                # "original" destination would loop back here, so refuse it, as Envoy does.
                log.debug("%s: %s was not redirected; closing", listener.name, remote)
                transport.close()
                return
            local = orig
        chain = handle.selector.select(local[0], local[1])
        if chain is None:
            log.debug("%s: no filter chain for %s; closing", listener.name, local)
            transport.close()
            return
        downstream = Downstream(
            remote=remote,
            local=local,
            direct_local=direct_local,
            listener=listener,
            chain=chain,
            snapshot=handle.snapshot,
            original_dst=orig,
        )
        filt = chain.filter
        proto: asyncio.Protocol
        if isinstance(filt, HttpConnectionManager):
            proto = HttpConnectionManagerProtocol(self._runtime, downstream, filt)
        else:
            proto = TcpProxyProtocol(self._runtime, downstream, filt)
        transport.set_protocol(proto)
        proto.connection_made(transport)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - replaced at once
        raise AssertionError("AcceptProtocol received data after hand-off")


def acceptor(runtime: Runtime, handle: ListenerHandle) -> Callable[[], AcceptProtocol]:
    """The protocol factory for `loop.create_server` on this listener."""
    return lambda: AcceptProtocol(runtime, handle)
