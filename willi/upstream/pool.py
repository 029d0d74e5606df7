"""Idle upstream connections kept for the next session (Postfix's SMTP
connection cache, `smtp_connection_cache_on_demand`).

Opening an upstream connection costs a TCP handshake, a greeting, EHLO (and
STARTTLS) before the first MAIL FROM; a busy MX pays that for every inbound
connection. When a session ends cleanly, its upstream link is parked here for
a few seconds and handed to the next session whose recipient routes to the
same upstream. A link that carried XCLIENT is never parked: it speaks for
one client and must not speak for another. Links are keyed by route and by
whether the client used TLS, because the `if-client` policy chose the link's
TLS from that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from willi.reactor import Reactor, Timer
from willi.routing import Route

if TYPE_CHECKING:
    from willi.upstream.link import UpstreamLink


class LinkPool:
    """Parked idle links, each for at most `idle` seconds."""

    def __init__(self, reactor: Reactor, idle: float, limit: int = 1000) -> None:
        self.reactor = reactor
        self.idle = idle
        self.limit = limit
        self._links: dict[tuple[Route, bool], list[tuple["UpstreamLink", Timer]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def park(self, link: "UpstreamLink", client_tls: bool) -> bool:
        """Keep an idle link; False when it cannot be kept (the caller QUITs it)."""
        if (self.idle <= 0 or self._count >= self.limit or link.closed or link.busy
                or link.in_transaction or link.xclient):
            return False
        key = (link.route, client_tls)
        timer = self.reactor.call_later(self.idle, self._expire, key, link)
        link.on_idle_lost = lambda lost, exc: self._remove(key, lost, quit=False)
        link.on_pause = link.on_resume = None
        self._links.setdefault(key, []).append((link, timer))
        self._count += 1
        return True

    def take(self, route: Route, client_tls: bool) -> "UpstreamLink | None":
        """The most recently parked link for this route, if any."""
        entries = self._links.get((route, client_tls))
        while entries:
            link, timer = entries.pop()
            self._count -= 1
            timer.cancel()
            if not entries:
                del self._links[(route, client_tls)]
            if not link.closed:
                link.on_idle_lost = None
                return link
        return None

    def _expire(self, key: tuple[Route, bool], link: "UpstreamLink") -> None:
        self._remove(key, link, quit=True)

    def _remove(self, key: tuple[Route, bool], link: Any, quit: bool) -> None:
        entries = self._links.get(key, [])
        for i, (parked, timer) in enumerate(entries):
            if parked is link:
                del entries[i]
                self._count -= 1
                timer.cancel()
                if not entries:
                    self._links.pop(key, None)
                break
        if quit:
            link.quit()

    def close(self) -> None:
        for entries in list(self._links.values()):
            for link, timer in entries:
                timer.cancel()
                link.quit()
        self._links.clear()
        self._count = 0
