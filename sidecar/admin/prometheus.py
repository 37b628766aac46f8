"""`GET /stats/prometheus`: Istio's metrics and the proxy's Envoy stats for Prometheus.

Theory of operation: served on the admin port and on a port of its own (Istio's 15090,
`Bootstrap.prometheus_port`, 0 = off) bound on the status address, as Istio's sidecar exposes
its merged metrics. Each scrape renders the runtime's `MetricsStore` and the admin stats
(`stats.collect`) anew; nothing is kept between scrapes.
"""

from __future__ import annotations

import asyncio

from sidecar.admin import stats
from sidecar.admin.http import Endpoint, Request, Response, Router, serve
from sidecar.admin.target import AdminTarget
from sidecar.observability.metrics_render import CONTENT_TYPE, render

PATH = "/stats/prometheus"


def prometheus_endpoint(target: AdminTarget) -> Endpoint:
    """The endpoint, bound to `target` (the admin router adds it too)."""

    def scrape(req: Request) -> Response:
        body = render(target.runtime.metrics, stats.collect(target))
        return Response(200, body, CONTENT_TYPE)

    return Endpoint("GET", PATH, scrape, "print server stats in prometheus format")


async def start_prometheus(target: AdminTarget, host: str, port: int) -> asyncio.Server:
    """The Prometheus port (Istio's 15090; port 0 = a free port)."""
    return await serve(Router([prometheus_endpoint(target)]), host, port)
