"""What happened, as typed records: the contract between the code that knows
(relay, listener, dialer, router) and the code that tells (logs, metrics).

Producers build a record and hand it to an `Observer`; they never format a
log line or touch a counter themselves. That keeps logging out of the sans-IO
layers (a relay test asserts the records it emitted) and puts every log line
and metric an operator sees in one place (`willi.observe`).

Outcomes use Postfix's words, so operators' greps carry over:
`sent` (the upstream took the message), `deferred` (4xx, or the transaction
ended without a final reply), `bounced` (5xx to the message), `refused` (5xx
to the recipient).

Records are slotted dataclasses but not frozen ones (a frozen constructor
costs twice as much, and a few are built for every message); nobody changes
one after it is handed over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

SENT = "sent"
DEFERRED = "deferred"
BOUNCED = "bounced"
REFUSED = "refused"

WILLI = "willi"  # who decided: Willi itself ...
UPSTREAM = "upstream"  # ... or the upstream, whose reply was relayed


def status_of(code: int | None, at_rcpt: bool) -> str:
    """The outcome word for the reply code the client got."""
    if code is not None and 200 <= code < 300:
        return SENT
    if code is not None and code >= 500:
        return REFUSED if at_rcpt else BOUNCED
    return DEFERRED  # 4xx, none, or a code no final reply may have (1xx, 3xx): not taken


@dataclass(slots=True)
class RecipientRecord:
    """One recipient's fate: at RCPT when refused or deferred there, else
    when its transaction ends (sent, bounced, deferred, or aborted)."""

    session: str
    txn: str  # the transaction id: session id plus a counter
    to: str
    status: str
    code: int | None  # the reply code the client got for this recipient's fate
    text: str | None
    src: str  # WILLI or UPSTREAM
    upstream: str | None = None
    aborted: str | None = None  # why the transaction ended without a final reply


@dataclass(slots=True)
class TransactionRecord:
    """One transaction that reached RCPT."""

    session: str
    txn: str
    client: str
    helo: str | None
    tls: str | None
    sender: str
    accepted: tuple[str, ...]
    refused: int  # recipients refused or deferred at RCPT
    upstream: str | None
    upstream_tls: str | None
    status: str
    code: int | None  # the final reply, only when there was one
    text: str | None
    src: str
    size: int | None
    duration: float
    aborted: str | None = None
    chunking: bool = False  # BDAT rather than DATA


@dataclass(slots=True)
class SessionRecord:
    """A session's start (`event="connect"`) or end (`event="disconnect"`)."""

    event: str
    session: str
    client: str
    port: int
    reason: str | None = None  # disconnect: quit, idle timeout, lost, too many errors, shutdown, fault
    name: str | None = None  # reverse DNS name, when known
    tls: str | None = None
    transactions: int = 0
    bytes_in: int = 0  # disconnect: what the client sent and was sent
    bytes_out: int = 0
    extra: dict[str, object] = field(default_factory=dict)


class Observer(Protocol):
    """Where records and countable events go (logs and metrics)."""

    def recipient(self, record: RecipientRecord) -> None: ...

    def transaction(self, record: TransactionRecord) -> None: ...

    def session(self, record: SessionRecord) -> None: ...

    def lookup(self, mapping: str, result: str, seconds: float) -> None:
        """One mapping asked for one key set: `result` is hit, miss, stale or
        error (once per RCPT, so typed rather than an event by name)."""
        ...

    def event(self, name: str, level: str = "info", **fields: object) -> None:
        """Anything else worth a line and a counter: `connection_refused`
        (reason=), `tls_failed` (side=), `tls_established` (side=, resumed=),
        `body_refused` (kind=), `upstream_failed` (target=),
        `session_fault` (the traceback is logged once)."""
        ...


class NullObserver:
    """For tests and tools that want no output."""

    def recipient(self, record: RecipientRecord) -> None:
        return None

    def transaction(self, record: TransactionRecord) -> None:
        return None

    def session(self, record: SessionRecord) -> None:
        return None

    def lookup(self, mapping: str, result: str, seconds: float) -> None:
        return None

    def event(self, name: str, level: str = "info", **fields: object) -> None:
        return None


class ListObserver(NullObserver):
    """Keeps every record, in order: what a test asserts on."""

    def __init__(self) -> None:
        self.records: list[object] = []

    def recipient(self, record: RecipientRecord) -> None:
        self.records.append(record)

    def transaction(self, record: TransactionRecord) -> None:
        self.records.append(record)

    def session(self, record: SessionRecord) -> None:
        self.records.append(record)

    def lookup(self, mapping: str, result: str, seconds: float) -> None:
        self.records.append(("lookup", {"mapping": mapping, "result": result, "seconds": seconds}))

    def event(self, name: str, level: str = "info", **fields: object) -> None:
        self.records.append((name, fields))
