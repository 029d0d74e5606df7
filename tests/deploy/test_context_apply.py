"""`Context.apply(config, ...)` leaves a context exactly as a fresh one built
from that config: a setting added to the context but not to `apply` would
silently survive a SIGHUP with its old value, and this test says which."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

from willi.config import Config
from willi.context import Context
from willi.log import Logger
from willi.reactor import Reactor
from willi.routing import MappingSpec
from willi.routing.router import Router, build_mappings
from willi.workers import WorkerPool

PLAIN = (int, float, str, bool, bytes, type(None), Config)


def settings(ctx: Context) -> dict[str, Any]:
    """The context's plain values: what a configuration decides."""
    return {name: value for name, value in vars(ctx).items()
            if isinstance(value, PLAIN) or dataclasses.is_dataclass(value)}


def test_apply_gives_what_a_fresh_context_of_the_same_config_has() -> None:
    first = Config(hostname="one.test", max_message_size=1024, max_recipients=5, client_timeout=7.0,
                   mappings=(MappingSpec(index=1, uri="static:a.test"),), bare_lf="pass")
    second = dataclasses.replace(
        first, hostname="two.test", max_message_size=4096, max_recipients=9, max_errors=3,
        client_timeout=11.0, upstream_command_timeout=12.0, upstream_data_timeout=13.0,
        lookup_timeout=14.0, tls_handshake_timeout=15.0, split_recipients=False, bare_lf="reject",
        mappings=(MappingSpec(index=1, uri="static:b.test"),))
    logger = Logger(io.StringIO())
    reactor = Reactor()
    workers = WorkerPool(reactor, 1, 10)
    try:
        routers = [Router(build_mappings(c.mappings, None), c.recipient_delimiter, c.hostname)
                   for c in (first, second)]
        fresh = Context(second, reactor, workers, routers[1], None, logger)  # type: ignore[arg-type]
        applied = Context(first, reactor, workers, routers[0], None, logger)  # type: ignore[arg-type]
        assert settings(applied) != settings(fresh)
        applied.apply(second, routers[1], None)
        assert settings(applied) == settings(fresh)
        assert applied.router is routers[1] and applied.server_tls() is None
    finally:
        workers.close(timeout=0.5)
        reactor.close()
