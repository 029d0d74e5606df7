"""The front in one process: a real Reactor and loopback sockets, a stand-in
for the session factory, and a ListObserver. What the session is created
with (the carried peer) and what the Observer hears (`connection_refused`
with its reason) are the contract with the rest of Willi."""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any, Iterator

import pytest

from tests.support.net import wait_until
from willi import replies
from willi.anvil import ConnectionRate
from willi.listener import Front, open_listener
from willi.proxy_protocol import encode_v2
from willi.reactor import Reactor
from willi.records import ListObserver


class Created:
    """What new_session was called with; the socket is closed at once."""

    def __init__(self) -> None:
        self.peers: list[tuple[str, int]] = []
        self.closed = True

    def __call__(self, sock: socket.socket, peer: tuple[str, int]) -> Any:
        self.peers.append(peer)
        sock.send(b"220 stand-in\r\n")
        sock.close()
        return self


@pytest.fixture
def running() -> Iterator[Any]:
    reactor = Reactor()
    listener = open_listener("127.0.0.1", 0)
    created, observer = Created(), ListObserver()
    front = Front(reactor, [listener], created, max_connections=10, max_per_ip=10, logger=None,
                  rate=ConnectionRate(2), proxy_from=None, observer=observer)
    thread = threading.Thread(target=reactor.run, daemon=True)

    def configure(**settings: Any) -> tuple[int, Created, ListObserver]:
        for name, value in settings.items():
            setattr(front, name, value)
        front.start()
        thread.start()
        return listener.getsockname()[1], created, observer

    yield configure
    reactor.call_soon_threadsafe(reactor.stop)
    thread.join(5)
    front.close_listeners()
    reactor.close()


def first_bytes(port: int, send: bytes = b"", source: str = "127.0.0.1") -> bytes:
    """Everything the front sends before it closes (a reset, when it left
    our bytes unread, is a close too)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(send)
        chunks = []
        try:
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def test_the_session_is_created_with_the_carried_address(running) -> None:
    port, created, observer = running(proxy_from=(ipaddress.ip_network("127.0.0.1/32"),))
    assert first_bytes(port, encode_v2(("203.0.113.7", 4000), ("127.0.0.1", port))) == b"220 stand-in\r\n"
    assert created.peers == [("203.0.113.7", 4000)]
    assert first_bytes(port, encode_v2(("203.0.113.7", 4001), ("127.0.0.1", port)), source="127.0.0.2") == \
        replies.PROXY_REQUIRED
    assert first_bytes(port, b"GARBAGE\r\n") == b""
    wait_until(lambda: len(observer.records) == 2, 5, 0.01, "two events")
    assert observer.records == [
        ("connection_refused", {"client": "127.0.0.2", "reason": "proxy_untrusted"}),
        ("connection_refused", {"client": "127.0.0.1", "reason": "proxy_header", "error": "not a PROXY header"}),
    ]
    assert created.peers == [("203.0.113.7", 4000)]


def test_the_rate_limit_is_an_event_with_its_reason(running) -> None:
    port, created, observer = running()
    assert [first_bytes(port, source="127.0.0.9")[:3] for _ in range(3)] == [b"220", b"220", b"421"]
    wait_until(lambda: observer.records, 5, 0.01, "the event")
    assert observer.records == [("connection_refused", {"client": "127.0.0.9", "reason": "rate_limit"})]
    assert [ip for ip, _ in created.peers] == ["127.0.0.9", "127.0.0.9"]  # the third never got a session


class FailsToStart(Created):
    """A session factory that raises, as a session whose greeting faults does."""

    def __call__(self, sock: socket.socket, peer: tuple[str, int]) -> Any:
        self.peers.append(peer)
        sock.close()
        raise RuntimeError("session could not start")


def test_a_session_that_fails_to_start_frees_its_per_ip_slot(running) -> None:
    failing = FailsToStart()
    port, _, observer = running(new_session=failing, max_per_ip=2, rate=ConnectionRate(0))
    # More faults from one address than its limit: a slot kept by each would
    # refuse the third with 421 too many connections.
    assert [first_bytes(port) for _ in range(3)] == [b"", b"", b""]
    assert len(failing.peers) == 3 and observer.records == []


class KeptOpen(Created):
    """Sessions that stay open (each one a session object of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.socks: list[socket.socket] = []

    def __call__(self, sock: socket.socket, peer: tuple[str, int]) -> Any:
        self.peers.append(peer)
        self.socks.append(sock)
        sock.send(b"220 stand-in\r\n")
        return type("Open", (), {"closed": False})()


def test_the_per_ip_limit_counts_an_ipv6_client_by_its_slash_84_as_the_rate_does(running) -> None:
    kept = KeptOpen()
    port, _, observer = running(new_session=kept, max_per_ip=2, rate=ConnectionRate(0),
                                proxy_from=(ipaddress.ip_network("127.0.0.1/32"),))

    def greeting(client: str) -> bytes:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(encode_v2((client, 4000), ("127.0.0.1", port)))
        got = sock.recv(100)
        opened.append(sock)
        return got[:3]

    opened: list[socket.socket] = []
    try:
        # A host that takes a new address of its /64 (so of its /84) for every connection:
        same = [greeting(f"2001:db8:1:2::{n}") for n in range(1, 4)]
        other = greeting("2001:db8:1:3::1")  # another /84 is another client
    finally:
        for sock in opened + kept.socks:
            sock.close()
    assert same == [b"220", b"220", b"421"] and other == b"220"
    wait_until(lambda: observer.records, 5, 0.01, "the event")
    assert observer.records == [("connection_refused", {"client": "2001:db8:1:2::3", "reason": "per_ip_limit",
                                                        "balancer": "127.0.0.1"})]
