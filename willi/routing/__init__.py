"""Recipient routing: mappings answer a key with a Route; the Router asks them
in order (SPEC §3). The types every mapping shares live here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class MappingSpec:
    """One WILLI_MAPPING_N as configured (built by willi.config)."""

    index: int  # N
    uri: str  # csv:PATH, static:SERVER, mysql://...
    query: str = "SELECT server, tls_verify FROM upstreams WHERE pattern = %s"
    cache_ttl: float = 60.0  # seconds, answers that matched
    miss_ttl: float = 10.0  # seconds, "no match" answers
    stale_ttl: float = 3600.0  # seconds, served while the database is unreachable
    tls_verify: bool = True  # static: only (WILLI_MAPPING_N_TLS_VERIFY)

    @property
    def name(self) -> str:
        """How logs and --lookup name the mapping; never contains a password."""
        scheme, _, rest = self.uri.partition(":")
        if "@" in rest:
            rest = "//" + rest.rpartition("@")[2]
        return f"mapping_{self.index}={scheme}:{rest}"


@dataclass(frozen=True, slots=True)
class Route:
    """What a mapping answers: the upstream target list and whether to verify TLS."""

    server: str
    tls_verify: bool = True


class Mapping(Protocol):
    """One configured mapping (csv:, static:, mysql:).

    `get` returns the route for one lower-cased key, None for no match, and
    raises MappingError when the mapping itself failed. Mappings whose `get`
    may block (`blocking` is True) are only called from worker threads; on the
    reactor the Router uses `peek`, which answers from memory only and returns
    NOT_CACHED when it would have to block.
    """

    name: str
    blocking: bool

    def get(self, key: str) -> Route | None: ...

    def peek(self, key: str) -> "Route | None | NotCached": ...

    def attach(self, reactor: Any, workers: Any) -> None:
        """Called once the reactor and worker pool exist (not for --check or
        --lookup): a mapping that re-reads files does so in the workers from now on."""
        ...

    def reload(self) -> None: ...

    def check(self) -> None: ...

    def close(self) -> None: ...


class NotCached:
    """Sentinel type: a blocking mapping has no answer in memory for the key."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_CACHED"


NOT_CACHED = NotCached()
