"""The per-IP connection rate limit (Postfix's smtpd_client_connection_rate_limit),
through a real Willi: over the limit a client gets 421 4.7.0 before any
session exists, other addresses are untouched, exempt networks are never
counted, and behind a balancer it is the carried address that is counted."""

from __future__ import annotations

from pathlib import Path

from tests.support.net import free_port
from tests.support.proxied import connect_from, proxy_willi, proxy_willi_env
from tests.support.willi_process import WilliProcess, routed_env
from willi import replies
from willi.proxy_protocol import V2_SIGNATURE, encode_v1, encode_v2

WILLI_SIDE = ("198.51.100.25", 25)


def greeting_from(willi: WilliProcess, source: str, header: bytes = b"") -> bytes:
    """Connect from `source`, optionally send a PROXY header, return the first reply."""
    with connect_from(willi, source) as client:
        client.send(header)
        return client.read_reply().raw


def test_the_connection_over_the_rate_gets_421_and_other_addresses_do_not(tmp_path: Path) -> None:
    keys = dict(WILLI_MAX_CONNECTION_RATE_PER_IP="3", WILLI_CONNECTION_RATE_EXCEPTIONS="none")
    with WilliProcess(routed_env(tmp_path, **keys), tmp_path) as willi:
        assert [greeting_from(willi, "127.0.0.3")[:3] for _ in range(3)] == [b"220"] * 3
        assert greeting_from(willi, "127.0.0.3") == replies.CONNECTION_RATE_EXCEEDED
        assert greeting_from(willi, "127.0.0.4")[:3] == b"220"
        record = willi.wait_for_log(lambda r: r.get("reason") == "rate_limit")
        assert record["event"] == "connection_refused" and record["client"] == "127.0.0.3"


def test_exempt_networks_are_not_counted_and_loopback_is_exempt_by_default(tmp_path: Path) -> None:
    with WilliProcess(routed_env(tmp_path, WILLI_MAX_CONNECTION_RATE_PER_IP="2"), tmp_path) as willi:
        assert [greeting_from(willi, "127.0.0.3")[:3] for _ in range(6)] == [b"220"] * 6


def test_behind_a_balancer_the_carried_address_is_counted_and_health_checks_are_not(tmp_path: Path) -> None:
    keys = dict(WILLI_MAX_CONNECTION_RATE_PER_IP="2", WILLI_CONNECTION_RATE_EXCEPTIONS="none")
    with proxy_willi(proxy_willi_env(tmp_path, free_port(), **keys), tmp_path) as willi:
        local = V2_SIGNATURE + b"\x20\x00\x00\x00"
        assert [greeting_from(willi, "127.0.0.1", local)[:3] for _ in range(5)] == [b"220"] * 5
        v1_check = encode_v1(("127.0.0.1", 1), WILLI_SIDE)  # HAProxy's v1 check: its own address
        assert [greeting_from(willi, "127.0.0.1", v1_check)[:3] for _ in range(5)] == [b"220"] * 5
        carried = encode_v2(("203.0.113.9", 1), WILLI_SIDE)
        assert [greeting_from(willi, "127.0.0.1", carried)[:3] for _ in range(2)] == [b"220"] * 2
        assert greeting_from(willi, "127.0.0.1", carried) == replies.CONNECTION_RATE_EXCEEDED
        assert greeting_from(willi, "127.0.0.1", encode_v2(("203.0.113.10", 1), WILLI_SIDE))[:3] == b"220"
        record = willi.wait_for_log(lambda r: r.get("reason") == "rate_limit")
        assert (record["client"], record["balancer"]) == ("203.0.113.9", "127.0.0.1")
