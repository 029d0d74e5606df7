"""Typed errors. Those that end in an SMTP reply carry it, so the code that
catches them never has to choose a reply code of its own: it answers the
client `exc.reply`, and there is no second type-to-reply map anywhere.

The base classes carry no reply: a ConfigError ends the start, not a
session, and an UpstreamError is only ever raised as one of its kinds.
"""

from __future__ import annotations

from willi import replies


class WilliError(Exception):
    """Base of every error Willi raises on purpose."""


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
    """Something went wrong with an upstream. Abstract: raise one of the
    subclasses below, each of which carries the reply the client gets."""

    reply: bytes


class UpstreamUnavailable(UpstreamError):
    """A target cannot be used: refused, bad greeting, TLS policy, XCLIENT
    or AUTH refused. The dialer tries the next target of the route."""

    reply = replies.UPSTREAM_UNAVAILABLE


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""

    reply = replies.UPSTREAM_TIMEOUT


class UpstreamLost(UpstreamError):
    """The upstream closed the connection or it broke."""

    reply = replies.UPSTREAM_LOST


class UpstreamProtocolError(UpstreamError):
    """The upstream sent something that is not an SMTP reply, or a reply
    nobody asked for: the connection is dropped and never trusted again."""

    reply = replies.UPSTREAM_PROTOCOL


class NeedsSMTPUTF8(UpstreamError):
    """The message needs SMTPUTF8 and the upstream does not offer it."""

    reply = replies.NEED_SMTPUTF8


class TLSError(WilliError):
    """A TLS handshake or record failed."""
