"""What every session of one process shares: services, settings, and the few
pieces of state that outlive a session (the session counter, the current TLS
server context, the draining flag). Built once by `cli.main()` and passed to
each session; there is no module-level state anywhere in Willi.
"""

from __future__ import annotations

import itertools
import os
import ssl
import traceback
from typing import Any, Callable

from willi.deadlines import DeadlineSettings, Stress
from willi import dns, replies, tls
from willi.config import Config
from willi.log import Logger
from willi.observe import Observer
from willi.reactor import Reactor
from willi.routing.router import Router
from willi.smtp.server import ServerSettings
from willi.upstream import Dialer
from willi.workers import PoolFull, WorkerPool


class ReverseNames:
    """XCLIENT's NAME: reverse DNS looked up in the worker pool, shared by all
    sessions and cached per address for a minute (a temporary failure is not
    cached), so a busy client costs one lookup, not one per connection."""

    TTL = 60.0
    LIMIT = 10_000

    def __init__(self, reactor: Reactor, workers: WorkerPool) -> None:
        self._reactor = reactor
        self._workers = workers
        self._cache: dict[str, tuple[float, str]] = {}
        # Each waiter with the owner that asked: a fault in its callback ends that one.
        self._waiting: dict[str, list[tuple[Callable[[str], None], Any]]] = {}

    def lookup(self, ip: str, callback: Callable[[str], None]) -> None:
        hit = self._cache.get(ip)
        if hit is not None and hit[0] > self._reactor.time():
            self._reactor.call_soon(callback, hit[1])
            return
        waiters = self._waiting.get(ip)
        if waiters is not None:
            waiters.append((callback, self._reactor.owner))
            return
        self._waiting[ip] = [(callback, self._reactor.owner)]
        try:
            self._workers.submit(dns.reverse_name, (ip,), lambda name, exc: self._done(ip, name, exc))
        except PoolFull:
            self._reactor.call_soon(self._done, ip, None, PoolFull())

    def _done(self, ip: str, name: Any, exc: BaseException | None) -> None:
        name = dns.TEMPUNAVAIL if exc is not None else name
        if name != dns.TEMPUNAVAIL:
            if len(self._cache) >= self.LIMIT:
                self._cache.clear()
            self._cache[ip] = (self._reactor.time() + self.TTL, name)
        for callback, owner in self._waiting.pop(ip, []):
            self._reactor.call_soon(callback, name, owner=owner)  # one asker's fault is its own


class Context:
    """Shared by all sessions of one reactor."""

    def __init__(self, config: Config, reactor: Reactor, workers: WorkerPool, router: Router,
                 dialer: Dialer, logger: Logger, observer: Observer | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.workers = workers
        self.router = router
        self.dialer = dialer
        self.logger = logger
        self.observer = observer if observer is not None else Observer(logger)  # logs and metrics
        reactor.on_fault = self._fault
        self.draining = False
        self.open_sessions = 0
        self.reverse_names = ReverseNames(reactor, workers)
        self.on_session_closed: Callable[[Any], None] = lambda session: None
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}."
        server_tls = None
        if config.tls_cert and config.tls_key:
            server_tls = tls.server_context(config.tls_cert, config.tls_key)
        self.apply(config, router, server_tls)

    def apply(self, config: Config, router: Router, server_tls: ssl.SSLContext | None) -> None:
        """Take `config` from now on (at start, and on SIGHUP). A new session
        sees it from its greeting; a running one keeps the EHLO reply it sent
        and the TLS of its handshake. The caller built `router` and
        `server_tls` beforehand, so this cannot fail half-way."""
        self.config = config
        self.router = router
        self._server_tls = server_tls
        self.server_settings = ServerSettings(
            hostname=config.hostname, max_message_size=config.max_message_size,
            max_recipients=config.max_recipients, max_errors=config.max_errors,
            starttls=config.tls_cert is not None)
        self.ehlo_plain = replies.ehlo(config.hostname, self.server_settings.capabilities(False))
        self.ehlo_tls = replies.ehlo(config.hostname, self.server_settings.capabilities(True))
        self.client_timeout = config.client_timeout
        self.command_timeout = config.upstream_command_timeout
        self.data_timeout = config.upstream_data_timeout
        self.lookup_timeout = config.lookup_timeout
        self.tls_handshake_timeout = config.tls_handshake_timeout
        self.deadline_settings = DeadlineSettings(
            timeout=config.client_timeout, record_deadline=config.client_record_deadline,
            stress_timeout=config.stress_client_timeout, min_data_rate=config.min_data_rate,
            tls_handshake_timeout=config.tls_handshake_timeout)
        self.stress = Stress(config.max_connections, config.stress_threshold)
        self.split_recipients = config.split_recipients
        self.strict_body = config.bare_lf == "reject"

    def next_session_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    def server_tls(self) -> ssl.SSLContext | None:
        return self._server_tls

    def stressed(self) -> bool:
        return self.stress(self.open_sessions)

    def session_closed(self, session: Any) -> None:
        self.open_sessions -= 1
        self.on_session_closed(session)

    def _fault(self, exc: BaseException, owner: Any) -> None:
        """A callback raised and its owner could not take it: report it once."""
        self.observer.event("session_fault", level="error", owner=type(owner).__name__,
                            error=repr(exc), traceback=format_traceback(exc))


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()
