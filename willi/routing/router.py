"""The Router: which upstream a recipient goes to (SPEC §3).

Mappings are asked in the configured order with the keys of lookup_keys();
within one mapping every key is tried before the next mapping is asked, and
the first answer wins. A mapping that fails ends the lookup (MappingError
propagates, the session answers 451): asking the next mapping instead could
route mail to a fallback that was never meant for it.

Two ways in: resolve() may block on a database and runs in worker threads or
for --lookup; resolve_fast() never blocks and answers from memory, or says
NOT_CACHED so the session hands the lookup to a worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from willi.errors import MappingError, StaleMiss
from willi.records import NullObserver, Observer
from willi.routing import NOT_CACHED, Mapping, MappingSpec, NotCached, Route
from willi.routing.csvmap import CsvMapping
from willi.routing.keys import lookup_keys
from willi.routing.static import StaticMapping
from willi.smtp.address import Address


@dataclass(frozen=True, slots=True)
class Answer:
    """A route and where it came from (for logs and --lookup)."""

    route: Route
    mapping: str  # the mapping's name
    key: str  # the key that matched


class Router:
    """Asks the mappings in order; the first that answers wins.

    Every mapping asked reports one `lookup` event to the observer (mapping=,
    result=hit|miss|stale|error, seconds=), from whichever thread asked; a
    reactor-side answer of NOT_CACHED reports nothing, the worker's lookup does.
    """

    __slots__ = ("_mappings", "_delimiter", "_hostname", "_observer", "_quiet")

    def __init__(self, mappings: Sequence[Mapping], delimiter: str, hostname: str,
                 observer: Observer | None = None) -> None:
        self._mappings = tuple(mappings)
        self._delimiter = delimiter
        self._hostname = hostname
        self._observer: Observer = observer or NullObserver()
        self._quiet = type(self._observer) is NullObserver

    def attach(self, reactor: Any, workers: Any, observer: Observer | None = None) -> None:
        """Once the reactor and its worker pool run: mappings that re-read files
        do it there from now on, off the reactor (csv:); lookups report to `observer`."""
        if observer is not None:
            self._observer = observer
            self._quiet = type(observer) is NullObserver
        for mapping in self._mappings:
            mapping.attach(reactor, workers)

    @property
    def needs_worker(self) -> bool:
        """True when some mapping may block, so lookups may need a worker thread."""
        return any(mapping.blocking for mapping in self._mappings)

    def resolve(self, address: Address) -> Answer | None:
        """The route for `address`, or None. May block; raises MappingError."""
        keys = self._keys(address)
        for mapping in self._mappings:
            answer = _ask(mapping, mapping.get, keys) if self._quiet else self._timed(mapping, keys, fast=False)
            if isinstance(answer, Answer):
                return answer
        return None

    def resolve_fast(self, address: Address) -> Answer | None | NotCached:
        """Like resolve() but never blocks: NOT_CACHED when a worker is needed."""
        keys = self._keys(address)
        for mapping in self._mappings:
            if self._quiet:  # nobody listens: no clock, no event
                answer = _ask(mapping, mapping.peek if mapping.blocking else mapping.get, keys)
            else:
                answer = self._timed(mapping, keys, fast=True)
            if answer is not None:
                return answer
        return None

    def _timed(self, mapping: Mapping, keys: list[str], fast: bool) -> Answer | None | NotCached:
        """_ask, reported as one `lookup` event; `fast` asks a blocking mapping's memory only."""
        peek = fast and mapping.blocking
        start = perf_counter()
        try:
            answer = _ask(mapping, mapping.peek if peek else mapping.get, keys)
        except MappingError:
            self._observer.lookup(mapping.name, "error", perf_counter() - start)
            raise
        if answer is NOT_CACHED:
            return answer
        if answer is None:
            result = "miss"
        elif mapping.blocking and not peek and mapping.served_stale():  # type: ignore[attr-defined]
            result = "stale"
        else:
            result = "hit"
        self._observer.lookup(mapping.name, result, perf_counter() - start)
        return answer

    def reload(self) -> None:
        """SIGHUP: every mapping re-reads what it can (each keeps its old data on failure)."""
        for mapping in self._mappings:
            mapping.reload()

    def check(self) -> None:
        """--check: raises the first mapping's MappingError."""
        for mapping in self._mappings:
            mapping.check()

    def close(self) -> None:
        for mapping in self._mappings:
            mapping.close()

    def _keys(self, address: Address) -> list[str]:
        if not address.domain:
            # RFC 5321 §4.5.1: postmaster without a domain must be accepted;
            # any other domainless address matches no key.
            if address.local.lower() != "postmaster":
                return []
            address = Address("postmaster", self._hostname)
        return lookup_keys(address, self._delimiter)


def _ask(
    mapping: Mapping,
    lookup: Callable[[str], Route | None | NotCached],
    keys: list[str],
) -> Answer | None | NotCached:
    """All keys against one mapping; stops at the first answer or NOT_CACHED.

    A key that failed but was a miss until lately (StaleMiss, a database
    outage) does not end the lookup at once: a less specific key may still
    have a stale route. Without one, the failure stands.
    """
    failure: StaleMiss | None = None
    for key in keys:
        try:
            route = lookup(key)
        except StaleMiss as error:
            failure = failure or error
            continue
        if isinstance(route, Route):
            return Answer(route, mapping.name, key)
        if route is NOT_CACHED:
            return NOT_CACHED
    if failure is not None:
        raise failure
    return None


def build_mappings(specs: Sequence[MappingSpec], logger: Any) -> list[Mapping]:
    """One Mapping per spec, in order; MappingError for an unknown kind."""
    mappings: list[Mapping] = []
    for spec in specs:
        scheme = spec.uri.partition(":")[0].lower()
        if scheme == "csv":
            mappings.append(CsvMapping(spec, logger))
        elif scheme == "static":
            mappings.append(StaticMapping(spec))
        elif scheme == "sqlite":
            from willi.routing.sqlite import SqliteMapping

            mappings.append(SqliteMapping(spec, logger))
        elif scheme == "mysql" and spec.uri.startswith("mysql://"):
            # Imported only when configured: only mysql.py imports PyMySQL.
            from willi.routing.mysql import MysqlMapping

            mappings.append(MysqlMapping(spec, logger))
        else:
            raise MappingError(
                f"{spec.name}: unknown mapping type {scheme!r} (expected csv:, sqlite:, mysql:// or static:)"
            )
    return mappings
