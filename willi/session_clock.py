"""The client's timers of one session: its per-record deadline
(`deadlines.ClientDeadline`, armed as one reactor timer) and the STARTTLS
handshake's. No phase outlives the client timeout without the client moving
(SPEC §2): while Willi itself keeps the client waiting (a reply from the
router or the upstream, the upstream's back-pressure, a handshake under way)
the deadline starts afresh instead of running out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from willi import replies
from willi.deadlines import ClientDeadline
from willi.relay import S
from willi.smtp import server as smtp

if TYPE_CHECKING:
    from willi.session import Session

WAITING_ON_US = (S.FINAL, S.CHUNK_SENT)  # the upstream has the client's data


class ClientClock:
    """One session's deadline timer and TLS handshake timer."""

    __slots__ = ("session", "ctx", "deadline", "timer", "tls_timer")

    def __init__(self, session: "Session") -> None:
        self.session = session
        ctx = self.ctx = session.ctx
        now = ctx.reactor.time()
        self.deadline = ClientDeadline(ctx.deadline_settings, ctx.stressed, now)
        self.timer = ctx.reactor.call_later(self._delay(now), self._fired, owner=session)
        self.tls_timer: Any = None

    def _fired(self) -> None:
        session = self.session
        if session.closed:
            return
        now = self.ctx.reactor.time()
        waiting_on_us = (session.proto.phase is smtp.Phases.WAITING or session.flow.upstream_full
                         or session.relay.state in WAITING_ON_US or self.tls_timer is not None)
        if waiting_on_us:
            self.deadline.record_started(now)
        why = None if waiting_on_us else self.deadline.expired(now)
        if why is None:
            self.timer = self.ctx.reactor.call_later(self._delay(now), self._fired, owner=session)
            return
        session.say_goodbye(replies.CLIENT_TIMEOUT, why)

    def _delay(self, now: float) -> float:
        """Until the deadline, but at most the stress timeout: stress that
        starts meanwhile is noticed in time."""
        due = min(self.deadline.due(now), now + self.ctx.deadline_settings.stress_timeout)
        return max(due - now, 0.0)

    # --- STARTTLS -------------------------------------------------------------------
    def start_tls(self) -> None:
        """The handshake gets the shorter of WILLI_TLS_HANDSHAKE_TIMEOUT and the
        client timeout (the stress one under stress)."""
        timeout = self.ctx.deadline_settings.handshake_timeout(self.ctx.stressed())
        self.tls_timer = self.ctx.reactor.call_later(timeout, self._tls_timed_out, owner=self.session)

    def tls_done(self) -> None:
        if self.tls_timer is not None:
            self.tls_timer.cancel()
            self.tls_timer = None

    def _tls_timed_out(self) -> None:
        self.tls_timer = None
        session = self.session
        self.ctx.observer.event("tls_failed", session=session.id, side="client", client=session.peer[0],
                                error="handshake timed out")
        session.close("TLS handshake timed out")

    def cancel(self) -> None:
        self.timer.cancel()
        self.tls_done()
