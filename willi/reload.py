"""SIGHUP: read the configuration again and let new sessions use it (SPEC §6).

A reload is all or nothing. The env file and the environment are read and
validated again; then everything the new configuration needs that can fail
(new mappings, the TLS certificate, the upstream TLS contexts) is built
beside the running one. Only when all of it stands is it swapped in, with
assignments that cannot fail; a reload that fails leaves Willi exactly as it
was and logs why. Sessions already running are never dropped.

Some keys cannot change in a running process: the listening sockets, the
number of worker processes, the sizes of the lookup pool and the upstream
connection pool, the log writer. Those keep their old value and the log says
a restart is needed. Mappings whose specification did not change are kept
and asked to re-read (the CSV file, the MySQL cache), as before.
"""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any, Callable

from willi import tls
from willi.config import KEYS, Config
from willi.context import Context
from willi.errors import ConfigError, MappingError, TLSError
from willi.routing.router import Router

# Config fields a running process cannot take; they need a restart.
RESTART_FIELDS = (
    "listen", "workers", "lookup_threads", "lookup_queue", "upstream_pool_idle",
    "metrics_listen", "log_format", "log_level", "log_buffer", "proxy_protocol", "proxy_protocol_from",
    "proxy_protocol_timeout", "max_connection_rate_per_ip", "connection_rate_exceptions",
)  # fmt: skip
_KEY_OF_FIELD = {key.field: key.name for key in KEYS}
_ROUTER_FIELDS = ("mappings", "recipient_delimiter", "hostname")
_LOOKUP_GRACE = 10.0  # seconds past WILLI_LOOKUP_TIMEOUT; PyMySQL's read timeout is 5s


def changed_keys(old: Config, new: Config) -> list[str]:
    """The WILLI_ keys whose value differs (mappings as WILLI_MAPPING_<N>)."""
    changed = [_KEY_OF_FIELD.get(f.name, f.name) for f in dataclasses.fields(Config)
               if f.name != "mappings" and getattr(old, f.name) != getattr(new, f.name)]
    before = {spec.index: spec for spec in old.mappings}
    after = {spec.index: spec for spec in new.mappings}
    changed += [f"WILLI_MAPPING_{index}" for index in sorted(before.keys() | after.keys())
                if before.get(index) != after.get(index)]
    return changed


def keep_restart_fields(old: Config, new: Config) -> Config:
    """`new` with the fields a running process cannot change taken from `old`."""
    return dataclasses.replace(new, **{name: getattr(old, name) for name in RESTART_FIELDS})


class Reloader:
    """Holds the configuration in force and replaces it on SIGHUP."""

    def __init__(self, config: Config, load: Callable[[], Config], ctx: Context, front: Any,
                 build_router: Callable[[Config], Router],
                 dial_settings: Callable[[Config], Any],
                 upstream_tls: dict[bool, ssl.SSLContext | None],
                 build_upstream_tls: Callable[[Config], dict[bool, ssl.SSLContext | None]],
                 logger: Any) -> None:
        self.config = config
        self._load = load
        self._ctx = ctx
        self._front = front
        self._build_router = build_router
        self._dial_settings = dial_settings
        self._upstream_tls = upstream_tls  # the dict the dialer reads with .get
        self._build_upstream_tls = build_upstream_tls
        self._logger = logger
        self.retired: list[Router] = []  # replaced routers not closed yet (the caller closes them at exit)

    def reload(self) -> bool:
        """Read, build, swap; False (and a log line saying why) when it failed."""
        old = self.config
        try:
            new = self._keep_restart_fields(old, self._load())
        except ConfigError as exc:
            self._logger.error("reload_failed", part="config", error=str(exc))
            return False
        rebuild = any(getattr(old, name) != getattr(new, name) for name in _ROUTER_FIELDS)
        try:
            router = self._build_router(new) if rebuild else self._ctx.router
        except MappingError as exc:
            self._logger.error("reload_failed", part="mappings", error=str(exc))
            return False
        try:
            server_tls = None
            if new.tls_cert and new.tls_key:
                server_tls = tls.server_context(new.tls_cert, new.tls_key)
            upstream_tls = self._build_upstream_tls(new)
        except TLSError as exc:
            self._logger.error("reload_failed", part="tls", error=str(exc))
            if router is not self._ctx.router:
                router.close()
            return False
        self._swap(old, new, router, server_tls, upstream_tls)
        return True

    def _retire(self, router: Router, lookup_timeout: float) -> None:
        """Close a replaced router once no lookup can still be running on it
        (a lookup outlives its session's timer by at most the query's own)."""
        self.retired.append(router)

        def close() -> None:
            if router in self.retired:
                self.retired.remove(router)
                router.close()

        self._ctx.reactor.call_later(lookup_timeout + _LOOKUP_GRACE, close)

    def _keep_restart_fields(self, old: Config, new: Config) -> Config:
        for name in RESTART_FIELDS:
            if getattr(old, name) != getattr(new, name):
                self._logger.warning("restart_needed", key=_KEY_OF_FIELD.get(name, name),
                                     reason="cannot change in a running process; old value kept")
        return keep_restart_fields(old, new)

    def _swap(self, old: Config, new: Config, router: Router, server_tls: ssl.SSLContext | None,
              upstream_tls: dict[bool, ssl.SSLContext | None]) -> None:
        """Nothing here can fail: every part was built before."""
        if router is self._ctx.router:
            router.reload()  # same mappings: re-read the CSV, forget the MySQL cache
        else:
            self._retire(self._ctx.router, old.lookup_timeout)
        self._ctx.apply(new, router, server_tls)
        self._upstream_tls.update(upstream_tls)
        self._ctx.dialer.reconfigure(self._dial_settings(new))
        self._front.max_connections = new.max_connections
        self._front.max_per_ip = new.max_connections_per_ip
        self.config = new
        changed = changed_keys(old, new)
        self._logger.info("reloaded", changed=",".join(changed) if changed else "none")
