"""Istio's bookinfo routing samples through a real productpage sidecar: one-way rules.

Each test switches the one sidecar process to a sample file (admin reload), then sends real
requests on a fresh keep-alive connection and checks which bookinfo upstream answered. Rules
that send everything one way are checked on every request (`ONE_WAY` of them per service or
user). Where the VirtualService only routes reviews, it runs with destination-rule-all.yaml and
with destination-rule-reviews.yaml (reviews' subsets, RANDOM balancing) in its place.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from .bookinfo import JASON, Bookinfo, Client, Reply, binomial_window, running_bookinfo

ONE_WAY = 1000
DR_ALL = "destination-rule-all.yaml"
REVIEWS_RULES = [DR_ALL, "destination-rule-reviews.yaml"]


@pytest.fixture(scope="module")
def bookinfo() -> Iterator[Bookinfo]:
    with running_bookinfo(DR_ALL, "virtual-service-all-v1.yaml") as b:
        yield b


def only(name: str, n: int = ONE_WAY) -> Counter[str]:
    return Counter({name: n})


def test_all_v1_sends_every_service_to_v1(bookinfo: Bookinfo) -> None:
    bookinfo.use(DR_ALL, "virtual-service-all-v1.yaml")
    with bookinfo.client() as c:
        for service in ("productpage", "reviews", "ratings", "details"):
            assert c.tally(service, ONE_WAY) == only(f"{service}-v1")
            assert c.tally(service, 50, JASON) == only(f"{service}-v1", 50)


def test_the_upstream_sees_the_request_path(bookinfo: Bookinfo) -> None:
    bookinfo.use(DR_ALL, "virtual-service-all-v1.yaml")
    with bookinfo.client() as c:
        reply = c.get("reviews", "/reviews/0?x=1")
    assert (reply.status, reply.body) == (200, "reviews-v1 /reviews/0?x=1")


@pytest.mark.parametrize(
    "host",
    [
        "reviews",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
        "reviews.default.svc.cluster.local:9080",
        "REVIEWS:9080",
    ],
)
def test_every_name_of_the_service_gets_its_routes(bookinfo: Bookinfo, host: str) -> None:
    # Istio's virtual host for a Kubernetes service answers to its short and qualified names,
    # with and without the port (Host is case-insensitive).
    bookinfo.use(DR_ALL, "virtual-service-reviews-v3.yaml")
    with bookinfo.client() as c:
        assert c.tally("reviews", 50, {"Host": host}) == only("reviews-v3", 50)


def test_without_a_virtual_service_reviews_spreads_over_every_version(
    bookinfo: Bookinfo,
) -> None:
    # details-v2 routes only details: reviews falls back to the Service, all three versions.
    bookinfo.use(DR_ALL, "virtual-service-details-v2.yaml")
    n = 1500
    with bookinfo.client() as c:
        seen = c.tally("reviews", n)
    assert sorted(seen) == ["reviews-v1", "reviews-v2", "reviews-v3"]
    # Each version ~Binomial(1500, 1/3): 500 +- 91 (5 sigma).
    low, high = binomial_window(n, 1 / 3)
    assert all(low <= count <= high for count in seen.values()), seen


def test_details_v2(bookinfo: Bookinfo) -> None:
    bookinfo.use(DR_ALL, "virtual-service-details-v2.yaml")
    with bookinfo.client() as c:
        assert c.tally("details", ONE_WAY) == only("details-v2")
        assert c.tally("details", 50, JASON) == only("details-v2", 50)


@pytest.mark.parametrize("rules", REVIEWS_RULES)
def test_reviews_v3(bookinfo: Bookinfo, rules: str) -> None:
    bookinfo.use(rules, "virtual-service-reviews-v3.yaml")
    with bookinfo.client() as c:
        assert c.tally("reviews", ONE_WAY) == only("reviews-v3")
        assert c.tally("reviews", 50, JASON) == only("reviews-v3", 50)


def _users(c: Client, jason: str, others: str) -> None:
    """jason's requests all reach `jason`; everyone else's (no header, other users, a
    different case or a longer name: the match is exact) all reach `others`."""
    assert c.tally("reviews", ONE_WAY, JASON) == only(jason)
    assert c.tally("reviews", ONE_WAY) == only(others)
    for user in ("alice", "Jason", "jason2", ""):
        assert c.tally("reviews", 50, {"end-user": user}) == only(others, 50), user


@pytest.mark.parametrize("rules", REVIEWS_RULES)
def test_reviews_test_v2_sends_jason_to_v2_and_others_to_v1(bookinfo: Bookinfo, rules: str) -> None:
    bookinfo.use(rules, "virtual-service-reviews-test-v2.yaml")
    with bookinfo.client() as c:
        _users(c, jason="reviews-v2", others="reviews-v1")


@pytest.mark.parametrize("rules", REVIEWS_RULES)
def test_reviews_jason_v2_v3_sends_jason_to_v2_and_others_to_v3(
    bookinfo: Bookinfo, rules: str
) -> None:
    bookinfo.use(rules, "virtual-service-reviews-jason-v2-v3.yaml")
    with bookinfo.client() as c:
        _users(c, jason="reviews-v2", others="reviews-v3")


def test_ratings_db_sends_reviews_to_v3_and_ratings_to_v2(bookinfo: Bookinfo) -> None:
    bookinfo.use(DR_ALL, "virtual-service-ratings-db.yaml")
    with bookinfo.client() as c:
        assert c.tally("reviews", ONE_WAY) == only("reviews-v3")
        assert c.tally("ratings", ONE_WAY) == only("ratings-v2")


def test_ratings_mysql_sends_ratings_to_the_v2_mysql_subset(bookinfo: Bookinfo) -> None:
    bookinfo.use(DR_ALL, "virtual-service-ratings-mysql.yaml")
    with bookinfo.client() as c:
        assert c.tally("reviews", ONE_WAY) == only("reviews-v3")
        assert c.tally("ratings", ONE_WAY) == only("ratings-v2-mysql")


def test_ratings_mysql_vm_without_the_vm_is_503(bookinfo: Bookinfo) -> None:
    # Subset v2-mysql-vm exists in the DestinationRule but no workload carries its label.
    bookinfo.use(DR_ALL, "virtual-service-ratings-mysql-vm.yaml")
    with bookinfo.client() as c:
        assert c.tally("ratings", 50) == only("503", 50)
        assert c.tally("reviews", 50) == only("reviews-v3", 50)


def _fresh_get(bookinfo: Bookinfo, service: str) -> Reply:
    """One request on a new connection (accepted under the config current now)."""
    with bookinfo.client() as c:
        return c.get(service)


def _swap_reviews_to_v3(bookinfo: Bookinfo) -> None:
    """all-v1 -> reviews-v3 through the config file watcher; returns once new connections
    are routed by it."""
    bookinfo.write(DR_ALL, "virtual-service-reviews-v3.yaml")
    deadline = time.monotonic() + 5.0
    while _fresh_get(bookinfo, "reviews").upstream != "reviews-v3":
        assert time.monotonic() < deadline, "the watcher did not apply reviews-v3"
        time.sleep(0.05)


def test_swapped_virtual_service_is_applied_without_dropping_a_connection(
    bookinfo: Bookinfo,
) -> None:
    """The watcher applies a replaced VirtualService to new connections; a keep-alive
    connection open across the change keeps being served on the same socket."""
    bookinfo.use(DR_ALL, "virtual-service-all-v1.yaml")
    with bookinfo.client() as old:
        assert old.tally("reviews", 20) == only("reviews-v1", 20)
        sock = old.conn.sock
        _swap_reviews_to_v3(bookinfo)
        replies = [old.get("reviews") for _ in range(20)]
        assert {r.status for r in replies} == {200}
        assert old.conn.sock is sock, "the connection was dropped and reopened"


def test_swapped_virtual_service_applies_to_an_open_connection(bookinfo: Bookinfo) -> None:
    """The next requests on a keep-alive connection opened before the change follow the new
    routes: in Istio a VirtualService change is a route (RDS) update, and Envoy takes each
    stream's route table when its headers arrive; only listener changes drain connections."""
    bookinfo.use(DR_ALL, "virtual-service-all-v1.yaml")
    with bookinfo.client() as old:
        assert old.tally("reviews", 20) == only("reviews-v1", 20)
        _swap_reviews_to_v3(bookinfo)
        assert old.tally("reviews", 20) == only("reviews-v3", 20)
