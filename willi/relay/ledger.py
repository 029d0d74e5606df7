"""One transaction's account: who was accepted, who was refused, what the
client was told last, and the records that say so at the end.

Outcomes are honest (records.py): an accepted recipient is `sent` only when
the upstream's final reply to the message was a 2xx that the client got; a
transaction that ends without a final reply (client quit after RCPT, client
lost in the body, upstream gone) leaves its recipients `deferred` with the
reason in `aborted`, and its TransactionRecord carries no code at all, so no
250 to a RCPT ever reads as a delivery.
"""

from __future__ import annotations

from willi.records import (DEFERRED, REFUSED, UPSTREAM, WILLI, RecipientRecord, TransactionRecord,
                           status_of)


def code_text(reply: bytes) -> tuple[int | None, str | None]:
    """The code and first line's text of a reply (Willi's own or relayed)."""
    code = reply[:3]
    if len(code) < 3 or not code.isdigit():
        return None, None
    end = reply.find(b"\r\n")
    return int(code), reply[4:end if end >= 0 else len(reply)].decode("utf-8", "replace")


class Ledger:
    """The bookkeeping of the transaction in progress (one at a time)."""

    __slots__ = ("session", "client", "txn", "started", "sender", "helo", "tls", "accepted",
                 "refused", "last", "last_src", "upstream", "upstream_tls", "chunking")

    def __init__(self, session: str, client: str, txn: str, started: float, sender: str,
                 helo: str | None, tls: str | None) -> None:
        self.session = session
        self.client = client
        self.txn = txn
        self.started = started
        self.sender = sender
        self.helo = helo
        self.tls = tls
        self.accepted: list[str] = []
        self.refused = 0
        self.last: bytes | None = None  # the last negative or final reply the client got
        self.last_src = WILLI
        self.upstream: str | None = None
        self.upstream_tls: str | None = None
        self.chunking = False

    def refuse(self, to: str, reply: bytes, src: str) -> RecipientRecord:
        """A recipient refused or deferred at RCPT: its record, now."""
        self.refused += 1
        self.last, self.last_src = reply, src
        code, text = code_text(reply)
        return RecipientRecord(self.session, self.txn, to, status_of(code, at_rcpt=True), code, text, src,
                               self.upstream if src == UPSTREAM else None)

    def accept(self, to: str) -> None:
        self.accepted.append(to)

    def close(self, now: float, final: bytes | None, src: str, size: int | None,
              aborted: str | None) -> list[RecipientRecord | TransactionRecord]:
        """The records for the end of the transaction: one per accepted
        recipient, then the transaction's own."""
        if final is not None:
            self.last, self.last_src = final, src
            aborted = None
        code, text = code_text(self.last) if self.last is not None else (None, None)
        if self.accepted:
            status = DEFERRED if final is None else status_of(code, at_rcpt=False)
            if final is None:  # no final reply: none to report (a RCPT's 250 is not one)
                code = text = None
        else:
            status = REFUSED if code is not None and code >= 500 else DEFERRED
        out: list[RecipientRecord | TransactionRecord] = [
            RecipientRecord(self.session, self.txn, to, status, code if final is not None else None,
                            text if final is not None else None, src if final is not None else WILLI,
                            self.upstream, aborted)
            for to in self.accepted
        ]
        out.append(TransactionRecord(  # positional: one per message, keywords cost more
            self.session, self.txn, self.client, self.helo, self.tls, self.sender, tuple(self.accepted),
            self.refused, self.upstream, self.upstream_tls, status, code, text, self.last_src, size,
            round(now - self.started, 3), aborted, self.chunking))
        return out
