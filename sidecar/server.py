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
from sidecar.listener.bind import BACKLOG, listening_sockets
from sidecar.listener.tls import server_context
from sidecar.observability.access_log import make_access_logger
from sidecar.observability.tracing import make_tracer
from sidecar.runtime import Runtime
from sidecar.upstream.cluster import ClusterManager
from sidecar.upstream.dns import Resolver

CLUSTER_WARM_TIMEOUT = 5.0  # seconds start-up waits for DNS clusters' first answers
WRITE_SETTLE = 0.2  # seconds a changed config file must stay unchanged before it is read
REBIND_ATTEMPTS = 50  # a listener whose certificates changed: tries to bind again, ...
REBIND_PAUSE = 0.02  # ... this many seconds apart (the old socket closes at a loop turn)

log = logging.getLogger(__name__)

ListenerKey = tuple[str, int]


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
        self._opened: list[tuple[ListenerHandle, list[socket.socket]]] = []  # not yet served
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
            and all(h.servers for h in self._handles.values())
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
            handle.close()
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
            try:
                self._open(listener, snapshot)
            except OSError as exc:
                await self.close()
                raise StartupError(
                    f"listener {listener.name}: cannot bind {listener.address}:{listener.port}: "
                    f"{exc.strerror or exc}"
                ) from exc
        await self._serve_opened()
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

    def _open(self, listener: Listener, snapshot: Snapshot) -> None:
        """Bind and listen now (the kernel queues connections from here on); the event loop
        starts accepting them in `_serve_opened`. Raises OSError."""
        socks = listening_sockets(listener, self.bootstrap.ipv6)
        handle = ListenerHandle(listener, snapshot)
        self._handles[(listener.address, listener.port)] = handle
        self._opened.append((handle, socks))

    async def _serve_opened(self) -> None:
        loop = asyncio.get_running_loop()
        opened, self._opened = self._opened, []
        for handle, socks in opened:
            tls = handle.listener.tls
            ssl = server_context(tls) if tls is not None else None
            for sock in socks:
                handle.servers.append(
                    await loop.create_server(
                        acceptor(self.runtime, handle), sock=sock, backlog=BACKLOG, ssl=ssl
                    )
                )

    def _adopt(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self.cluster_manager.update(snapshot)  # clusters first: the new routes name them
        self.runtime.snapshot = snapshot
        freeze_config_objects()
        rebind = self._reconcile(snapshot)
        self._reconcile_task = asyncio.get_running_loop().create_task(
            self._finish_reconcile(rebind, snapshot)
        )

    def _reconcile(self, snapshot: Snapshot) -> list[Listener]:
        """Listeners to the new snapshot, before any await: removed ones stop accepting (their
        connections finish on their own), kept ones take the new config for new connections, new
        ones are bound and listening. Returns the listeners whose certificates changed: those get
        a new socket server once the old one's socket is gone (`_finish_reconcile`)."""
        wanted = {(lis.address, lis.port): lis for lis in snapshot.listeners}
        rebind: list[Listener] = []
        for key, handle in list(self._handles.items()):
            listener = wanted.get(key)
            if listener is not None and handle.listener.tls == listener.tls:
                handle.update(listener, snapshot)
                continue
            handle.close()
            del self._handles[key]
            if listener is None:
                log.info("listener %s removed", handle.listener.name)
            else:
                rebind.append(listener)
        for key, listener in wanted.items():
            if key not in self._handles and listener not in rebind:
                self._try_open(listener, snapshot)
        return rebind

    def _try_open(self, listener: Listener, snapshot: Snapshot) -> bool:
        try:
            self._open(listener, snapshot)
        except OSError as exc:
            log.debug("listener %s: bind %s:%d: %s", listener.name, listener.address,
                      listener.port, exc)
            return False
        log.info("listener %s added on %s:%d", listener.name, listener.address, listener.port)
        return True

    async def _finish_reconcile(self, rebind: list[Listener], snapshot: Snapshot) -> None:
        # A closed server's socket may be released only at the loop's next turns (uvloop).
        for listener in rebind:
            for _ in range(REBIND_ATTEMPTS):
                await asyncio.sleep(REBIND_PAUSE)
                if self._try_open(listener, snapshot):
                    break
            else:
                log.error("listener %s: cannot bind %s:%d", listener.name, listener.address,
                          listener.port)
        await self._serve_opened()

    async def _watch(self) -> None:
        interval = self.bootstrap.watch_interval
        while True:
            await asyncio.sleep(interval)
            stamps = _file_stamps(self.bootstrap.config_files)
            if stamps == self._stamps:
                continue
            # A file being written (truncated, then filled) must not be read half-way: a YAML
            # stream cut between documents parses, and would drop whatever followed the cut.
            await asyncio.sleep(WRITE_SETTLE)
            if _file_stamps(self.bootstrap.config_files) == stamps:
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
            handle.close()
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
            handle.close()
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
