"""`static:SERVER`: a mapping that answers every key with the same route.

Used as the last mapping of a chain (a fallback upstream) or as the only one
when a single server sits behind Willi. The server string is checked once, at
start-up, so a typo stops the start instead of failing every session.
"""

from __future__ import annotations

from typing import Any

from willi.errors import MappingError
from willi.routing import MappingSpec, NotCached, Route
from willi.targets import parse_targets


class StaticMapping:
    """Always answers Route(SERVER, spec.tls_verify)."""

    __slots__ = ("name", "blocking", "_route")

    def __init__(self, spec: MappingSpec) -> None:
        self.name = spec.name
        self.blocking = False
        scheme, _, server = spec.uri.partition(":")
        if scheme != "static":
            raise MappingError(f"{spec.name}: not a static: mapping")
        try:
            parse_targets(server)
        except ValueError as exc:
            raise MappingError(f"{spec.name}: {exc}") from None
        self._route = Route(server.strip(), spec.tls_verify)

    def get(self, key: str) -> Route | None:
        return self._route

    def peek(self, key: str) -> Route | None | NotCached:
        return self._route

    def attach(self, reactor: Any, workers: Any) -> None:
        """Nothing to watch."""

    def reload(self) -> None:
        """Nothing to re-read: the route is part of the configuration."""

    def check(self) -> None:
        """Validated in __init__ already."""

    def close(self) -> None:
        """Holds no resources."""
