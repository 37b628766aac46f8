"""Config handling a user meets: `sidecar validate` on broken VirtualService / DestinationRule
files (file:line, object, field path, reason), and editing the watched config file while
traffic flows (a new VirtualService takes effect without dropping a connection; a broken edit is
refused and the old routes keep serving)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from .istio_tasks import NS, egress_sidecar, join, running, service, subsets_rule, workload
from .routing_helpers import Client, echo

BIND = "127.0.78.4"

BROKEN = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {NS}}}
spec:
  hosts: [reviews]
  http:
  - matchs:
    - headers: {{end-user: {{exact: jason}}}}
    route:
    - destination: {{host: reviews, subset: v2}}
  - match:
    - uri: {{regex: "/api/(?!internal).*"}}
    route:
    - destination: {{host: reviews, subset: v1}}
    timeout: 3 seconds
  - match:
    - uri: {{prefix: /x}}
      withoutHeaders: {{x-debug: {{exact: "1"}}}}
    route:
    - destination: {{subset: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: {NS}}}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBINS}}
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v1
    labels: {{version: v2}}
"""


def validate(path: Path) -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, "-m", "sidecar.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=30)
    return done.returncode, (done.stdout + done.stderr).splitlines()


def test_validate_names_file_line_object_field_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "reviews.yaml"
    path.write_text(BROKEN)
    code, lines = validate(path)
    assert code == 1, lines
    vs, dr = "VirtualService/shop/reviews", "DestinationRule/shop/reviews"
    # A typo in a field name is reported (kubectl's strict decoding refuses it; here it is a
    # warning), and so is what it does: the rule without its match takes every request.
    assert f"{path}:7: warning: {vs}: spec.http[0].matchs: field not implemented; ignored" in lines
    assert any(ln.startswith(f"{path}:11: warning: {vs}: spec.http[1]: rule never used")
               for ln in lines), lines
    want = [
        # Istio's regexes are RE2: no lookaround, Envoy would refuse this one.
        (12, vs, "spec.http[1].match[0].uri.regex", "invalid regex"),
        (15, vs, "spec.http[1].timeout", "not a duration"),
        (20, vs, "spec.http[2].route[0].destination.host", "missing required field"),
        (28, dr, "spec.trafficPolicy.loadBalancer.simple", "'ROUND_ROBINS' is not one of"),
        (32, dr, "spec.subsets[1]", "duplicate subset name 'v1'"),
    ]
    for line, obj, field, reason in want:
        hits = [ln for ln in lines if ln.startswith(f"{path}:{line}: error: {obj}: {field}: ")]
        assert hits and reason in hits[0], (line, field, lines)
    assert sum(": error: " in ln for ln in lines) == len(want), lines


def test_validate_accepts_re2_regexes_and_the_unbroken_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {NS}}}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {{regex: '/api/v[0-9]+/(?P<kind>[a-z]+)/\\d+(?i:/EDIT)?'}}
    - headers: {{user-agent: {{regex: '.*(Android|iPhone).*'}}}}
    route:
    - destination: {{host: reviews}}
""")
    code, lines = validate(path)
    assert code == 0, lines


def _routes(version: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: {NS}}}
spec:
  hosts: [web]
  http:
  - route: [{{destination: {{host: web, subset: {version}}}}}]
"""


async def test_editing_the_watched_file_while_traffic_flows() -> None:
    v1, v2 = await echo("v1").start(), await echo("v2").start()
    base = join(service("web", ("http", 80)), workload("web", "v1", {"http": v1.port}),
                workload("web", "v2", {"http": v2.port}), subsets_rule("web", "v1", "v2"),
                egress_sidecar(BIND, (80, "HTTP")))
    seen: list[tuple[float, str]] = []
    stop = asyncio.Event()

    async def traffic(c: Client) -> None:
        while not stop.is_set():  # one keep-alive connection for the whole test
            r = await c.request("/", host="web")
            assert r.status == 200, r
            seen.append((time.monotonic(), r.header("x-up") or "?"))
            await asyncio.sleep(0.005)

    async def until(version: str, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if seen and seen[-1][1] == version:
                return seen[-1][0]
            await asyncio.sleep(0.02)
        raise AssertionError(f"{version} never answered: {seen[-5:]}")

    try:
        with running(join(base, _routes("v1"))) as mesh:
            reader, writer = await asyncio.open_connection(BIND, 80)
            c = Client(reader, writer)
            task = asyncio.create_task(traffic(c))
            try:
                await until("v1")
                mesh.proc.config.write_text(join(base, _routes("v2")))  # the watcher adopts it
                await until("v2")
                mesh.proc.config.write_text(join(base, _routes("v1")).replace(
                    "subset: v1}", "subset: v1, port: {number: http}}"))
                mesh.proc.wait_log("config rejected", timeout=5)
                await asyncio.sleep(0.3)
                assert seen[-1][1] == "v2"  # the old routes stay
                assert not task.done()
            finally:
                stop.set()
                async with asyncio.timeout(5):
                    await task
                c.close()
    finally:
        v1.close()
        v2.close()
    assert v1.accepts == 1 and v2.accepts == 1  # the proxy's upstream connections were reused
    assert [u for _, u in seen].count("?") == 0
