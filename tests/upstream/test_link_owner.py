"""One owner per upstream link, and the pool that never lends a link which
speaks for a client: the session or the pool hears what happens to a link,
never both; a link that carried XCLIENT or a PROXY header, or that logged in
with other credentials, is never handed to another session. Real socket
pairs stand in for the upstream connection (the link needs no server)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.test_reactor import run_until
from willi.connection import Connection
from willi.errors import UpstreamLost
from willi.reactor import Reactor
from willi.routing import Route
from willi.smtp.handshake import Credentials
from willi.targets import parse_targets
from willi.upstream import UpstreamLink
from willi.upstream.pool import LinkPool

ROUTE = Route("127.0.0.1:2525")


class Owner:
    def __init__(self) -> None:
        self.heard: list[tuple[str, Any]] = []

    def on_link_lost(self, link: UpstreamLink, exc: Any) -> None:
        self.heard.append(("lost", type(exc)))

    def on_link_pause(self, link: UpstreamLink) -> None:
        self.heard.append(("pause", None))

    def on_link_resume(self, link: UpstreamLink) -> None:
        self.heard.append(("resume", None))


@pytest.fixture
def reactor():
    reactor = Reactor()
    yield reactor
    reactor.close()


@pytest.fixture
def links(reactor):
    """New links, each on one end of a socket pair; the far ends are returned too."""
    made: list[tuple[UpstreamLink, socket.socket]] = []

    def make(route: Route = ROUTE) -> tuple[UpstreamLink, socket.socket]:
        near, far = socket.socketpair()
        near.setblocking(False)
        link = UpstreamLink(reactor, route, parse_targets(route.server)[0])
        link.conn = Connection.accepted(reactor, near, link)
        made.append((link, far))
        return link, far

    yield make
    for link, far in made:
        link.abort()
        far.close()


def test_an_idle_link_lost_is_heard_by_its_owner_alone(reactor, links) -> None:
    link, far = links()
    session = Owner()
    link.attach(session)
    far.close()  # the upstream goes away while nothing is awaited
    run_until(reactor, lambda: bool(session.heard))
    assert session.heard == [("lost", UpstreamLost)]


def test_a_link_has_one_owner_at_a_time(links) -> None:
    link, _ = links()
    first, second = Owner(), Owner()
    link.attach(first)
    link.attach(first)  # the same owner again is fine
    with pytest.raises(RuntimeError):
        link.attach(second)
    link.detach()
    link.attach(second)
    assert link.owner is second


def test_parked_links_belong_to_the_pool_and_one_the_upstream_closes_leaves_it(reactor, links) -> None:
    pool = LinkPool(reactor, idle=30)
    link, far = links()
    session = Owner()
    link.attach(session)
    assert not pool.park(link, client_tls=False)  # still the session's: it must detach first
    link.detach()
    assert pool.park(link, client_tls=False) and link.owner is pool and len(pool) == 1
    far.close()
    run_until(reactor, lambda: len(pool) == 0)
    assert session.heard == [] and link.owner is None
    assert pool.take(ROUTE, False) is None


def test_taken_links_come_back_detached_for_the_same_route_and_client_tls_only(reactor, links) -> None:
    pool = LinkPool(reactor, idle=30)
    link, _ = links()
    assert pool.park(link, client_tls=True)
    assert pool.take(ROUTE, False) is None
    assert pool.take(Route("127.0.0.1:2526"), True) is None
    assert pool.take(ROUTE, True) is link and link.owner is None and len(pool) == 0


@pytest.mark.parametrize("told", ["xclient", "proxied"])
def test_a_link_that_told_the_upstream_who_its_client_is_is_never_parked(reactor, links, told: str) -> None:
    pool = LinkPool(reactor, idle=30)
    link, _ = links()
    setattr(link, told, True)
    assert link.personal
    assert not pool.park(link, client_tls=False) and len(pool) == 0


def test_a_link_is_reused_only_for_the_same_login(reactor, links) -> None:
    pool = LinkPool(reactor, idle=30)
    link, _ = links()
    link.credentials = ("plain", Credentials("willi", "one"))
    assert pool.park(link, client_tls=False)
    assert pool.take(ROUTE, False) is None  # a dial without AUTH
    assert pool.take(ROUTE, False, ("plain", Credentials("willi", "two"))) is None
    assert pool.take(ROUTE, False, ("plain", Credentials("other", "one"))) is None
    assert pool.take(ROUTE, False, ("plain", Credentials("willi", "one"))) is link


def test_a_parked_link_expires_with_quit(reactor, links) -> None:
    pool = LinkPool(reactor, idle=0.05)
    link, far = links()
    assert pool.park(link, client_tls=False)
    run_until(reactor, lambda: len(pool) == 0)
    far.settimeout(5)
    assert far.recv(100) == b"QUIT\r\n"
