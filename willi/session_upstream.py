"""The upstream half of a session: what the relay asks of routing and of the
upstream link, executed, and what they answer, turned back into relay events.

It routes (inline when the router answers from memory, else in the worker
pool under WILLI_LOOKUP_TIMEOUT), dials through the Dialer, owns the link
while the relay is bound to it (`attach`/`detach`, the link's owner
callbacks), writes commands and body bytes, and runs the stall timer (an
upstream that takes no body byte for WILLI_UPSTREAM_DATA_TIMEOUT). The
events of a lookup, a dial or a link the relay has let go are dropped here: a
token and the identity of the link say which are current.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import willi.relay.commands as c
import willi.relay.events as e
from willi import replies
from willi.errors import MappingError
from willi.flow import UPSTREAM_FULL
from willi.relay import S
from willi.routing import NOT_CACHED
from willi.smtp.reply import Reply
from willi.smtp.upstream import ClientInfo
from willi.upstream import UpstreamLink
from willi.workers import PoolFull

if TYPE_CHECKING:
    from willi.session import Session


class UpstreamSide:
    """Routing, dialing and the link, for one session."""

    __slots__ = ("session", "ctx", "link", "dialing", "token", "stall_timer", "_on_reply")

    def __init__(self, session: "Session") -> None:
        self.session = session
        self.ctx = session.ctx
        self.link: UpstreamLink | None = None
        self.dialing: Any = None
        self.token = 0  # a lookup or dial whose token is stale is ignored
        self.stall_timer: Any = None
        self._on_reply: Callable[[Any], None] | None = None  # the bound link's replies go here

    def _next_token(self) -> int:
        self.token += 1
        return self.token

    # --- routing -------------------------------------------------------------------
    def look_up(self, cmd: c.LookUp) -> None:
        address, token, session = cmd.address, self._next_token(), self.session
        try:
            answer = self.ctx.router.resolve_fast(address)
        except MappingError as exc:
            session.post(e.RouteAnswered(None, exc.reply, str(exc)))
            return
        if answer is not NOT_CACHED:
            session.post(e.RouteAnswered(answer.route if answer is not None else None))  # type: ignore[union-attr]
            return
        timer = self.ctx.reactor.call_later(self.ctx.lookup_timeout, self._routed, token, None,
                                            TimeoutError("lookup timed out"), owner=session)

        def done(answer: Any, exc: BaseException | None) -> None:
            timer.cancel()
            self._routed(token, answer, exc)

        try:
            self.ctx.workers.submit(self.ctx.router.resolve, (address,), done)
        except PoolFull as exc:
            timer.cancel()
            session.post(e.RouteAnswered(None, replies.LOOKUP_FAILED, str(exc) or "worker pool full"))

    def _routed(self, token: int, answer: Any, exc: BaseException | None) -> None:
        if token != self.token or self.session.closed:
            return
        self._next_token()
        if exc is not None:
            self.session.pump(e.RouteAnswered(None, replies.LOOKUP_FAILED, str(exc)))
        else:
            self.session.pump(e.RouteAnswered(answer.route if answer is not None else None))

    # --- dialing ---------------------------------------------------------------------
    def dial(self, cmd: c.Dial) -> None:
        session = self.session
        parked = self.ctx.dialer.take_parked(cmd.route, session.proto.tls_active)
        if parked is not None:  # answered at once, like a route from memory
            self._adopt(parked)
            session.post(e.LinkReady(parked))
            return
        token = self._next_token()
        local: tuple[Any, int] = (None, 0)
        if self.ctx.dialer.sends_proxy_header:
            try:
                local = session.client.sock.getsockname()[:2]  # the header's destination
            except OSError:
                pass
        proto = session.proto
        client = ClientInfo(session.peer[0], session.peer[1], proto.helo, proto.esmtp, local[0], local[1])

        def done(link: UpstreamLink | None, why: str) -> None:
            self.dialing = None
            if token != self.token or session.closed:
                if link is not None:
                    link.quit()
                return
            if link is None:
                self.session.pump(e.DialFailed(why))
                return
            self._adopt(link)
            self.session.pump(e.LinkReady(link))

        self.dialing = self.ctx.dialer.dial(cmd.route, client, proto.tls_active, self._reverse_name, done)

    def _reverse_name(self, callback: Callable[[str], None]) -> None:
        """XCLIENT's NAME for this client (cached across sessions)."""
        self.ctx.reverse_names.lookup(self.session.peer[0], callback)

    def _adopt(self, link: UpstreamLink) -> None:
        self.link = link
        self._on_reply = self._reply_callback(link)
        if link.conn is not None:
            link.conn.guardian = self.session  # a fault on the upstream side ends the session
        link.attach(self)

    # --- the link --------------------------------------------------------------------
    def send(self, cmd: c.Send) -> None:
        link = self.link
        if link is None:
            return  # lost while this command list ran: its UpstreamLost is queued
        timeout = self.ctx.data_timeout if cmd.timeout == c.DATA_TIMEOUT else self.ctx.command_timeout
        on_reply, lines = self._on_reply, cmd.lines
        assert on_reply is not None
        if not lines:
            link.expect(on_reply, timeout)
        elif len(lines) == 1:
            link.command(lines[0], on_reply, timeout)
        else:
            link.pipeline(lines, on_reply, timeout)

    def _reply_callback(self, link: UpstreamLink) -> Callable[[Any], None]:
        def on_reply(outcome: Any) -> None:
            if link is not self.link or self.session.closed:
                return  # a link the relay let go
            self.session.pump(e.UpstreamReplied(outcome) if type(outcome) is Reply else e.UpstreamFailed(outcome))

        return on_reply

    def send_body(self, cmd: c.SendBody) -> None:
        if self.link is not None:  # else lost meanwhile: its UpstreamLost is queued
            self.link.write(cmd.data)

    def drop(self, cmd: c.DropLink) -> None:
        if self.dialing is not None:
            self.dialing.cancel()
            self.dialing = None
            self._next_token()
        link, self.link = self.link, None
        self._on_reply = None
        self.cancel_stall_timer()
        self.session.flow.resume(UPSTREAM_FULL)
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
            self.ctx.dialer.release(link, self.session.proto.tls_active)

    # --- LinkOwner ----------------------------------------------------------------------
    def on_link_lost(self, link: UpstreamLink, exc: Any) -> None:
        """The upstream went away while no reply was awaited."""
        if link is not self.link or self.session.closed:
            return
        self.link = None
        self.cancel_stall_timer()
        self.session.flow.resume(UPSTREAM_FULL)
        self.session.pump(e.UpstreamLost(exc))

    def on_link_pause(self, link: UpstreamLink) -> None:
        """The upstream is behind: stop reading the client, and give the
        upstream WILLI_UPSTREAM_DATA_TIMEOUT at a time to take some bytes."""
        self.session.flow.pause(UPSTREAM_FULL)
        self._arm_stall_timer()

    def on_link_resume(self, link: UpstreamLink) -> None:
        self.cancel_stall_timer()
        self.session.flow.resume(UPSTREAM_FULL)

    # --- the stall timer ------------------------------------------------------------------
    def _arm_stall_timer(self) -> None:
        self.cancel_stall_timer()
        if self.link is not None:
            self.stall_timer = self.ctx.reactor.call_later(
                self.ctx.data_timeout, self._stalled, self.link.out_size, owner=self.session)

    def cancel_stall_timer(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None

    def _stalled(self, out_size: int) -> None:
        """No body byte taken for the data timeout: the relay drops the upstream
        and answers 451 4.4.2 after the client's end of data."""
        self.stall_timer = None
        session = self.session
        if session.closed or session.relay.state not in (S.BODY, S.CHUNK) or not session.flow.upstream_full:
            return
        if self.link is not None and self.link.out_size < out_size:
            self._arm_stall_timer()  # slow, but it is reading
            return
        self.session.pump(e.TimerFired(e.UPSTREAM_STALLED))


UPSTREAM_EXECUTE: dict[type, Callable[[UpstreamSide, Any], None]] = {
    c.LookUp: UpstreamSide.look_up,
    c.Dial: UpstreamSide.dial,
    c.Send: UpstreamSide.send,
    c.SendBody: UpstreamSide.send_body,
    c.DropLink: UpstreamSide.drop,
}
