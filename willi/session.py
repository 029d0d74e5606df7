"""A client session paired with at most one upstream link (SPEC §2).

The session is the only place where the two sides meet. It feeds client
bytes to the sans-IO ServerProtocol and acts on its events: routes a RCPT
(inline when the router can answer from memory, else in the worker pool),
dials the route's upstream, replays the envelope, and relays the upstream's
replies. In the BODY phase client bytes bypass the protocol altogether: each
received chunk is scanned by DataScanner (C-speed bytes methods) and sent
upstream as a memoryview slice of the reactor's receive buffer.

Backpressure belongs to the pair: while the upstream's out-queue is above its
high-water mark the client is not read, and while the client does not read
its replies (or has pipelined too much) it is not read either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from willi import replies
from willi.connection import Connection
from willi.context import format_traceback
from willi.errors import (MappingError, NeedsSMTPUTF8, UpstreamError, UpstreamProtocolError, UpstreamTimeout,
                          WilliError)
from willi.reactor import Timer
from willi.routing import NOT_CACHED
from willi.routing.router import Answer
from willi.smtp import server as smtp
from willi.smtp.address import Address
from willi.smtp.body import TOO_BIG, DataScanner
from willi.smtp.reply import Reply
from willi.smtp.upstream import ClientInfo, mail_command, rcpt_command
from willi.tls import TLSEngine
from willi.upstream import UpstreamLink
from willi.workers import PoolFull

if TYPE_CHECKING:
    from willi.context import Context

# Why the client is not being read (a bitmask: reading resumes at zero).
PAUSE_UPSTREAM_FULL = 1
PAUSE_CLIENT_FULL = 2
PAUSE_BACKLOG = 4
BACKLOG_LIMIT = 64 * 1024


def failure_reply(exc: BaseException) -> bytes:
    """What the client hears when the upstream failed a command: timed out,
    spoke garbage, or went away."""
    if isinstance(exc, UpstreamTimeout):
        return replies.UPSTREAM_TIMEOUT
    if isinstance(exc, UpstreamProtocolError):
        return replies.UPSTREAM_PROTOCOL
    return replies.UPSTREAM_LOST


def demote_421(reply: Reply) -> bytes:
    """An upstream 421 closes *its* connection, not the client's: the client
    gets the same text as a 451 (SPEC §7)."""
    if reply.code != 421:
        return reply.raw
    return b"".join(b"451" + line[3:] + b"\r\n" for line in reply.lines)


class Session:
    """One client connection and the upstream it is currently paired with."""

    __slots__ = (
        "ctx", "id", "peer", "client", "proto", "link", "dialing", "token",
        "scanner", "body_failure", "paused", "last_client", "client_timer",
        "stall_timer", "tls_timer", "closed", "client_tls",
        "txn_started", "txn_sender", "txn_link", "txn_rcpts", "txn_rejected", "txn_last", "_processing",
    )

    def __init__(self, ctx: "Context", sock: Any, peer: tuple[str, int]) -> None:
        self.ctx = ctx
        self.id = ctx.next_session_id()
        self.peer = peer
        self.proto = smtp.ServerProtocol(ctx.server_settings, ctx.ehlo_plain, ctx.ehlo_tls)
        self.link: UpstreamLink | None = None
        self.dialing: Any = None
        self.token = 0
        self.scanner: DataScanner | None = None
        self.body_failure: bytes | None = None
        self.paused = 0
        self.closed = False
        self.last_client = ctx.reactor.time()
        self.tls_timer: Timer | None = None
        self.stall_timer: Timer | None = None
        self.client_tls: str | None = None
        self.txn_started = 0.0
        self.txn_sender = ""
        self.txn_link: UpstreamLink | None = None  # the upstream this transaction talked to
        self.txn_rcpts: list[str] = []
        self.txn_rejected = 0
        self.txn_last = b""
        self._processing = False
        self.client = Connection.accepted(ctx.reactor, sock, self)
        self.client_timer = ctx.reactor.call_later(ctx.client_timeout, self._client_timer_fired, owner=self)
        self.proto.greet()
        self._flush_client()

    # --- client connection events --------------------------------------------
    def on_data(self, conn: Connection, data: memoryview) -> None:
        self.last_client = self.ctx.reactor.time()
        if self.scanner is not None:
            self._body_chunk(data.obj, 0, len(data))  # type: ignore[arg-type]
            return
        self.proto.feed(data)
        self._process()

    def on_lost(self, conn: Connection, exc: BaseException | None) -> None:
        self.close("client lost" if exc is None else f"client lost: {exc}")

    def on_pause_writing(self, conn: Connection) -> None:
        self._pause(PAUSE_CLIENT_FULL)

    def on_resume_writing(self, conn: Connection) -> None:
        self._resume(PAUSE_CLIENT_FULL)

    # --- the command loop -------------------------------------------------------
    def _process(self) -> None:
        """Run protocol events until one has to wait; flush the replies."""
        if self._processing or self.closed:
            return
        self._processing = True
        try:
            proto = self.proto
            while not self.closed:
                event = proto.next_event()
                if event is None:
                    break
                self._dispatch(event)
        finally:
            self._processing = False
        if self.closed:
            return
        self._flush_client()
        if self.ctx.draining and self._idle():
            self._say_goodbye(replies.SHUTTING_DOWN)
            return
        if self.proto.buffered > BACKLOG_LIMIT:
            self._pause(PAUSE_BACKLOG)
        elif self.paused & PAUSE_BACKLOG:
            self._resume(PAUSE_BACKLOG)

    def _dispatch(self, event: smtp.Event) -> None:
        if isinstance(event, smtp.Rcpt):
            if not self.txn_rcpts and not self.txn_rejected:
                self.txn_started = self.ctx.reactor.time()
                self.txn_sender = str(self.proto.mail)
            self._rcpt(event.address)
        elif isinstance(event, smtp.Data):
            self._data()
        elif isinstance(event, smtp.Reset):
            self._reset_upstream()
        elif isinstance(event, smtp.StartTLS):
            self._starttls()
        else:  # Quit, Close: the protocol has queued 221 or 421
            self._end_transaction(None, "client quit")
            self._flush_client()
            self.close("quit" if isinstance(event, smtp.Quit) else "too many errors", flush=True)

    def _flush_client(self) -> None:
        out = self.proto.take_output()
        if out:
            self.client.write(out)

    def _idle(self) -> bool:
        return self.proto.phase is smtp.Phase.COMMAND and self.proto.mail is None

    # --- RCPT: route, dial, replay ------------------------------------------------
    def _rcpt(self, address: Address) -> None:
        try:
            answer = self.ctx.router.resolve_fast(address)
        except MappingError as exc:
            self._lookup_failed(address, exc)
            return
        if answer is NOT_CACHED:
            self._lookup_in_worker(address)
        else:
            self._routed(address, answer)  # type: ignore[arg-type]

    def _lookup_in_worker(self, address: Address) -> None:
        token = self._next_token()
        timer = self.ctx.reactor.call_later(self.ctx.lookup_timeout, self._lookup_timed_out, token, address, owner=self)

        def done(answer: Any, exc: BaseException | None) -> None:
            if token != self.token or self.closed:
                return
            timer.cancel()
            if exc is not None:
                self._lookup_failed(address, exc)
            else:
                self._routed(address, answer)

        try:
            self.ctx.workers.submit(self.ctx.router.resolve, (address,), done)
        except PoolFull as exc:
            timer.cancel()
            self._lookup_failed(address, exc)

    def _lookup_timed_out(self, token: int, address: Address) -> None:
        if token == self.token and not self.closed:
            self._next_token()
            self._lookup_failed(address, TimeoutError("lookup timed out"))

    def _lookup_failed(self, address: Address, exc: BaseException) -> None:
        self.ctx.logger.warning("lookup_failed", session=self.id, rcpt=str(address), error=str(exc))
        self._answer_rcpt(address, replies.LOOKUP_FAILED, False)

    def _routed(self, address: Address, answer: Answer | None) -> None:
        if answer is None:
            self._answer_rcpt(address, replies.relay_denied(str(address)), False)
            return
        route = answer.route
        link = self.link
        if self.proto.accepted:
            # The transaction is bound to the upstream that accepted a recipient.
            if link is None or link.closed:
                self._answer_rcpt(address, replies.UPSTREAM_LOST, False)
            elif route != link.route and self.ctx.split_recipients:
                self._answer_rcpt(address, replies.OTHER_UPSTREAM, False)
            elif link.lmtp:
                self._answer_rcpt(address, replies.ONE_RCPT_FOR_LMTP, False)
            else:
                self._send_rcpt(link, address)
            return
        if link is not None and not link.closed and link.route == route:
            if link.in_transaction:
                self._send_rcpt(link, address)
            else:
                self._send_envelope(link, address, fresh=False)
            return
        self._drop_link()
        self._dial(route, address)

    def _dial(self, route: Any, address: Address) -> None:
        token = self._next_token()
        client = ClientInfo(self.peer[0], self.peer[1], self.proto.helo, self.proto.esmtp)

        def done(link: UpstreamLink | None, why: str) -> None:
            self.dialing = None
            if token != self.token or self.closed:
                if link is not None:
                    link.quit()
                return
            if link is None:
                self.ctx.logger.warning("upstream_unavailable", session=self.id, server=route.server, error=why)
                self._answer_rcpt(address, replies.UPSTREAM_UNAVAILABLE, False)
                return
            self._adopt(link)
            self._send_envelope(link, address, fresh=not link.reused)

        self.dialing = self.ctx.dialer.dial(route, client, self.proto.tls_active, self._reverse_name, done)

    def _adopt(self, link: UpstreamLink) -> None:
        self.link = link
        if link.conn is not None:
            link.conn.guardian = self  # a fault on the upstream side ends this session
        link.on_idle_lost = self._link_lost
        link.on_pause = self._upstream_full
        link.on_resume = self._upstream_drained

    def _send_envelope(self, link: UpstreamLink, address: Address, fresh: bool) -> None:
        """MAIL FROM then RCPT TO, pipelined when the upstream allows it."""
        assert self.proto.mail is not None
        try:
            mail = mail_command(self.proto.mail, self.proto.mail_params, link.capabilities)
        except NeedsSMTPUTF8:
            self._answer_rcpt(address, replies.NEED_SMTPUTF8, False)
            return
        rcpt = rcpt_command(address)
        timeout = self.ctx.command_timeout
        self.txn_link = link
        mail_outcome: list[Any] = []

        def on_mail(outcome: Any) -> None:
            mail_outcome.append(outcome)
            if isinstance(outcome, Reply) and outcome.positive:
                link.in_transaction = True
                if not pipelined:
                    link.command(rcpt, on_rcpt, timeout)
            elif not pipelined:
                on_rcpt(None)

        def on_rcpt(outcome: Any) -> None:
            first = mail_outcome[0]
            if isinstance(first, UpstreamError) and not fresh and not self.closed:
                self._drop_link()  # a reused connection the upstream had closed: dial anew
                self._dial(link.route, address)
            elif isinstance(first, WilliError):
                self._upstream_failed(address, first)
            elif not first.positive:
                self._answer_rcpt(address, self._relay(first), False)
            elif isinstance(outcome, WilliError):
                self._upstream_failed(address, outcome)
            else:
                self._answer_rcpt(address, self._relay(outcome), outcome.positive)

        pipelined = "PIPELINING" in link.capabilities
        if pipelined:
            link.pipeline(((mail, on_mail), (rcpt, on_rcpt)), timeout)
        else:
            link.command(mail, on_mail, timeout)

    def _send_rcpt(self, link: UpstreamLink, address: Address) -> None:
        def on_rcpt(outcome: Any) -> None:
            if isinstance(outcome, WilliError):
                self._upstream_failed(address, outcome)
            else:
                self._answer_rcpt(address, self._relay(outcome), outcome.positive)

        self.txn_link = link
        link.command(rcpt_command(address), on_rcpt, self.ctx.command_timeout)

    def _answer_rcpt(self, address: Address, reply: bytes, accepted: bool) -> None:
        if self.closed:
            return
        if accepted:
            self.txn_rcpts.append(str(address))
        else:
            self.txn_rejected += 1
        self.txn_last = reply
        self.proto.answer(reply, accepted)
        self._process()

    def _upstream_failed(self, address: Address, exc: WilliError) -> None:
        if self.closed:
            return
        self.ctx.logger.warning("upstream_failed", session=self.id, error=str(exc))
        self._drop_link(abort=True)
        self._answer_rcpt(address, failure_reply(exc), False)

    def _relay(self, reply: Reply) -> bytes:
        if reply.code == 421:
            self._drop_link(abort=True)
        return demote_421(reply)

    # --- DATA and the body ------------------------------------------------------
    def _data(self) -> None:
        link = self.link
        if link is None or link.closed or not link.in_transaction:
            self._answer_data(replies.UPSTREAM_LOST, False)
            return

        def on_reply(outcome: Any) -> None:
            if self.closed:
                return
            if isinstance(outcome, WilliError):
                self._drop_link(abort=True)
                self._answer_data(failure_reply(outcome), False)
            elif outcome.code == 354:
                self._answer_data(outcome.raw, True)
            else:
                self._answer_data(self._relay(outcome), False)

        link.command(b"DATA\r\n", on_reply, self.ctx.command_timeout)

    def _answer_data(self, reply: bytes, go: bool) -> None:
        self.txn_last = reply
        self.proto.answer(reply, go)
        if go:
            self._flush_client()
            if self.closed:  # writing the 354 found the client gone (issue 9)
                return
            self.scanner = DataScanner(self.ctx.server_settings.max_message_size, self.ctx.strict_body)
            self.body_failure = None
            start = self.proto.take_body_start()
            if start:
                self._body_chunk(start, 0, len(start))
                return
        self._process()

    def _body_chunk(self, buf: bytes | bytearray, start: int, stop: int) -> None:
        scanner = self.scanner
        assert scanner is not None
        end = scanner.scan(buf, start, stop)
        upto = stop if end < 0 else end
        if self.body_failure is None:
            if scanner.violation is None:
                self.link.write(memoryview(buf)[start:upto])  # type: ignore[union-attr]
            else:
                # Never finish a refused message: drop the upstream, no final dot.
                too_big = scanner.violation is TOO_BIG
                self.body_failure = replies.MESSAGE_TOO_BIG if too_big else replies.BAD_BODY
                self.ctx.logger.info("body_refused", session=self.id, reason=scanner.violation.reason)
                self._drop_link(abort=True)
        if end < 0:
            return
        self.scanner = None
        if end < stop:
            self.proto.feed(memoryview(buf)[end:stop])  # pipelined commands after the dot
        self._body_complete(scanner.size - 3)  # the final ".\r\n" is no content

    def _body_complete(self, size: int) -> None:
        if self.body_failure is not None:
            self._finish_message(self.body_failure, size)
            return
        link = self.link
        assert link is not None

        def on_final(outcome: Any) -> None:
            if self.closed:
                return
            if isinstance(outcome, WilliError):
                self._drop_link(abort=True)
                self._finish_message(failure_reply(outcome), size)
            else:
                link.in_transaction = False
                self._finish_message(self._relay(outcome), size)

        link.expect(on_final, self.ctx.data_timeout)

    def _finish_message(self, reply: bytes, size: int) -> None:
        self.txn_last = reply
        self._end_transaction(size, None)
        self.proto.body_done(reply)
        self._process()

    # --- the upstream link ------------------------------------------------------
    def _link_lost(self, link: UpstreamLink, exc: UpstreamError) -> None:
        """The upstream went away while no reply was awaited."""
        if link is not self.link:
            return
        self.link = None
        self._resume(PAUSE_UPSTREAM_FULL)
        if self.scanner is not None and self.body_failure is None:
            self.ctx.logger.warning("upstream_failed", session=self.id, error=str(exc))
            self.body_failure = replies.UPSTREAM_LOST

    def _drop_link(self, abort: bool = False) -> None:
        self._cancel_stall_timer()
        link, self.link = self.link, None
        if link is None:
            return
        link.on_idle_lost = None
        if abort or link.in_transaction and self.scanner is not None:
            link.abort()
        else:
            self.ctx.dialer.release(link, self.proto.tls_active)
        self._resume(PAUSE_UPSTREAM_FULL)

    def _reset_upstream(self) -> None:
        self._end_transaction(None, "reset")
        link = self.link
        if link is not None and link.in_transaction and not link.closed:
            link.in_transaction = False
            link.command(b"RSET\r\n", _ignore, self.ctx.command_timeout)

    def _reverse_name(self, callback: Callable[[str], None]) -> None:
        """XCLIENT's NAME for this client (cached across sessions)."""
        self.ctx.reverse_names.lookup(self.peer[0], callback)

    # --- STARTTLS ---------------------------------------------------------------
    def _starttls(self) -> None:
        context = self.ctx.server_tls()
        self._flush_client()  # the 220 goes out in plaintext
        self._drop_link()  # its TLS policy was chosen for a plaintext client
        if context is None:
            self.close("TLS not available")
            return
        try:
            engine = TLSEngine(context, server_side=True)
        except WilliError as exc:
            self.close(f"TLS: {exc}")
            return
        self.tls_timer = self.ctx.reactor.call_later(self.ctx.tls_handshake_timeout, self._tls_timed_out, owner=self)
        self.client.start_tls(engine, lambda exc: self._tls_done(engine, exc))

    def _tls_done(self, engine: TLSEngine, exc: BaseException | None) -> None:
        if self.tls_timer is not None:
            self.tls_timer.cancel()
            self.tls_timer = None
        if exc is not None:
            self.ctx.logger.info("tls_failed", session=self.id, client=self.peer[0], error=str(exc))
            self.close("TLS handshake failed")
            return
        self.client_tls = f"{engine.version} {engine.cipher}"
        self.proto.tls_started()
        self._process()

    def _tls_timed_out(self) -> None:
        self.tls_timer = None
        self.ctx.logger.info("tls_failed", session=self.id, client=self.peer[0], error="handshake timed out")
        self.close("TLS handshake timed out")

    # --- flow control and timers --------------------------------------------------
    def _pause(self, reason: int) -> None:
        if not self.paused:
            self.client.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.client.resume_reading()

    def _upstream_full(self) -> None:
        """The upstream is behind: stop reading the client, and give the
        upstream WILLI_UPSTREAM_DATA_TIMEOUT at a time to take some bytes."""
        self._pause(PAUSE_UPSTREAM_FULL)
        self._arm_stall_timer()

    def _arm_stall_timer(self) -> None:
        self._cancel_stall_timer()
        if self.link is not None:
            self.stall_timer = self.ctx.reactor.call_later(
                self.ctx.data_timeout, self._upstream_stalled, self.link.out_size, owner=self)

    def _upstream_drained(self) -> None:
        self._cancel_stall_timer()
        if self.paused & PAUSE_UPSTREAM_FULL:
            self.last_client = self.ctx.reactor.time()  # the client was not idle: we did not read it
        self._resume(PAUSE_UPSTREAM_FULL)

    def _cancel_stall_timer(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None

    def _upstream_stalled(self, out_size: int) -> None:
        """The upstream took no body bytes for the data timeout: drop it (no
        final dot), read the rest of the body and answer 451 4.4.2 after the
        client's end of data. Outside a body, reply timers already apply."""
        self.stall_timer = None
        if self.closed or self.scanner is None or not self.paused & PAUSE_UPSTREAM_FULL:
            return
        if self.link is not None and self.link.out_size < out_size:
            self._arm_stall_timer()  # slow, but it is reading
            return
        self.ctx.logger.warning("upstream_failed", session=self.id, error="upstream stopped reading the body")
        if self.body_failure is None:
            self.body_failure = replies.UPSTREAM_TIMEOUT
        self._drop_link(abort=True)

    def _client_timer_fired(self) -> None:
        if self.closed:
            return
        reactor = self.ctx.reactor
        timeout = self.ctx.client_timeout
        # While the upstream holds us back we do not read the client: not its idleness.
        waiting_on_us = self.proto.phase is smtp.Phase.WAITING or bool(self.paused & PAUSE_UPSTREAM_FULL) or (
            self.proto.phase is smtp.Phase.BODY and self.scanner is None)
        idle = reactor.time() - self.last_client
        if waiting_on_us or idle < timeout:
            delay = timeout if waiting_on_us else timeout - idle
            self.client_timer = reactor.call_later(delay, self._client_timer_fired, owner=self)
            return
        self._end_transaction(None, "client timeout")
        self._say_goodbye(replies.CLIENT_TIMEOUT)

    def _next_token(self) -> int:
        self.token += 1
        return self.token

    # --- ending -----------------------------------------------------------------
    def drain(self) -> None:
        """Shutdown: an idle session is told 421 now, a busy one after its transaction."""
        if not self.closed and self._idle() and not self._processing:
            self._say_goodbye(replies.SHUTTING_DOWN)

    def _say_goodbye(self, reply: bytes) -> None:
        self.proto.reply(reply)
        self.proto.close()
        self._flush_client()
        self.close("closing", flush=True)

    def fatal(self, exc: BaseException) -> None:
        """The reactor's guard: a callback of this session raised. Only this
        session ends: the client hears 421 4.3.0 if it can still be written
        to, the upstream is aborted (never a dot or QUIT inside a body), and
        the traceback is reported once."""
        self.ctx.observer.event("session_fault", level="error", session=self.id, error=repr(exc),
                                traceback=format_traceback(exc))
        link, self.link = self.link, None
        if link is not None:
            link.on_idle_lost = None
            link.abort()
        if self.closed:
            return
        self.scanner = None
        if not self.client.closed:
            self.proto.close()
            self.client.write(replies.SESSION_FAULT)
        self.close("fault", flush=True)

    def close(self, reason: str, flush: bool = False) -> None:
        """The one way a session ends; idempotent. A message in flight is
        never completed: its upstream connection is aborted."""
        if self.closed:
            return
        self.closed = True
        self.client_timer.cancel()
        if self.tls_timer is not None:
            self.tls_timer.cancel()
        if self.dialing is not None:
            self.dialing.cancel()
            self.dialing = None
        self._end_transaction(None, reason)
        # A command in flight (DATA before its 354) or a body: a QUIT now could
        # become message data, so the upstream is aborted instead (issue 9).
        link = self.link
        self._drop_link(abort=self.scanner is not None or (link is not None and (link.busy or link.in_transaction)))
        self.scanner = None
        if flush:
            self.client.close_when_flushed()
        else:
            self.client.close()
        self.ctx.session_closed(self)

    def _end_transaction(self, size: int | None, aborted: str | None) -> None:
        """One log line per transaction that reached RCPT (SPEC §6)."""
        if not self.txn_rcpts and not self.txn_rejected:
            return
        if self.ctx.log_transactions:
            self._log_transaction(size, aborted)
        self.txn_rcpts = []
        self.txn_link = None
        self.txn_rejected = 0
        self.txn_last = b""

    def _log_transaction(self, size: int | None, aborted: str | None) -> None:
        last = self.txn_last
        if last.startswith(b"354"):
            last = b""  # ended inside the body: there is no final result to report
        link = self.txn_link
        self.ctx.log_transaction(
            session=self.id, client=self.peer[0], helo=self.proto.helo, tls=self.client_tls,
            sender=self.txn_sender,
            rcpts=",".join(self.txn_rcpts) or None, rejected=self.txn_rejected or None,
            upstream=str(link.target) if link is not None else None,
            upstream_tls=(link.tls + (" verified" if link.tls_verified else "")) if link and link.tls else None,
            result=last[:3].decode("ascii", "replace") if last else None,
            text=last[4:].split(b"\r\n")[0].decode("utf-8", "replace") if last else None,
            size=size, aborted=aborted if size is None else None,
            duration=round(self.ctx.reactor.time() - self.txn_started, 3))


def _ignore(outcome: Any) -> None:
    return None
