"""What the relay machine is told: typed events in (mitmproxy's events.py).

The session turns what happened on its sockets, its timers and its worker
threads into these and hands them to `Relay.handle`; nothing else reaches the
machine. Client events come from the client-facing ServerProtocol once it has
parsed a command; upstream events come from the link the relay is bound to
(the session drops those of a link the relay already let go).
Not frozen, for the constructor's cost (see commands.py); nobody changes one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from willi.errors import UpstreamError
from willi.routing import Route
from willi.smtp.address import Address
from willi.smtp.reply import Reply


class LinkView(Protocol):
    """What the relay reads of an upstream link (UpstreamLink satisfies it)."""

    route: Route
    name: str  # the target as logs show it
    capabilities: Any  # Mapping[str, str]
    reused: bool
    target: Any
    tls: str | None
    tls_verified: bool

    @property
    def lmtp(self) -> bool: ...

    @property
    def closed(self) -> bool: ...


class Event:
    __slots__ = ()


# --- the client ---------------------------------------------------------------
@dataclass(slots=True)
class ClientRcpt(Event):
    """RCPT TO parsed and in sequence; `sender` etc. are the transaction's."""

    address: Address
    sender: Address
    params: dict[str, str | None] = field(default_factory=dict)
    helo: str | None = None
    tls: str | None = None  # the client's TLS, as logged


@dataclass(slots=True)
class ClientData(Event):
    """DATA with at least one accepted recipient."""


CLIENT_DATA = ClientData()  # it carries nothing: one for every DATA


@dataclass(slots=True)
class ClientBdat(Event):
    """BDAT in sequence (RFC 3030): `size` bytes follow; `last` ends the message."""

    size: int
    last: bool


@dataclass(slots=True)
class ClientReset(Event):
    """RSET, or EHLO/HELO inside a transaction."""


@dataclass(slots=True)
class ClientStartTLS(Event):
    """STARTTLS accepted (220 queued): the client side changes its TLS."""


@dataclass(slots=True)
class ClientGone(Event):
    """The session ends: `reason` is QUIT's "client quit", "client lost",
    "client timeout", "too many errors", "shutdown", ..."""

    reason: str


@dataclass(slots=True)
class BodyReceived(Event):
    """Client bytes while the relay reads a body or a BDAT chunk: buf[start:stop], valid only
    during the call (it may be the reactor's shared receive buffer)."""

    buf: Any  # bytes | bytearray
    start: int
    stop: int


# --- routing and dialing ----------------------------------------------------
@dataclass(slots=True)
class RouteAnswered(Event):
    """The router's answer to LookUp: a route, None (no route), or `failure`
    (the reply for a lookup that failed or timed out)."""

    route: Route | None
    failure: bytes | None = None
    error: str | None = None


@dataclass(slots=True)
class LinkReady(Event):
    """Dial succeeded: this link greeted and is ours."""

    link: LinkView


@dataclass(slots=True)
class DialFailed(Event):
    """Every target of the route failed."""

    error: str


# --- the upstream -------------------------------------------------------------
@dataclass(slots=True)
class UpstreamReplied(Event):
    """The next reply, in command order."""

    reply: Reply


@dataclass(slots=True)
class UpstreamFailed(Event):
    """An awaited reply will not come: lost, timed out, or garbage."""

    error: UpstreamError


@dataclass(slots=True)
class UpstreamLost(Event):
    """The link went away while no reply was awaited."""

    error: UpstreamError


@dataclass(slots=True)
class TimerFired(Event):
    """A timer the session runs for the relay: `UPSTREAM_STALLED` (the upstream
    took no body bytes for the data timeout)."""

    name: str


UPSTREAM_STALLED = "upstream_stalled"
