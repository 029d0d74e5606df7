"""What the relay machine asks for: typed commands out (mitmproxy's
commands.py). The session executes them in order and does nothing else on
the relay's behalf; tests compare them with the expected conversation.
Plain slotted dataclasses, not frozen ones: a frozen one's constructor costs
twice as much, and several are built for every message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from willi.routing import Route
from willi.smtp.address import Address

COMMAND_TIMEOUT = "command"  # WILLI_UPSTREAM_COMMAND_TIMEOUT
DATA_TIMEOUT = "data"  # WILLI_UPSTREAM_DATA_TIMEOUT: the final reply after a body


class Command:
    __slots__ = ()


# --- the client -----------------------------------------------------------------
@dataclass(slots=True)
class Answer(Command):
    """Finish the client's pending RCPT or DATA with `reply`; `error`: it is
    Willi's own refusal, counted toward WILLI_MAX_ERRORS as a command error."""

    reply: bytes
    accepted: bool = False
    error: bool = False


@dataclass(slots=True)
class ReadBody(Command):
    """The 354 is out, or a BDAT chunk is to be read: client bytes now go to
    the relay as BodyReceived, starting with what the client pipelined behind
    the command."""


READ_BODY = ReadBody()  # it carries nothing: one for every body


@dataclass(slots=True)
class BodyDone(Command):
    """The message is over: answer the end of data with `reply`; client bytes
    go back to the command protocol."""

    reply: bytes


@dataclass(slots=True)
class FeedClient(Command):
    """Bytes the client sent after its end of data: commands again."""

    data: Any  # memoryview of the BodyReceived buffer


@dataclass(slots=True)
class EndClientTransaction(Command):
    """The upstream is gone: the client's transaction is void (a new MAIL
    needs no RSET)."""


@dataclass(slots=True)
class StartClientTLS(Command):
    """Run the client's TLS handshake (its 220 is already queued)."""


# --- routing and the upstream --------------------------------------------------
@dataclass(slots=True)
class LookUp(Command):
    """Route `address`; RouteAnswered follows."""

    address: Address


@dataclass(slots=True)
class Dial(Command):
    """Get a link for `route` (from the pool or new); LinkReady or DialFailed follows."""

    route: Route


@dataclass(slots=True)
class Send(Command):
    """Commands for the upstream, pipelined in one write; one reply each
    follows, in order (UpstreamReplied or UpstreamFailed). With `lines` empty,
    only wait for one more reply (the final reply after a body)."""

    lines: tuple[bytes, ...]
    timeout: str = COMMAND_TIMEOUT


@dataclass(slots=True)
class SendBody(Command):
    """Message bytes: no reply expected for them."""

    data: Any  # bytes | memoryview


@dataclass(slots=True)
class DropLink(Command):
    """Let the link go: aborted (RST: a command or a body is in flight, so no
    dot or QUIT may follow), quit (QUIT: a transaction is open upstream, so it
    must not be parked), or released (parked for reuse, or QUIT). Cancels a
    dial in flight too."""

    abort: bool
    reusable: bool = True


# --- telling ----------------------------------------------------------------------
@dataclass(slots=True)
class Emit(Command):
    """Hand `records` (RecipientRecord, TransactionRecord), in order, to the Observer."""

    records: Any  # a tuple or list of records


@dataclass(slots=True)
class Notice(Command):
    """An Observer event: `name` with `fields` (body_refused, upstream_failed)."""

    name: str
    level: str
    fields: tuple[tuple[str, object], ...]
