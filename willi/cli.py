"""The composition root: arguments, configuration, signals, and the run.

Only this module reads argv and os.environ and installs signal handlers;
everything else gets what it needs passed in (SPEC §6).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import signal
import socket
import sys
from typing import Any, Callable, Sequence, TextIO

from willi import __version__, tls
from willi.activation import listen_sockets
from willi.anvil import ConnectionRate
from willi.config import Config, load_config
from willi.context import Context
from willi.effective import effective_config
from willi.errors import ConfigError, MappingError, TLSError
from willi.listener import Front, ListenError, interfaces, open_listener, open_listeners, show_address
from willi.log import Logger, LogWriter, journal_stream
from willi.metrics_http import MetricsServer
from willi.observe import ObservedLogger, Observer
from willi.reactor import Reactor
from willi.reload import Reloader, keep_restart_fields
from willi.routing.router import Router, build_mappings
from willi.sdnotify import Notifier
from willi.session import Session
from willi.smtp.address import AddressError, parse_path_argument
from willi.smtp.handshake import Credentials
from willi.upstream import DialSettings, Dialer
from willi.workers import WorkerPool


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="willi", description="SMTP proxy that routes by recipient.")
    parser.add_argument("--config", metavar="FILE", help="env file (default: ./willi.env when present)")
    parser.add_argument("--check", action="store_true", help="validate the configuration, open every mapping")
    parser.add_argument("--lookup", metavar="ADDRESS", help="print the route of ADDRESS and exit")
    parser.add_argument("--version", action="version", version=f"willi {__version__}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    unknown: list[tuple[str, str | None]] = []
    try:
        config = load_config(args.config, os.environ, lambda key, hint: unknown.append((key, hint)))
    except ConfigError as exc:
        print(f"willi: configuration error: {exc}", file=sys.stderr)
        return 1
    logger = Logger(None, config.log_format, config.log_level,
                    sink=LogWriter(sys.stdout, config.log_buffer),
                    journal=journal_stream(os.environ.get("JOURNAL_STREAM"), sys.stdout))
    for key, hint in unknown:
        # Not an error: Kubernetes service links and other tools set WILLI_* too.
        logger.warning("unknown_variable", variable=key, action="ignored",
                       hint=f"did you mean {hint}?" if hint else None)
    if args.check:
        return check(config, logger, sys.stdout)
    if args.lookup is not None:
        return lookup(config, logger, args.lookup, sys.stdout)
    try:
        inherited = listen_sockets(os.environ, os.getpid())  # systemd socket activation
    except ConfigError as exc:
        print(f"willi: cannot start: {exc}", file=sys.stderr)
        return 1
    # SIGHUP reads the same file and environment again (SPEC §6).
    return serve(config, logger, lambda: load_config(args.config, os.environ),
                 Notifier.from_environ(os.environ), inherited)


# --- --check and --lookup -------------------------------------------------------
def _router(config: Config, logger: Logger) -> Router:
    return Router(build_mappings(config.mappings, logger), config.recipient_delimiter, config.hostname)


def check(config: Config, logger: Logger, out: TextIO) -> int:
    """Validate everything a start would need, and open every mapping."""
    try:
        if config.tls_cert and config.tls_key:
            tls.server_context(config.tls_cert, config.tls_key)
        _upstream_tls(config, True)
        _resolve_listen(config)
        router = _router(config, logger)
        try:
            router.check()
        finally:
            router.close()
    except (MappingError, TLSError, ConfigError) as exc:
        print(f"willi: check failed: {exc}", file=out)
        return 1
    for line in effective_config(config):
        print(line, file=out)
    print(f"willi: configuration ok ({len(config.mappings)} mappings)", file=out)
    return 0


def _resolve_listen(config: Config) -> None:
    """Every listen address must resolve to something bindable (ConfigError)."""
    addresses = [("WILLI_LISTEN", address) for address in config.listen]
    if config.metrics_listen is not None:
        addresses.append(("WILLI_METRICS_LISTEN", config.metrics_listen))
    for key, (host, port) in addresses:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (socket.gaierror, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(key, show_address(host, port), f"an address that resolves ({reason})") from None



def lookup(config: Config, logger: Logger, text: str, out: TextIO) -> int:
    """Like `postmap -q`: the route, and which mapping and key answered."""
    try:
        address, _ = parse_path_argument(text if text.startswith("<") else f"<{text}>")
        router = _router(config, logger)
        try:
            answer = router.resolve(address)
        finally:
            router.close()
    except (AddressError, MappingError) as exc:
        print(f"willi: lookup failed: {exc}", file=out)
        return 1
    if answer is None:
        print(f"{address}: no route (554 5.7.1 Relay access denied)", file=out)
        return 1
    route = answer.route
    print(f"{address}: server={route.server} tls_verify={'true' if route.tls_verify else 'false'} "
          f"mapping={answer.mapping} key={answer.key}", file=out)
    return 0


def dial_settings(config: Config) -> DialSettings:
    """How every session's upstream connections are opened (SPEC §4)."""
    credentials = None
    if config.upstream_auth == "plain":
        credentials = Credentials(config.upstream_auth_user or "", config.upstream_auth_password or "")
    return DialSettings(
        hostname=config.hostname, connect_timeout=config.upstream_connect_timeout,
        command_timeout=config.upstream_command_timeout, retry_after=config.upstream_retry_after,
        starttls=config.upstream_starttls, pool_idle=config.upstream_pool_idle,
        xclient="off" if config.upstream_proxy_protocol != "off" else config.xclient,
        proxy_protocol=config.upstream_proxy_protocol, auth=config.upstream_auth, credentials=credentials,
        tls_resume=config.upstream_tls_resume)


# --- serving ----------------------------------------------------------------------
def _upstream_tls(config: Config, verify: bool) -> Any:
    return tls.client_context(verify, config.upstream_tls_ca, config.upstream_tls_cert,
                              config.upstream_tls_key)


def startable(config: Config, logger: Logger) -> None:
    """Raise MappingError or TLSError when a worker could not start on
    `config`: what _serve_one builds before it serves, built and let go."""
    _router(config, logger).close()
    if config.tls_cert and config.tls_key:
        tls.server_context(config.tls_cert, config.tls_key)
    _upstream_contexts(config)


def _upstream_contexts(config: Config) -> dict[bool, Any]:
    return {True: _upstream_tls(config, True), False: _upstream_tls(config, False)}


Load = Callable[[], Config]


def serve(config: Config, logger: Logger, load: Load | None = None,
          notifier: Notifier | None = None, inherited: Sequence[socket.socket] = ()) -> int:
    """Serve until SIGTERM; `load` re-reads the configuration on SIGHUP,
    `notifier` tells systemd (READY, RELOADING, STOPPING), and `inherited`
    listening sockets (socket activation) replace WILLI_LISTEN.

    Bind first, in this process and without SO_REUSEPORT, so a port in use
    stops the start with one clear line whatever WILLI_WORKERS says."""
    load = load or (lambda: config)
    notifier = notifier or Notifier(None)
    try:
        sockets = list(inherited) or open_listeners(config.listen)
    except ListenError as exc:
        print(f"willi: cannot start: {exc}", file=sys.stderr)
        return 1
    if config.workers > 1:
        try:
            startable(config, logger)  # one clear line here, not one garbled line per worker
        except (MappingError, TLSError) as exc:
            print(f"willi: cannot start: {exc}", file=sys.stderr)
            return 1
        return _supervise(config, logger, load, notifier, sockets, bool(inherited))
    return _serve_one(config, logger, load, notifier, sockets, bool(inherited))


def _supervise(config: Config, logger: Logger, load: Load, notifier: Notifier,
               sockets: list[socket.socket], activated: bool) -> int:
    """WILLI_WORKERS=N: N reactor processes accepting on the sockets this
    parent opened, inherited across fork (SPEC §1).

    The parent only forks, forwards signals and restarts a worker that died
    on its own; it forks before any thread exists, and each child builds its
    own reactor, pool and mappings. On SIGTERM it closes its own copies of
    the sockets, so the port refuses as soon as every worker closed its own.
    """
    children: dict[int, int] = {}
    stopping = False
    latest = config  # what a worker started after a SIGHUP serves

    handled = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

    def spawn(index: int) -> None:
        # Blocked across the fork, so no signal reaches the child while it
        # still has the parent's forwarding handler.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for signum in handled:
                    # a SIGHUP before the reactor's handler is in place must not
                    # end the worker (its default action); it starts on `latest`
                    signal.signal(signum, signal.SIG_IGN if signum == signal.SIGHUP else signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
                # only the main process speaks to systemd (NotifyAccess=main)
                code = _serve_one(worker_config(latest, index), logger.bind(worker=index), load,
                                  Notifier(None), sockets, activated)
            finally:
                os._exit(code)
        children[pid] = index  # before a pending SIGTERM runs forward(): it must reach this child too
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping, latest
        if signum == signal.SIGHUP and stopping:
            return  # draining: nothing to reload (as a single process ignores it)
        if signum == signal.SIGHUP:
            notifier.reloading()  # each worker reloads itself and logs how it went
            try:
                candidate = keep_restart_fields(config, load())
                startable(candidate, logger)
                latest = candidate
            except (ConfigError, MappingError, TLSError):
                pass  # each worker keeps its own and says why; one restarted later starts on the last good one
        elif not stopping:
            notifier.stopping()
        stopping = stopping or signum != signal.SIGHUP
        if stopping:
            for sock in sockets:
                sock.close()
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        if signum == signal.SIGHUP:
            notifier.ready()

    for signum in handled:
        signal.signal(signum, forward)
    for index in range(config.workers):
        if not stopping:
            spawn(index)
    notifier.ready(f"{config.workers} workers")
    status = 0
    while children:
        pid, raw = os.wait()
        index = children.pop(pid, None)
        code = os.waitstatus_to_exitcode(raw)
        if index is None:
            continue
        if stopping:
            status = status or (code if code > 0 else 0)
        elif code == 1:
            # Could not start (or failed at run time): not restarted again, but the
            # others go on serving; with none left, Willi has failed.
            logger.error("worker_failed", worker=index, code=code, serving=len(children))
            if not children:
                status = 1
        else:
            logger.error("worker_died", worker=index, code=code)
            spawn(index)
    return status


def worker_config(config: Config, index: int) -> Config:
    """WILLI_WORKERS=N: worker i serves its own metrics on port + i (README "Metrics")."""
    if config.metrics_listen is None:
        return config
    host, port = config.metrics_listen
    return dataclasses.replace(config, metrics_listen=(host, port + index))


LOG_FLUSH_TIMEOUT = 2.0  # at exit, how long a stalled reader of stdout may hold us
GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (the default is 700)


def _serve_one(config: Config, logger: Logger, load: Load, notifier: Notifier,
               sockets: list[socket.socket], activated: bool = False) -> int:
    try:
        router = _router(config, logger)
        metrics_sock = (open_listener(*config.metrics_listen, key="WILLI_METRICS_LISTEN")
                        if config.metrics_listen else None)
        contexts = _upstream_contexts(config)
    except (MappingError, TLSError, ListenError, OSError) as exc:
        print(f"willi: cannot start: {exc}", file=sys.stderr)
        return 1
    reactor = Reactor()
    workers = WorkerPool(reactor, config.lookup_threads, config.lookup_queue)
    observer = Observer(logger)
    router.attach(reactor, workers, observer)  # csv: files re-read in the workers from now on
    dialer = Dialer(reactor, workers, dial_settings(config), contexts.get,
                    ObservedLogger(observer))  # its upstream_failed lines counted by target
    try:
        ctx = Context(config, reactor, workers, router, dialer, logger, observer)
    except TLSError as exc:
        print(f"willi: cannot start: {exc}", file=sys.stderr)
        return 1
    front = Front(reactor, sockets, lambda sock, peer: Session(ctx, sock, peer),
                  config.max_connections, config.max_connections_per_ip, logger,
                  rate=ConnectionRate(config.max_connection_rate_per_ip),
                  rate_exceptions=config.connection_rate_exceptions,
                  proxy_from=config.proxy_protocol_from if config.proxy_protocol else None,
                  proxy_timeout=config.proxy_protocol_timeout, observer=observer)
    ctx.on_session_closed = front.session_closed
    metrics = observer.metrics
    metrics.worker_queue_depth.set_function(lambda: workers.depth)
    metrics.log_lines_dropped.set_function(lambda: logger.sink.dropped)
    metrics_server = MetricsServer(reactor, metrics_sock, metrics.render) if metrics_sock else None
    def build_router(new: Config) -> Router:  # a SIGHUP's router, attached like the first
        fresh = _router(new, logger)
        fresh.attach(reactor, workers, observer)
        return fresh

    reloader = Reloader(config, load, ctx, front, build_router, dial_settings,
                        contexts, _upstream_contexts, logger)
    lifecycle = _Lifecycle(reactor, ctx, front, reloader, notifier, logger)
    reactor.add_signal_handler(signal.SIGTERM, lifecycle.shutdown)
    reactor.add_signal_handler(signal.SIGINT, lifecycle.shutdown)
    reactor.add_signal_handler(signal.SIGHUP, lifecycle.reload)
    front.start()
    shown = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        shown.append(show_address(host, port))
        logger.info("listening", address=shown[-1], interfaces=interfaces(host),
                    hostname=config.hostname, version=__version__, activated="systemd" if activated else None)
    if metrics_server is not None and config.metrics_listen is not None:
        metrics_server.start()
        logger.info("metrics_listening", address=show_address(*config.metrics_listen))
    notifier.ready(f"listening on {', '.join(shown)}")
    # From here on log lines leave through the writer thread (started after any fork).
    logger.sink.start(lambda count: logger.render("warning", "log_dropped", count=count))
    # What start-up built lives as long as the process: out of the collector's
    # sight. A closed session is a reference cycle the collector frees, a few
    # dozen objects each: young collections every 10,000 allocations rather
    # than 700 cost less and hold at most a few hundred closed sessions.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    try:
        reactor.run()
    finally:
        dialer.pool.close()
        front.close_listeners()
        if metrics_server is not None:
            metrics_server.close()
        workers.close(timeout=0.5)
        for retired in (*reloader.retired, ctx.router):
            retired.close()
        reactor.close()
    logger.info("stopped")
    logger.sink.close(LOG_FLUSH_TIMEOUT)
    return 0


class _Lifecycle:
    """SIGTERM drains, SIGHUP reloads (SPEC §6)."""

    def __init__(self, reactor: Reactor, ctx: Context, front: Front, reloader: Reloader,
                 notifier: Notifier, logger: Logger) -> None:
        self.reactor = reactor
        self.ctx = ctx
        self.front = front
        self.reloader = reloader
        self.notifier = notifier
        self.logger = logger

    def shutdown(self) -> None:
        if self.ctx.draining:
            return
        self.logger.info("shutting_down", sessions=len(self.front.sessions))
        self.notifier.stopping(f"draining {len(self.front.sessions)} sessions")
        self.ctx.draining = True
        self.front.close_listeners()
        for session in list(self.front.sessions):
            session.drain()
        self.reactor.call_later(self.ctx.config.shutdown_timeout, self._deadline)
        self._stop_when_empty()

    def _stop_when_empty(self) -> None:
        if not self.front.sessions:
            self.reactor.stop()
        else:
            self.reactor.call_later(0.05, self._stop_when_empty)

    def _deadline(self) -> None:
        for session in list(self.front.sessions):
            session.close("shutdown timeout")
        self.reactor.stop()

    def reload(self) -> None:
        if self.ctx.draining:
            return
        self.logger.info("reloading")
        self.notifier.reloading()
        self.reloader.reload()
        self.notifier.ready()
