"""The dialer: opens an upstream link for a route (SPEC §4).

`Dialer.dial()` hands out a parked idle link for the route when the pool has
one, else starts a `DialAttempt`, which tries the route's targets in order
until one greets and finishes the handshake: host names are resolved in the
worker pool (resolver.py), a target that failed is skipped for
WILLI_UPSTREAM_RETRY_AFTER while another of its list is untried (health.py),
and the sans-IO handshake dialogue of willi.smtp.upstream is driven over the
link.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Callable

from willi.connection import Connection
from willi.errors import TLSError, UpstreamError, WilliError
from willi.reactor import Reactor, Timer
from willi.routing import Route
from willi.smtp import upstream as dialogue
from willi.targets import Target, parse_targets
from willi.upstream.health import TargetHealth
from willi.upstream.link import UpstreamLink
from willi.upstream.pool import LinkPool
from willi.upstream.resolver import Resolved, Resolver
from willi.workers import WorkerPool


@dataclass(frozen=True, slots=True)
class DialSettings:
    hostname: str
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    retry_after: float = 30.0
    starttls: str = "if-client"
    xclient: str = "auto"
    pool_idle: float = 5.0  # seconds an idle link is kept for the next session; 0: never


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
        self.resolver = Resolver(reactor, workers)
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

    def resolve(self, target: Target, done: Resolved) -> None:
        self.resolver.resolve(target, done)


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
