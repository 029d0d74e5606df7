"""PROXY protocol from a load balancer, through a real Willi (SPEC §5, issue 10).

The balancer is played by this test on 127.0.0.1, the only trusted source
(WILLI_PROXY_PROTOCOL_FROM); 127.0.0.2 is a client outside it. The carried
address must be the client's everywhere: in the XCLIENT the upstream gets,
in the transaction log line, and in the per-IP limit. A bad or missing
header closes the connection without a greeting; a direct client is refused
whatever it claims.
"""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from tests.support.net import SmtpRawClient, wait_until
from tests.support.proxied import connect_from, proxy_willi, proxy_willi_env
from tests.support.upstream import DEFAULT_CAPABILITIES, XCLIENT_CAPABILITY, ScriptableUpstream
from tests.support.willi_process import WilliProcess
from willi import replies
from willi.proxy_protocol import V2_SIGNATURE, encode_v1, encode_v2

BALANCER = "127.0.0.1"
OUTSIDER = "127.0.0.2"
CLIENT_V4 = ("203.0.113.7", 40001)
CLIENT_V6 = ("2001:db8::77", 40002)
WILLI_SIDE = ("198.51.100.25", 25)
BODY = b"Subject: proxied\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptableUpstream]:
    with ScriptableUpstream(capabilities=[*DEFAULT_CAPABILITIES, XCLIENT_CAPABILITY]) as server:
        yield server


@pytest.fixture(scope="module")
def willi(tmp_path_factory: pytest.TempPathFactory, upstream: ScriptableUpstream) -> Iterator[WilliProcess]:
    tmp = tmp_path_factory.mktemp("willi-proxy-in")
    with proxy_willi(proxy_willi_env(
            tmp, upstream.port, WILLI_PROXY_PROTOCOL_TIMEOUT="1s", WILLI_MAX_CONNECTIONS_PER_IP="2"), tmp) as process:
        yield process


def connect(willi: WilliProcess, source: str = BALANCER) -> SmtpRawClient:
    return connect_from(willi, source)


def send_message(client: SmtpRawClient, helo: str = "client.example") -> None:
    assert client.read_reply().code == 220
    assert client.command(f"EHLO {helo}").code == 250
    assert client.command("MAIL FROM:<s@origin.test>").code == 250
    assert client.command("RCPT TO:<r@a.test>").code == 250
    assert client.command("DATA").code == 354
    client.send(BODY + b".\r\n")
    assert client.read_reply().code == 250
    assert client.command("QUIT").code == 221


def transaction_of(willi: WilliProcess, helo: str) -> dict[str, str]:
    return willi.wait_for_log(lambda r: r.get("event") == "transaction" and r.get("helo") == helo)


def refusals(willi: WilliProcess, reason: str) -> list[dict[str, str]]:
    return [r for r in willi.log_lines() if r.get("event") == "connection_refused" and r.get("reason") == reason]


# --- the carried address is the client's --------------------------------------------
@pytest.mark.parametrize("encode, client_addr", [(encode_v1, CLIENT_V4), (encode_v2, CLIENT_V4),
                                                 (encode_v1, CLIENT_V6), (encode_v2, CLIENT_V6)])
def test_the_upstream_and_the_log_see_the_address_the_header_carries(willi, upstream, encode, client_addr) -> None:
    helo = f"{encode.__name__.replace('_', '-')}.{len(client_addr[0])}.example"
    with connect(willi) as client:  # the balancer says: this connection is 203.0.113.7's
        client.send(encode(client_addr, WILLI_SIDE))
        send_message(client, helo)
    message = wait_until(lambda: next((m for m in upstream.messages if m.xclient.get("HELO") == helo.encode()),
                                      None), 5, 0.02, "the message of this session")
    assert message.xclient["ADDR"] == (b"IPV6:" if ":" in client_addr[0] else b"") + client_addr[0].encode()
    assert message.xclient["PORT"] == str(client_addr[1]).encode()
    assert transaction_of(willi, helo)["client"] == client_addr[0]


def test_a_header_that_arrives_byte_by_byte_is_read_and_nothing_after_it_is_lost(willi, upstream) -> None:
    with connect(willi) as client:
        for byte in encode_v2(CLIENT_V4, WILLI_SIDE):
            client.send(bytes([byte]))
        assert client.read_reply().code == 220
    with connect(willi) as client:  # header and an early QUIT in one write: QUIT is the session's
        client.send(encode_v1(CLIENT_V4, WILLI_SIDE) + b"QUIT\r\n")
        assert client.read_reply().code == 220
        assert client.read_reply().code == 221


def test_local_and_unknown_health_checks_are_served_as_the_balancer_itself(willi) -> None:
    for header in (V2_SIGNATURE + b"\x20\x00\x00\x00", b"PROXY UNKNOWN\r\n"):
        with connect(willi) as client:
            client.send(header)
            assert client.read_reply().code == 220
            assert client.command("EHLO health.check").code == 250
            assert client.command("QUIT").code == 221


# --- what is closed without a greeting ------------------------------------------------
@pytest.mark.parametrize("garbage", [
    b"EHLO client.example\r\n",                                   # a client that does not know
    b"PROXY TCP4 203.0.113.7 not-an-ip 1 25\r\n",
    b"PROXY TCP4 " + b"1" * 200,                                   # over 107 bytes, no end
    V2_SIGNATURE + b"\x21\x11\xff\xff",                           # a v2 length far over the bound
])
def test_a_malformed_or_oversized_header_closes_without_a_greeting(willi, garbage) -> None:
    before = len(refusals(willi, "proxy_header"))
    with connect(willi) as client:
        client.send(garbage)
        assert client.expect_closed(timeout=5) == b""  # not one byte, not a 220
    wait_until(lambda: len(refusals(willi, "proxy_header")) > before, 5, 0.02, "the refusal logged")


def test_a_balancer_that_sends_nothing_is_dropped_after_the_proxy_timeout(willi) -> None:
    with connect(willi) as client:
        started = time.monotonic()
        client.send(b"PROXY TCP4 203.0")  # and then nothing
        assert client.expect_closed(timeout=5) == b""
        assert 0.8 < time.monotonic() - started < 4.0  # WILLI_PROXY_PROTOCOL_TIMEOUT=1s
    record = willi.wait_for_log(lambda r: r.get("reason") == "proxy_header" and "within" in r.get("error", ""))
    assert record["client"] == BALANCER


# --- a client outside WILLI_PROXY_PROTOCOL_FROM is never believed -----------------------
def test_a_direct_client_cannot_claim_an_address_and_is_refused(willi, upstream) -> None:
    seen = len(upstream.sessions)
    with connect(willi, OUTSIDER) as client:
        client.send(encode_v1(("192.0.2.99", 1), WILLI_SIDE) + b"EHLO liar.example\r\n")
        reply = client.read_reply()
        assert reply.raw == replies.PROXY_REQUIRED
        assert client.expect_closed(timeout=5) == b""
    record = willi.wait_for_log(lambda r: r.get("reason") == "proxy_untrusted")
    assert record["client"] == OUTSIDER
    assert not [r for r in willi.log_lines() if "192.0.2.99" in r.values()]
    assert len(upstream.sessions) == seen


# --- the per-IP limit counts the carried address ---------------------------------------
def test_the_per_ip_limit_counts_clients_not_the_balancer(willi) -> None:
    held = []
    try:
        for _ in range(2):  # WILLI_MAX_CONNECTIONS_PER_IP=2, both through the one balancer
            held.append(connect(willi))
            held[-1].send(encode_v2(("203.0.113.50", 1), WILLI_SIDE))
            assert held[-1].read_reply().code == 220
        with connect(willi) as third:
            third.send(encode_v2(("203.0.113.50", 2), WILLI_SIDE))
            assert third.read_reply().raw == replies.TOO_MANY_CONNECTIONS
        with connect(willi) as other:  # another client through the same balancer is served
            other.send(encode_v2(("203.0.113.51", 3), WILLI_SIDE))
            assert other.read_reply().code == 220
    finally:
        for client in held:
            client.close()
    record = willi.wait_for_log(lambda r: r.get("reason") == "per_ip_limit")
    assert (record["client"], record["balancer"]) == ("203.0.113.50", BALANCER)


def test_a_header_that_stalls_holds_up_no_one_else(willi) -> None:
    with connect(willi) as slow:
        slow.send(b"PROXY TCP4 203.0.113.60 ")  # half a header, then nothing for a while
        for port in (1, 2, 3):
            with connect(willi) as other:
                started = time.monotonic()
                other.send(encode_v1(("203.0.113.61", port), WILLI_SIDE))
                assert other.read_reply().code == 220
                assert time.monotonic() - started < 0.5
        slow.send(b"198.51.100.25 1 25\r\n")  # still within its own timeout: served
        assert slow.read_reply().code == 220
