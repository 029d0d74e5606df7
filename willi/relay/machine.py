"""The relay: one client transaction replayed to one upstream, as a sans-IO
state machine (SPEC §2 RCPT/DATA/RSET, §4).

`Relay.handle(event, now)` takes one typed event (events.py) and returns the
typed commands (commands.py) the session must execute, in order. There are
no sockets, clock, threads or logging here: `now` comes with each event, the
link is only read (LinkView), and records leave as Emit commands. What may
happen in which state is one table, `TRANSITIONS` (h11's `_state.py`); an
event the table does not list for the current state is a bug, raised as
RelayError (the reactor's guard then ends only this session).

The rules it keeps:

- A transaction is bound to the upstream that accepted one of its
  recipients; a recipient routed elsewhere gets `452 4.5.3` (or, with
  splitting off, goes to the bound upstream), an LMTP transaction carries one
  recipient.
- The envelope is replayed when the first routed recipient picks an
  upstream: MAIL FROM then RCPT TO, pipelined when the upstream offers it; a
  refused MAIL is the reply the client gets for its RCPT.
- An upstream `421` closes that upstream and reaches the client as `451`.
- The body streams through DataScanner: a violation or an upstream that went
  away drops the upstream (never a final dot) and the client hears the
  failure after its own end of data. A CR that ends a received chunk is held
  back until the next byte is known, so a lenient upstream never sees a line
  end the client did not send (issue 9).
- When the upstream is lost inside a transaction, the client gets a 4xx and
  the transaction is over: the client protocol is told to forget it.
- BDAT (RFC 3030) is the other half of the transitions, in chunking.py.
"""

from __future__ import annotations

from typing import Callable

from willi import replies
from willi.errors import NeedsSMTPUTF8, UpstreamError
from willi.records import UPSTREAM, WILLI
from willi.routing import Route
import willi.relay.commands as c
import willi.relay.events as e
from willi.relay.chunking import Chunking
from willi.relay.ledger import Ledger
from willi.relay.states import KINDS, RelayError, S, State, demote_421
from willi.smtp.bdat import ChunkScanner, DotStuffer  # the attributes' types
from willi.smtp.body import TOO_BIG, DataScanner
from willi.smtp.reply import Reply
from willi.smtp.upstream import mail_command, rcpt_command


class Relay(Chunking):
    """The transaction between one client session and its upstream."""

    # One per session, idle ones included: slots keep it small.
    __slots__ = ("session", "client", "max_size", "strict_body", "split_recipients", "max_recipients", "state", "link",
                 "upstream_open", "txn", "count", "_rcpt", "_route", "_size", "_fresh", "_pipelined",
                 "_mail_refused", "_ignore", "_scanner", "_held", "_failure", "_chunk", "_stuffer",
                 "_remaining", "_last", "_early", "_this", "_last_pending", "_lost", "_out", "_now")

    def __init__(self, session: str, client: str, max_size: int, strict_body: bool = True,
                 split_recipients: bool = True, max_recipients: int = 100) -> None:
        self.session = session
        self.client = client
        self.max_size = max_size
        self.strict_body = strict_body
        self.split_recipients = split_recipients
        self.max_recipients = max_recipients  # accepted ones (WILLI_MAX_RECIPIENTS), as Postfix counts
        self.state = S.IDLE
        self.link: e.LinkView | None = None
        self.upstream_open = False  # MAIL FROM accepted upstream, transaction not finished
        self.txn: Ledger | None = None
        self.count = 0  # transactions so far: the txn id's counter
        self._rcpt: e.ClientRcpt | None = None  # the RCPT being worked on
        self._route: Route | None = None  # ... and its route
        self._size = 0  # the body's size once its end is seen
        self._fresh = True  # the link was just dialled: a failed MAIL is not a stale pooled link
        self._pipelined = False
        self._mail_refused: Reply | None = None
        self._ignore = 0  # replies the bound link still owes to commands nobody waits for (RSET)
        self._scanner: DataScanner | None = None
        self._held = b""  # a chunk-final CR not yet forwarded
        self._failure: bytes | None = None  # the reply for a body that will not be delivered
        self._chunk: ChunkScanner | None = None  # the BDAT transaction's content checks
        self._stuffer: DotStuffer | None = None  # BDAT to DATA translation, when the upstream lacks CHUNKING
        self._remaining = 0  # bytes of the current chunk still to read
        self._last = False  # the current chunk is the LAST
        self._early: e.Event | None = None  # the chunk's upstream reply, come before its last byte
        self._this = 0  # the size of the current chunk
        self._last_pending = False  # the last chunk went up as "BDAT n": its reply, then "BDAT 0 LAST"
        self._lost = False  # the upstream went away under this BDAT transaction
        # Each handle() gets a list of its own; until the first, nothing to
        # append to (and no 56-byte list for every idle session).
        self._out: list[c.Command] | tuple[()] = ()
        self._now = 0.0

    # --- the one entry point ----------------------------------------------------
    def handle(self, event: e.Event, now: float) -> list[c.Command]:
        self._now = now
        out = self._out = []
        if self._ignore and self._swallowed(event):
            return out
        action = _BY_STATE[self.state].get(type(event))
        if action is None:
            raise RelayError(f"{type(event).__name__} in state {self.state.value}")
        action(self, event)
        return out

    def _swallowed(self, event: e.Event) -> bool:
        """Replies to commands whose answers nobody waits for (an RSET); asked
        only while `_ignore` counts some."""
        if not isinstance(event, (e.UpstreamReplied, e.UpstreamFailed)):
            return False
        self._ignore -= 1
        broken = isinstance(event, e.UpstreamFailed) or event.reply.code == 421
        if broken and self.state in (S.IDLE, S.ROUTING, S.CHUNK):
            # Nothing else awaits a reply on this link. Otherwise the command
            # that does hears the failure itself, next.
            self._drop(abort=True)
        return True

    # --- RCPT ---------------------------------------------------------------------
    def _on_rcpt(self, event: e.ClientRcpt) -> None:
        if self.txn is None:
            self.count += 1
            self.txn = Ledger(self.session, self.client, f"{self.session}.{self.count}", self._now,
                              str(event.sender), event.helo, event.tls)
        self._rcpt = event
        if len(self.txn.accepted) >= self.max_recipients:
            self._refuse(replies.TOO_MANY_RECIPIENTS, WILLI)  # answered and recorded, never routed
            return
        self.state = S.ROUTING
        self._out.append(c.LookUp(event.address))

    def _on_route(self, event: e.RouteAnswered) -> None:
        rcpt = self._rcpt
        assert rcpt is not None
        if event.failure is not None:
            self._out.append(c.Notice("lookup_failed", "warning",
                                      (("rcpt", str(rcpt.address)), ("error", event.error))))
            self._refuse(event.failure, WILLI)
            return
        if event.route is None:
            # Counted as a client error, as Postfix counts its reject: no probing without end.
            self._refuse(replies.relay_denied(str(rcpt.address)), WILLI, error=True)
            return
        route, link = event.route, self.link
        self._route = route
        assert self.txn is not None
        if self.txn.accepted:
            # Bound to the upstream that accepted a recipient (SPEC §2 RCPT).
            if link is None or link.closed:
                self._answer_lost(rcpt, replies.UPSTREAM_LOST)
            elif link.route is not route and route != link.route and self.split_recipients:
                self._refuse(replies.OTHER_UPSTREAM, WILLI)
            elif link.lmtp:
                self._refuse(replies.ONE_RCPT_FOR_LMTP, WILLI)
            else:
                self._send_rcpt()
            return
        # Routes are shared (one object per distinct route): identity first,
        # the dataclass's __eq__ only when it fails.
        if link is not None and not link.closed and (link.route is route or link.route == route):
            if self.upstream_open:
                self._send_rcpt()
            else:
                self._send_envelope(fresh=False)
            return
        self._drop(abort=False)
        self.state = S.DIALING
        self._out.append(c.Dial(route))

    def _on_link(self, event: e.LinkReady) -> None:
        assert not self._ignore, "a new link owes no reply"
        self.link = event.link
        self._send_envelope(fresh=not event.link.reused)

    def _on_dial_failed(self, event: e.DialFailed) -> None:
        server = self._route.server if self._route is not None else None
        self._out.append(c.Notice("upstream_unavailable", "warning",
                                  (("server", server), ("error", event.error))))
        self._refuse(replies.UPSTREAM_UNAVAILABLE, WILLI)

    def _send_envelope(self, fresh: bool) -> None:
        rcpt, link, txn = self._rcpt, self.link, self.txn
        assert rcpt is not None and link is not None and txn is not None
        try:
            mail = mail_command(rcpt.sender, rcpt.params, link.capabilities)
        except NeedsSMTPUTF8 as exc:
            self._refuse(exc.reply, WILLI)
            return
        txn.upstream = link.name
        txn.upstream_tls = (link.tls + (" verified" if link.tls_verified else "")) if link.tls else None
        self._fresh = fresh
        self._mail_refused = None
        self._pipelined = "PIPELINING" in link.capabilities
        self.state = S.MAIL_SENT
        if self._pipelined:
            self._out.append(c.Send((mail, rcpt_command(rcpt.address))))
        else:
            self._out.append(c.Send((mail,)))

    def _on_mail_reply(self, event: e.UpstreamReplied) -> None:
        reply = event.reply
        if reply.positive:
            self.upstream_open = True
            self.state = S.RCPT_SENT
            if not self._pipelined:
                assert self._rcpt is not None
                self._out.append(c.Send((rcpt_command(self._rcpt.address),)))
            return
        if self._pipelined:  # the RCPT's reply follows; the client gets this one
            self._mail_refused = reply
            self.state = S.RCPT_SENT
            return
        self._relay_rcpt_reply(reply, accepted=False)

    def _on_mail_failed(self, event: e.UpstreamFailed | e.UpstreamLost) -> None:
        self._drop(abort=True)
        if not self._fresh:
            # A parked or reused link the upstream had closed meanwhile: dial anew.
            assert self.link is None and self._rcpt is not None
            self.state = S.DIALING
            assert self._route is not None
            self._out.append(c.Dial(self._route))
            return
        self._upstream_failed(event.error, in_rcpt=True)

    def _on_rcpt_reply(self, event: e.UpstreamReplied) -> None:
        refused, self._mail_refused = self._mail_refused, None
        if refused is not None:
            self._relay_rcpt_reply(refused, accepted=False)
        else:
            self._relay_rcpt_reply(event.reply, accepted=event.reply.positive)

    def _on_rcpt_failed(self, event: e.UpstreamFailed | e.UpstreamLost) -> None:
        self._drop(abort=True)
        self._upstream_failed(event.error, in_rcpt=True)

    def _relay_rcpt_reply(self, reply: Reply, accepted: bool) -> None:
        rcpt, txn = self._rcpt, self.txn
        assert rcpt is not None and txn is not None
        if reply.code == 421:
            self._drop(abort=True)
            self._answer_lost(rcpt, demote_421(reply), src=UPSTREAM)
            return
        self.state = S.IDLE
        if accepted:
            txn.accept(str(rcpt.address))
            self._out.append(c.Answer(reply.raw, True))
        else:
            refused = txn.refuse(str(rcpt.address), reply.raw, UPSTREAM)
            self._out += (c.Emit((refused,)), c.Answer(reply.raw, False))

    def _send_rcpt(self) -> None:
        assert self._rcpt is not None
        self.state = S.RCPT_SENT
        self._out.append(c.Send((rcpt_command(self._rcpt.address),)))

    def _refuse(self, reply: bytes, src: str, error: bool = False) -> None:
        """Willi's own answer to the RCPT at hand; the transaction goes on.
        `error`: the client's fault, counted toward WILLI_MAX_ERRORS."""
        rcpt, txn = self._rcpt, self.txn
        assert rcpt is not None and txn is not None
        self.state = S.IDLE
        self._out += (c.Emit((txn.refuse(str(rcpt.address), reply, src),)), c.Answer(reply, False, error))

    # --- DATA and the body ------------------------------------------------------
    def _on_data(self, event: e.ClientData) -> None:
        link = self.link
        if link is None or link.closed or not self.upstream_open:
            self._end_lost(replies.UPSTREAM_LOST)
            return
        self.state = S.DATA_SENT
        self._out.append(c.Send((b"DATA\r\n",)))

    def _on_data_reply(self, event: e.UpstreamReplied) -> None:
        reply = event.reply
        if reply.code == 354:
            self.state = S.BODY
            self._scanner = DataScanner(self.max_size, self.strict_body)
            self._held = b""
            self._failure = None
            self._out += (c.Answer(reply.raw, True), c.READ_BODY)
            return
        if reply.code == 421:
            self._drop(abort=True)
            self._end_lost(demote_421(reply), UPSTREAM)
            return
        self.state = S.IDLE  # DATA refused: relayed, the transaction stays open
        assert self.txn is not None
        self.txn.last, self.txn.last_src = reply.raw, UPSTREAM
        self._out.append(c.Answer(reply.raw, False))

    def _on_data_failed(self, event: e.UpstreamFailed | e.UpstreamLost) -> None:
        self._drop(abort=True)
        self._upstream_failed_notice(str(event.error))
        self._end_lost(event.error.reply)

    def _on_body(self, event: e.BodyReceived) -> None:
        scanner = self._scanner
        assert scanner is not None
        buf, start, stop = event.buf, event.start, event.stop
        end = scanner.scan(buf, start, stop)
        upto = stop if end < 0 else end
        if self._failure is None:
            if scanner.violation is None:
                self._forward(buf, start, upto, final=end >= 0)
            else:
                too_big = scanner.violation is TOO_BIG
                self._failure = replies.MESSAGE_TOO_BIG if too_big else replies.BAD_BODY
                self._out.append(c.Notice("body_refused", "info", (("kind", KINDS[scanner.violation.reason]),)))
                self._drop(abort=True)  # never finish a refused message: no final dot
                self.state = S.DRAIN
        if end < 0:
            return
        self._scanner = None
        if end < stop:
            self._out.append(c.FeedClient(memoryview(buf)[end:stop]))  # pipelined commands after the dot
        size = scanner.size - 3  # the final ".\r\n" is no content
        if self._failure is not None:
            self._finish(self._failure, WILLI, size)
        else:
            self._size = size
            self.state = S.FINAL
            self._out.append(c.Send((), c.DATA_TIMEOUT))

    def _forward(self, buf: bytes | bytearray, start: int, upto: int, final: bool) -> None:
        """Send buf[start:upto] upstream, holding back a chunk-final CR until
        the next byte is known (issue 9 item 2)."""
        if self._held:
            self._out.append(c.SendBody(self._held))
            self._held = b""
        if not final and upto > start and buf[upto - 1] == 13:
            upto -= 1
            self._held = b"\r"
        if upto > start:
            self._out.append(c.SendBody(memoryview(buf)[start:upto]))

    def _on_final_reply(self, event: e.UpstreamReplied) -> None:
        reply = event.reply
        if reply.code == 421:
            self._drop(abort=True)
        self.upstream_open = False
        self._finish(demote_421(reply), UPSTREAM, self._size)

    def _on_final_failed(self, event: e.UpstreamFailed | e.UpstreamLost) -> None:
        self._drop(abort=True)
        self._upstream_failed_notice(str(event.error))
        self._finish(event.error.reply, WILLI, self._size)

    def _on_body_lost(self, event: e.UpstreamLost | e.TimerFired) -> None:
        """The upstream went away (or stopped reading) under the body: read the
        rest of it and answer the failure after the client's end of data."""
        if isinstance(event, e.TimerFired):
            failure, error = replies.UPSTREAM_TIMEOUT, "upstream stopped reading the body"
        else:
            failure, error = event.error.reply, str(event.error)
        self._upstream_failed_notice(error)
        self._drop(abort=True)
        self._failure = failure
        self.state = S.DRAIN

    def _finish(self, reply: bytes, src: str, size: int | None) -> None:
        self._chunk = self._stuffer = None
        txn = self.txn
        self.txn = None
        self.upstream_open = False
        self.state = S.IDLE
        self._out.append(c.BodyDone(reply))
        if txn is not None:
            self._out.append(c.Emit(txn.close(self._now, reply, src, size, None)))

    # --- the upstream going away outside a command ----------------------------
    def _on_idle_lost(self, event: e.UpstreamLost) -> None:
        self._let_go()
        if self.txn is not None and self.txn.accepted:
            # The recipients it accepted are void: the transaction is over, and
            # the client protocol answers its RCPT and DATA with 451 until MAIL.
            self._upstream_failed_notice(str(event.error))
            self._end_transaction(None, WILLI, aborted="upstream lost")
            self._out.append(c.EndClientTransaction())

    def _on_lost_while_routing(self, event: e.UpstreamLost) -> None:
        """The route's answer decides: bound recipients make it a lost
        transaction, none make it a fresh dial."""
        self._let_go()

    def _on_nothing(self, event: e.Event) -> None:
        """Late news for a state that no longer cares (a stall timer after the body)."""

    def _upstream_failed_notice(self, error: str) -> None:
        """`upstream_failed`, naming the target this transaction went to (counted by it)."""
        target = self.txn.upstream if self.txn is not None else None
        self._out.append(c.Notice("upstream_failed", "warning", (("target", target), ("error", error))))

    def _upstream_failed(self, error: UpstreamError, in_rcpt: bool) -> None:
        self._upstream_failed_notice(str(error))
        assert self._rcpt is not None
        self._answer_lost(self._rcpt, error.reply)

    def _answer_lost(self, rcpt: e.ClientRcpt, reply: bytes, src: str = WILLI) -> None:
        """The upstream is gone at a RCPT: this one gets `reply` (a 4xx). With
        recipients already accepted there the transaction is over; without,
        the next RCPT routes afresh."""
        txn = self.txn
        assert txn is not None
        self.state = S.IDLE
        self.upstream_open = False
        self._out += (c.Emit((txn.refuse(str(rcpt.address), reply, src),)), c.Answer(reply, False))
        if txn.accepted:
            self._end_transaction(None, src, aborted="upstream lost")
            self._out.append(c.EndClientTransaction())

    def _end_lost(self, reply: bytes, src: str = WILLI) -> None:
        """DATA (or a BDAT chunk) found the upstream gone: its 4xx is the
        message's final reply, and the transaction is over."""
        self._chunk = self._stuffer = None
        txn, self.txn = self.txn, None
        self.state = S.IDLE
        self.upstream_open = False
        self._out += (c.Answer(reply, False), c.EndClientTransaction())
        if txn is not None:
            self._out.append(c.Emit(txn.close(self._now, reply, src, None, None)))

    def _end_transaction(self, last: bytes | None, src: str, aborted: str) -> None:
        self._chunk = self._stuffer = None
        txn, self.txn = self.txn, None
        self.state = S.IDLE
        self.upstream_open = False
        if txn is None:
            return
        if last is not None and not txn.accepted:
            txn.last, txn.last_src = last, src
        self._out.append(c.Emit(txn.close(self._now, None, src, None, aborted)))

    # --- RSET, STARTTLS, the end ------------------------------------------------
    def _on_reset(self, event: e.ClientReset) -> None:
        if self._stuffer is not None:
            self._drop(abort=True)  # the upstream is inside a DATA body: an RSET would be message text
        elif self.upstream_open and self.link is not None and not self.link.closed:
            self._reset_upstream()
        self._end_transaction(None, WILLI, aborted="reset")

    def _reset_upstream(self) -> None:
        """RSET the upstream's transaction; its reply is nobody's to hear."""
        self._ignore += 1
        self.upstream_open = False
        self._out.append(c.Send((b"RSET\r\n",)))

    def _on_starttls(self, event: e.ClientStartTLS) -> None:
        # The link's TLS policy was chosen for a plaintext client.
        self._drop(abort=False)
        self._out.append(c.StartClientTLS())

    def _on_gone(self, event: e.ClientGone) -> None:
        # A command or a body in flight (a BDAT translated to DATA is a body):
        # nothing but an abort may follow.
        busy = self.state is not S.IDLE or self._stuffer is not None
        if self.link is not None or busy:
            self._drop(abort=busy)
        self._end_transaction(None, WILLI, aborted=event.reason)
        self.state = S.CLOSED

    def _on_closed(self, event: e.Event) -> None:
        """After the end nothing more happens (late replies, a late route)."""

    def _drop(self, abort: bool) -> None:
        if self.link is not None or self.state is S.DIALING or abort:
            self._out.append(c.DropLink(abort, reusable=not self.upstream_open))
        self._let_go()

    def _let_go(self) -> None:
        """The link is no longer ours: nothing of it is open, and the replies
        it still owes (an RSET's) are not counted against the next link, since
        the session drops every reply of a link the relay let go."""
        self.link = None
        self.upstream_open = False
        self._ignore = 0



Handler = Callable[[Relay, e.Event], None]
# (state, event type) -> handler: everything the relay may be told, and when.
TRANSITIONS: dict[tuple[State, type], Handler] = {
    (S.IDLE, e.ClientRcpt): Relay._on_rcpt,
    (S.IDLE, e.ClientData): Relay._on_data,
    (S.IDLE, e.ClientBdat): Relay._on_bdat,
    (S.CHUNK_DATA_SENT, e.UpstreamReplied): Relay._on_chunk_go_ahead,
    (S.CHUNK_DATA_SENT, e.UpstreamFailed): Relay._on_chunk_go_ahead_failed,
    (S.CHUNK, e.BodyReceived): Relay._on_chunk_bytes,
    (S.CHUNK, e.UpstreamReplied): Relay._on_early,
    (S.CHUNK, e.UpstreamFailed): Relay._on_early,
    (S.CHUNK, e.UpstreamLost): Relay._on_early,
    (S.CHUNK, e.TimerFired): Relay._on_chunk_stalled,
    (S.CHUNK_SENT, e.UpstreamReplied): Relay._on_chunk_reply,
    (S.CHUNK_SENT, e.UpstreamFailed): Relay._on_chunk_failed,
    # The link went away before a command awaiting its reply could be sent
    # (a write just failed): the same as that reply failing.
    (S.MAIL_SENT, e.UpstreamLost): Relay._on_mail_failed,
    (S.RCPT_SENT, e.UpstreamLost): Relay._on_rcpt_failed,
    (S.DATA_SENT, e.UpstreamLost): Relay._on_data_failed,
    (S.FINAL, e.UpstreamLost): Relay._on_final_failed,
    (S.CHUNK_DATA_SENT, e.UpstreamLost): Relay._on_chunk_go_ahead_failed,
    (S.CHUNK_SENT, e.UpstreamLost): Relay._on_chunk_failed,
    (S.IDLE, e.ClientReset): Relay._on_reset,
    (S.IDLE, e.ClientStartTLS): Relay._on_starttls,
    (S.IDLE, e.UpstreamLost): Relay._on_idle_lost,
    (S.IDLE, e.TimerFired): Relay._on_nothing,
    (S.ROUTING, e.RouteAnswered): Relay._on_route,
    (S.ROUTING, e.UpstreamLost): Relay._on_lost_while_routing,
    (S.DIALING, e.LinkReady): Relay._on_link,
    (S.DIALING, e.DialFailed): Relay._on_dial_failed,
    (S.MAIL_SENT, e.UpstreamReplied): Relay._on_mail_reply,
    (S.MAIL_SENT, e.UpstreamFailed): Relay._on_mail_failed,
    (S.RCPT_SENT, e.UpstreamReplied): Relay._on_rcpt_reply,
    (S.RCPT_SENT, e.UpstreamFailed): Relay._on_rcpt_failed,
    (S.DATA_SENT, e.UpstreamReplied): Relay._on_data_reply,
    (S.DATA_SENT, e.UpstreamFailed): Relay._on_data_failed,
    (S.BODY, e.BodyReceived): Relay._on_body,
    (S.BODY, e.UpstreamLost): Relay._on_body_lost,
    (S.BODY, e.TimerFired): Relay._on_body_lost,
    (S.DRAIN, e.BodyReceived): Relay._on_body,
    (S.DRAIN, e.TimerFired): Relay._on_nothing,
    (S.FINAL, e.TimerFired): Relay._on_nothing,
    (S.FINAL, e.UpstreamReplied): Relay._on_final_reply,
    (S.FINAL, e.UpstreamFailed): Relay._on_final_failed,
    **{(s, e.ClientGone): Relay._on_gone for s in State if s is not S.CLOSED},
    **{(S.CLOSED, t): Relay._on_closed for t in (
        e.ClientGone, e.RouteAnswered, e.LinkReady, e.DialFailed, e.UpstreamReplied, e.UpstreamFailed,
        e.UpstreamLost, e.TimerFired, e.BodyReceived)},
}

# The same table by state, for handle(): one dict lookup by event type, no key tuple.
_BY_STATE: dict[State, dict[type, Handler]] = {state: {} for state in State}
for (_state, _type), _handler in TRANSITIONS.items():
    _BY_STATE[_state][_type] = _handler
del _state, _type, _handler
