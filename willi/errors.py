"""Typed errors. Those that end in an SMTP reply carry it, so the code that
catches them never has to choose a reply code of its own."""

from __future__ import annotations

from willi import replies


class WilliError(Exception):
    """Base of every error Willi raises on purpose."""

    reply: bytes = replies.UPSTREAM_PROTOCOL


class ConfigError(WilliError):
    """A bad configuration value: one line naming key, value and expectation."""

    def __init__(self, key: str, value: str, expected: str) -> None:
        super().__init__(f"{key}={value!r}: expected {expected}")
        self.key = key
        self.value = value
        self.expected = expected


class MappingError(WilliError):
    """A mapping failed (not "no match"): the lookup ends with 451 4.3.0."""

    reply = replies.LOOKUP_FAILED


class StaleMiss(MappingError):
    """A mapping failed for a key it knew, until lately, to have no match.

    Not the end of the lookup: the Router goes on with the less specific keys
    of the same mapping, whose stale route may still answer (a table with one
    row per domain caches the full address as a miss first). If none does,
    the lookup fails as with any MappingError.
    """


class UpstreamError(WilliError):
    """A target could not be used (refused, timed out, bad greeting, TLS)."""

    reply = replies.UPSTREAM_UNAVAILABLE


class TLSError(WilliError):
    """A TLS handshake or record failed."""

    reply = replies.UPSTREAM_UNAVAILABLE
