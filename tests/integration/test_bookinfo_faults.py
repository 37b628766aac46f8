"""Istio's bookinfo fault-injection samples through a real productpage sidecar.

ratings-test-delay: jason's requests to ratings wait 7 s, then reach ratings-v1; nobody else's
are delayed (checked on other connections while jason's request is held). ratings-test-abort:
jason gets HTTP 500 without ratings ever seeing the request; others get 200 from v1.
fault-injection-details-v1 (which carries its own details DestinationRule, so it loads alone):
every request to details gets 555 and none reaches details.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from .bookinfo import JASON, Bookinfo, Reply, running_bookinfo

DR_ALL = "destination-rule-all.yaml"
N = 500


@pytest.fixture(scope="module")
def bookinfo() -> Iterator[Bookinfo]:
    with running_bookinfo(DR_ALL, "virtual-service-all-v1.yaml") as b:
        yield b


def _jason_requests(bookinfo: Bookinfo, upstream: str) -> int:
    return sum(r.header("end-user") == "jason" for r in bookinfo.upstreams.requests(upstream))


@pytest.mark.timeout(30)
def test_ratings_delay_holds_jason_for_7s_and_nobody_else(bookinfo: Bookinfo) -> None:
    bookinfo.use(DR_ALL, "virtual-service-ratings-test-delay.yaml")
    delayed: list[Reply] = []

    def jason() -> None:
        with bookinfo.client(timeout=15) as c:
            delayed.append(c.get("ratings", "/ratings/0", JASON))

    thread = threading.Thread(target=jason)
    thread.start()
    others: list[Reply] = []
    with bookinfo.client() as c:
        for i in range(200):
            others.append(c.get("ratings", f"/ratings/{i}", {"end-user": "alice"}))
            others.append(c.get("ratings", f"/ratings/{i}"))
    assert thread.is_alive(), "jason's request was answered before the others were done"
    thread.join(12)
    assert not thread.is_alive()
    (reply,) = delayed
    assert (reply.status, reply.upstream) == (200, "ratings-v1")
    assert 7.0 <= reply.seconds < 8.5, reply.seconds
    assert Counter((r.status, r.upstream) for r in others) == {(200, "ratings-v1"): 400}
    assert max(r.seconds for r in others) < 1.0


def test_ratings_abort_gives_jason_500_and_others_200(bookinfo: Bookinfo) -> None:
    bookinfo.use(DR_ALL, "virtual-service-ratings-test-abort.yaml")
    before = _jason_requests(bookinfo, "ratings-v1")
    with bookinfo.client() as c:
        assert c.tally("ratings", N, JASON) == Counter({"500": N})
        assert c.tally("ratings", N) == Counter({"ratings-v1": N})
        assert c.tally("ratings", 50, {"end-user": "alice"}) == Counter({"ratings-v1": 50})
    assert _jason_requests(bookinfo, "ratings-v1") == before, "an aborted request went upstream"


def test_details_fault_aborts_every_request_with_555(bookinfo: Bookinfo) -> None:
    bookinfo.use("fault-injection-details-v1.yaml")
    before = len(bookinfo.upstreams.requests("details-v1"))
    with bookinfo.client() as c:
        assert c.tally("details", N) == Counter({"555": N})
        assert c.tally("details", 50, JASON) == Counter({"555": 50})
        # Only details is faulted: reviews (no VirtualService) is served.
        assert c.get("reviews").status == 200
    assert len(bookinfo.upstreams.requests("details-v1")) == before
