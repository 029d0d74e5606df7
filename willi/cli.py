"""The composition root: arguments, configuration, signals, and the run.

Only this module reads argv and os.environ and installs signal handlers;
everything else gets what it needs passed in (SPEC §6).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, Sequence, TextIO

from willi import __version__, tls
from willi.config import Config, load_config
from willi.context import Context
from willi.errors import ConfigError, MappingError, TLSError, WilliError
from willi.listener import Front, open_listener
from willi.log import Logger
from willi.reactor import Reactor
from willi.routing.router import Router, build_mappings
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
    try:
        config = load_config(args.config, os.environ)
    except ConfigError as exc:
        print(f"willi: configuration error: {exc}", file=sys.stderr)
        return 1
    unsupported = _not_built_yet(config)
    if unsupported:
        print(f"willi: configuration error: {unsupported}: not supported by this version yet", file=sys.stderr)
        return 1
    logger = Logger(sys.stdout, config.log_format, config.log_level)
    if args.check:
        return check(config, logger, sys.stdout)
    if args.lookup is not None:
        return lookup(config, logger, args.lookup, sys.stdout)
    return serve(config, logger)


def _not_built_yet(config: Config) -> str | None:
    """Keys of the SPEC whose feature is not built yet. Refused rather than
    ignored: a PROXY header or a metrics port silently missing would be worse."""
    if config.proxy_protocol:
        return "WILLI_PROXY_PROTOCOL=on"
    if config.metrics_listen is not None:
        return "WILLI_METRICS_LISTEN"
    return None


# --- --check and --lookup -------------------------------------------------------
def _router(config: Config, logger: Logger) -> Router:
    return Router(build_mappings(config.mappings, logger), config.recipient_delimiter, config.hostname)


def check(config: Config, logger: Logger, out: TextIO) -> int:
    """Validate everything a start would need, and open every mapping."""
    try:
        if config.tls_cert and config.tls_key:
            tls.server_context(config.tls_cert, config.tls_key)
        _upstream_tls(config, True)
        router = _router(config, logger)
        try:
            router.check()
        finally:
            router.close()
    except (MappingError, TLSError) as exc:
        print(f"willi: check failed: {exc}", file=out)
        return 1
    print(f"willi: configuration ok ({len(config.mappings)} mappings)", file=out)
    return 0


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
        proxy_protocol=config.upstream_proxy_protocol, auth=config.upstream_auth, credentials=credentials)


# --- serving ----------------------------------------------------------------------
def _upstream_tls(config: Config, verify: bool) -> Any:
    return tls.client_context(verify, config.upstream_tls_ca, config.upstream_tls_cert,
                              config.upstream_tls_key)


def serve(config: Config, logger: Logger) -> int:
    if config.workers > 1:
        return _supervise(config, logger)
    return _serve_one(config, logger)


def _supervise(config: Config, logger: Logger) -> int:
    """WILLI_WORKERS=N: N reactor processes on one SO_REUSEPORT port (SPEC §1).

    The parent only forks, forwards signals and restarts a worker that died
    on its own; it forks before any thread exists, and each child builds its
    own reactor, pool and mappings.
    """
    children: dict[int, int] = {}
    stopping = False

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
                    signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
                code = _serve_one(config, logger.bind(worker=index))
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        children[pid] = index

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for signum in handled:
        signal.signal(signum, forward)
    for index in range(config.workers):
        spawn(index)
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
            logger.error("worker_failed", worker=index, code=code)  # could not start: give up
            forward(signal.SIGTERM, None)
            status = 1
        else:
            logger.error("worker_died", worker=index, code=code)
            spawn(index)
    return status


def _serve_one(config: Config, logger: Logger) -> int:
    try:
        router = _router(config, logger)
        sockets = [open_listener(host, port, reuse_port=config.workers > 1) for host, port in config.listen]
        contexts = {True: _upstream_tls(config, True), False: _upstream_tls(config, False)}
    except (MappingError, TLSError, OSError) as exc:
        print(f"willi: cannot start: {exc}", file=sys.stderr)
        return 1
    reactor = Reactor()
    workers = WorkerPool(reactor, config.lookup_threads, config.lookup_queue)
    dialer = Dialer(reactor, workers, dial_settings(config), contexts.get, logger)
    try:
        ctx = Context(config, reactor, workers, router, dialer, logger)
    except TLSError as exc:
        print(f"willi: cannot start: {exc}", file=sys.stderr)
        return 1
    front = Front(reactor, sockets, lambda sock, peer: Session(ctx, sock, peer),
                  config.max_connections, config.max_connections_per_ip, logger)
    ctx.on_session_closed = front.session_closed
    lifecycle = _Lifecycle(config, reactor, ctx, front, router, logger)
    reactor.add_signal_handler(signal.SIGTERM, lifecycle.shutdown)
    reactor.add_signal_handler(signal.SIGINT, lifecycle.shutdown)
    reactor.add_signal_handler(signal.SIGHUP, lifecycle.reload)
    front.start()
    for host, port in config.listen:
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # as WILLI_LISTEN writes it
        logger.info("listening", address=shown, hostname=config.hostname, version=__version__)
    try:
        reactor.run()
    finally:
        dialer.pool.close()
        front.close_listeners()
        workers.close(timeout=0.5)
        router.close()
        reactor.close()
    logger.info("stopped")
    return 0


class _Lifecycle:
    """SIGTERM drains, SIGHUP reloads (SPEC §6)."""

    def __init__(self, config: Config, reactor: Reactor, ctx: Context, front: Front,
                 router: Router, logger: Logger) -> None:
        self.config = config
        self.reactor = reactor
        self.ctx = ctx
        self.front = front
        self.router = router
        self.logger = logger

    def shutdown(self) -> None:
        if self.ctx.draining:
            return
        self.logger.info("shutting_down", sessions=len(self.front.sessions))
        self.ctx.draining = True
        self.front.close_listeners()
        for session in list(self.front.sessions):
            session.drain()
        self.reactor.call_later(self.config.shutdown_timeout, self._deadline)
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
        self.logger.info("reloading")
        try:
            self.router.reload()
        except WilliError as exc:
            self.logger.error("reload_failed", part="mappings", error=str(exc))
        try:
            self.ctx.reload_tls()
        except TLSError as exc:
            self.logger.error("reload_failed", part="tls", error=str(exc))
