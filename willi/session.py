"""A client session: executes the relay's commands on two connections.

All SMTP decisions are made elsewhere, without sockets: the client side by
`smtp.server.ServerProtocol`, the transaction between client and upstream by
`relay.Relay` (binding, the 452 split, envelope replay, body verdict, BDAT,
upstream loss). This class only carries events to them and does what they
ask on the client side: answer, read a body, hand records to the Observer,
STARTTLS; what they ask of routing and the upstream is done by
`session_upstream.UpstreamSide`. Flow control is `flow.Flow`; the client's
deadline and the TLS handshake's timer are `session_clock.ClientClock`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import willi.relay.commands as c
import willi.relay.events as e
from willi import replies
from willi.connection import Connection
from willi.context import format_traceback
from willi.session_clock import ClientClock
from willi.flow import BACKLOG, CLIENT_FULL, Flow
from willi.records import RecipientRecord, SessionRecord
from willi.relay import Relay, S
from willi.session_upstream import UPSTREAM_EXECUTE, UpstreamSide
from willi.smtp import server as smtp
from willi.smtp.server import OUT_LIMIT
from willi.tls import TLSEngine

if TYPE_CHECKING:
    from willi.context import Context

BODY_STATES = (S.BODY, S.DRAIN, S.CHUNK)
COMMAND = smtp.Phases.COMMAND


class Session:
    """One client connection and the upstream link its relay is bound to."""

    __slots__ = ("ctx", "id", "peer", "proto", "relay", "closed", "eof", "client_tls", "_events", "_pumping",
                 "_faulted", "client", "flow", "up", "clock")

    def __init__(self, ctx: "Context", sock: Any, peer: tuple[str, int]) -> None:
        self.ctx = ctx
        self.id = ctx.next_session_id()
        self.peer = peer
        self.proto = smtp.ServerProtocol(ctx.server_settings, ctx.ehlo_plain, ctx.ehlo_tls)
        self.relay = Relay(self.id, peer[0], ctx.server_settings.max_message_size, ctx.strict_body,
                           ctx.split_recipients, ctx.server_settings.max_recipients)
        self.closed = False
        self.eof = False  # the client half-closed: finish, reply, then close
        self.client_tls: str | None = None
        self._events: list[e.Event] = []  # a deque would cost 760 bytes a session; this is short
        self._pumping = False
        self._faulted = False
        self.client = Connection.accepted(ctx.reactor, sock, self)
        self.flow = Flow(self.client)
        self.up = UpstreamSide(self)
        ctx.open_sessions += 1
        try:
            self.clock = ClientClock(self)
            ctx.observer.session(SessionRecord("connect", self.id, peer[0], peer[1]))
            self.proto.greet()
            self._flush_client()
        except Exception:
            # A session that cannot start leaves nothing behind but a clear
            # 421 for its client (the guard reports the fault); no transaction
            # exists yet, so an orderly close is safe.
            self.closed = True
            if hasattr(self, "clock"):
                self.clock.cancel()
            ctx.open_sessions -= 1
            self.client.write(replies.SESSION_FAULT)
            self.client.close()
            raise

    # --- client connection events ---------------------------------------------
    def on_data(self, conn: Connection, data: memoryview) -> None:
        now = self.ctx.reactor.time()
        if self.relay.state in BODY_STATES:
            self.clock.deadline.body_bytes(len(data), now)
            self.pump(e.BodyReceived(data.obj, 0, len(data)))
        else:
            self.proto.feed(data)
            self.pump()
            self.clock.deadline.fed(self.proto.lines_read, now)
        if not self.closed and (self.proto.phase is not COMMAND or self.flow.paused):
            # Only input makes the backlog grow, and only while the protocol
            # is not reading commands (in COMMAND phase at most a partial line
            # is left over, bounded by the line limit).
            self.flow.backlog(self.proto.buffered)

    def on_eof(self, conn: Connection) -> None:
        """A read EOF is not a lost connection: what was received is worked
        off and every reply written before the session closes (SPEC §2)."""
        self.eof = True
        if self.relay.state in BODY_STATES:
            self.close("client lost")  # the end of data will never come
            return
        self.pump()

    def on_lost(self, conn: Connection, exc: BaseException | None) -> None:
        self.close("client lost" if exc is None else f"client lost: {exc}")

    def on_pause_writing(self, conn: Connection) -> None:
        self.flow.pause(CLIENT_FULL)

    def on_resume_writing(self, conn: Connection) -> None:
        self.flow.resume(CLIENT_FULL)
        self.pump()  # pipelined commands may wait for their replies to be read

    # --- the pump: protocol events in, relay commands out ------------------------
    def post(self, event: e.Event) -> None:
        self._events.append(event)

    def pump(self, event: e.Event | None = None) -> None:
        """Run relay events (`event` first, when given: an outcome from
        outside) and protocol events until both have to wait."""
        if self._pumping or self.closed:
            if event is not None:
                self._events.append(event)
            return
        self._pumping = True
        events, proto = self._events, self.proto
        unanswered = False  # commands wait until the client reads the replies before them
        try:
            if event is not None:
                self._run(event)  # nothing else is queued while no pump runs
            while not self.closed:
                if events:
                    self._run(events.pop(0))
                    continue
                if proto.phase is not COMMAND:
                    break  # waiting for the relay, or reading a body: no command to take
                event = proto.next_event()
                if event is None:
                    if len(proto.out) >= OUT_LIMIT:  # commands wait until these replies are taken
                        self.client.write(proto.take_output())
                        unanswered = bool(self.flow.paused & CLIENT_FULL)
                        if not unanswered:
                            continue  # the kernel took it: go on
                    break  # every command answered, or the client is not reading its replies
                CLIENT_EVENTS[type(event)](self, event)
        finally:
            self._pumping = False
        if proto.error_codes:
            self._report_errors()
        if self.closed:
            return
        if proto.out:
            self.client.write(proto.take_output())
        if self.ctx.draining and self._idle():
            self.say_goodbye(replies.SHUTTING_DOWN)
        elif self.eof:
            if proto.phase is COMMAND and self.relay.state is S.IDLE and not unanswered:
                self.close("client lost", flush=True)  # everything it sent is answered
            elif self.relay.state in BODY_STATES:
                self.close("client lost")  # the rest of the body or chunk will never come
        elif self.flow.paused & BACKLOG:
            self.flow.backlog(proto.buffered)  # worked off: read again

    # --- the client protocol's events, as relay events (CLIENT_EVENTS) ---------------
    def _rcpt(self, event: smtp.Rcpt) -> None:
        proto = self.proto
        assert proto.mail is not None
        self._run(e.ClientRcpt(event.address, proto.mail, proto.mail_params, proto.helo, self.client_tls))

    def _data(self, event: smtp.Data) -> None:
        self._run(e.CLIENT_DATA)

    def _bdat(self, event: smtp.Bdat) -> None:
        self._run(e.ClientBdat(event.size, event.last))

    def _reset(self, event: smtp.Reset) -> None:
        self._run(e.ClientReset())

    def _starttls(self, event: smtp.StartTLS) -> None:
        self._run(e.ClientStartTLS())

    def _goodbye(self, event: smtp.Quit | smtp.Close) -> None:
        """Quit, Close: the protocol has queued 221 or 421."""
        self._flush_client()
        self.close("client quit" if isinstance(event, smtp.Quit) else event.reason, flush=True)

    def _run(self, event: e.Event) -> None:
        up = self.up
        for command in self.relay.handle(event, self.ctx.reactor.time()):
            if self.closed:
                break  # closed by an earlier command (a write found the client gone)
            on_session, execute = EXECUTE[command.__class__]
            execute(self if on_session else up, command)

    def _report_errors(self) -> None:
        """protocol_error for each command error (willi_protocol_errors_total{code})."""
        codes, self.proto.error_codes = self.proto.error_codes, []
        for code in codes:
            self.ctx.observer.event("protocol_error", session=self.id, code=code)

    def _flush_client(self) -> None:
        out = self.proto.take_output()
        if out:
            self.client.write(out)

    def _idle(self) -> bool:
        return self.proto.phase is COMMAND and self.proto.mail is None

    # --- executing the relay's commands --------------------------------------------
    def _answer(self, cmd: c.Answer) -> None:
        self.proto.answer(cmd.reply, cmd.accepted, cmd.error)

    def _read_body(self, cmd: c.ReadBody) -> None:
        self._flush_client()  # the 354 goes out before any body byte is judged
        self.proto.start_body()
        self.clock.deadline.body_started(self.ctx.reactor.time())
        start = self.proto.take_body_start()
        if start and not self.closed:
            self.post(e.BodyReceived(start, 0, len(start)))

    def _body_done(self, cmd: c.BodyDone) -> None:
        self.up.cancel_stall_timer()
        self.clock.deadline.body_ended(self.ctx.reactor.time())
        self.proto.body_done(cmd.reply)

    def _feed_client(self, cmd: c.FeedClient) -> None:
        self.proto.feed(cmd.data)

    def _end_client_transaction(self, cmd: c.EndClientTransaction) -> None:
        self.proto.void_transaction()

    def _emit(self, cmd: c.Emit) -> None:
        observer = self.ctx.observer
        for record in cmd.records:
            if record.__class__ is RecipientRecord:
                observer.recipient(record)
            else:
                observer.transaction(record)

    def _notice(self, cmd: c.Notice) -> None:
        self.ctx.observer.event(cmd.name, cmd.level, session=self.id, **dict(cmd.fields))

    # --- STARTTLS -----------------------------------------------------------------
    def _start_client_tls(self, cmd: c.StartClientTLS) -> None:
        context = self.ctx.server_tls()
        self._flush_client()  # the 220 goes out in plaintext
        if context is None:
            self.close("TLS not available")
            return
        engine = TLSEngine(context, server_side=True)
        self.clock.start_tls()
        self.client.start_tls(engine, lambda exc: self._tls_done(engine, exc))

    def _tls_done(self, engine: TLSEngine, exc: BaseException | None) -> None:
        self.clock.tls_done()
        if exc is not None:
            self.ctx.observer.event("tls_failed", session=self.id, side="client", client=self.peer[0],
                                    error=str(exc))
            self.close("TLS handshake failed")
            return
        self.client_tls = f"{engine.version} {engine.cipher}"
        # Counted by willi_tls_handshakes_total{side="client"}.
        self.ctx.observer.event("tls_established", level="debug", session=self.id, side="client",
                                resumed=engine.session_reused)
        self.proto.tls_started()
        self.pump()

    # --- ending -------------------------------------------------------------------
    def drain(self) -> None:
        """Shutdown: an idle session is told 421 now, a busy one after its transaction."""
        if not self.closed and self._idle() and not self._pumping:
            self.say_goodbye(replies.SHUTTING_DOWN)

    def say_goodbye(self, reply: bytes, reason: str = "closing") -> None:
        self.proto.reply(reply)
        self.proto.close()
        self._flush_client()
        self.close(reason, flush=True)

    def fatal(self, exc: BaseException) -> None:
        """The reactor's guard: a callback of this session raised. Only this
        session ends: the client hears 421 4.3.0 if it can still be written
        to, the upstream is aborted (never a dot or QUIT inside a body), and
        the traceback is reported once."""
        self.ctx.observer.event("session_fault", level="error", session=self.id, error=repr(exc),
                                traceback=format_traceback(exc))
        self.up.drop(c.DropLink(abort=True))
        if self.closed:
            return
        self._faulted = True  # the relay may be what raised: it is not asked again
        if not self.client.closed:
            self.proto.close()
            self.client.write(replies.SESSION_FAULT)
        self.close("fault", flush=True)

    def close(self, reason: str, flush: bool = False) -> None:
        """The one way a session ends; idempotent. A message in flight is
        never completed: the relay aborts its upstream."""
        if self.closed:
            return
        self.clock.cancel()
        self._events.clear()
        if not self._faulted:
            self._run(e.ClientGone(reason))  # its records, and the upstream let go
        self.closed = True
        link = self.up.link
        self.up.drop(c.DropLink(abort=link is not None and link.busy))
        if flush:
            # The last reply gets the client timeout to be read, as any reply does.
            self.client.close_when_flushed(self.ctx.deadline_settings.client_timeout(self.ctx.stressed()))
        else:
            self.client.close()
        self.ctx.observer.session(SessionRecord(
            "disconnect", self.id, self.peer[0], self.peer[1], reason=reason, tls=self.client_tls,
            transactions=self.relay.count, bytes_in=self.client.bytes_in, bytes_out=self.client.bytes_out))
        self.ctx.session_closed(self)


_ON_SESSION: dict[type, Callable[[Session, Any], None]] = {
    c.Answer: Session._answer,
    c.ReadBody: Session._read_body,
    c.BodyDone: Session._body_done,
    c.FeedClient: Session._feed_client,
    c.EndClientTransaction: Session._end_client_transaction,
    c.StartClientTLS: Session._start_client_tls,
    c.Emit: Session._emit,
    c.Notice: Session._notice,
}
# Every relay command: (for the session itself?, its executor); one lookup a command.
EXECUTE: dict[type, tuple[bool, Callable[[Any, Any], None]]] = {
    **{kind: (True, execute) for kind, execute in _ON_SESSION.items()},
    **{kind: (False, execute) for kind, execute in UPSTREAM_EXECUTE.items()},
}

CLIENT_EVENTS: dict[type, Callable[[Session, Any], None]] = {
    smtp.Rcpt: Session._rcpt,
    smtp.Data: Session._data,
    smtp.Bdat: Session._bdat,
    smtp.Reset: Session._reset,
    smtp.StartTLS: Session._starttls,
    smtp.Quit: Session._goodbye,
    smtp.Close: Session._goodbye,
}
