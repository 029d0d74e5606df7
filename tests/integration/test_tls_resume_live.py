"""TLS session resumption over loopback, with real processes (issue 12 item 6).

Towards upstreams: Willi keeps the session its last handshake with a target
left and offers it on the next connection (the pool is off here, so every
session dials anew): the second handshake is abbreviated, a ticket the
upstream no longer honours costs a full handshake and nothing else, and
WILLI_UPSTREAM_TLS_RESUME=off makes every handshake full. The upstreams are
aiosmtpd with STARTTLS and, where the upstream must change its ticket keys
between two connections, the STARTTLS-capable ScriptableUpstream.

Towards clients: a Python ssl client that offers the session of its last
STARTTLS with Willi resumes it; after a SIGHUP (a new server context, new
ticket keys) the old ticket is declined and the handshake is a full one.
"""

from __future__ import annotations

import itertools
import signal
import smtplib
import ssl
from contextlib import ExitStack
from typing import Callable, Iterator

import pytest

from tests.integration.test_tls_upstream import TlsScriptableUpstream, server_context
from tests.support.certs import Pki
from tests.support.net import SmtpRawClient, wait_until
from tests.support.willi_process import WilliProcess

_serial = itertools.count(1)


def relay_one(willi: WilliProcess, domain: str) -> str:
    """A plaintext client sends one message; Willi uses STARTTLS upstream."""
    rcpt = f"resume-{next(_serial)}@{domain}"
    with smtplib.SMTP(willi.host, willi.port, local_hostname="client.test", timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.mail("sender@example.net")[0] == 250
        code, text = smtp.rcpt(rcpt)
        assert code == 250, text
        code, text = smtp.data(b"Subject: resume\r\n\r\nhello\r\n")
        assert code == 250, text
    return rcpt


def upstream_handshakes(willi: WilliProcess, count: int) -> list[str]:
    """The `resumed` field of the first `count` upstream tls_established lines."""
    def lines() -> list[dict[str, str]] | None:
        found = [r for r in willi.log_lines()
                 if r.get("event") == "tls_established" and r.get("side") == "upstream"]
        return found if len(found) >= count else None
    return [r["resumed"] for r in wait_until(lines, 10, 0.02, f"{count} upstream handshakes")[:count]]


@pytest.fixture
def tls_upstream(pki: Pki) -> Iterator[Callable[[ssl.SSLContext], TlsScriptableUpstream]]:
    """A STARTTLS-capable ScriptableUpstream whose server context the test may swap."""
    with ExitStack() as stack:
        yield lambda context: stack.enter_context(TlsScriptableUpstream(tls_context=context))


def start_willi(launch, pki: Pki, upstream_port: int, **extra: str) -> WilliProcess:
    return launch.willi({
        "WILLI_MAPPING_1": f"static:127.0.0.1:{upstream_port}",
        "WILLI_UPSTREAM_STARTTLS": "required",
        "WILLI_UPSTREAM_TLS_CA": str(pki.ca_cert),
        "WILLI_UPSTREAM_POOL_IDLE": "0",  # every session dials: each one a handshake
        "WILLI_LOG_LEVEL": "debug",  # tls_established lines are written at debug
        **extra,
    })


# --- towards upstreams --------------------------------------------------------------
def test_a_second_connection_to_the_same_upstream_resumes_its_session(launch, pki: Pki):
    upstream = launch.recorder(tls_context=server_context(pki.upstream_cert, pki.upstream_key))
    willi = start_willi(launch, pki, upstream.port)
    rcpts = [relay_one(willi, "example.org") for _ in range(3)]
    assert upstream_handshakes(willi, 3) == ["false", "true", "true"]
    assert [m.rcpt_tos for m in upstream.wait_for_messages(3)] == [[r] for r in rcpts]
    transactions = [r for r in willi.log_lines() if r.get("event") == "transaction"]
    assert {r.get("upstream_tls") for r in transactions} == {"TLSv1.3 verified"}  # resumed ones too


def test_resumption_off_makes_every_handshake_full(launch, pki: Pki):
    upstream = launch.recorder(tls_context=server_context(pki.upstream_cert, pki.upstream_key))
    willi = start_willi(launch, pki, upstream.port, WILLI_UPSTREAM_TLS_RESUME="off")
    for _ in range(3):
        relay_one(willi, "example.org")
    assert upstream_handshakes(willi, 3) == ["false", "false", "false"]


def test_a_ticket_the_upstream_no_longer_honours_falls_back_to_a_full_handshake(launch, pki: Pki, tls_upstream):
    """The upstream restarts with new ticket keys (a new SSLContext): Willi's
    kept session is declined, the handshake is full, the message goes through,
    and the ticket of that handshake resumes the next one."""
    upstream = tls_upstream(server_context(pki.upstream_cert, pki.upstream_key))
    willi = start_willi(launch, pki, upstream.port)
    relay_one(willi, "example.org")
    relay_one(willi, "example.org")
    upstream.tls_context = server_context(pki.upstream_cert, pki.upstream_key)  # new ticket keys
    relay_one(willi, "example.org")
    relay_one(willi, "example.org")
    assert upstream_handshakes(willi, 4) == ["false", "true", "false", "true"]
    assert len(upstream.messages) == 4
    assert not upstream.tls_errors


def test_a_failed_handshake_forgets_the_targets_session(launch, pki: Pki, tls_upstream):
    """The upstream's certificate fails verification once: the kept session is
    dropped, so when the upstream is back with its old context (the same ticket
    keys, which would have honoured it) the next handshake is a full one."""
    good = server_context(pki.upstream_cert, pki.upstream_key)
    upstream = tls_upstream(good)
    willi = start_willi(launch, pki, upstream.port)
    relay_one(willi, "example.org")
    relay_one(willi, "example.org")
    upstream.tls_context = server_context(pki.untrusted_cert, pki.untrusted_key)
    with smtplib.SMTP(willi.host, willi.port, local_hostname="client.test", timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.mail("sender@example.net")[0] == 250
        assert smtp.rcpt("refused@example.org")[0] == 451  # no usable upstream
    willi.wait_for_log(lambda r: r.get("event") == "upstream_failed" and "TLS" in r.get("error", ""))
    upstream.tls_context = good
    relay_one(willi, "example.org")
    relay_one(willi, "example.org")
    assert upstream_handshakes(willi, 4) == ["false", "true", "false", "true"]


# --- clients resuming with Willi ------------------------------------------------------
def client_tls(willi: WilliProcess, context: ssl.SSLContext,
               session: ssl.SSLSession | None) -> tuple[bool, ssl.SSLSession]:
    """STARTTLS offering `session`; whether Willi resumed it, and the session
    to offer next time (taken after the EHLO reply, which brought the tickets)."""
    with SmtpRawClient(willi.host, willi.port, timeout=10) as client:
        assert client.read_reply().code == 220
        assert client.command(b"EHLO client.test").code == 250
        assert client.command(b"STARTTLS").code == 220
        client.sock = context.wrap_socket(client.sock, server_hostname="willi.test", session=session)
        assert client.command(b"EHLO client.test").code == 250
        reused, next_session = client.sock.session_reused, client.sock.session
        assert client.command(b"QUIT").code == 221
    assert next_session is not None
    return reused, next_session


def test_a_client_resumes_its_session_and_a_sighup_declines_old_tickets(launch, pki: Pki):
    recorder = launch.recorder()
    willi = launch.willi({
        "WILLI_TLS_CERT": str(pki.willi_cert),
        "WILLI_TLS_KEY": str(pki.willi_key),
        "WILLI_MAPPING_1": f"static:{recorder.address}",
    })
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    reused, session = client_tls(willi, context, None)
    assert not reused and session.has_ticket
    reused, session = client_tls(willi, context, session)
    assert reused

    willi.signal(signal.SIGHUP)  # the certificate is loaded again: a new context
    willi.wait_for_log(lambda r: r.get("event") == "reloaded")
    reused, session = client_tls(willi, context, session)
    assert not reused  # declined, and the handshake still completed
    reused, _ = client_tls(willi, context, session)
    assert reused
    assert not any(r.get("event") == "tls_failed" for r in willi.log_lines())
