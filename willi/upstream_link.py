"""One upstream connection, and the dialer that opens one for a route.

`UpstreamLink` pairs a Connection with a ReplyReader and a FIFO of callbacks:
each command sent (or reply expected) queues a callback, each complete reply
pops one. A reply with no callback waiting (an upstream talking out of turn),
a lost connection or a reply that does not come in time fails every waiting
callback with an UpstreamError and closes the link.

`Dialer.dial()` tries a route's targets in order until one greets and
finishes the handshake (SPEC §4): host names are resolved in the worker
pool, a target that failed is skipped for WILLI_UPSTREAM_RETRY_AFTER while
another of its list is untried, and the sans-IO handshake dialogue of
willi.smtp.upstream is driven over the link.
"""

from __future__ import annotations

import collections
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Callable

from willi import dns
from willi.connection import Connection
from willi.errors import TLSError, UpstreamError, WilliError
from willi.reactor import Reactor, Timer
from willi.routing import Route
from willi.smtp import upstream as dialogue
from willi.smtp.reply import Reply, ReplyError, ReplyReader
from willi.targets import Target, parse_targets
from willi.tls import TLSEngine
from willi.upstream_pool import LinkPool
from willi.workers import PoolFull, WorkerPool

Outcome = "Reply | UpstreamError"
ReplyCallback = Callable[[Any], None]


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""


class UpstreamLost(UpstreamError):
    """The upstream closed the connection or it broke."""


class UpstreamProtocolError(UpstreamError):
    """The upstream sent something that is not an SMTP reply, or a reply
    nobody asked for: the connection is dropped and never trusted again."""


class UpstreamLink:
    """A connection to one upstream target, speaking SMTP or LMTP."""

    __slots__ = (
        "reactor", "route", "target", "conn", "_reader", "_waiting", "_timer", "_deadline",
        "capabilities", "tls", "tls_verified", "xclient", "in_transaction", "reused",
        "on_idle_lost", "on_pause", "on_resume", "__weakref__",
    )

    def __init__(self, reactor: Reactor, route: Route, target: Target) -> None:
        self.reactor = reactor
        self.route = route
        self.target = target
        self.conn: Connection | None = None
        self._reader = ReplyReader()
        self._waiting: collections.deque[tuple[ReplyCallback, float]] = collections.deque()
        self._timer: Timer | None = None
        self._deadline = 0.0  # when the awaited reply is due; 0: none awaited
        self.capabilities: dict[str, str] = {}
        self.tls: str | None = None  # TLS version once encrypted
        self.tls_verified = False
        self.xclient = False
        self.in_transaction = False  # MAIL FROM accepted, not yet finished
        self.reused = False  # taken from the pool: it may have died while parked
        # Set by the session that owns the link.
        self.on_idle_lost: Callable[[UpstreamLink, UpstreamError], None] | None = None
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None

    @property
    def lmtp(self) -> bool:
        return self.target.is_lmtp

    @property
    def closed(self) -> bool:
        return self.conn is None or self.conn.closed

    @property
    def busy(self) -> bool:
        return bool(self._waiting)

    # --- commands -----------------------------------------------------------
    def command(self, data: bytes, callback: ReplyCallback, timeout: float) -> None:
        """Send one command; callback(Reply | UpstreamError) follows."""
        self.expect(callback, timeout)
        if self.conn is not None:
            self.conn.write(data)

    def pipeline(self, commands: tuple[tuple[bytes, ReplyCallback], ...], timeout: float) -> None:
        """Several commands in one write (RFC 2920); callbacks follow in order."""
        for _, callback in commands:
            self.expect(callback, timeout)
        if self.conn is not None:
            self.conn.write(b"".join(data for data, _ in commands))

    def expect(self, callback: ReplyCallback, timeout: float) -> None:
        """Wait for one more reply without sending anything."""
        if self.closed:
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
            self.conn.close_when_flushed()

    def abort(self) -> None:
        """Drop the connection at once (RST): a partial message must never be
        mistaken for a finished one."""
        self._drop_timer()
        self._waiting.clear()
        if self.conn is not None:
            self.conn.abort()

    # --- TLS ----------------------------------------------------------------
    def start_tls(self, context: ssl.SSLContext, done: Callable[[BaseException | None], None]) -> None:
        # Replies read before the handshake are never trusted (response injection).
        self._reader.clear()
        host = self.target.host or None
        engine = TLSEngine(context, server_side=False, server_hostname=host)

        def finished(exc: BaseException | None) -> None:
            if exc is None:
                self.tls = engine.version
                self.tls_verified = engine.verified
            done(exc)

        assert self.conn is not None
        self.conn.start_tls(engine, finished)

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
        callback, _ = self._waiting.popleft()
        if self._waiting:
            self._arm(self._waiting[0][1])
        else:
            self._cancel_timer()
        callback(reply)

    def on_lost(self, conn: Connection, exc: BaseException | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed by upstream"
        self._fail(UpstreamLost(reason))

    def on_pause_writing(self, conn: Connection) -> None:
        if self.on_pause is not None:
            self.on_pause()

    def on_resume_writing(self, conn: Connection) -> None:
        if self.on_resume is not None:
            self.on_resume()

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

    def _cancel_timer(self) -> None:
        self._deadline = 0.0

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
        elif self.on_idle_lost is not None:
            self.on_idle_lost(self, exc)


@dataclass(frozen=True, slots=True)
class DialSettings:
    hostname: str
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    retry_after: float = 30.0
    starttls: str = "if-client"
    xclient: str = "auto"
    pool_idle: float = 5.0  # seconds an idle link is kept for the next session; 0: never


class TargetHealth:
    """Targets that failed recently, so the next session tries another first."""

    __slots__ = ("_failed", "_clock", "retry_after")

    def __init__(self, clock: Callable[[], float], retry_after: float) -> None:
        self._failed: dict[str, float] = {}
        self._clock = clock
        self.retry_after = retry_after

    def failed(self, target: Target) -> None:
        now = self._clock()
        if len(self._failed) > 10_000:
            self._failed = {k: t for k, t in self._failed.items() if now - t < self.retry_after}
        self._failed[str(target)] = now

    def succeeded(self, target: Target) -> None:
        self._failed.pop(str(target), None)

    def is_down(self, target: Target) -> bool:
        when = self._failed.get(str(target))
        return when is not None and self._clock() - when < self.retry_after

    def order(self, targets: tuple[Target, ...]) -> list[Target]:
        """Healthy targets first, in list order; those that failed recently
        only once every other one was tried."""
        up = [t for t in targets if not self.is_down(t)]
        return up + [t for t in targets if t not in up]


class Dialer:
    """Opens upstream links for routes (one per process, shared by sessions)."""

    def __init__(self, reactor: Reactor, workers: WorkerPool, settings: DialSettings,
                 tls_contexts: Callable[[bool], ssl.SSLContext | None], logger: Any) -> None:
        self.reactor = reactor
        self.workers = workers
        self.settings = settings
        self.tls_contexts = tls_contexts
        self.health = TargetHealth(reactor.time, settings.retry_after)
        self.logger = logger
        self._dns: dict[str, tuple[float, list[tuple[int, Any]]]] = {}
        self.pool = LinkPool(reactor, settings.pool_idle)

    def dial(self, route: Route, client: dialogue.ClientInfo, client_tls: bool,
             reverse_name: Callable[[Callable[[str], None]], None],
             done: Callable[[UpstreamLink | None, str], None]) -> "DialAttempt | _FromPool":
        """A parked idle link for the route when there is one, else a new one."""
        link = self.pool.take(route, client_tls)
        if link is not None:
            link.reused = True
            return _FromPool(self.reactor, link, done)
        return DialAttempt(self, route, client, client_tls, reverse_name, done)

    def release(self, link: UpstreamLink, client_tls: bool) -> None:
        """A session is done with an idle link: park it, or QUIT it."""
        if not self.pool.park(link, client_tls):
            link.quit()

    # --- name resolution, cached, in the worker pool ---------------------------
    def resolve(self, target: Target, done: Callable[[list[tuple[int, Any]] | None, str], None]) -> None:
        if target.scheme == "lmtp+unix":
            done([(socket.AF_UNIX, target.path)], "")
            return
        try:
            ip = ipaddress.ip_address(target.host)
        except ValueError:
            ip = None
        if ip is not None:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            done([(family, (target.host, target.port))], "")
            return
        cached = self._dns.get(f"{target.host}:{target.port}")
        if cached is not None and cached[0] > self.reactor.time():
            done(cached[1], "")
            return
        self._resolve_in_worker(target, done)

    def _resolve_in_worker(self, target: Target, done: Callable[[Any, str], None]) -> None:
        key = f"{target.host}:{target.port}"

        def resolved(result: Any, exc: BaseException | None) -> None:
            if exc is not None:
                done(None, f"cannot resolve {target.host}: {exc}")
                return
            if len(self._dns) > 10_000:
                self._dns.clear()
            self._dns[key] = (self.reactor.time() + 60.0, result)
            done(result, "")

        try:
            self.workers.submit(dns.resolve, (target.host, target.port), resolved)
        except PoolFull:
            done(None, "worker pool full")


class _FromPool:
    """A dial answered from the pool: done(link) on the next turn of the loop."""

    __slots__ = ("cancelled",)

    def __init__(self, reactor: Reactor, link: UpstreamLink,
                 done: Callable[[UpstreamLink | None, str], None]) -> None:
        self.cancelled = False
        reactor.call_soon(self._hand_over, link, done)

    def _hand_over(self, link: UpstreamLink, done: Callable[[UpstreamLink | None, str], None]) -> None:
        if self.cancelled:
            link.quit()
        else:
            done(link, "")

    def cancel(self) -> None:
        self.cancelled = True


class DialAttempt:
    """Tries the targets of one route in turn; `done(link, "")` or `done(None, why)`."""

    __slots__ = ("dialer", "route", "client", "client_tls", "reverse_name", "done",
                 "_targets", "_addresses", "_target", "_link", "_dialogue", "_timer",
                 "cancelled", "errors")

    def __init__(self, dialer: Dialer, route: Route, client: dialogue.ClientInfo, client_tls: bool,
                 reverse_name: Callable[[Callable[[str], None]], None],
                 done: Callable[[UpstreamLink | None, str], None]) -> None:
        self.dialer = dialer
        self.route = route
        self.client = client
        self.client_tls = client_tls
        self.reverse_name = reverse_name
        self.done = done
        self._addresses: list[tuple[int, Any]] = []
        self._target: Target | None = None
        self._link: UpstreamLink | None = None
        self._dialogue: dialogue.Dialogue | None = None
        self._timer: Timer | None = None
        self.cancelled = False
        self.errors: list[str] = []
        try:
            targets = parse_targets(route.server)
        except ValueError as exc:
            self._targets: list[Target] = []
            self.errors.append(f"bad server {route.server!r}: {exc}")
        else:
            self._targets = dialer.health.order(targets)
        dialer.reactor.call_soon(self._next_target)

    def cancel(self) -> None:
        """The session went away: drop whatever is half open."""
        self.cancelled = True
        self._cancel_timer()
        if self._link is not None:
            self._link.abort()
            self._link = None

    # --- target by target -------------------------------------------------------
    def _next_target(self) -> None:
        if self.cancelled:
            return
        if not self._targets:
            self.done(None, "; ".join(self.errors) or "no target")
            return
        self._target = self._targets.pop(0)
        self.dialer.resolve(self._target, self._resolved)

    def _resolved(self, addresses: list[tuple[int, Any]] | None, error: str) -> None:
        if self.cancelled:
            return
        if not addresses:
            self._target_failed(error or "no address")
            return
        self._addresses = list(addresses)
        self._next_address()

    def _next_address(self) -> None:
        family, sockaddr = self._addresses.pop(0)
        assert self._target is not None
        link = UpstreamLink(self.dialer.reactor, self.route, self._target)
        self._link = link
        try:
            link.conn = Connection.connect(self.dialer.reactor, family, sockaddr, link, self._connected)
        except OSError as exc:
            self._connect_failed(exc)
            return
        self._timer = self.dialer.reactor.call_later(self.dialer.settings.connect_timeout, self._connect_timeout)

    def _connect_timeout(self) -> None:
        self._timer = None
        self._connect_failed(TimeoutError("connect timed out"))

    def _connected(self, exc: BaseException | None) -> None:
        self._cancel_timer()
        if self.cancelled:
            return
        if exc is not None:
            self._connect_failed(exc)
            return
        self._start_dialogue()

    def _connect_failed(self, exc: BaseException) -> None:
        self._cancel_timer()
        if self._link is not None:
            self._link.abort()
            self._link = None
        self.errors.append(f"{self._target}: connect: {exc}")
        if self._addresses:
            self._next_address()
        else:
            self._record_failure()

    # --- the handshake dialogue ---------------------------------------------------
    def _start_dialogue(self) -> None:
        link = self._link
        target = self._target
        assert link is not None and target is not None
        settings = self.dialer.settings
        self._dialogue = dialogue.handshake(
            dialogue.HandshakeSettings(
                hostname=settings.hostname, lmtp=target.is_lmtp, starttls=settings.starttls,
                client_tls=self.client_tls, tls_active=target.implicit_tls, xclient=settings.xclient),
            self.client)
        if target.implicit_tls:
            self._start_tls()
        else:
            self._step(None)

    def _step(self, value: Any) -> None:
        if self.cancelled:
            return
        assert self._dialogue is not None and self._link is not None
        try:
            action = self._dialogue.send(value)
        except StopIteration as stop:
            self._greeted(stop.value)
            return
        except UpstreamError as exc:
            self._target_failed(str(exc))
            return
        timeout = self.dialer.settings.command_timeout
        if isinstance(action, bytes):
            self._link.command(action, self._on_reply, timeout)
        elif action is dialogue.EXPECT:
            self._link.expect(self._on_reply, timeout)
        elif action is dialogue.START_TLS:
            self._start_tls()
        elif action is dialogue.NEED_NAME:
            self.reverse_name(self._step)

    def _on_reply(self, outcome: Any) -> None:
        if isinstance(outcome, WilliError):
            self._target_failed(str(outcome))
        else:
            self._step(outcome)

    def _start_tls(self) -> None:
        """Handshake on the link, bounded by the command timeout: an upstream
        that goes quiet inside the handshake fails this target instead of
        holding the client's RCPT forever (no reply callback is armed then)."""
        assert self._link is not None
        context = self.dialer.tls_contexts(self.route.tls_verify)
        if context is None:
            self._target_failed("TLS is not available")
            return
        self._timer = self.dialer.reactor.call_later(self.dialer.settings.command_timeout, self._tls_timeout)
        try:
            self._link.start_tls(context, self._tls_done)
        except TLSError as exc:
            self._cancel_timer()
            self._target_failed(f"TLS: {exc}")

    def _tls_timeout(self) -> None:
        self._timer = None
        self._target_failed("TLS: handshake timed out")

    def _tls_done(self, exc: BaseException | None) -> None:
        # Implicit TLS: this starts the dialogue (the greeting is next);
        # STARTTLS: this resumes it after its START_TLS step.
        self._cancel_timer()
        if self.cancelled:
            return
        if exc is not None:
            self._target_failed(f"TLS: {exc}")
        else:
            self._step(None)

    def _greeted(self, greeted: dialogue.Greeted) -> None:
        link = self._link
        assert link is not None and self._target is not None
        self._link = None
        link.capabilities = greeted.capabilities
        link.xclient = greeted.xclient
        self.dialer.health.succeeded(self._target)
        self.done(link, "")

    def _target_failed(self, reason: str) -> None:
        self.errors.append(f"{self._target}: {reason}")
        if self._link is not None:
            self._link.abort()
            self._link = None
        self._record_failure()

    def _record_failure(self) -> None:
        if self._target is not None:
            self.dialer.health.failed(self._target)
            self.dialer.logger.warning("upstream_failed", target=str(self._target), error=self.errors[-1])
        self._next_target()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
