"""The dialer: opens an upstream link for a route (SPEC §4).

`Dialer.dial()` hands out a parked idle link for the route when the pool has
one, else starts a `DialAttempt`, which tries the route's targets in order
until one greets and finishes the handshake: host names are resolved in the
worker pool (resolver.py), a target that failed is skipped for
WILLI_UPSTREAM_RETRY_AFTER while another of its list is untried (health.py),
and the sans-IO handshake of willi.smtp.handshake is driven over the
link. A TLS handshake offers the session the last one to the same target
left behind (tls_sessions.py; WILLI_UPSTREAM_TLS_RESUME).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Callable

from willi.connection import Connection
from willi import proxy_protocol
from willi.errors import TLSError, UpstreamError
from willi.reactor import Reactor, Timer
from willi.routing import Route
from willi.smtp import handshake as hs
from willi.smtp.reply import Reply
from willi.smtp.upstream import ClientInfo
from willi.targets import Target, parse_targets
from willi.upstream.health import TargetHealth
from willi.upstream.link import UpstreamLink
from willi.upstream.pool import LinkPool
from willi.upstream.resolver import Resolved, Resolver
from willi.upstream.tls_sessions import SessionCache
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
    proxy_protocol: str = "off"  # off | v1 | v2: a PROXY header first on every connection
    auth: str = "off"  # off | plain | external
    credentials: hs.Credentials | None = None  # for plain; its repr hides the password
    tls_resume: bool = True  # offer the target's last TLS session (WILLI_UPSTREAM_TLS_RESUME)


def proxy_header(version: str, client: ClientInfo) -> bytes:
    """The PROXY header naming the client and the address it connected to
    (HAProxy's proxy-protocol.txt); b"" when none is configured."""
    if version == "off":
        return b""
    local = client.local_addr
    if local is None:  # not known: the unspecified address of the client's family
        local = "::" if ipaddress.ip_address(client.addr).version == 6 else "0.0.0.0"
    encode = proxy_protocol.encode_v2 if version == "v2" else proxy_protocol.encode_v1
    return encode((client.addr, client.port), (local, client.local_port))


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
        self.tls_sessions = SessionCache()
        self.generation = 0  # bumped by reconfigure(): links of an older one are never parked again

    def reconfigure(self, settings: DialSettings) -> None:
        """SIGHUP: new settings (and TLS contexts) for every link from now on.
        A parked link was opened under the old ones (no XCLIENT where it is
        now required, another CA...): it is QUIT, and a link in use now is
        QUIT when its session lets it go instead of being parked."""
        self.settings = settings
        self.health.retry_after = settings.retry_after
        self.generation += 1
        self.pool.close()

    @property
    def credentials(self) -> Hashable:
        """What a link's login is compared by in the pool."""
        settings = self.settings
        return None if settings.auth == "off" else (settings.auth, settings.credentials)

    def handshake_settings(self, target: Target, client: ClientInfo, client_tls: bool) -> hs.HandshakeSettings:
        settings = self.settings
        return hs.HandshakeSettings(
            hostname=settings.hostname, lmtp=target.is_lmtp, starttls=settings.starttls,
            client_tls=client_tls, tls_active=target.implicit_tls, xclient=settings.xclient,
            proxy_header=proxy_header(settings.proxy_protocol, client), auth=settings.auth,
            credentials=settings.credentials)

    def dial(self, route: Route, client: ClientInfo, client_tls: bool,
             reverse_name: Callable[[Callable[[str], None]], None],
             done: Callable[[UpstreamLink | None, str], None]) -> "DialAttempt | _FromPool":
        """A parked idle link for the route when there is one, else a new one."""
        link = self.take_parked(route, client_tls)
        if link is not None:
            return _FromPool(self.reactor, link, done)
        return DialAttempt(self, route, client, client_tls, reverse_name, done)

    def take_parked(self, route: Route, client_tls: bool) -> UpstreamLink | None:
        """A parked idle link for the route, at once (no turn of the loop), or None."""
        link = self.pool.take(route, client_tls, self.credentials)
        if link is not None:
            link.reused = True
        return link

    @property
    def sends_proxy_header(self) -> bool:
        """A PROXY header goes first on every new link: the dial needs the
        address the client connected to."""
        return self.settings.proxy_protocol != "off"

    def release(self, link: UpstreamLink, client_tls: bool) -> None:
        """A session is done with a link outside a transaction: park it, or QUIT it."""
        link.detach()
        if link.generation != self.generation or not self.pool.park(link, client_tls):
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
                 "_targets", "_addresses", "_target", "_link", "_handshake", "_timer",
                 "_tls_context", "_tls_offered", "cancelled", "errors")

    def __init__(self, dialer: Dialer, route: Route, client: ClientInfo, client_tls: bool,
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
        self._handshake: hs.Handshake | None = None
        self._timer: Timer | None = None
        self._tls_context: ssl.SSLContext | None = None  # the context of this target's handshake
        self._tls_offered: ssl.SSLSession | None = None  # the session it offered to resume
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
        link.generation = self.dialer.generation
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

    # --- the handshake (willi.smtp.handshake), driven over the link -------------
    def _start_dialogue(self) -> None:
        target = self._target
        assert self._link is not None and target is not None
        self._handshake = hs.Handshake(self.dialer.handshake_settings(target, self.client, self.client_tls),
                                       self.client)
        self._execute(self._handshake.start())

    def _feed(self, event: hs.Event, handshake: hs.Handshake | None = None) -> None:
        """One event for the running handshake; one for a handshake that has
        ended since (a reverse name that comes late) is dropped."""
        if self.cancelled or self._handshake is None or self._link is None:
            return
        if handshake is not None and handshake is not self._handshake:
            return
        self._execute(self._handshake.handle(event))

    def _execute(self, commands: tuple[hs.Command, ...]) -> None:
        timeout = self.dialer.settings.command_timeout
        for command in commands:
            link = self._link
            if self.cancelled or link is None:
                return
            if isinstance(command, hs.Send):
                link.command(command.data, self._on_reply, timeout)
            elif isinstance(command, hs.Expect):
                link.expect(self._on_reply, timeout)
            elif isinstance(command, hs.Write):
                link.write(command.data)
            elif isinstance(command, hs.StartTLS):
                self._start_tls()
            elif isinstance(command, hs.NeedName):
                handshake = self._handshake
                self.reverse_name(lambda name: self._feed(hs.NameResolved(name), handshake))
            elif isinstance(command, hs.Done):
                self._greeted(command.greeted)
            else:
                self._target_failed(str(command.error))

    def _on_reply(self, outcome: Reply | UpstreamError) -> None:
        if isinstance(outcome, UpstreamError):
            self._target_failed(str(outcome))
        else:
            self._feed(outcome)

    def _start_tls(self) -> None:
        """Handshake on the link, bounded by the command timeout: an upstream
        that goes quiet inside the handshake fails this target instead of
        holding the client's RCPT forever (no reply callback is armed then)."""
        assert self._link is not None
        context = self.dialer.tls_contexts(self.route.tls_verify)
        if context is None:
            self._target_failed("TLS is not available")
            return
        session = None
        if self.dialer.settings.tls_resume:
            session = self.dialer.tls_sessions.get(self._session_key(), context)
        self._tls_context = context
        self._tls_offered = session
        self._timer = self.dialer.reactor.call_later(self.dialer.settings.command_timeout, self._tls_timeout)
        try:
            self._link.start_tls(context, self._tls_done, session)
        except TLSError as exc:
            self._cancel_timer()
            self._target_failed(f"TLS: {exc}")

    def _session_key(self) -> Hashable:
        """What a TLS session is kept under (see tls_sessions.py)."""
        return (self._target, self.route.tls_verify)

    def _tls_timeout(self) -> None:
        self._timer = None
        self.dialer.tls_sessions.drop(self._session_key())
        self._target_failed("TLS: handshake timed out")

    def _tls_done(self, exc: BaseException | None) -> None:
        # Implicit TLS: this starts the dialogue (the greeting is next);
        # STARTTLS: this resumes it after its START_TLS step.
        self._cancel_timer()
        if self.cancelled:
            return
        if exc is not None:
            self.dialer.tls_sessions.drop(self._session_key())
            self._target_failed(f"TLS: {exc}")
            return
        link = self._link
        if link is not None:
            self.dialer.logger.debug("tls_established", side="upstream", target=str(self._target),
                                     resumed=link.tls_resumed, version=link.tls)
        self._feed(hs.TLSDone())

    def _greeted(self, greeted: hs.Greeted) -> None:
        link = self._link
        assert link is not None and self._target is not None
        self._link = None
        self._handshake = None
        link.capabilities = dict(greeted.capabilities)
        link.xclient = greeted.xclient
        link.proxied = greeted.proxied
        link.credentials = self.dialer.credentials if greeted.authenticated else None
        if link.tls is not None and self._tls_context is not None and self.dialer.settings.tls_resume:
            # The first reply after the handshake has been read, so a TLS 1.3
            # server's tickets (sent before it) have arrived (tls_sessions.py).
            self.dialer.tls_sessions.completed(self._session_key(), self._tls_context, self._tls_offered,
                                               link.tls_resumed, lambda: link.tls_session)
        self.dialer.health.succeeded(self._target)
        self.done(link, "")

    def _target_failed(self, reason: str) -> None:
        self._handshake = None
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
