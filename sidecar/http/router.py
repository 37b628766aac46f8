"""The route table: a RouteConfig compiled once, then matched per request in flat time.

Theory of operation: `route_table(rc)` compiles a `RouteConfig` into a `RouteTable` the first time
it is asked for and caches it by object identity (the cache holds the RouteConfig itself, so an id
is never reused while cached; it is bounded and drops the oldest entries when a long run of reloads
has produced many configs).

Virtual host lookup, in Envoy's order: exact domain (lower-cased, ":port" forms as listed) by dict;
then "*.suffix" wildcards longest first, then "prefix*" wildcards longest first, each kind held as
one dict per distinct length, so a lookup costs one slice and one dict probe per distinct length,
however many virtual hosts there are; then "*". Results are memoised per Host value (bounded).

Route matching keeps Envoy's first-match semantics. A virtual host with few routes is scanned in
order (the common case, one prefix "/" route, answers with one `startswith` and no allocation).
A larger one is indexed: exact paths by dict, prefixes by a dict per distinct prefix length (the
request path's prefix of each length is probed), regexes compiled once and always candidates; the
candidates' indices are merged in route order and each is checked in full (headers, including the
pseudo names ":method", ":scheme", ":authority", ":path"; query parameters, parsed once per
request and only when a candidate needs them; the path again, case-folded for ignoreUriCase).
The route's actions (forwarding, edits, policies) are compiled by `route_actions.py`.
"""

from __future__ import annotations

import re

from sidecar.config.snapshot import (
    HeaderMatch,
    QueryParamMatch,
    Route,
    RouteConfig,
    VirtualHost,
)
from sidecar.http.route_actions import RouteActions, WeightedPick, compile_actions
from sidecar.http.stream import RequestHead

_PREFIX, _PATH, _REGEX = 0, 1, 2
_CACHE_MAX = 64
_HOST_MEMO_MAX = 1024
LINEAR_MAX = 8  # virtual hosts with at most this many routes are scanned, not indexed

Query = dict[bytes, bytes]


def parse_query(path: bytes) -> Query:
    """The query parameters of a request target (first value of each name, not decoded)."""
    q = path.find(b"?")
    out: Query = {}
    if q < 0:
        return out
    query = path[q + 1 :].split(b"#", 1)[0]
    for part in query.split(b"&"):
        if part:
            name, _, value = part.partition(b"=")
            out.setdefault(name, value)
    return out


class _ValueMatcher:
    """exact / prefix / regex (full match) / present on one optional value."""

    __slots__ = ("exact", "invert", "prefix", "present", "regex")

    def __init__(self, exact: str | None, prefix: str | None, regex: str | None,
                 present: bool | None, invert: bool) -> None:
        self.exact = exact.encode("latin-1") if exact is not None else None
        self.prefix = prefix.encode("latin-1") if prefix is not None else None
        self.regex = re.compile(regex.encode("latin-1")) if regex is not None else None
        self.present = present
        self.invert = invert

    def test(self, value: bytes | None) -> bool:
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


class _HeaderMatcher(_ValueMatcher):
    __slots__ = ("name",)

    def __init__(self, m: HeaderMatch) -> None:
        super().__init__(m.exact, m.prefix, m.regex, m.present, m.invert)
        self.name = m.name.lower().encode("latin-1")

    def matches(self, head: RequestHead) -> bool:
        return self.test(head.header(self.name))


class _QueryMatcher(_ValueMatcher):
    __slots__ = ("name",)

    def __init__(self, m: QueryParamMatch) -> None:
        super().__init__(m.exact, m.prefix, m.regex, m.present, False)
        self.name = m.name.encode("utf-8")

    def matches(self, query: Query) -> bool:
        return self.test(query.get(self.name))


class CompiledRoute(WeightedPick):
    """One route with its matcher and actions compiled."""

    __slots__ = ("_kind", "_value", "actions", "headers", "ignore_case", "index",
                 "plain_prefix", "query", "regex")

    def __init__(self, route: Route, index: int, vhost: VirtualHost | None = None) -> None:
        WeightedPick.__init__(self, route)
        self.index = index
        m = route.match
        self.ignore_case = not m.case_sensitive
        self.regex: re.Pattern[bytes] | None = None
        self._value = b""
        if m.regex is not None:
            self._kind = _REGEX
            flags = re.IGNORECASE if self.ignore_case else 0
            self.regex = re.compile(m.regex.encode("utf-8"), flags)
        elif m.path is not None:
            self._kind = _PATH
            self._value = m.path.encode("utf-8")
        else:
            self._kind = _PREFIX
            self._value = (m.prefix or "").encode("utf-8")
        if self.ignore_case:
            self._value = self._value.lower()
        self.headers = tuple(_HeaderMatcher(h) for h in m.headers)
        self.query = tuple(_QueryMatcher(q) for q in m.query_params)
        self.actions: RouteActions | None = compile_actions(
            route, vhost.cors if vhost is not None else None)
        # The common case, answered without a call: a case-sensitive prefix test and nothing else.
        simple = (self._kind == _PREFIX and not self.ignore_case and not self.headers
                  and not self.query)
        self.plain_prefix: bytes | None = self._value if simple else None

    @property
    def matched_prefix_len(self) -> int:
        """How much of the path a prefix match consumed (-1: exact or regex, the whole path)."""
        return len(self._value) if self._kind == _PREFIX else -1

    def matches(self, path: bytes, head: RequestHead, query: Query | None = None) -> bool:
        """The whole match; `query` is the parsed query when this route has query matchers."""
        kind = self._kind
        p = path.lower() if self.ignore_case else path
        if kind == _PREFIX:
            if not p.startswith(self._value):
                return False
        else:
            bare = p.split(b"?", 1)[0].split(b"#", 1)[0]
            if kind == _PATH:
                if bare != self._value:
                    return False
            elif self.regex is None or self.regex.fullmatch(bare) is None:
                return False
        if self.headers:
            for h in self.headers:
                if not h.matches(head):
                    return False
        if self.query:
            q = parse_query(path) if query is None else query
            for m in self.query:
                if not m.matches(q):
                    return False
        return True


class _RouteIndex:
    """Candidate routes of one virtual host by path: exact dict, prefixes by length, regexes."""

    __slots__ = ("exact", "exact_ci", "has_ci", "prefix", "prefix_ci", "prefix_ci_lens",
                 "prefix_lens", "scan")

    def __init__(self, routes: tuple[CompiledRoute, ...]) -> None:
        self.exact: dict[bytes, list[int]] = {}
        self.exact_ci: dict[bytes, list[int]] = {}
        self.prefix: dict[int, dict[bytes, list[int]]] = {}
        self.prefix_ci: dict[int, dict[bytes, list[int]]] = {}
        scan: list[int] = []
        for r in routes:
            if r._kind == _REGEX:
                scan.append(r.index)
            elif r._kind == _PATH:
                table = self.exact_ci if r.ignore_case else self.exact
                table.setdefault(r._value, []).append(r.index)
            else:
                by_len = self.prefix_ci if r.ignore_case else self.prefix
                by_len.setdefault(len(r._value), {}).setdefault(r._value, []).append(r.index)
        self.scan = tuple(scan)
        self.prefix_lens = tuple(sorted(self.prefix))
        self.prefix_ci_lens = tuple(sorted(self.prefix_ci))
        self.has_ci = bool(self.exact_ci or self.prefix_ci)

    def candidates(self, path: bytes) -> list[int]:
        """Indices of the routes whose path criterion may hold, in route order."""
        out = list(self.scan)
        bare = path.split(b"?", 1)[0].split(b"#", 1)[0] if (self.exact or self.exact_ci) else b""
        hit = self.exact.get(bare)
        if hit is not None:
            out += hit
        _prefix_hits(self.prefix, self.prefix_lens, path, out)
        if self.has_ci:
            lower = path.lower()
            hit = self.exact_ci.get(bare.lower())
            if hit is not None:
                out += hit
            _prefix_hits(self.prefix_ci, self.prefix_ci_lens, lower, out)
        out.sort()
        return out


def _prefix_hits(by_len: dict[int, dict[bytes, list[int]]], lens: tuple[int, ...], path: bytes,
                 out: list[int]) -> None:
    n = len(path)
    for length in lens:
        if length > n:
            break
        hit = by_len[length].get(path[:length])
        if hit is not None:
            out += hit


class CompiledVirtualHost:
    """A virtual host's routes, compiled (and indexed when there are many)."""

    __slots__ = ("_index", "routes", "vhost")

    def __init__(self, vhost: VirtualHost, index: bool | None = None) -> None:
        self.vhost = vhost
        self.routes = tuple(CompiledRoute(r, i, vhost) for i, r in enumerate(vhost.routes))
        if index is None:
            index = len(self.routes) > LINEAR_MAX
        self._index = _RouteIndex(self.routes) if index else None

    def match(self, head: RequestHead) -> CompiledRoute | None:
        path = head.path
        query: Query | None = None
        if self._index is None:
            for r in self.routes:
                prefix = r.plain_prefix
                if prefix is not None:
                    if path.startswith(prefix):
                        return r
                    continue
                if r.query and query is None:
                    query = parse_query(path)
                if r.matches(path, head, query):
                    return r
            return None
        routes = self.routes
        for i in self._index.candidates(path):
            r = routes[i]
            if r.query and query is None:
                query = parse_query(path)
            if r.matches(path, head, query):
                return r
        return None


class RouteTable:
    """Virtual host lookup by authority, Envoy's order; built once per RouteConfig."""

    __slots__ = ("_default", "_exact", "_memo", "_prefix_lens", "_prefixes", "_suffix_lens",
                 "_suffixes", "config")

    def __init__(self, rc: RouteConfig) -> None:
        self.config = rc
        self._exact: dict[bytes, CompiledVirtualHost] = {}
        self._suffixes: dict[int, dict[bytes, CompiledVirtualHost]] = {}
        self._prefixes: dict[int, dict[bytes, CompiledVirtualHost]] = {}
        self._default: CompiledVirtualHost | None = None
        for vh in rc.virtual_hosts:
            cvh = CompiledVirtualHost(vh)
            for domain in vh.domains:
                d = domain.lower().encode("utf-8")
                if d == b"*":
                    if self._default is None:
                        self._default = cvh
                elif d.startswith(b"*"):
                    self._suffixes.setdefault(len(d) - 1, {}).setdefault(d[1:], cvh)
                elif d.endswith(b"*"):
                    self._prefixes.setdefault(len(d) - 1, {}).setdefault(d[:-1], cvh)
                else:
                    self._exact.setdefault(d, cvh)
        # Longest first (Envoy's order); config order wins among equal wildcards (setdefault).
        self._suffix_lens = tuple(sorted(self._suffixes, reverse=True))
        self._prefix_lens = tuple(sorted(self._prefixes, reverse=True))
        self._memo: dict[bytes, CompiledVirtualHost | None] = {}

    def virtual_host(self, authority: bytes) -> CompiledVirtualHost | None:
        memo = self._memo
        if authority in memo:
            return memo[authority]
        return self._lookup(authority)

    def _lookup(self, authority: bytes) -> CompiledVirtualHost | None:
        memo = self._memo
        found = self.lookup_uncached(authority)
        if len(memo) >= _HOST_MEMO_MAX:
            memo.clear()
        memo[authority] = found
        return found

    def lookup_uncached(self, authority: bytes) -> CompiledVirtualHost | None:
        """The virtual host for `authority`, without the memo (one probe per distinct length)."""
        host = authority.lower()
        found = self._exact.get(host)
        if found is not None:
            return found
        n = len(host)
        for length in self._suffix_lens:
            if n > length:
                found = self._suffixes[length].get(host[n - length :])
                if found is not None:
                    return found
        for length in self._prefix_lens:
            if n > length:
                found = self._prefixes[length].get(host[:length])
                if found is not None:
                    return found
        return self._default

    def route(self, head: RequestHead) -> CompiledRoute | None:
        """The first route of the matching virtual host, or None (404 NR)."""
        authority = head.authority
        vh = self._exact.get(authority)  # most requests: an exact, already lower-case name
        if vh is None:
            memo = self._memo  # upper case, wildcards, misses: remembered per Host value
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
