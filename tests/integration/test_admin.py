"""The admin (15000) and status (15021) servers through real sockets, against a small target.

`FakeTarget` implements sidecar.admin.target.AdminTarget over real parts (a hand-built Snapshot, a
real Runtime and ClusterManager) and records the commands it receives; the real server comes later.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sidecar.admin.server import start_admin, start_status
from sidecar.admin.target import AdminTarget
from sidecar.bootstrap import Bootstrap
from sidecar.config.snapshot import (
    PASSTHROUGH_CLUSTER,
    Cluster,
    Direction,
    DiscoveryType,
    Endpoint,
    FilterChain,
    FilterChainMatch,
    HttpConnectionManager,
    Listener,
    Protocol,
    Route,
    RouteConfig,
    RouteMatch,
    Snapshot,
    TcpProxy,
    VirtualHost,
    Workload,
)
from sidecar.observability.access_log import FileAccessLogger, NullAccessLogger
from sidecar.runtime import Runtime, StreamInfo
from sidecar.upstream.cluster import ClusterManager
from tests.conftest import require

REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"


def build_snapshot() -> Snapshot:
    reviews = Cluster(
        name=REVIEWS,
        discovery=DiscoveryType.STATIC,
        protocol=Protocol.HTTP,
        endpoints=(
            Endpoint(
                "10.0.0.5",
                9080,
                frozenset({("version", "v1")}),
                locality="r1/z1/s1",
                workload="Pod/default/reviews-v1",
            ),
            Endpoint("10.0.0.6", 9080, weight=2, workload="Pod/default/reviews-v2"),
        ),
        service="reviews.default.svc.cluster.local",
    )
    passthrough = Cluster(name=PASSTHROUGH_CLUSTER, discovery=DiscoveryType.ORIGINAL_DST)
    routes = RouteConfig(
        name="9080",
        virtual_hosts=(
            VirtualHost(
                name="reviews.default.svc.cluster.local:9080",
                domains=("reviews", "reviews.default.svc.cluster.local"),
                routes=(Route(name="default", match=RouteMatch(), cluster=REVIEWS),),
            ),
        ),
    )
    outbound = Listener(
        name="virtualOutbound",
        address="0.0.0.0",
        port=15001,
        direction=Direction.OUTBOUND,
        use_original_dst=True,
        filter_chains=(
            FilterChain(
                name="0.0.0.0_9080",
                match=FilterChainMatch(
                    destination_port=9080,
                    prefix_ranges=(ipaddress.ip_network("10.0.0.0/8"),),
                ),
                filter=HttpConnectionManager(route_config="9080", stat_prefix="outbound_9080"),
            ),
        ),
        default_filter_chain=FilterChain(
            name="PassthroughFilterChain",
            match=FilterChainMatch(),
            filter=TcpProxy(cluster=PASSTHROUGH_CLUSTER, stat_prefix="PassthroughCluster"),
        ),
    )
    return Snapshot(
        version="v7",
        workload=Workload("productpage-v1", "default", frozenset({("app", "productpage")})),
        listeners=(outbound,),
        route_configs={"9080": routes},
        clusters={REVIEWS: reviews, PASSTHROUGH_CLUSTER: passthrough},
        warnings=("mesh.yaml: warning: DestinationRule/default/x: spec.foo: not implemented",),
    )


class FakeTarget:
    """Implements sidecar.admin.target.AdminTarget over real runtime parts."""

    def __init__(self, access_log: FileAccessLogger | NullAccessLogger | None = None) -> None:
        self.bootstrap = Bootstrap(pod_name="productpage-v1", instance_ip="10.0.0.9")
        self._snapshot = build_snapshot()
        manager = ClusterManager()
        manager.update(self._snapshot)
        self.runtime = Runtime(self.bootstrap, manager, access_log or NullAccessLogger())
        self.started_at = time.time() - 5.0
        self.bound: list[tuple[str, str, int]] = [("virtualOutbound", "0.0.0.0", 15001)]
        self.health_failed = False
        self.shutdowns = 0
        self.drains: list[tuple[bool, bool]] = []
        self.reload_issues: list[str] = []
        self.reloads = 0

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def is_ready(self) -> bool:
        return bool(self.bound) and not self.runtime.draining and not self.health_failed

    def listener_addresses(self) -> list[tuple[str, str, int]]:
        return list(self.bound)

    def request_shutdown(self) -> None:
        self.shutdowns += 1

    def drain_listeners(self, inbound_only: bool, graceful: bool) -> None:
        self.drains.append((inbound_only, graceful))
        self.runtime.drain_all()

    def fail_health(self) -> None:
        self.health_failed = True

    def ok_health(self) -> None:
        self.health_failed = False

    def reload(self) -> list[str]:
        self.reloads += 1
        return list(self.reload_issues)


# ---------------------------------------------------------------------------------------------
# Fixtures: the admin and status servers on free loopback ports, an httpx client for each.

TIMEOUT = 5.0


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


@pytest.fixture
async def admin(target: FakeTarget) -> AsyncIterator[httpx.AsyncClient]:
    server = await start_admin(target, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as client:
        yield client
    server.close()


@pytest.fixture
async def status(target: FakeTarget) -> AsyncIterator[httpx.AsyncClient]:
    server = await start_status(target, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as client:
        yield client
    server.close()


def _target_is_an_admin_target(t: FakeTarget) -> AdminTarget:
    return t  # mypy checks FakeTarget against the Protocol here


# ---------------------------------------------------------------------------------------------
# Readiness


async def test_ready_follows_health_and_drain(admin: httpx.AsyncClient, target: FakeTarget) -> None:
    r = await admin.get("/ready")
    assert (r.status_code, r.text) == (200, "LIVE\n")
    assert r.headers["content-type"].startswith("text/plain")
    await admin.post("/healthcheck/fail")
    r = await admin.get("/ready")
    assert (r.status_code, r.text) == (503, "DRAINING\n")
    ok = await admin.post("/healthcheck/ok")
    assert (ok.status_code, ok.text) == (200, "OK\n")
    assert (await admin.get("/ready")).status_code == 200
    target.bound = []
    r = await admin.get("/ready")
    assert (r.status_code, r.text) == (503, "PRE_INITIALIZING\n")


async def test_status_port_only_serves_healthz_ready(
    status: httpx.AsyncClient, target: FakeTarget
) -> None:
    assert (await status.get("/healthz/ready")).status_code == 200
    target.health_failed = True
    assert (await status.get("/healthz/ready")).status_code == 503
    assert (await status.get("/ready")).status_code == 404
    r = await status.post("/healthz/ready")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"


# ---------------------------------------------------------------------------------------------
# Server info and config dump


async def test_server_info(admin: httpx.AsyncClient, target: FakeTarget) -> None:
    r = await admin.get("/server_info")
    assert r.headers["content-type"] == "application/json"
    info = r.json()
    assert info["state"] == "LIVE"
    assert info["hot_restart_version"] == "disabled"
    assert info["version"].startswith("sidecar/")
    assert re.fullmatch(r"\d+s", info["uptime_current_epoch"])
    assert int(info["uptime_all_epochs"][:-1]) >= 5
    assert info["node"]["id"] == "sidecar~10.0.0.9~productpage-v1.default~default.svc.cluster.local"
    assert info["node"]["cluster"] == "productpage.default"
    assert info["command_line_options"]["admin_port"] == 15000
    target.runtime.draining = True
    assert (await admin.get("/server_info")).json()["state"] == "DRAINING"


async def test_config_dump_sections(admin: httpx.AsyncClient) -> None:
    configs = (await admin.get("/config_dump")).json()["configs"]
    types = [c["@type"].rsplit(".", 1)[-1] for c in configs]
    assert types[:4] == [
        "BootstrapConfigDump",
        "ClustersConfigDump",
        "ListenersConfigDump",
        "RoutesConfigDump",
    ]
    boot, clusters, listeners, routes = configs[:4]
    assert boot["bootstrap"]["node"]["id"].startswith("sidecar~10.0.0.9~")
    assert [c["cluster"]["name"] for c in clusters["dynamic_active_clusters"]] == sorted(
        [REVIEWS, "PassthroughCluster"]
    )
    listener = listeners["dynamic_listeners"][0]
    assert listener["name"] == "virtualOutbound"
    chain = listener["active_state"]["listener"]["filter_chains"][0]
    assert chain["match"]["prefix_ranges"] == ["10.0.0.0/8"]
    assert routes["dynamic_route_configs"][0]["route_config"]["name"] == "9080"
    assert listeners["version_info"] == "v7"
    assert "not implemented" in configs[4]["warnings"][0]


async def test_config_dump_resource_filter(admin: httpx.AsyncClient) -> None:
    r = await admin.get("/config_dump", params={"resource": "dynamic_active_clusters"})
    items = r.json()["configs"]
    assert {i["cluster"]["name"] for i in items} == {REVIEWS, "PassthroughCluster"}
    assert all(i["@type"].endswith("ClustersConfigDump.DynamicCluster") for i in items)
    assert (await admin.get("/config_dump", params={"resource": "nope"})).status_code == 404


# ---------------------------------------------------------------------------------------------
# Listeners, clusters, stats


async def test_listeners(admin: httpx.AsyncClient, target: FakeTarget) -> None:
    target.bound.append(("virtualInbound", "::", 15006))
    r = await admin.get("/listeners")
    assert r.text == "virtualOutbound::0.0.0.0:15001\nvirtualInbound::[::]:15006\n"
    statuses = (await admin.get("/listeners", params={"format": "json"})).json()
    first = statuses["listener_statuses"][0]
    assert first["name"] == "virtualOutbound"
    assert first["local_address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 15001}


async def test_clusters_text_and_json(admin: httpx.AsyncClient, target: FakeTarget) -> None:
    state = target.runtime.cluster_manager.get(REVIEWS)
    assert state is not None
    state.counters.upstream_rq_total = 7
    state.counters.upstream_cx_active = 2
    text_lines = (await admin.get("/clusters")).text.splitlines()
    host = f"{REVIEWS}::10.0.0.5:9080"
    for line in (
        f"{host}::health_flags::healthy",
        f"{host}::rq_total::7",
        f"{host}::cx_active::2",
        f"{host}::region::r1",
        f"{host}::sub_zone::s1",
        f"{REVIEWS}::10.0.0.6:9080::weight::2",
        f"{REVIEWS}::observability_name::{REVIEWS}",
        "PassthroughCluster::added_via_api::true",
    ):
        assert line in text_lines
    data = (await admin.get("/clusters", params={"format": "json"})).json()
    reviews = next(c for c in data["cluster_statuses"] if c["name"] == REVIEWS)
    hosts = reviews["host_statuses"]
    assert hosts[0]["address"]["socket_address"] == {"address": "10.0.0.5", "port_value": 9080}
    stats = {s["name"]: s["value"] for s in hosts[0]["stats"]}
    assert stats["rq_total"] == "7"
    assert hosts[0]["health_status"]["eds_health_status"] == "HEALTHY"


def _parse_stats(body: str) -> dict[str, int]:
    out = {}
    for line in body.splitlines():
        name, _, value = line.rpartition(": ")
        out[name] = int(value)
    return out


async def test_stats_text_filter_and_json(admin: httpx.AsyncClient, target: FakeTarget) -> None:
    target.runtime.counters.downstream_rq_total = 42
    state = target.runtime.cluster_manager.get(REVIEWS)
    assert state is not None
    state.counters.upstream_rq_total = 3
    body = (await admin.get("/stats")).text
    names = [line.split(": ")[0] for line in body.splitlines()]
    assert names == sorted(names)
    stats = _parse_stats(body)
    assert stats["http.all.downstream_rq_total"] == 42
    assert stats[f"cluster.{REVIEWS}.upstream_rq_total"] == 3
    assert stats[f"cluster.{REVIEWS}.membership_total"] == 2
    assert stats["server.live"] == 1
    assert stats["server.uptime"] >= 5

    filtered = _parse_stats(
        (await admin.get("/stats", params={"filter": r"upstream_rq_total$"})).text
    )
    assert filtered == {
        f"cluster.{REVIEWS}.upstream_rq_total": 3,
        "cluster.PassthroughCluster.upstream_rq_total": 0,
    }
    used = (await admin.get("/stats", params={"filter": "upstream_rq_total", "usedonly": ""})).text
    assert used == f"cluster.{REVIEWS}.upstream_rq_total: 3\n"
    data = (await admin.get("/stats", params={"format": "json", "filter": "^server\\.live"})).json()
    assert data == {"stats": [{"name": "server.live", "value": 1}]}
    bad = await admin.get("/stats", params={"filter": "("})
    assert bad.status_code == 400


async def test_stats_include_access_log_counters(tmp_path: Path) -> None:
    log = FileAccessLogger(str(tmp_path / "access.log"), "text")
    target = FakeTarget(access_log=log)
    server = await start_admin(target, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        target.runtime.access_log.log(StreamInfo())
        assert log.flush(TIMEOUT)
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            body = (await client.get(f"http://127.0.0.1:{port}/stats?filter=filesystem")).text
        assert "filesystem.write_completed: 1\n" in body
    finally:
        server.close()
        log.close()


# ---------------------------------------------------------------------------------------------
# Commands


async def test_quitquitquit_answers_then_shuts_down(
    admin: httpx.AsyncClient, target: FakeTarget
) -> None:
    r = await admin.post("/quitquitquit")
    assert (r.status_code, r.text) == (200, "OK\n")
    for _ in range(50):
        if target.shutdowns:
            break
        await asyncio.sleep(0.01)
    assert target.shutdowns == 1
    wrong = await admin.get("/quitquitquit")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert target.shutdowns == 1


async def test_drain_listeners_flags(admin: httpx.AsyncClient, target: FakeTarget) -> None:
    assert (await admin.post("/drain_listeners?inboundonly&graceful")).text == "OK\n"
    assert (await admin.post("/drain_listeners")).text == "OK\n"
    assert target.drains == [(True, True), (False, False)]
    assert (await admin.get("/ready")).text == "DRAINING\n"


async def test_reload_reports_issues(admin: httpx.AsyncClient, target: FakeTarget) -> None:
    r = await admin.post("/reload")
    assert (r.status_code, r.text) == (200, "OK\n")
    target.reload_issues = ["mesh.yaml:3: error: Service/default/x: spec.ports: required"]
    r = await admin.post("/reload")
    assert r.status_code == 400
    assert r.text == "mesh.yaml:3: error: Service/default/x: spec.ports: required\n"
    assert target.reloads == 2


async def test_logging_levels(admin: httpx.AsyncClient) -> None:
    root = logging.getLogger()
    before = root.level
    try:
        r = await admin.post("/logging?level=debug")
        assert r.status_code == 200
        assert root.level == logging.DEBUG
        assert "  root: debug\n" in (await admin.get("/logging")).text
        assert (await admin.post("/logging?level=loud")).status_code == 400
        assert (await admin.post("/logging?nosuchlogger=info")).status_code == 400
        await admin.post("/logging?sidecar.admin.http=error")
        assert logging.getLogger("sidecar.admin.http").level == logging.ERROR
    finally:
        root.setLevel(before)
        logging.getLogger("sidecar.admin.http").setLevel(logging.NOTSET)


async def test_unknown_path_is_404_with_help(admin: httpx.AsyncClient) -> None:
    r = await admin.get("/nope")
    assert r.status_code == 404
    assert "/config_dump" in r.text
    assert "/quitquitquit (POST)" in (await admin.get("/help")).text


async def test_curl_against_admin(target: FakeTarget) -> None:
    curl = shutil.which("curl")
    require(curl is not None, "curl is not installed")
    assert curl is not None
    server = await start_admin(target, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            curl,
            "-s",
            "-S",
            "-X",
            "POST",
            f"http://127.0.0.1:{port}/healthcheck/fail",
            "--next",
            "-s",
            "-S",
            f"http://127.0.0.1:{port}/ready",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        assert proc.returncode == 0
        assert out == b"OK\nDRAINING\n"
        assert target.health_failed
    finally:
        server.close()
