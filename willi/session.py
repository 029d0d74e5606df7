"""A client session: executes the relay's commands on two connections.

All SMTP decisions are made elsewhere, without sockets: the client side by
`smtp.server.ServerProtocol`, the transaction between client and upstream by
`relay.Relay` (binding, the 452 split, envelope replay, body verdict, upstream
loss). This class only carries events to them and does what they ask: route
(inline when the router answers from memory, else in the worker pool), dial,
write to either side, hand records to the Observer. Flow control is
`flow.Flow`; the timers (client idle, TLS handshake, lookup, upstream stall)
are here because they are the session's.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Callable

from willi import replies
from willi.deadlines import ClientDeadline
from willi.connection import Connection
from willi.context import format_traceback
from willi.errors import MappingError
from willi.flow import CLIENT_FULL, UPSTREAM_FULL, Flow
from willi.records import RecipientRecord
from willi.relay import Relay, State
from willi.relay import commands as c
from willi.relay import events as e
from willi.routing import NOT_CACHED
from willi.smtp import server as smtp
from willi.smtp.reply import Reply
from willi.smtp.upstream import ClientInfo
from willi.tls import TLSEngine
from willi.upstream import UpstreamLink
from willi.workers import PoolFull

if TYPE_CHECKING:
    from willi.context import Context

BODY_STATES = (State.BODY, State.DRAIN, State.CHUNK)


class Session:
    """One client connection and the upstream link its relay is bound to."""

    def __init__(self, ctx: "Context", sock: Any, peer: tuple[str, int]) -> None:
        self.ctx = ctx
        self.id = ctx.next_session_id()
        self.peer = peer
        self.proto = smtp.ServerProtocol(ctx.server_settings, ctx.ehlo_plain, ctx.ehlo_tls)
        self.relay = Relay(self.id, peer[0], ctx.server_settings.max_message_size, ctx.strict_body,
                           ctx.split_recipients)
        self.link: UpstreamLink | None = None
        self.dialing: Any = None
        self.token = 0  # a lookup or dial whose token is stale is ignored
        self.closed = False
        self.eof = False  # the client half-closed: finish, reply, then close
        self.client_tls: str | None = None
        self.last_client = ctx.reactor.time()
        self.tls_timer: Any = None
        self.stall_timer: Any = None
        self._events: collections.deque[e.Event] = collections.deque()
        self._pumping = False
        self.client = Connection.accepted(ctx.reactor, sock, self)
        self.flow = Flow(self.client)
        ctx.open_sessions += 1
        self.deadline = ClientDeadline(ctx.deadline_settings, ctx.stressed, ctx.reactor.time())
        self.client_timer = ctx.reactor.call_later(self._deadline_delay(ctx.reactor.time()),
                                                   self._client_timer_fired, owner=self)
        self.proto.greet()
        self._flush_client()

    # --- client connection events ---------------------------------------------
    def on_data(self, conn: Connection, data: memoryview) -> None:
        now = self.last_client = self.ctx.reactor.time()
        if self.relay.state in BODY_STATES:
            self.deadline.body_bytes(len(data), now)
            self._post(e.BodyReceived(data.obj, 0, len(data)))
            self._pump()
            return
        self.proto.feed(data)
        self._pump()
        self.deadline.fed(self.proto.lines_read, now)

    def on_eof(self, conn: Connection) -> None:
        """A read EOF is not a lost connection: what was received is worked
        off and every reply written before the session closes (SPEC §2)."""
        self.eof = True
        if self.relay.state in BODY_STATES:
            self.close("client lost")  # the end of data will never come
            return
        self._pump()

    def on_lost(self, conn: Connection, exc: BaseException | None) -> None:
        self.close("client lost" if exc is None else f"client lost: {exc}")

    def on_pause_writing(self, conn: Connection) -> None:
        self.flow.pause(CLIENT_FULL)

    def on_resume_writing(self, conn: Connection) -> None:
        self.flow.resume(CLIENT_FULL)

    # --- the pump: protocol events in, relay commands out ------------------------
    def _post(self, event: e.Event) -> None:
        self._events.append(event)

    def _pump(self) -> None:
        """Run relay events and protocol events until both have to wait."""
        if self._pumping or self.closed:
            return
        self._pumping = True
        try:
            while not self.closed:
                if self._events:
                    self._run(self._events.popleft())
                    continue
                event = self.proto.next_event()
                if event is None:
                    break
                self._client_event(event)
        finally:
            self._pumping = False
        if self.closed:
            return
        self._flush_client()
        if self.ctx.draining and self._idle():
            self._say_goodbye(replies.SHUTTING_DOWN)
        elif self.eof and self.proto.phase is smtp.Phase.COMMAND and self.relay.state is State.IDLE:
            self.close("client lost", flush=True)  # everything it sent is answered
        else:
            self.flow.backlog(self.proto.buffered)

    def _client_event(self, event: smtp.Event) -> None:
        proto = self.proto
        if isinstance(event, smtp.Rcpt):
            assert proto.mail is not None
            self._run(e.ClientRcpt(event.address, proto.mail, proto.mail_params, proto.helo, self.client_tls))
        elif isinstance(event, smtp.Data):
            self._run(e.ClientData())
        elif isinstance(event, smtp.Bdat):
            self._run(e.ClientBdat(event.size, event.last))
        elif isinstance(event, smtp.Reset):
            self._run(e.ClientReset())
        elif isinstance(event, smtp.StartTLS):
            self._run(e.ClientStartTLS())
        else:  # Quit, Close: the protocol has queued 221 or 421
            self._flush_client()
            self.close("client quit" if isinstance(event, smtp.Quit) else event.reason, flush=True)

    def _run(self, event: e.Event) -> None:
        for command in self.relay.handle(event, self.ctx.reactor.time()):
            EXECUTE[type(command)](self, command)

    def _flush_client(self) -> None:
        out = self.proto.take_output()
        if out:
            self.client.write(out)

    def _idle(self) -> bool:
        return self.proto.phase is smtp.Phase.COMMAND and self.proto.mail is None

    # --- executing the relay's commands --------------------------------------------
    def _answer(self, cmd: c.Answer) -> None:
        self.proto.answer(cmd.reply, cmd.accepted)

    def _read_body(self, cmd: c.ReadBody) -> None:
        self._flush_client()  # the 354 goes out before any body byte is judged
        self.proto.start_body()
        self.deadline.body_started(self.ctx.reactor.time())
        start = self.proto.take_body_start()
        if start and not self.closed:
            self._post(e.BodyReceived(start, 0, len(start)))

    def _body_done(self, cmd: c.BodyDone) -> None:
        self._cancel_stall_timer()
        self.deadline.body_ended(self.ctx.reactor.time())
        self.proto.body_done(cmd.reply)

    def _feed_client(self, cmd: c.FeedClient) -> None:
        self.proto.feed(cmd.data)

    def _end_client_transaction(self, cmd: c.EndClientTransaction) -> None:
        self.proto.void_transaction()

    def _look_up(self, cmd: c.LookUp) -> None:
        address, token = cmd.address, self._next_token()
        try:
            answer = self.ctx.router.resolve_fast(address)
        except MappingError as exc:
            self._post(e.RouteAnswered(None, exc.reply, str(exc)))
            return
        if answer is not NOT_CACHED:
            self._post(e.RouteAnswered(answer.route if answer is not None else None))  # type: ignore[union-attr]
            return
        timer = self.ctx.reactor.call_later(self.ctx.lookup_timeout, self._routed, token, None,
                                            TimeoutError("lookup timed out"), owner=self)

        def done(answer: Any, exc: BaseException | None) -> None:
            timer.cancel()
            self._routed(token, answer, exc)

        try:
            self.ctx.workers.submit(self.ctx.router.resolve, (address,), done)
        except PoolFull as exc:
            timer.cancel()
            self._post(e.RouteAnswered(None, replies.LOOKUP_FAILED, str(exc) or "worker pool full"))

    def _routed(self, token: int, answer: Any, exc: BaseException | None) -> None:
        if token != self.token or self.closed:
            return
        self._next_token()
        if exc is not None:
            self._post(e.RouteAnswered(None, replies.LOOKUP_FAILED, str(exc)))
        else:
            self._post(e.RouteAnswered(answer.route if answer is not None else None))
        self._pump()

    def _dial(self, cmd: c.Dial) -> None:
        token = self._next_token()
        try:
            local = self.client.sock.getsockname()[:2]  # a PROXY header's destination
        except OSError:
            local = (None, 0)
        client = ClientInfo(self.peer[0], self.peer[1], self.proto.helo, self.proto.esmtp, local[0], local[1])

        def done(link: UpstreamLink | None, why: str) -> None:
            self.dialing = None
            if token != self.token or self.closed:
                if link is not None:
                    link.quit()
                return
            if link is None:
                self._post(e.DialFailed(why))
            else:
                self._adopt(link)
                self._post(e.LinkReady(link))
            self._pump()

        self.dialing = self.ctx.dialer.dial(cmd.route, client, self.proto.tls_active, self._reverse_name, done)

    def _send(self, cmd: c.Send) -> None:
        link = self.link
        assert link is not None
        timeout = self.ctx.data_timeout if cmd.timeout == c.DATA_TIMEOUT else self.ctx.command_timeout
        on_reply = self._reply_callback(link)
        if not cmd.lines:
            link.expect(on_reply, timeout)
        elif len(cmd.lines) == 1:
            link.command(cmd.lines[0], on_reply, timeout)
        else:
            link.pipeline(tuple((line, on_reply) for line in cmd.lines), timeout)

    def _reply_callback(self, link: UpstreamLink) -> Callable[[Any], None]:
        def on_reply(outcome: Any) -> None:
            if link is not self.link or self.closed:
                return  # a link the relay let go
            self._post(e.UpstreamReplied(outcome) if isinstance(outcome, Reply) else e.UpstreamFailed(outcome))
            self._pump()

        return on_reply

    def _send_body(self, cmd: c.SendBody) -> None:
        assert self.link is not None
        self.link.write(cmd.data)

    def _drop_link(self, cmd: c.DropLink) -> None:
        if self.dialing is not None:
            self.dialing.cancel()
            self.dialing = None
            self._next_token()
        link, self.link = self.link, None
        self._cancel_stall_timer()
        self.flow.resume(UPSTREAM_FULL)
        if link is None:
            return
        link.detach()
        if link.conn is not None:
            link.conn.guardian = None
        if cmd.abort:
            link.abort()
        elif not cmd.reusable:
            link.quit()
        else:
            self.ctx.dialer.release(link, self.proto.tls_active)

    def _emit(self, cmd: c.Emit) -> None:
        if isinstance(cmd.record, RecipientRecord):
            self.ctx.observer.recipient(cmd.record)
        else:
            self.ctx.observer.transaction(cmd.record)

    def _notice(self, cmd: c.Notice) -> None:
        self.ctx.observer.event(cmd.name, cmd.level, session=self.id, **dict(cmd.fields))

    # --- the upstream link ------------------------------------------------------------
    def _adopt(self, link: UpstreamLink) -> None:
        self.link = link
        if link.conn is not None:
            link.conn.guardian = self  # a fault on the upstream side ends this session
        link.attach(self)

    def on_link_lost(self, link: UpstreamLink, exc: Any) -> None:
        """The upstream went away while no reply was awaited."""
        if link is not self.link or self.closed:
            return
        self.link = None
        self._cancel_stall_timer()
        self.flow.resume(UPSTREAM_FULL)
        self._post(e.UpstreamLost(exc))
        self._pump()

    def _reverse_name(self, callback: Callable[[str], None]) -> None:
        """XCLIENT's NAME for this client (cached across sessions)."""
        self.ctx.reverse_names.lookup(self.peer[0], callback)

    def on_link_pause(self, link: UpstreamLink) -> None:
        """The upstream is behind: stop reading the client, and give the
        upstream WILLI_UPSTREAM_DATA_TIMEOUT at a time to take some bytes."""
        self.flow.pause(UPSTREAM_FULL)
        self._arm_stall_timer()

    def on_link_resume(self, link: UpstreamLink) -> None:
        self._cancel_stall_timer()
        if self.flow.upstream_full:
            self.last_client = self.ctx.reactor.time()  # the client was not idle: we did not read it
        self.flow.resume(UPSTREAM_FULL)

    def _arm_stall_timer(self) -> None:
        self._cancel_stall_timer()
        if self.link is not None:
            self.stall_timer = self.ctx.reactor.call_later(
                self.ctx.data_timeout, self._upstream_stalled, self.link.out_size, owner=self)

    def _cancel_stall_timer(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None

    def _upstream_stalled(self, out_size: int) -> None:
        """No body byte taken for the data timeout: the relay drops the upstream
        and answers 451 4.4.2 after the client's end of data."""
        self.stall_timer = None
        if self.closed or self.relay.state not in (State.BODY, State.CHUNK) or not self.flow.upstream_full:
            return
        if self.link is not None and self.link.out_size < out_size:
            self._arm_stall_timer()  # slow, but it is reading
            return
        self._post(e.TimerFired(e.UPSTREAM_STALLED))
        self._pump()

    # --- STARTTLS -----------------------------------------------------------------
    def _start_client_tls(self, cmd: c.StartClientTLS) -> None:
        context = self.ctx.server_tls()
        self._flush_client()  # the 220 goes out in plaintext
        if context is None:
            self.close("TLS not available")
            return
        engine = TLSEngine(context, server_side=True)
        # No phase outlives the client idle timeout without a byte moving (SPEC §2).
        timeout = self.ctx.deadline_settings.handshake_timeout(self.ctx.stressed())
        self.tls_timer = self.ctx.reactor.call_later(timeout, self._tls_timed_out, owner=self)
        self.client.start_tls(engine, lambda exc: self._tls_done(engine, exc))

    def _tls_done(self, engine: TLSEngine, exc: BaseException | None) -> None:
        if self.tls_timer is not None:
            self.tls_timer.cancel()
            self.tls_timer = None
        if exc is not None:
            self.ctx.observer.event("tls_failed", session=self.id, side="client", client=self.peer[0],
                                    error=str(exc))
            self.close("TLS handshake failed")
            return
        self.last_client = self.ctx.reactor.time()
        self.client_tls = f"{engine.version} {engine.cipher}"
        self.proto.tls_started()
        self._pump()

    def _tls_timed_out(self) -> None:
        self.tls_timer = None
        self.ctx.observer.event("tls_failed", session=self.id, side="client", client=self.peer[0],
                                error="handshake timed out")
        self.close("TLS handshake timed out")

    # --- the client idle timer ----------------------------------------------------------
    def _client_timer_fired(self) -> None:
        if self.closed:
            return
        reactor = self.ctx.reactor
        now = reactor.time()
        # While the upstream holds us back we do not read the client: not its idleness.
        waiting_on_us = (self.proto.phase is smtp.Phase.WAITING or self.flow.upstream_full
                         or self.relay.state in (State.FINAL, State.CHUNK_SENT) or self.tls_timer is not None)
        if waiting_on_us:
            self.deadline.record_started(now)
        why = None if waiting_on_us else self.deadline.expired(now)
        if why is None:
            self.client_timer = reactor.call_later(self._deadline_delay(now), self._client_timer_fired, owner=self)
            return
        self._say_goodbye(replies.CLIENT_TIMEOUT, why)

    def _deadline_delay(self, now: float) -> float:
        """Until the deadline, but at most the stress timeout: stress that
        starts meanwhile is noticed in time."""
        due = min(self.deadline.due(now), now + self.ctx.deadline_settings.stress_timeout)
        return max(due - now, 0.0)

    def _next_token(self) -> int:
        self.token += 1
        return self.token

    # --- ending -------------------------------------------------------------------
    def drain(self) -> None:
        """Shutdown: an idle session is told 421 now, a busy one after its transaction."""
        if not self.closed and self._idle() and not self._pumping:
            self._say_goodbye(replies.SHUTTING_DOWN)

    def _say_goodbye(self, reply: bytes, reason: str = "closing") -> None:
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
        self._drop_link(c.DropLink(abort=True))
        if self.closed:
            return
        self.relay.state = State.CLOSED  # its state is not to be trusted any more
        if not self.client.closed:
            self.proto.close()
            self.client.write(replies.SESSION_FAULT)
        self.close("fault", flush=True)

    def close(self, reason: str, flush: bool = False) -> None:
        """The one way a session ends; idempotent. A message in flight is
        never completed: the relay aborts its upstream."""
        if self.closed:
            return
        self.client_timer.cancel()
        if self.tls_timer is not None:
            self.tls_timer.cancel()
        self._events.clear()
        self._run(e.ClientGone(reason))
        self.closed = True
        self._drop_link(c.DropLink(abort=self.link is not None and self.link.busy))
        if flush:
            self.client.close_when_flushed()
        else:
            self.client.close()
        self.ctx.session_closed(self)


EXECUTE: dict[type, Callable[[Session, Any], None]] = {
    c.Answer: Session._answer,
    c.ReadBody: Session._read_body,
    c.BodyDone: Session._body_done,
    c.FeedClient: Session._feed_client,
    c.EndClientTransaction: Session._end_client_transaction,
    c.StartClientTLS: Session._start_client_tls,
    c.LookUp: Session._look_up,
    c.Dial: Session._dial,
    c.Send: Session._send,
    c.SendBody: Session._send_body,
    c.DropLink: Session._drop_link,
    c.Emit: Session._emit,
    c.Notice: Session._notice,
}
