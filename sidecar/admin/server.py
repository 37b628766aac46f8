"""The admin server (15000, Envoy's endpoints) and the status server (15021, for the kubelet).

Theory of operation: `admin_router(target)` binds each endpoint to the target once and returns a
`Router`; `start_admin` / `start_status` listen with the small HTTP/1.1 server of
`sidecar.admin.http`. Endpoints read the target (and its runtime and snapshot) at request time and
call its commands; answers follow Envoy's formats (text/plain, or JSON with `?format=json`).
Commands that change the server (`/quitquitquit`, ...) are POST only, as in Envoy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from sidecar.admin import dump, stats
from sidecar.admin.http import JSON, Endpoint, Request, Response, Router, serve, text
from sidecar.admin.prometheus import prometheus_endpoint
from sidecar.admin.target import AdminTarget
from sidecar.observability.access_log import FileAccessLogger

# Envoy's level names -> Python's; "off" silences a logger.
_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}
_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
    logging.CRITICAL + 10: "off",
}
_OK = "OK\n"


def _json(data: Any, status: int = 200) -> Response:
    return Response(status, (json.dumps(data, indent=2) + "\n").encode(), JSON)


def _wants_json(req: Request) -> bool:
    return req.query.get("format") == "json"


class _AdminEndpoints:
    """The admin endpoints bound to one target."""

    def __init__(self, target: AdminTarget) -> None:
        self.t = target
        self.router = self._build()

    def _build(self) -> Router:
        get, post = "GET", "POST"
        return Router(
            [
                Endpoint(get, "/", self.help, ""),
                Endpoint(get, "/help", self.help, "print out list of admin commands"),
                Endpoint(get, "/ready", self.ready, "print server state, return 200 if LIVE"),
                Endpoint(get, "/server_info", self.server_info, "print server version/status"),
                Endpoint(get, "/config_dump", self.config_dump, "dump current config"),
                Endpoint(get, "/listeners", self.listeners, "print listener info"),
                Endpoint(get, "/clusters", self.clusters, "upstream cluster status"),
                Endpoint(get, "/stats", self.stats, "print server stats"),
                prometheus_endpoint(self.t),
                Endpoint(get, "/logging", self.logging, "list logger levels"),
                Endpoint(post, "/logging", self.logging, "set logger levels (?level=debug)"),
                Endpoint(post, "/quitquitquit", self.quit, "exit the server"),
                Endpoint(post, "/drain_listeners", self.drain, "drain listeners"),
                Endpoint(post, "/healthcheck/fail", self.health_fail, "fail health checks"),
                Endpoint(post, "/healthcheck/ok", self.health_ok, "pass health checks"),
                Endpoint(post, "/reload", self.reload, "re-read mesh config files now"),
                Endpoint(post, "/reopen_logs", self.reopen_logs, "reopen access logs"),
            ]
        )

    def help(self, req: Request) -> Response:
        return text("admin commands are:\n" + self.router.help_text())

    def ready(self, req: Request) -> Response:
        state = dump.server_state(self.t)
        return text(state + "\n", 200 if state == "LIVE" else 503)

    def server_info(self, req: Request) -> Response:
        return _json(dump.server_info(self.t))

    def config_dump(self, req: Request) -> Response:
        resource = req.query.get("resource")
        if not resource:
            return _json(dump.config_dump(self.t))
        found = dump.config_dump_resource(self.t, resource)
        if found is None:
            return text(f"resource {resource!r} not found in config_dump\n", 404)
        return _json(found)

    def listeners(self, req: Request) -> Response:
        if _wants_json(req):
            return _json(stats.listeners_json(self.t))
        return text(stats.listeners_text(self.t))

    def clusters(self, req: Request) -> Response:
        if _wants_json(req):
            return _json(stats.clusters_json(self.t))
        return text(stats.clusters_text(self.t))

    def stats(self, req: Request) -> Response:
        pattern = None
        raw = req.query.get("filter")
        if raw:
            try:
                pattern = re.compile(raw)
            except re.error as exc:
                return text(f"Invalid regex: {exc}\n", 400)
        items = stats.select(stats.collect(self.t), pattern, req.flag("usedonly"))
        if _wants_json(req):
            return _json(stats.stats_json(items))
        return text(stats.stats_text(items))

    def logging(self, req: Request) -> Response:
        if req.method == "POST":
            for name, value in req.query.items():
                level = _LEVELS.get(value.lower())
                if level is None:
                    return text(f"error: unknown level {value!r}; use {_level_usage()}\n", 400)
                logger = _logger(name)
                if logger is None:
                    return text(f"error: unknown logger {name!r}\n", 400)
                logger.setLevel(level)
        return text("active loggers:\n" + _loggers_text())

    def quit(self, req: Request) -> Response:
        return Response(200, _OK.encode(), after=self.t.request_shutdown)

    def drain(self, req: Request) -> Response:
        self.t.drain_listeners(inbound_only=req.flag("inboundonly"), graceful=req.flag("graceful"))
        return text(_OK)

    def health_fail(self, req: Request) -> Response:
        self.t.fail_health()
        return text(_OK)

    def health_ok(self, req: Request) -> Response:
        self.t.ok_health()
        return text(_OK)

    def reload(self, req: Request) -> Response:
        issues = self.t.reload()
        if not issues:
            return text(_OK)
        return text("".join(f"{issue}\n" for issue in issues), 400)

    def reopen_logs(self, req: Request) -> Response:
        log = self.t.runtime.access_log
        if isinstance(log, FileAccessLogger):
            log.reopen()
        return text(_OK)


def _level_usage() -> str:
    return ", ".join(sorted(_LEVELS))


def _logger(name: str) -> logging.Logger | None:
    """`level` is the root logger; otherwise a logger that exists or belongs to this package."""
    if name == "level":
        return logging.getLogger()
    known = logging.Logger.manager.loggerDict.get(name)
    if isinstance(known, logging.Logger) or name == "sidecar" or name.startswith("sidecar."):
        return logging.getLogger(name)
    return None


def _loggers_text() -> str:
    root = logging.getLogger()
    lines = [f"  root: {_level_name(root.level)}"]
    for name, logger in sorted(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.startswith("sidecar"):
            lines.append(f"  {name}: {_level_name(logger.getEffectiveLevel())}")
    return "\n".join(lines) + "\n"


def _level_name(level: int) -> str:
    return _LEVEL_NAMES.get(level, logging.getLevelName(level).lower())


def admin_router(target: AdminTarget) -> Router:
    """Every admin endpoint bound to `target`."""
    return _AdminEndpoints(target).router


def status_router(target: AdminTarget) -> Router:
    """The status port: the kubelet's readiness probe, nothing else."""

    def ready(req: Request) -> Response:
        if target.is_ready():
            return text("")
        return text(f"proxy is not ready: {dump.server_state(target)}\n", 503)

    return Router([Endpoint("GET", "/healthz/ready", ready, "readiness for the kubelet")])


async def start_admin(target: AdminTarget, host: str, port: int) -> asyncio.Server:
    """The admin server on host:port (Envoy's 15000; port 0 = a free port)."""
    return await serve(admin_router(target), host, port)


async def start_status(target: AdminTarget, host: str, port: int) -> asyncio.Server:
    """The status server on host:port (Istio's 15021; port 0 = a free port)."""
    return await serve(status_router(target), host, port)
