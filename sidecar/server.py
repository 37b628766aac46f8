"""The proxy process: snapshot, listeners, cluster manager, admin; reload and drain.

Theory of operation:
- Start: load and translate the mesh config (a bad config at start is fatal, with every issue
  printed), adopt the snapshot (clusters, then listeners), start the admin and status servers and
  the config watcher.
- Reload (file change, or admin POST /reload): load and translate off to the side; on any error
  log the issues and keep running the current snapshot. On success swap the snapshot in one
  assignment, update clusters (unchanged ones keep their pools), and reconcile listeners by
  address: new ones are bound, removed ones stop accepting (their connections finish on their
  own), kept ones get the new config for new connections. Connections in flight keep theirs.
- Drain (SIGTERM/SIGINT, or POST /quitquitquit): stop accepting on every listener, ask every
  connection to finish (idle keep-alive connections close now, requests in flight complete with
  `connection: close`), wait until none is left or the termination drain duration has passed,
  abort what remains, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from sidecar.admin.prometheus import start_prometheus
from sidecar.admin.server import start_admin, start_status
from sidecar.bootstrap import Bootstrap
from sidecar.config.load import load_paths
from sidecar.config.snapshot import Direction, Listener, Snapshot
from sidecar.config.translate import translate
from sidecar.errors import ConfigError, SidecarError
from sidecar.listener.accept import ListenerHandle, acceptor
from sidecar.listener.tls import server_context
from sidecar.observability.access_log import make_access_logger
from sidecar.observability.tracing import make_tracer
from sidecar.runtime import Runtime
from sidecar.upstream.cluster import ClusterManager
from sidecar.upstream.dns import Resolver

CLUSTER_WARM_TIMEOUT = 5.0  # seconds start-up waits for DNS clusters' first answers
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux <netinet/in.h>

log = logging.getLogger(__name__)

ListenerKey = tuple[str, int]


def freebind_socket(address: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound with IP_FREEBIND: the address need not be local yet
    (Envoy's listener `freebind`), as a load balancer's address routed to this node is not."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def freeze_config_objects() -> None:
    """Move the objects alive now (the config just adopted: millions of them for a big mesh)
    out of the cyclic garbage collector's reach (gc.freeze), so its collections stop rescanning
    them while requests run. The previous freeze is undone first, so whatever the last config
    left as cyclic garbage is collected once, here, off the request path."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class StartupError(SidecarError):
    """The proxy cannot start: bad config at start, or a port it cannot bind."""


def build_snapshot(boot: Bootstrap) -> Snapshot:
    """Load and translate the bootstrap's config files; raises ConfigError with every issue."""
    mesh = load_paths(boot.config_files)
    snapshot = translate(mesh, boot)
    for warning in snapshot.warnings:
        log.warning("%s", warning)
    return snapshot


def _file_stamps(paths: Iterable[Path]) -> tuple[tuple[int, int] | None, ...]:
    stamps: list[tuple[int, int] | None] = []
    for p in paths:
        try:
            st = p.stat()
            stamps.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


class ProxyServer:
    """One proxy process; implements the admin server's AdminTarget."""

    def __init__(self, bootstrap: Bootstrap) -> None:
        self.bootstrap = bootstrap
        self.started_at = time.time()
        self.cluster_manager = ClusterManager(
            Resolver.from_servers(bootstrap.dns_resolvers, ipv6=bootstrap.ipv6)
        )
        self.access_logger = make_access_logger(bootstrap.access_log, bootstrap.access_log_format)
        self.runtime = Runtime(bootstrap, self.cluster_manager, self.access_logger)
        self.runtime.tracer = make_tracer(bootstrap)
        self._snapshot: Snapshot | None = None
        self._handles: dict[ListenerKey, ListenerHandle] = {}
        self._admin: list[asyncio.Server] = []
        self._watch_task: asyncio.Task[None] | None = None
        self._reconcile_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._health_failed = False
        self._stamps = _file_stamps(bootstrap.config_files)
        self.exit_code = 0

    # -- AdminTarget ---------------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        assert self._snapshot is not None, "server not started"
        return self._snapshot

    def is_ready(self) -> bool:
        return (
            self._snapshot is not None
            and not self.runtime.draining
            and not self._health_failed
            and all(h.server is not None for h in self._handles.values())
        )

    def listener_addresses(self) -> list[tuple[str, str, int]]:
        out: list[tuple[str, str, int]] = []
        for handle in self._handles.values():
            for host, port in handle.bound_addresses():
                out.append((handle.listener.name, host, port))
        return out

    def request_shutdown(self) -> None:
        self._stop.set()

    def drain_listeners(self, inbound_only: bool, graceful: bool) -> None:
        for handle in self._handles.values():
            if inbound_only and handle.listener.direction is not Direction.INBOUND:
                continue
            if handle.server is not None:
                handle.server.close()
        if graceful:
            self.runtime.drain_all()

    def fail_health(self) -> None:
        self._health_failed = True

    def ok_health(self) -> None:
        self._health_failed = False

    def reload(self) -> list[str]:
        """Re-read the config now; returns the issues that refused it (empty: adopted)."""
        try:
            snapshot = build_snapshot(self.bootstrap)
        except ConfigError as exc:
            issues = [str(i) for i in exc.issues]
            for line in issues:
                log.error("config rejected, keeping version %s: %s", self.snapshot.version, line)
            return issues
        if snapshot.version == self.snapshot.version:
            return []
        self._adopt(snapshot)
        log.info("config version %s adopted", snapshot.version)
        return []

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load config, bind every listener and the admin ports; raises StartupError."""
        try:
            snapshot = build_snapshot(self.bootstrap)
        except ConfigError as exc:
            raise StartupError(f"invalid mesh config:\n{exc}") from exc
        self._snapshot = self.runtime.snapshot = snapshot
        self.cluster_manager.update(snapshot)
        self.cluster_manager.start()
        freeze_config_objects()
        # As Envoy: listeners open once clusters are warmed (DNS clusters resolved once), so
        # the first requests do not find a DNS cluster empty; bounded, a slow DNS only delays.
        for name in await self.cluster_manager.warm(CLUSTER_WARM_TIMEOUT):
            log.warning("cluster %s: not resolved after %.0f s; starting without it", name,
                        CLUSTER_WARM_TIMEOUT)
        for listener in snapshot.listeners:
            handle = ListenerHandle(listener, snapshot)
            try:
                await self._bind(handle)
            except OSError as exc:
                await self.close()
                raise StartupError(
                    f"listener {listener.name}: cannot bind {listener.address}:{listener.port}: "
                    f"{exc.strerror or exc}"
                ) from exc
            self._handles[(listener.address, listener.port)] = handle
        await self._start_admin()
        if self.bootstrap.watch_config and self.bootstrap.config_files:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch())
        for name, host, port in self.listener_addresses():
            log.info("listener %s on %s:%d", name, host, port)

    async def _start_admin(self) -> None:
        boot = self.bootstrap
        try:
            if boot.admin_port >= 0:
                srv = await start_admin(self, boot.admin_address, boot.admin_port)
                self._admin.append(srv)
                for sock in srv.sockets:
                    log.info("admin on %s:%d", *sock.getsockname()[:2])
            if boot.status_port:
                srv = await start_status(self, boot.status_address, boot.status_port)
                self._admin.append(srv)
            if boot.prometheus_port:  # Istio's 15090, on the status address
                srv = await start_prometheus(self, boot.status_address, boot.prometheus_port)
                self._admin.append(srv)
        except OSError as exc:
            await self.close()
            raise StartupError(f"admin/status port: {exc.strerror or exc}") from exc

    async def _bind(self, handle: ListenerHandle) -> None:
        loop = asyncio.get_running_loop()
        listener = handle.listener
        host: str | list[str] = listener.address
        if listener.use_original_dst and self.bootstrap.ipv6 and listener.address == "0.0.0.0":
            host = ["0.0.0.0", "::"]
        ssl = server_context(listener.tls) if listener.tls is not None else None
        if listener.freebind:
            sock = freebind_socket(listener.address, listener.port)
            handle.server = await loop.create_server(
                acceptor(self.runtime, handle), sock=sock, backlog=1024, ssl=ssl
            )
            return
        handle.server = await loop.create_server(
            acceptor(self.runtime, handle),
            host=host,
            port=listener.port,
            reuse_address=True,
            backlog=1024,
            ssl=ssl,
        )

    def _adopt(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self.cluster_manager.update(snapshot)  # clusters first: the new routes name them
        self.runtime.snapshot = snapshot
        freeze_config_objects()
        self._reconcile_task = asyncio.get_running_loop().create_task(
            self._reconcile(snapshot.listeners, snapshot)
        )

    async def _reconcile(self, listeners: tuple[Listener, ...], snapshot: Snapshot) -> None:
        wanted = {(lis.address, lis.port): lis for lis in listeners}
        for key, handle in list(self._handles.items()):
            if key not in wanted:
                if handle.server is not None:
                    handle.server.close()
                del self._handles[key]
                log.info("listener %s removed", handle.listener.name)
        for key, listener in wanted.items():
            existing = self._handles.get(key)
            if existing is not None:
                if existing.listener.tls == listener.tls:
                    existing.update(listener, snapshot)
                    continue
                # New certificates: a new socket server (connections in flight keep theirs).
                if existing.server is not None:
                    existing.server.close()
                del self._handles[key]
            handle = ListenerHandle(listener, snapshot)
            try:
                await self._bind(handle)
            except OSError as exc:
                log.error("listener %s: cannot bind %s:%d: %s", listener.name, *key, exc)
                continue
            self._handles[key] = handle
            log.info("listener %s added on %s:%d", listener.name, *key)

    async def _watch(self) -> None:
        interval = self.bootstrap.watch_interval
        while True:
            await asyncio.sleep(interval)
            stamps = _file_stamps(self.bootstrap.config_files)
            if stamps != self._stamps:
                self._stamps = stamps
                log.info("config files changed; reloading")
                self.reload()

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT or /quitquitquit, then drain; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        await self._stop.wait()
        await self.drain_and_stop()
        return self.exit_code

    async def drain_and_stop(self) -> None:
        deadline = self.bootstrap.termination_drain_duration
        log.info("draining %d connections (up to %.1fs)", len(self.runtime.connections), deadline)
        for handle in self._handles.values():
            if handle.server is not None:
                handle.server.close()
        self.runtime.drain_all()
        end = time.monotonic() + deadline
        while self.runtime.connections and time.monotonic() < end:
            await asyncio.sleep(0.05)
        if self.runtime.connections:
            log.warning("drain time over; closing %d connections", len(self.runtime.connections))
            self.runtime.abort_all()
            await asyncio.sleep(0)
        await self.close()

    async def close(self) -> None:
        for task in (self._watch_task, self._reconcile_task):
            if task is not None:
                task.cancel()
        for handle in self._handles.values():
            if handle.server is not None:
                handle.server.close()
        for srv in self._admin:
            srv.close()
        self.cluster_manager.close()
        close_log = getattr(self.access_logger, "close", None)
        if close_log is not None:
            close_log()
        tracer = self.runtime.tracer
        if tracer is not None:
            await asyncio.to_thread(tracer.close)  # posts what is queued, bounded
        log.info("stopped (pid %d)", os.getpid())
