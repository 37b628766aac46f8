"""Generated x-request-id values: UUID4 text, unique, and not repeated by a forked child."""

from __future__ import annotations

import os
import re

from sidecar.config.snapshot import Endpoint
from sidecar.http.headers import new_request_id

UUID4 = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_request_ids_are_unique_uuid4_text() -> None:
    ids = [new_request_id() for _ in range(20000)]
    assert all(UUID4.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_forked_child_does_not_repeat_the_parents_ids() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next ids and leave at once
        try:
            os.write(w, b" ".join(new_request_id() for _ in range(4)))
        finally:
            os._exit(0)
    os.close(w)
    try:
        child = os.read(r, 4096).split()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    parent = [new_request_id() for _ in range(4)]
    assert len(child) == 4 and not set(child) & set(parent)


def test_endpoints_equal_by_value_hash_alike() -> None:
    a = Endpoint("10.0.0.1", 80, frozenset({("app", "x")}), weight=2)
    b = Endpoint("10.0.0.1", 80, frozenset({("app", "x")}), weight=2)
    other_labels = Endpoint("10.0.0.1", 80, frozenset({("app", "y")}), weight=2)
    assert a == b and hash(a) == hash(b)
    assert a != other_labels
    pools = {("h1", a): "pool"}
    assert pools[("h1", b)] == "pool" and ("h1", other_labels) not in pools
