"""A collector that accepts spans but never answers, under a load of sampled requests.

Every request is sampled (100%) and driven by hey through two real sidecars; the collector
accepts each connection and reads the post, and never answers. The export thread waits out its
timeout on every post, so the bounded queue fills and later spans are dropped. What a user would
notice: every request still answered 200 without a stall, the proxies' memory flat once the
queue is full, and the drops counted in admin /stats (tracing.zipkin.spans_dropped).
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from .test_tracing import app as app  # the fixture
from .test_tracing import hey, sidecar_pair, zipkin_stats

WARMUP, LOAD = 6000, 20000  # the queue (4096 spans) is full after the warm-up
CONCURRENCY = 16


@contextmanager
def silent_collector() -> Iterator[str]:
    """A listener that accepts and reads everything, and never writes a byte back."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([listener, *conns], [], [], 0.1)
            for s in ready:
                if s is listener:
                    conns.append(listener.accept()[0])
                elif not s.recv(65536):
                    conns.remove(s)
                    s.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for s in (listener, *conns):
            s.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1])


@pytest.mark.timeout(240)
def test_a_collector_that_never_answers_costs_requests_nothing(app: int) -> None:
    with silent_collector() as address, sidecar_pair(app, address, 100) as pair:
        procs = {"a": pair.a.pid(), "b": pair.b.pid()}
        start = {k: rss_kib(pid) for k, pid in procs.items()}
        assert hey(pair, WARMUP, CONCURRENCY)[0] == WARMUP
        warm = {k: rss_kib(pid) for k, pid in procs.items()}
        ok, p99, slowest = hey(pair, LOAD, CONCURRENCY)
        end = {k: rss_kib(pid) for k, pid in procs.items()}
        stats = {k: zipkin_stats(sc) for k, sc in (("a", pair.a), ("b", pair.b))}
    report = f"rss KiB start {start} warm {warm} end {end}; p99 {p99}s slowest {slowest}s; {stats}"
    assert ok == LOAD, report
    assert p99 < 0.25 and slowest < 1.5, report  # no request waited for the collector
    for k in procs:
        assert end[k] - warm[k] < 6 * 1024, report  # flat once the queue is full
        assert end[k] - start[k] < 40 * 1024, report  # the queue's bound, at most
        s = stats[k]
        assert s["tracing.zipkin.spans_sent"] == 0, report
        # Nearly everything beyond the queue's 4096 (and what the thread holds) was dropped.
        assert s["tracing.zipkin.spans_dropped"] >= WARMUP + LOAD - 3 * 4096, report
