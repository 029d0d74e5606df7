"""The Observer: every log line and every metric an operator sees, in one place.

Producers (the relay, the listener, the dialer, the router) hand over typed
records and named events (`willi.records`); this module turns each into at
most one log line and the counters it moves. Lines are meant to be grepped
and counted as Postfix's are (README "Logs"): one `event=recipient` line per
recipient with `status=sent|deferred|bounced|refused`, the reply the client
got and who decided (`src=willi|upstream`), one `event=transaction` line per
transaction whose `code=` appears only when there was a final reply, and
`event=connect` / `event=disconnect` lines per session.

Lookups happen once per RCPT, so `lookup` events are counted always but
written only at debug (and at warning when the mapping failed). The commands
and replies of a session are written at debug only; a producer checks
`observer.debug_enabled` first so they cost nothing otherwise.
"""

from __future__ import annotations

from typing import Any, Callable

from willi.log import LevelMethods, Logger
from willi.metrics import Metrics
from willi.records import RecipientRecord, SessionRecord, TransactionRecord


class Observer:
    """Logs and counts what the producers report (the `records.Observer` protocol)."""

    def __init__(self, logger: Logger, metrics: Metrics | None = None) -> None:
        self.logger = logger
        self.metrics = metrics or Metrics()
        self.debug_enabled = logger.enabled("debug")
        self._info = logger.enabled("info")
        self._events: dict[str, Callable[[dict[str, Any]], None]] = {
            "connection_refused": self._refused,
            "tls_failed": lambda f: self.metrics.tls_failures.inc(str(f.get("side", "client"))),
            "tls_established": lambda f: self.metrics.tls_handshakes.inc(
                str(f.get("side", "client")), "true" if f.get("resumed") else "false"),
            "body_refused": lambda f: self.metrics.body_violations.inc(str(f.get("kind", "unknown"))),
            "upstream_failed": lambda f: self.metrics.upstream_failures.inc(str(f.get("target") or "unknown")),
            "upstream_connected": self._upstream_connected,
            "session_fault": lambda f: self.metrics.session_faults.inc(),
            "protocol_error": lambda f: self.metrics.protocol_errors.inc(str(f.get("code", "unknown"))),
        }

    # --- records ------------------------------------------------------------------
    def recipient(self, record: RecipientRecord) -> None:
        self.metrics.recipients.inc(record.status, record.src)
        if self._info:
            self.logger.info(
                "recipient", session=record.session, txn=record.txn, to=record.to, status=record.status,
                code=record.code, text=record.text, src=record.src, upstream=record.upstream,
                aborted=record.aborted)

    def transaction(self, record: TransactionRecord) -> None:
        self.metrics.transactions.inc(record.status)
        if self._info:
            self.logger.info(
                "transaction", session=record.session, txn=record.txn, client=record.client, helo=record.helo,
                tls=record.tls, sender=record.sender, rcpts=",".join(record.accepted) or None,
                nrcpt=len(record.accepted), refused=record.refused or None, upstream=record.upstream,
                upstream_tls=record.upstream_tls, status=record.status, code=record.code, text=record.text,
                src=record.src, size=record.size, duration=round(record.duration, 3), aborted=record.aborted,
                chunking=record.chunking or None)

    def session(self, record: SessionRecord) -> None:
        metrics = self.metrics
        if record.event == "connect":
            metrics.sessions_accepted.inc()
            metrics.sessions_open.inc()
        elif record.event == "disconnect":
            metrics.sessions_open.dec()
            metrics.bytes_received.inc(amount=record.bytes_in)
            metrics.bytes_sent.inc(amount=record.bytes_out)
        if self._info:
            disconnect = record.event == "disconnect"
            fields: dict[str, object] = dict(
                bytes_in=record.bytes_in if disconnect else None,
                bytes_out=record.bytes_out if disconnect else None,
                session=record.session, client=record.client, port=record.port, name=record.name,
                reason=record.reason, tls=record.tls, transactions=record.transactions if disconnect else None)
            self._log("info", record.event, {**record.extra, **fields})

    def lookup(self, mapping: str, result: str, seconds: float) -> None:
        """Counted and timed always; written at debug, or at warning when it failed."""
        metrics = self.metrics
        metrics.lookups.inc(mapping, result)
        metrics.lookup_duration.observe(seconds, mapping)
        if result == "error" or self.debug_enabled:
            self._log("warning" if result == "error" else "debug", "lookup",
                      {"mapping": mapping, "result": result, "seconds": seconds})

    def event(self, name: str, level: str = "info", **fields: object) -> None:
        bump = self._events.get(name)
        if bump is not None:
            bump(fields)
        self._log(level, name, fields)

    def _log(self, level: str, name: str, fields: dict[str, object]) -> None:
        """A producer's field may not pose as the line's own ts, level or event."""
        if _RESERVED.isdisjoint(fields):
            self.logger.log(level, name, **fields)
        else:
            self.logger.log(level, name, **{f"{k}_" if k in _RESERVED else k: v for k, v in fields.items()})

    # --- counting events ------------------------------------------------------------
    def _refused(self, fields: dict[str, Any]) -> None:
        self.metrics.connections_refused.inc(str(fields.get("reason", "unknown")))

    def _upstream_connected(self, fields: dict[str, Any]) -> None:
        self.metrics.upstream_connects.inc(str(fields.get("target", "unknown")))
        if fields.get("reused"):
            self.metrics.pool_hits.inc()


_RESERVED = frozenset({"ts", "level", "event"})


# --- producers that still log events by name (the dialer) ----------------------------


class ObservedLogger(LevelMethods):
    """A logger for producers that still log events by name: each line goes
    through `observer.event`, so it is counted as well as written."""

    def __init__(self, observer: Observer, fields: dict[str, object] | None = None) -> None:
        self._observer = observer
        self._fields = fields or {}

    def bind(self, **fields: object) -> ObservedLogger:
        return ObservedLogger(self._observer, {**self._fields, **fields})

    def enabled(self, level: str) -> bool:
        return self._observer.logger.enabled(level)

    def log(self, level: str, event: str, **fields: object) -> None:
        self._observer.event(event, level, **{**self._fields, **fields})
