"""TLS session resumption, engine against engine (no sockets): the client
offers the session its last handshake left, the server takes it or declines,
and the upstream session cache keeps one per target, bounded."""

from __future__ import annotations

import io
import ssl
from typing import Callable

import pytest

from tests.support.certs import Pki
from tests.support.engines import handshake, shuttle
from willi.log import Logger
from willi.observe import Observer
from willi.tls import SERVER_TICKETS, TLSEngine, client_context, server_context
from willi.upstream.tls_sessions import SessionCache, resumable


def _first_reply(client: TLSEngine, server: TLSEngine) -> None:
    """The server answers (a greeting, an EHLO reply) and the client reads it:
    the TLS 1.3 tickets the server sent after the handshake are read with it."""
    server.write(b"250 ok\r\n")
    shuttle(client, server)
    assert client.read() == b"250 ok\r\n"


def _connect(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext,
             session: ssl.SSLSession | None = None) -> tuple[TLSEngine, TLSEngine]:
    client = TLSEngine(client_ctx, server_side=False, server_hostname="localhost", session=session)
    server = TLSEngine(server_ctx, server_side=True)
    handshake(client, server)
    _first_reply(client, server)
    return client, server


@pytest.fixture
def contexts(pki: Pki) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return (client_context(True, str(pki.ca_cert)),
            server_context(str(pki.willi_cert), str(pki.willi_key)))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_second_handshake_resumes_the_first_session(
        contexts: tuple[ssl.SSLContext, ssl.SSLContext], version: ssl.TLSVersion) -> None:
    client_ctx, server_ctx = contexts
    client_ctx.maximum_version = version
    first, _ = _connect(client_ctx, server_ctx)
    assert first.version == version.name.replace("v1_", "v1.")
    assert not first.session_reused
    session = first.session
    assert resumable(session)

    second, server = _connect(client_ctx, server_ctx, session)
    assert second.session_reused and server.session_reused
    assert second.verified  # the resumed session still counts as verified


def test_tls13_tickets_arrive_only_after_the_handshake(
        contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """Why the dialer takes the session after the first reply, not at the handshake."""
    client_ctx, server_ctx = contexts
    client = TLSEngine(client_ctx, server_side=False, server_hostname="localhost")
    server = TLSEngine(server_ctx, server_side=True)
    handshake(client, server)
    assert client.version == "TLSv1.3"
    early = client.session
    assert early is not None and not early.has_ticket and not resumable(early)
    _first_reply(client, server)
    assert client.session is not None and client.session.has_ticket


def test_server_issues_tickets(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    _, server_ctx = contexts
    assert server_ctx.num_tickets == SERVER_TICKETS >= 1
    assert not server_ctx.options & ssl.OP_NO_TICKET


def test_a_new_server_context_declines_old_tickets_with_a_full_handshake(
        pki: Pki, contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """A SIGHUP builds a new server context: its ticket keys are new, so a
    client's old ticket is declined and the handshake completes in full."""
    client_ctx, server_ctx = contexts
    first, _ = _connect(client_ctx, server_ctx)
    reloaded = server_context(str(pki.willi_cert), str(pki.willi_key))
    second, server = _connect(client_ctx, reloaded, first.session)
    assert not second.session_reused and not server.session_reused
    assert second.verified
    third, _ = _connect(client_ctx, reloaded, second.session)
    assert third.session_reused


def test_a_session_of_another_context_is_ignored_not_fatal(
        pki: Pki, contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    client_ctx, server_ctx = contexts
    first, _ = _connect(client_ctx, server_ctx)
    other = client_context(True, str(pki.ca_cert))
    second, _ = _connect(other, server_ctx, first.session)
    assert not second.session_reused


def test_before_the_handshake_there_is_no_session(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    client = TLSEngine(contexts[0], server_side=False, server_hostname="localhost")
    assert client.session is None and not client.session_reused


# --- the upstream session cache ---------------------------------------------


def _sessions(contexts: tuple[ssl.SSLContext, ssl.SSLContext], count: int) -> list[ssl.SSLSession]:
    client_ctx, server_ctx = contexts
    sessions = []
    for _ in range(count):
        client, _ = _connect(client_ctx, server_ctx)
        assert client.session is not None
        sessions.append(client.session)
    return sessions


def test_cache_keeps_the_newest_session_per_key(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    context = contexts[0]
    old, new = _sessions(contexts, 2)
    cache = SessionCache(4)
    assert cache.get("mx", context) is None
    assert cache.put("mx", context, old)
    assert cache.put("mx", context, new)
    assert len(cache) == 1 and cache.get("mx", context) is new
    cache.drop("mx")  # a failed handshake
    assert cache.get("mx", context) is None and len(cache) == 0
    cache.drop("mx")  # dropping twice is harmless


def test_cache_is_bounded_least_recently_used_first(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    context = contexts[0]
    sessions = _sessions(contexts, 4)
    cache = SessionCache(3)
    for name, session in zip("abc", sessions):
        cache.put(name, context, session)
    assert cache.get("a", context) is sessions[0]  # a is now the most recent
    cache.put("d", context, sessions[3])
    assert len(cache) == 3
    assert cache.get("b", context) is None  # the least recently used went
    assert [cache.get(k, context) for k in "acd"] == [sessions[0], sessions[2], sessions[3]]
    with pytest.raises(ValueError):
        SessionCache(0)


def test_cache_forgets_a_session_of_another_context(
        pki: Pki, contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """After a SIGHUP the dialer asks with the new context: the old entry goes."""
    context = contexts[0]
    (session,) = _sessions(contexts, 1)
    cache = SessionCache()
    cache.put("mx", context, session)
    assert cache.get("mx", client_context(True, str(pki.ca_cert))) is None
    assert len(cache) == 0


def test_cache_refuses_expired_and_unresumable_sessions(
        contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    context = contexts[0]
    (session,) = _sessions(contexts, 1)
    now = [float(session.time)]
    cache = SessionCache(clock=lambda: now[0])
    assert not cache.put("none", context, None)
    assert cache.put("mx", context, session)
    now[0] = session.time + session.timeout - 1
    assert cache.get("mx", context) is session
    now[0] = session.time + session.timeout
    assert cache.get("mx", context) is None and len(cache) == 0
    assert not cache.put("mx", context, session)  # expired: not kept either


def test_after_a_resumed_handshake_the_kept_session_serves_again(
        contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """Taking a session costs CPython a copy: a resumed handshake keeps the one it offered."""
    context = contexts[0]
    first, second = _sessions(contexts, 2)
    cache = SessionCache()
    taken: list[int] = []

    def current(session: ssl.SSLSession | None) -> Callable[[], ssl.SSLSession | None]:
        return lambda: taken.append(1) or session  # type: ignore[func-returns-value]

    cache.completed("mx", context, None, False, current(first))  # the first, full handshake
    assert cache.get("mx", context) is first and len(taken) == 1
    cache.completed("mx", context, first, True, current(second))  # resumed: nothing taken
    assert cache.get("mx", context) is first and len(taken) == 1
    cache.completed("mx", context, first, False, current(second))  # declined after it served
    assert cache.get("mx", context) is second and len(taken) == 2
    cache.completed("mx", context, second, True, current(first))  # single-use now: always take
    assert cache.get("mx", context) is first and len(taken) == 3
    cache.completed("mx", context, first, False, current(None))  # nothing to take: forget
    assert cache.get("mx", context) is None


def test_a_session_past_half_its_lifetime_is_replaced_by_a_fresh_one(
        contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    context = contexts[0]
    old, fresh = _sessions(contexts, 2)
    now = [float(old.time)]
    cache = SessionCache(clock=lambda: now[0])
    cache.put("mx", context, old)
    cache.completed("mx", context, old, True, lambda: fresh)
    assert cache.get("mx", context) is old  # young: kept
    now[0] = old.time + old.timeout / 2
    cache.completed("mx", context, old, True, lambda: fresh)
    assert cache.get("mx", context) is fresh


def test_handshakes_are_counted_by_side_and_resumed() -> None:
    observer = Observer(Logger(stream=io.StringIO()))
    observer.event("tls_established", level="debug", side="upstream", resumed=True)
    observer.event("tls_established", level="debug", side="upstream", resumed=False)
    observer.event("tls_established", level="debug", side="upstream", resumed=True)
    observer.event("tls_established", side="client")  # a producer that does not say
    counter = observer.metrics.tls_handshakes
    assert counter.value("upstream", "true") == 2
    assert counter.value("upstream", "false") == 1
    assert counter.value("client", "false") == 1
