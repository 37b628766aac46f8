"""Accept a connection on a listener and hand it to the network filter of its filter chain.

Theory of operation: each bound listener socket has a `ListenerHandle`, which holds the current
`Listener` and its compiled `ChainSelector`; a reload replaces both in place, so the socket stays
bound and connections in flight keep the snapshot they were accepted with. `AcceptProtocol` lives
only for the instant of `connection_made`: it reads the addresses (and SO_ORIGINAL_DST on capture
listeners), picks the chain group, builds the `Downstream` record, then swaps in the network
filter's protocol on the same transport. A group whose chains differ by protocol or by TLS
server name (SNI) first gets a `SniffProtocol` (listener/sniff.py) that peeks at the client's
first bytes, with the listener's detection timeout (server-first protocols fall back to the TCP
chain); an HTTP chain waits for the first bytes with no timeout, to choose its codec (HTTP/1.1 or
h2c); a TCP chain on a declared port gets `TcpProxyProtocol` at once, with its weighted clusters
as compiled by the selector. Sniffed bytes are never lost: the next protocol receives them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import cast

from sidecar.config.snapshot import HttpConnectionManager, Listener, Snapshot
from sidecar.http.codec_select import http_protocol
from sidecar.listener.filter_chain import ChainSelector
from sidecar.listener.original_dst import original_dst
from sidecar.listener.sniff import Detection, SniffProtocol, classify, codec_ready
from sidecar.listener.tls import negotiated_alpn, requested_server_name
from sidecar.runtime import Address, Downstream, Runtime
from sidecar.tcp.tcp_proxy import TcpProxyProtocol

log = logging.getLogger(__name__)


class ListenerHandle:
    """A bound listener: its socket server and the config new connections are accepted with."""

    __slots__ = ("listener", "selector", "servers", "snapshot")

    def __init__(self, listener: Listener, snapshot: Snapshot) -> None:
        self.listener = listener
        self.snapshot = snapshot
        self.selector = ChainSelector(listener)
        self.servers: list[asyncio.Server] = []  # one per bound address (dual stack: two)

    def update(self, listener: Listener, snapshot: Snapshot) -> None:
        """Adopt a new snapshot; the selector is rebuilt only when the listener changed."""
        if listener != self.listener:
            self.selector = ChainSelector(listener)
        self.listener = listener
        self.snapshot = snapshot

    def bound_addresses(self) -> list[Address]:
        out: list[Address] = []
        for server in self.servers:
            for sock in server.sockets:
                name = sock.getsockname()
                out.append((str(name[0]), int(name[1])))
        return out

    def close(self) -> None:
        """Stop accepting; connections already accepted go on."""
        for server in self.servers:
            server.close()


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
        group = handle.selector.group(local[0], local[1])
        if group is None:
            log.debug("%s: no filter chain for %s; closing", listener.name, local)
            transport.close()
            return
        base_ds = Downstream(
            remote=remote,
            local=local,
            direct_local=direct_local,
            listener=listener,
            chain=group.chains[0],
            snapshot=handle.snapshot,
            original_dst=orig,
            server_name=requested_server_name(transport) if listener.tls is not None else "",
        )
        runtime = self._runtime
        selector = handle.selector
        if group.needs_detection:
            # Listener filters: hold the connection until its first bytes (or the detection
            # timeout: server-first protocols) say which chain of the group takes it.
            def detected(t: asyncio.Transport, found: Detection, first: bytes, eof: bool) -> None:
                chain = group.pick(found)
                if chain is None:
                    t.close()
                    return
                ds = replace(
                    base_ds,
                    chain=chain,
                    server_name=found.server_name,
                    alpn=found.alpn,
                    detected=found.kind,
                )
                _hand_off(runtime, t, ds, first, eof, selector)

            sniff = SniffProtocol(runtime, classify, detected, listener.detection_timeout or None)
            transport.set_protocol(sniff)
            sniff.connection_made(transport)
            return
        chain = group.only
        assert chain is not None  # a group without detection has a fixed chain
        downstream = replace(base_ds, chain=chain) if chain is not base_ds.chain else base_ds
        if isinstance(chain.filter, HttpConnectionManager):
            alpn = negotiated_alpn(transport)
            if alpn is not None:  # TLS terminated here: ALPN chose the codec
                _hand_off(runtime, transport, replace(downstream, alpn=(alpn,)), b"", False,
                          selector)
                return
            # The codec (HTTP/1.1 or h2c) is chosen by the first bytes: wait for the client,
            # with no timeout, as Envoy's connection manager does.
            def ready(t: asyncio.Transport, _: Detection, first: bytes, eof: bool) -> None:
                _hand_off(runtime, t, downstream, first, eof, selector)

            sniff = SniffProtocol(runtime, codec_ready, ready, None)
            transport.set_protocol(sniff)
            sniff.connection_made(transport)
            return
        proto = TcpProxyProtocol(runtime, downstream, chain.filter, selector.split(chain.filter))
        transport.set_protocol(proto)
        proto.connection_made(transport)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - replaced at once
        raise AssertionError("AcceptProtocol received data after hand-off")


def _hand_off(
    runtime: Runtime,
    transport: asyncio.Transport,
    downstream: Downstream,
    first: bytes,
    eof: bool,
    selector: ChainSelector,
) -> None:
    """Install the chain's network filter and give it the bytes sniffing read (and the EOF)."""
    filt = downstream.chain.filter
    proto: asyncio.Protocol
    if isinstance(filt, HttpConnectionManager):
        alpn = downstream.alpn[0] if downstream.alpn and not downstream.detected else None
        proto = http_protocol(runtime, downstream, filt, first, alpn)
    else:
        proto = TcpProxyProtocol(runtime, downstream, filt, selector.split(filt))
    transport.set_protocol(proto)
    proto.connection_made(transport)
    if first and not transport.is_closing():
        proto.data_received(first)
    if eof and not transport.is_closing() and not proto.eof_received():
        transport.close()


def acceptor(runtime: Runtime, handle: ListenerHandle) -> Callable[[], AcceptProtocol]:
    """The protocol factory for `loop.create_server` on this listener."""
    return lambda: AcceptProtocol(runtime, handle)
