"""Target host names to socket addresses, cached, resolved in the worker pool.

`getaddrinfo` blocks, so it never runs on the reactor: a name is resolved
in a worker thread and the answer is kept for a minute, so a busy route
costs one lookup a minute, not one per session. Literal addresses and Unix
sockets need no lookup and are answered at once.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Callable

from willi import dns
from willi.reactor import Reactor
from willi.targets import Target
from willi.workers import PoolFull, WorkerPool

Addresses = list[tuple[int, Any]]
Resolved = Callable[[Addresses | None, str], None]


class Resolver:
    """`resolve(target, done)`: done(addresses, "") or done(None, why)."""

    TTL = 60.0
    LIMIT = 10_000

    def __init__(self, reactor: Reactor, workers: WorkerPool) -> None:
        self.reactor = reactor
        self.workers = workers
        self._cache: dict[str, tuple[float, Addresses]] = {}

    def resolve(self, target: Target, done: Resolved) -> None:
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
        cached = self._cache.get(f"{target.host}:{target.port}")
        if cached is not None and cached[0] > self.reactor.time():
            done(cached[1], "")
            return
        self._resolve_in_worker(target, done)

    def _resolve_in_worker(self, target: Target, done: Resolved) -> None:
        key = f"{target.host}:{target.port}"

        def resolved(result: Any, exc: BaseException | None) -> None:
            if exc is not None:
                done(None, f"cannot resolve {target.host}: {exc}")
                return
            if len(self._cache) > self.LIMIT:
                self._cache.clear()
            self._cache[key] = (self.reactor.time() + self.TTL, result)
            done(result, "")

        try:
            self.workers.submit(dns.resolve, (target.host, target.port), resolved)
        except PoolFull:
            done(None, "worker pool full")
