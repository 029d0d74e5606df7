"""One upstream connection, speaking SMTP or LMTP.

`UpstreamLink` pairs a Connection with a ReplyReader and a FIFO of callbacks:
each command sent (or reply expected) queues a callback, each complete reply
pops one. A reply with no callback waiting (an upstream talking out of turn),
a lost connection or a reply that does not come in time fails every waiting
callback with an UpstreamError and closes the link.

A link has one owner at a time, the session using it or the pool keeping it
idle: `attach(owner)` and `detach()` hand it over. The owner hears what
happens when no callback is waiting (`on_link_lost`) and the out-queue's
water marks (`on_link_pause`, `on_link_resume`). Whether a transaction is
open is the relay's business, not the link's.
"""

from __future__ import annotations

import collections
import ssl
from typing import Any, Callable, Protocol

from willi.connection import Connection
from willi.errors import UpstreamError, UpstreamLost, UpstreamProtocolError, UpstreamTimeout
from willi.reactor import Reactor, Timer
from willi.routing import Route
from willi.smtp.reply import Reply, ReplyError, ReplyReader
from willi.targets import Target
from willi.tls import TLSEngine

Outcome = "Reply | UpstreamError"
QUIT_LINGER = 10.0  # seconds an upstream gets to take the QUIT it is sent; then the link is reset
ReplyCallback = Callable[[Any], None]


class LinkOwner(Protocol):
    """Whoever holds a link: a session, or the pool while it is idle."""

    def on_link_lost(self, link: "UpstreamLink", exc: UpstreamError) -> None:
        """The link failed while no reply was awaited (callbacks hear of it otherwise)."""

    def on_link_pause(self, link: "UpstreamLink") -> None:
        """The link's out-queue passed its high-water mark: stop feeding it."""

    def on_link_resume(self, link: "UpstreamLink") -> None:
        """The out-queue drained below the low-water mark."""


class UpstreamLink:
    """A connection to one upstream target, speaking SMTP or LMTP."""

    __slots__ = (
        "reactor", "route", "target", "name", "conn", "_reader", "_waiting", "_timer", "_deadline",
        "capabilities", "tls", "tls_verified", "tls_resumed", "_engine", "xclient", "proxied", "credentials", "reused",
        "owner", "generation", "__weakref__",
    )

    def __init__(self, reactor: Reactor, route: Route, target: Target) -> None:
        self.reactor = reactor
        self.route = route
        self.target = target
        self.name = str(target)  # as logs and records show it (a link serves many transactions)
        self.conn: Connection | None = None
        self._reader = ReplyReader()
        self._waiting: collections.deque[tuple[ReplyCallback, float]] = collections.deque()
        self._timer: Timer | None = None
        self._deadline = 0.0  # when the awaited reply is due; 0: none awaited
        self.capabilities: dict[str, str] = {}
        self.tls: str | None = None  # TLS version once encrypted
        self.tls_verified = False
        self.tls_resumed = False  # the handshake resumed an earlier session
        self._engine: TLSEngine | None = None
        self.xclient = False  # XCLIENT told the upstream who the client is
        self.proxied = False  # a PROXY header told it
        self.credentials: object = None  # what AUTH logged in with (compared, never shown)
        self.reused = False  # taken from the pool: it may have died while parked
        self.owner: LinkOwner | None = None
        self.generation = 0  # the Dialer's configuration it was opened under (Dialer.reconfigure)

    @property
    def lmtp(self) -> bool:
        return self.target.is_lmtp

    @property
    def closed(self) -> bool:
        return self.conn is None or self.conn.closed

    @property
    def busy(self) -> bool:
        return bool(self._waiting)

    @property
    def personal(self) -> bool:
        """The upstream was told who the client is (XCLIENT or PROXY header):
        this link speaks for one client and never for another."""
        return self.xclient or self.proxied

    # --- ownership ------------------------------------------------------------
    def attach(self, owner: LinkOwner) -> None:
        """Hand the link to its one owner; detach() from the previous one first."""
        if self.owner is not None and self.owner is not owner:
            raise RuntimeError("upstream link already has an owner")
        self.owner = owner

    def detach(self) -> None:
        self.owner = None

    # --- commands -----------------------------------------------------------
    def command(self, data: bytes, callback: ReplyCallback, timeout: float) -> None:
        """Send one command; callback(Reply | UpstreamError) follows."""
        self.expect(callback, timeout)
        if self.conn is not None:
            self.conn.write(data)

    def pipeline(self, commands: tuple[bytes, ...], callback: ReplyCallback, timeout: float) -> None:
        """Several commands in one write (RFC 2920); callback(reply) follows
        for each, in order."""
        for _ in commands:
            self.expect(callback, timeout)
        if self.conn is not None:
            self.conn.write(b"".join(commands))

    def expect(self, callback: ReplyCallback, timeout: float) -> None:
        """Wait for one more reply without sending anything."""
        conn = self.conn
        if conn is None or conn.closed:
            self.reactor.call_soon(callback, UpstreamLost("upstream connection closed"))
            return
        self._waiting.append((callback, timeout))
        if len(self._waiting) == 1:
            self._arm(timeout)

    def write(self, data: bytes | memoryview) -> None:
        """Message body bytes: no reply expected for them."""
        if self.conn is not None:
            self.conn.write(data)

    @property
    def out_size(self) -> int:
        return 0 if self.conn is None else self.conn.out_size

    def quit(self) -> None:
        """Polite close: QUIT, then close once it is sent (no need to wait for 221)."""
        self._drop_timer()
        if self.conn is not None and not self.conn.closed:
            self._waiting.clear()
            self.conn.write(b"QUIT\r\n")
            self.conn.close_when_flushed(QUIT_LINGER)

    def abort(self) -> None:
        """Drop the connection at once (RST): a partial message must never be
        mistaken for a finished one."""
        self._drop_timer()
        self._waiting.clear()
        if self.conn is not None:
            self.conn.abort()

    # --- TLS ----------------------------------------------------------------
    def start_tls(self, context: ssl.SSLContext, done: Callable[[BaseException | None], None],
                  session: ssl.SSLSession | None = None) -> None:
        """Handshake on the connection, offering `session` to resume."""
        # Replies read before the handshake are never trusted (response injection).
        self._reader.clear()
        host = self.target.host or None
        engine = TLSEngine(context, server_side=False, server_hostname=host, session=session)
        self._engine = engine

        def finished(exc: BaseException | None) -> None:
            if exc is None:
                self.tls = engine.version
                self.tls_verified = engine.verified
                self.tls_resumed = engine.session_reused
            done(exc)

        assert self.conn is not None
        self.conn.start_tls(engine, finished)

    @property
    def tls_session(self) -> ssl.SSLSession | None:
        """The TLS session to offer on the next connection to this target."""
        return None if self._engine is None else self._engine.session

    # --- Connection owner ---------------------------------------------------
    def on_data(self, conn: Connection, data: memoryview) -> None:
        try:
            self._reader.feed(data)
            while True:
                reply = self._reader.next_reply()
                if reply is None:
                    return
                self._dispatch(reply)
                if self.closed:
                    return
        except ReplyError as exc:
            self._fail(UpstreamProtocolError(str(exc)))

    def _dispatch(self, reply: Reply) -> None:
        if not self._waiting:
            self._fail(UpstreamProtocolError(f"unexpected reply: {reply.code} {reply.text}"))
            return
        waiting = self._waiting
        callback, _ = waiting.popleft()
        if waiting:
            self._arm(waiting[0][1])
        else:
            self._deadline = 0.0  # nothing awaited: the timer, when it fires, finds nothing due
        callback(reply)

    def on_lost(self, conn: Connection, exc: BaseException | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed by upstream"
        self._fail(UpstreamLost(reason))

    def on_pause_writing(self, conn: Connection) -> None:
        if self.owner is not None:
            self.owner.on_link_pause(self)

    def on_resume_writing(self, conn: Connection) -> None:
        if self.owner is not None:
            self.owner.on_link_resume(self)

    # --- failure ------------------------------------------------------------
    def _arm(self, timeout: float) -> None:
        """Expect a reply within timeout. One timer per link, re-armed lazily:
        moving the deadline costs no heap operation unless it comes closer."""
        deadline = self.reactor.time() + timeout
        self._deadline = deadline
        timer = self._timer
        if timer is not None and timer.when <= deadline:
            return
        if timer is not None:
            timer.cancel()
        self._timer = self.reactor.call_later(timeout, self._check_deadline)

    def _drop_timer(self) -> None:
        self._deadline = 0.0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._deadline:
            return  # nothing awaited any more
        remaining = self._deadline - self.reactor.time()
        if remaining > 0:
            self._timer = self.reactor.call_later(remaining, self._check_deadline)
            return
        self._fail(UpstreamTimeout("upstream timed out"))

    def _fail(self, exc: UpstreamError) -> None:
        """The one fatal path: every waiting callback learns of it, once."""
        self._drop_timer()
        waiting, self._waiting = self._waiting, collections.deque()
        if self.conn is not None:
            self.conn.abort()
        if waiting:
            for callback, _ in waiting:
                callback(exc)
        elif self.owner is not None:
            self.owner.on_link_lost(self, exc)
