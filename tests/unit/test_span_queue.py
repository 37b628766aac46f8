"""The span export queue posts to a real HTTP collector: full batches at once, the rest on the
flush timer, everything on close; each post is valid Zipkin v2 JSON."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sidecar.observability.tracing_export import FinishedSpan, SpanQueue
from tests.integration.zipkin_schema import assert_valid
from tests.unit.test_span_encoder import spans

INTERVAL = 1.5  # the queue's flush timer in these tests


def as_is(span: FinishedSpan) -> FinishedSpan:
    """The queue's span maker for spans that are made already."""
    return span


@contextmanager
def collector() -> Iterator[tuple[str, list[list[dict[str, object]]]]]:
    """A Zipkin-like intake on 127.0.0.1 that records each post's spans, in order."""
    posts: list[list[dict[str, object]]] = []

    class Intake(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(json.loads(body))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Intake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v2/spans", posts
    finally:
        server.shutdown()
        server.server_close()


def wait_for(posts: list[list[dict[str, object]]], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(posts) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_full_batch_goes_at_once_and_the_spans_behind_it_on_the_timer() -> None:
    with collector() as (url, posts):
        queue = SpanQueue(url, as_is, batch=4, interval=INTERVAL)
        started = time.monotonic()
        for span in [*spans(), *spans()[:1]]:  # 5 spans: one full batch and one more
            queue.submit(span)
        wait_for(posts, 1, INTERVAL)
        time.sleep(0.3)  # time enough for a second post, if one were made
        assert [len(p) for p in posts] == [4]  # the fifth did not cost a post of its own
        assert time.monotonic() - started < INTERVAL
        wait_for(posts, 2, 2 * INTERVAL)
        assert [len(p) for p in posts] == [4, 1]
        assert time.monotonic() - started >= INTERVAL * 0.9  # on the timer
        queue.close()
        c = queue.counters
        assert (c.reports_sent, c.spans_sent, c.reports_failed, c.spans_dropped) == (2, 5, 0, 0)
        for post in posts:
            assert_valid(post)


def test_closing_posts_what_is_queued_without_waiting_for_the_timer() -> None:
    with collector() as (url, posts):
        queue = SpanQueue(url, as_is, batch=4, interval=60.0)
        for span in spans()[:3]:
            queue.submit(span)
        started = time.monotonic()
        queue.close(timeout=5.0)
        assert time.monotonic() - started < 5.0
        assert [len(p) for p in posts] == [3]
        assert [s["id"] for s in posts[0]] == [f"{s.record.span_id:016x}" for s in spans()[:3]]
