"""What the mappings that ask a database share: rows, the answer cache, and
the rules for serving from it (SPEC §3).

A database (MySQL, SQLite) is a mapping that can block, be slow or be gone.
Its queries run only in worker threads; answers are cached, hits for
cache_ttl and misses for miss_ttl, so the reactor answers most recipients out
of memory through `peek`; while the database fails, a route older than its
TTL but younger than stale_ttl is still served, so an outage does not turn
every known recipient into a 451. `CachedMapping` holds those rules once;
a subclass only says how to ask its database (`_lookup`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from willi.errors import MappingError, StaleMiss
from willi.routing import NOT_CACHED, MappingSpec, NotCached, Route

DEFAULT_CACHE_SIZE = 100_000  # entries; bounds memory whatever the recipients
CHECK_KEY = "willi-check.invalid"  # .invalid never names a real domain (RFC 2606)
TRUE_WORDS = frozenset({"1", "true", "yes"})
FALSE_WORDS = frozenset({"0", "false", "no"})

Answer = Route | None


class Logger(Protocol):
    """What these modules need of willi's logger (duck-typed)."""

    def warning(self, event: str, **fields: Any) -> None: ...


# -- rows ---------------------------------------------------------------------


def parse_tls_verify(value: object) -> bool:
    """Column 2 of a row: 1/0, true/false, yes/no in any case, as text, bytes
    or a number; NULL means the default, verify. BIT(1) arrives as b'\\x01'."""
    if value is None:
        return True
    if isinstance(value, int):  # bool is an int too
        if value in (0, 1):
            return bool(value)
    elif isinstance(value, bytes | bytearray):
        if value in (b"\x00", b"\x01"):
            return value == b"\x01"
        return parse_tls_verify(value.decode("ascii", errors="replace"))
    elif isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError(f"tls_verify {value!r} is not 1/0, true/false, yes/no or NULL")


def row_to_route(row: tuple[object, ...]) -> Route:
    """A result row as a Route: column 1 the server, optional column 2 tls_verify."""
    if len(row) not in (1, 2):
        raise ValueError(f"the query returns {len(row)} columns, expected server and optionally tls_verify")
    server = row[0]
    if isinstance(server, bytes | bytearray):
        server = server.decode("utf-8", errors="replace")
    if not isinstance(server, str) or not server.strip():
        raise ValueError(f"server {server!r} is not a non-empty text")
    tls_verify = parse_tls_verify(row[1]) if len(row) == 2 else True
    return Route(server=server.strip(), tls_verify=tls_verify)


# -- the cache ----------------------------------------------------------------


class RouteCache:
    """Answers by key with the time they were fetched; thread-safe, bounded.

    Insertion order is age order (a refreshed key moves to the end), so the
    oldest entry is the first one, and evicting it keeps the size bounded.
    """

    def __init__(self, spec: MappingSpec, max_entries: int = DEFAULT_CACHE_SIZE) -> None:
        self._cache_ttl = spec.cache_ttl
        self._miss_ttl = spec.miss_ttl
        self._stale_ttl = spec.stale_ttl
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[Answer, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._expired = -float("inf")  # an answer fetched before this is no longer fresh (SIGHUP)

    def fresh(self, key: str, now: float) -> Answer | NotCached:
        """The answer while within its TTL (cache_ttl for a route, miss_ttl for no match)."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return NOT_CACHED
        answer, fetched = entry
        ttl = self._cache_ttl if answer is not None else self._miss_ttl
        return answer if now - fetched < ttl and fetched > self._expired else NOT_CACHED

    def stale(self, key: str, now: float) -> tuple[Route, float] | None:
        """A route younger than stale_ttl, and its age. Misses are never served
        stale: "no match" is a 554, and a recipient added since would be
        refused for good, where a 451 only makes the sender try again."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[0] is None:
            return None
        age = now - entry[1]
        return (entry[0], age) if age < self._stale_ttl else None

    def stale_miss(self, key: str, now: float) -> bool:
        """True for a "no match" answer younger than stale_ttl (see StaleMiss)."""
        with self._lock:
            entry = self._entries.get(key)
        return entry is not None and entry[0] is None and now - entry[1] < self._stale_ttl

    def put(self, key: str, answer: Answer, now: float) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (answer, now)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def expire(self, now: float) -> None:
        """Every answer so far is asked for again, but still served stale
        while the database fails (within stale_ttl of when it was fetched)."""
        with self._lock:
            self._expired = now

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class LookupFailure(Exception):
    """A lookup that failed, with a reason already free of any secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CachedMapping:
    """The Mapping protocol over a database asked through `_lookup` (worker threads)."""

    blocking = True

    def __init__(self, spec: MappingSpec, logger: Logger, clock: Callable[[], float] = time.monotonic,
                 cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.spec = spec
        self.name = spec.name
        self._logger = logger
        self._clock = clock
        self._cache = RouteCache(spec, cache_size)
        self._answered = threading.local()  # .stale: this thread's last get() served a stale route

    def _lookup(self, key: str) -> Answer:
        """Ask the database; raises LookupFailure. Worker threads only."""
        raise NotImplementedError

    # -- the Mapping protocol ------------------------------------------------

    def peek(self, key: str) -> Answer | NotCached:
        """The fresh cached answer, or NOT_CACHED; memory only, never blocks
        beyond a short lock, so the reactor may call it."""
        return self._cache.fresh(key, self._clock())

    def get(self, key: str) -> Answer:
        """Cache first, then the database; on a database failure a stale route
        if there is one, else MappingError. Worker threads only."""
        self._answered.stale = False
        answer = self._cache.fresh(key, self._clock())
        if answer is not NOT_CACHED:
            return answer  # type: ignore[return-value]  # NOT_CACHED ruled out
        try:
            answer = self._lookup(key)
        except LookupFailure as failure:
            return self._stale_or_raise(key, failure.reason)
        self._cache.put(key, answer, self._clock())
        return answer

    def served_stale(self) -> bool:
        """Whether this thread's last get() answered with a stale route (for the lookup event)."""
        return getattr(self._answered, "stale", False)

    def attach(self, reactor: Any, workers: Any) -> None:
        """Queries already run in the workers the Router hands them to."""

    def check(self) -> None:
        """Run the query once (--check): a missing table or a query that does
        not take one parameter show at start."""
        try:
            self._lookup(CHECK_KEY)
        except LookupFailure as failure:
            raise MappingError(f"{self.name}: {failure.reason}") from None

    def reload(self) -> None:
        """SIGHUP: ask again for every cached answer, so changed rows show at
        once; a database that is down meanwhile still has them served stale
        (a routine SIGHUP during an outage must not turn them into 451s)."""
        self._cache.expire(self._clock())

    def close(self) -> None:
        """Nothing held here; subclasses close their connections."""

    def _stale_or_raise(self, key: str, reason: str) -> Route:
        now = self._clock()
        stale = self._cache.stale(key, now)
        if stale is None:
            self._logger.warning("mapping_failed", mapping=self.name, key=key, error=reason)
            if self._cache.stale_miss(key, now):
                # Not served as a miss (that would be a 554 for good), but the
                # Router may still find a stale route under a later key.
                raise StaleMiss(f"{self.name}: {reason}")
            raise MappingError(f"{self.name}: {reason}")
        route, age = stale
        self._logger.warning(
            "mapping_stale_answer", mapping=self.name, key=key, age=round(age, 1), server=route.server, error=reason
        )
        self._answered.stale = True
        return route
