"""The relay's states, its error, and the small pure helpers both halves of
the machine share (machine.py: RCPT, DATA and the body; chunking.py: BDAT)."""

from __future__ import annotations

import enum

from willi.errors import WilliError
from willi.smtp.reply import Reply

class RelayError(WilliError):
    """An event the transition table does not allow in the current state."""


class State(enum.Enum):
    IDLE = "idle"  # no command pending; an upstream transaction may be open
    ROUTING = "routing"  # a RCPT waits for its route
    DIALING = "dialing"  # ... for a link
    MAIL_SENT = "mail sent"  # ... for the MAIL reply (the RCPT may be pipelined behind it)
    RCPT_SENT = "rcpt sent"  # ... for the RCPT reply
    DATA_SENT = "data sent"  # DATA waits for the 354
    BODY = "body"  # the body streams upstream
    DRAIN = "drain"  # the body is refused or its upstream gone: read it to its end
    FINAL = "final"  # the end of data is upstream: its final reply is awaited
    CHUNK_DATA_SENT = "chunk data sent"  # BDAT to DATA: the DATA waits for its 354
    CHUNK = "chunk"  # a BDAT chunk is read (streamed, translated or thrown away)
    CHUNK_SENT = "chunk sent"  # the chunk is upstream: its reply is awaited
    CLOSED = "closed"

    # Members are singletons: identity hashing is exact, and the transition
    # table is looked up by state for every event.
    __hash__ = object.__hash__


class S:
    """State's members as plain class attributes, for the code that runs per
    event: in Python 3.11 every `State.X` goes through EnumType's
    `__getattr__` hook, four times the cost of a plain attribute."""

    (IDLE, ROUTING, DIALING, MAIL_SENT, RCPT_SENT, DATA_SENT, BODY, DRAIN, FINAL, CHUNK_DATA_SENT, CHUNK,
     CHUNK_SENT, CLOSED) = State


# The unpacking above follows State's order: a member added or moved there fails here, at import.
if not all(getattr(S, member.name) is member for member in State):
    raise RuntimeError("relay.states.S does not list State's members in State's order")


def demote_421(reply: Reply) -> bytes:
    """An upstream 421 closes *its* connection, not the client's: the client
    gets the same text as a 451 (SPEC §7)."""
    if reply.code != 421:
        return reply.raw
    return b"".join(b"451" + line[3:] + b"\r\n" for line in reply.lines)


# DataScanner's and ChunkScanner's reasons, as body_refused's kind=.
KINDS = {"size": "too_big", "bare CR or LF": "bare_lf", "NUL": "nul"}
