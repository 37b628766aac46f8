"""DestinationRule `loadBalancer`: simple policies, consistent hash, locality settings.

Theory of operation: `simple` and `consistentHash` exclude each other (a oneof in Istio's API);
a consistent hash has exactly one key source (header, cookie, source IP, query parameter) and
ring hash (default) or maglev, whose table size must be a prime below 5000011 (Envoy's rule);
the deprecated `minimumRingSize` is warned and cannot be combined with either. Locality settings
use `distribute` (weights per target locality summing to 100) or `failover`/`failoverPriority`.
"""

from __future__ import annotations

from sidecar.config import parse_routing_common as common
from sidecar.config.nodes import Node
from sidecar.config.resources_destination import (
    ConsistentHash,
    HTTPCookie,
    LoadBalancerSettings,
    LocalityDistribute,
    LocalityFailover,
    LocalityLbSetting,
)

MAGLEV_MAX = 5000011
SIMPLE = ("UNSPECIFIED", "ROUND_ROBIN", "LEAST_CONN", "LEAST_REQUEST", "RANDOM", "PASSTHROUGH")


def _is_prime(n: int) -> bool:
    if n < 4:
        return n > 1
    if n % 2 == 0:
        return False
    return all(n % k for k in range(3, int(n**0.5) + 1, 2))


def _cookie(node: Node) -> HTTPCookie | None:
    f = node.fields()
    if f is None:
        return None
    name = f.read_required("name", Node.string)
    path = f.string("path")
    ttl = f.read("ttl", lambda n: common.duration(n, allow_zero=True), None)
    f.finish()
    if name == "":
        common.error_at(f, "name", "a cookie name is required")
    return HTTPCookie(name, path, ttl) if name else None


def _ring_size(node: Node) -> int | None:
    f = node.fields()
    if f is None:
        return None
    size = f.read("minimumRingSize", common.count, None)
    f.finish()
    return size


def _maglev(node: Node) -> int | None:
    f = node.fields()
    if f is None:
        return None
    size = f.read_required("tableSize", Node.integer)
    f.finish()
    if size is None:
        return None
    child = f.values["tableSize"]
    if size <= 0:
        child.error("tableSize must be set for maglev")
    elif size >= MAGLEV_MAX:
        child.error(f"tableSize must be less than {MAGLEV_MAX} for maglev")
    elif not _is_prime(size):
        child.error(f"tableSize {size} must be a prime number for maglev")
    else:
        return size
    return None


_HASH_KEYS = ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")


def _consistent_hash(node: Node) -> ConsistentHash | None:
    f = node.fields()
    if f is None:
        return None
    header = f.string("httpHeaderName")
    cookie = f.read("httpCookie", _cookie, None)
    source_ip = f.read("useSourceIp", Node.boolean, False)
    query = f.string("httpQueryParameterName")
    ring = f.read("ringHash", _ring_size, None)
    maglev = f.read("maglev", _maglev, None)
    old_ring = f.read("minimumRingSize", common.count, None)
    f.finish()
    keys = [k for k in _HASH_KEYS if k in f.values]
    if len(keys) != 1:
        node.error(f"a consistent hash needs exactly one of {', '.join(_HASH_KEYS)}")
        return None
    if "ringHash" in f.values and "maglev" in f.values:
        node.error("only one of ringHash and maglev may be set")
        return None
    if "minimumRingSize" in f.values:
        common.warn_at(f, "minimumRingSize", 'deprecated: use "ringHash: {minimumRingSize: N}"')
        if "ringHash" in f.values or "maglev" in f.values:
            common.error_at(f, "minimumRingSize", "only one of minimumRingSize or ringHash/maglev")
            return None
    return ConsistentHash(
        header,
        cookie,
        source_ip,
        query,
        "maglev" in f.values,
        ring if ring is not None else old_ring,
        maglev,
    )


def _weights_map(node: Node) -> tuple[tuple[str, int], ...]:
    def read(child: Node, _locality: str) -> int | None:
        value = child.integer()
        if value is not None and not 0 <= value <= 100:
            child.error(f"weight {value} is not in 0..100")
            return None
        return value

    pairs = common.keyed(node, read)
    out = tuple((k, v) for k, v in pairs if isinstance(v, int))
    if sum(v for _, v in out) != 100 and len(out) == len(pairs):
        node.error("locality weights must sum to 100")
    return out


def _distribute(node: Node) -> LocalityDistribute | None:
    f = node.fields()
    if f is None:
        return None
    src = f.read_required("from", Node.string)
    to = f.read_required("to", _weights_map)
    f.finish()
    return None if src is None or to is None else LocalityDistribute(src, to)


def _failover(node: Node) -> LocalityFailover | None:
    f = node.fields()
    if f is None:
        return None
    src = f.read_required("from", Node.string)
    to = f.read_required("to", Node.string)
    f.finish()
    if src is not None and src == to:
        node.error("failover from and to must be different regions")
        return None
    return None if src is None or to is None else LocalityFailover(src, to)


def _locality(node: Node) -> LocalityLbSetting | None:
    f = node.fields()
    if f is None:
        return None
    distribute = [_distribute(n) for n in common.items(f, "distribute")]
    failover = [_failover(n) for n in common.items(f, "failover")]
    priority = common.opt(f, "failoverPriority", Node.string_list) or ()
    enabled = f.read("enabled", Node.boolean, None)
    f.finish()
    if distribute and (failover or priority):
        node.error("only one of distribute and failover/failoverPriority may be set")
        return None
    return LocalityLbSetting(
        tuple(d for d in distribute if d), tuple(x for x in failover if x), priority, enabled
    )


def _warmup(node: Node) -> float | None:
    f = node.fields()
    if f is None:
        return None
    value = f.read_required("duration", common.duration)
    f.finish()  # minimumPercent, aggression: warned as not implemented
    return value


def load_balancer(node: Node) -> LoadBalancerSettings | None:
    f = node.fields()
    if f is None:
        return None
    simple = f.choice("simple", SIMPLE, "")
    chash = f.read("consistentHash", _consistent_hash, None)
    locality = f.read("localityLbSetting", _locality, None)
    warmup = f.read("warmupDurationSecs", common.duration, None)
    newer = f.read("warmup", _warmup, None)
    f.finish()
    if "simple" in f.values and "consistentHash" in f.values:
        node.error("only one of simple and consistentHash may be set")
        return None
    return LoadBalancerSettings(
        "" if simple == "UNSPECIFIED" else simple,
        chash,
        locality,
        warmup if warmup is not None else newer,
    )
