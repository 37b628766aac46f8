"""The route table: a RouteConfig compiled once, then matched per request without allocation.

Theory of operation: `route_table(rc)` compiles a `RouteConfig` into a `RouteTable` the first time
it is asked for and caches it by object identity (the cache holds the RouteConfig itself, so an id
is never reused while cached; it is bounded and drops the oldest entries when a long run of reloads
has produced many configs). Compilation builds:

- a dict from lower-cased exact domain (":port" forms included as listed) to virtual host, then
  "*.suffix" wildcards longest first, then "prefix*" wildcards longest first, then "*" (Envoy's
  order); results of the wildcard search are memoised per Host value (bounded);
- per route, a matcher: prefix (on the path with its query), exact path or full-match regex (on
  the path without the query), optionally case-insensitive, plus header matchers; regexes compiled
  here, once.

Weighted clusters are picked with cumulative weights computed at compile time.
"""

from __future__ import annotations

import bisect
import random
import re

from sidecar.config.snapshot import HeaderMatch, Route, RouteConfig, VirtualHost
from sidecar.http.stream import RequestHead

_PREFIX, _PATH, _REGEX = 0, 1, 2
_CACHE_MAX = 64
_HOST_MEMO_MAX = 1024


class _HeaderMatcher:
    __slots__ = ("exact", "invert", "name", "prefix", "present", "regex")

    def __init__(self, m: HeaderMatch) -> None:
        self.name = m.name.lower().encode("latin-1")
        self.exact = m.exact.encode("latin-1") if m.exact is not None else None
        self.prefix = m.prefix.encode("latin-1") if m.prefix is not None else None
        self.regex = re.compile(m.regex.encode("latin-1")) if m.regex is not None else None
        self.present = m.present
        self.invert = m.invert

    def matches(self, head: RequestHead) -> bool:
        value = head.header(self.name)
        if self.present is not None:
            result = (value is not None) == self.present
        elif value is None:
            result = False
        elif self.exact is not None:
            result = value == self.exact
        elif self.prefix is not None:
            result = value.startswith(self.prefix)
        elif self.regex is not None:
            result = self.regex.fullmatch(value) is not None
        else:
            result = True
        return result != self.invert


class CompiledRoute:
    """One route with its matcher compiled."""

    __slots__ = ("_kind", "_value", "cumulative", "fixed_cluster", "headers", "ignore_case",
                 "plain_prefix", "regex", "route", "total_weight")

    def __init__(self, route: Route) -> None:
        self.route = route
        m = route.match
        self.ignore_case = not m.case_sensitive
        self.regex: re.Pattern[bytes] | None = None
        if m.regex is not None:
            self._kind = _REGEX
            flags = re.IGNORECASE if self.ignore_case else 0
            self.regex = re.compile(m.regex.encode("utf-8"), flags)
            self._value = b""
        elif m.path is not None:
            self._kind = _PATH
            self._value = m.path.encode("utf-8")
        else:
            self._kind = _PREFIX
            self._value = (m.prefix or "").encode("utf-8")
        if self.ignore_case:
            self._value = self._value.lower()
        self.headers = tuple(_HeaderMatcher(h) for h in m.headers)
        weights = [max(0, w.weight) for w in route.weighted_clusters]
        acc: list[int] = []
        total = 0
        for w in weights:
            total += w
            acc.append(total)
        self.cumulative = acc
        self.total_weight = total
        # The common cases, answered without a call: the cluster when there is no split, and
        # the prefix when matching is a case-sensitive prefix test and nothing else.
        self.fixed_cluster: str | None = route.cluster if route.cluster or not total else None
        simple = self._kind == _PREFIX and not self.ignore_case and not self.headers
        self.plain_prefix: bytes | None = self._value if simple else None

    def matches(self, path: bytes, head: RequestHead) -> bool:
        kind = self._kind
        if self.ignore_case:
            path = path.lower()
        if kind == _PREFIX:
            if not path.startswith(self._value):
                return False
        else:
            bare = path.split(b"?", 1)[0].split(b"#", 1)[0]
            if kind == _PATH:
                if bare != self._value:
                    return False
            elif self.regex is None or self.regex.fullmatch(bare) is None:
                return False
        return all(h.matches(head) for h in self.headers) if self.headers else True

    def cluster(self) -> str:
        """The destination cluster name ("" when the route names none)."""
        route = self.route
        if route.cluster or not self.total_weight:
            return route.cluster
        i = bisect.bisect_right(self.cumulative, random.randrange(self.total_weight))
        return route.weighted_clusters[i].cluster


class CompiledVirtualHost:
    """A virtual host's routes, compiled."""

    __slots__ = ("routes", "vhost")

    def __init__(self, vhost: VirtualHost) -> None:
        self.vhost = vhost
        self.routes = tuple(CompiledRoute(r) for r in vhost.routes)

    def match(self, head: RequestHead) -> CompiledRoute | None:
        path = head.path
        for r in self.routes:
            prefix = r.plain_prefix
            if prefix is not None:
                if path.startswith(prefix):
                    return r
            elif r.matches(path, head):
                return r
        return None


class RouteTable:
    """Virtual host lookup by authority, Envoy's order; built once per RouteConfig."""

    __slots__ = ("_default", "_exact", "_memo", "_prefixes", "_suffixes", "config")

    def __init__(self, rc: RouteConfig) -> None:
        self.config = rc
        self._exact: dict[bytes, CompiledVirtualHost] = {}
        suffixes: list[tuple[bytes, CompiledVirtualHost]] = []
        prefixes: list[tuple[bytes, CompiledVirtualHost]] = []
        self._default: CompiledVirtualHost | None = None
        for vh in rc.virtual_hosts:
            cvh = CompiledVirtualHost(vh)
            for domain in vh.domains:
                d = domain.lower().encode("utf-8")
                if d == b"*":
                    if self._default is None:
                        self._default = cvh
                elif d.startswith(b"*"):
                    suffixes.append((d[1:], cvh))
                elif d.endswith(b"*"):
                    prefixes.append((d[:-1], cvh))
                else:
                    self._exact.setdefault(d, cvh)
        # Longest first; stable sort keeps config order among equal lengths.
        self._suffixes = sorted(suffixes, key=lambda p: -len(p[0]))
        self._prefixes = sorted(prefixes, key=lambda p: -len(p[0]))
        self._memo: dict[bytes, CompiledVirtualHost | None] = {}

    def virtual_host(self, authority: bytes) -> CompiledVirtualHost | None:
        memo = self._memo
        if authority in memo:
            return memo[authority]
        return self._lookup(authority)

    def _lookup(self, authority: bytes) -> CompiledVirtualHost | None:
        memo = self._memo
        host = authority.lower()
        found = self._exact.get(host)
        if found is None:
            found = self._wildcard(host)
        if len(memo) >= _HOST_MEMO_MAX:
            memo.clear()
        memo[authority] = found
        return found

    def _wildcard(self, host: bytes) -> CompiledVirtualHost | None:
        for suffix, cvh in self._suffixes:
            if len(host) > len(suffix) and host.endswith(suffix):
                return cvh
        for prefix, cvh in self._prefixes:
            if len(host) > len(prefix) and host.startswith(prefix):
                return cvh
        return self._default

    def route(self, head: RequestHead) -> CompiledRoute | None:
        """The first route of the matching virtual host, or None (404 NR)."""
        authority = head.authority
        memo = self._memo
        vh = memo[authority] if authority in memo else self._lookup(authority)
        if vh is None:
            return None
        return vh.match(head)


class _TableCache:
    """Compiled tables by RouteConfig identity; holds the config so its id stays unique."""

    __slots__ = ("_tables",)

    def __init__(self) -> None:
        self._tables: dict[int, tuple[RouteConfig, RouteTable]] = {}

    def get(self, rc: RouteConfig) -> RouteTable:
        hit = self._tables.get(id(rc))
        if hit is not None and hit[0] is rc:
            return hit[1]
        table = RouteTable(rc)
        if len(self._tables) >= _CACHE_MAX:
            oldest = next(iter(self._tables))
            del self._tables[oldest]
        self._tables[id(rc)] = (rc, table)
        return table


_CACHE = _TableCache()


def route_table(rc: RouteConfig) -> RouteTable:
    """The compiled table for `rc`, compiled on first use and cached."""
    return _CACHE.get(rc)
