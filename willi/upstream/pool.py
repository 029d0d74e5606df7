"""Idle upstream connections kept for the next session (Postfix's SMTP
connection cache, `smtp_connection_cache_on_demand`).

Opening an upstream connection costs a TCP handshake, a greeting, EHLO (and
STARTTLS, AUTH) before the first MAIL FROM; a busy MX pays that for every
inbound connection. When a session is done with its upstream link outside a
transaction, the link is parked here for a few seconds and handed to the next
session whose recipient routes to the same upstream.

A link that told the upstream who its client is (XCLIENT or a PROXY header)
is never parked: it speaks for one client and must not speak for another.
Links are keyed by route, by whether the client used TLS (the `if-client`
policy chose the link's TLS from that) and by the credentials AUTH used, so
a link is only reused for the same login. While parked, the pool is the
link's owner: a link the upstream closes leaves the pool at once.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from willi.errors import UpstreamError
from willi.reactor import Reactor, Timer
from willi.routing import Route

if TYPE_CHECKING:
    from willi.upstream.link import UpstreamLink

Key = tuple[Route, bool, Hashable]


class LinkPool:
    """Parked idle links, each for at most `idle` seconds."""

    def __init__(self, reactor: Reactor, idle: float, limit: int = 1000) -> None:
        self.reactor = reactor
        self.idle = idle
        self.limit = limit
        self._links: dict[Key, list[tuple["UpstreamLink", Timer]]] = {}
        self._keys: dict["UpstreamLink", Key] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def park(self, link: "UpstreamLink", client_tls: bool) -> bool:
        """Keep an idle link (the caller has detached it, outside any
        transaction); False when it cannot be kept (the caller QUITs it)."""
        if (self.idle <= 0 or len(self._keys) >= self.limit or link.closed or link.busy
                or link.personal or link.owner is not None):
            return False
        key: Key = (link.route, client_tls, link.credentials)
        timer = self.reactor.call_later(self.idle, self._expire, link)
        link.attach(self)
        self._links.setdefault(key, []).append((link, timer))
        self._keys[link] = key
        return True

    def take(self, route: Route, client_tls: bool, credentials: Hashable = None) -> "UpstreamLink | None":
        """The most recently parked link for this route and login, detached, if any."""
        key: Key = (route, client_tls, credentials)
        entries = self._links.get(key)
        while entries:
            link, timer = entries.pop()
            del self._keys[link]
            timer.cancel()
            if not entries:
                del self._links[key]
            link.detach()
            if not link.closed:
                return link
        return None

    # --- the owner of parked links ------------------------------------------------
    def on_link_lost(self, link: "UpstreamLink", exc: UpstreamError) -> None:
        self._remove(link)

    def on_link_pause(self, link: "UpstreamLink") -> None:
        """Nothing is written to a parked link but its QUIT."""

    def on_link_resume(self, link: "UpstreamLink") -> None:
        """See on_link_pause."""

    def _expire(self, link: "UpstreamLink") -> None:
        self._remove(link)
        link.quit()

    def _remove(self, link: "UpstreamLink") -> None:
        key = self._keys.pop(link, None)
        if key is None:
            return
        entries = self._links.get(key, [])
        for i, (parked, timer) in enumerate(entries):
            if parked is link:
                del entries[i]
                timer.cancel()
                break
        if not entries:
            self._links.pop(key, None)
        link.detach()

    def close(self) -> None:
        for entries in list(self._links.values()):
            for link, timer in entries:
                timer.cancel()
                link.detach()
                link.quit()
        self._links.clear()
        self._keys.clear()
