"""The /metrics responder on a reactor of the test's own: scraper says, the
responder answers; slow, greedy and odd scrapers are cut off by its own
limits (connections, head size, one deadline), never by a session's."""

from __future__ import annotations

import socket
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_reactor import run_until
from willi.listener import open_listener
from willi.metrics import Metrics
from willi.metrics_http import MAX_REQUEST_HEAD, MetricsServer
from willi.reactor import Reactor


@pytest.fixture
def served() -> Iterator[tuple[Reactor, MetricsServer]]:
    reactor = Reactor()
    metrics = Metrics()
    metrics.sessions_accepted.inc(amount=3)
    server = MetricsServer(reactor, open_listener("127.0.0.1", 0), metrics.render, max_clients=2, timeout=0.3)
    server.start()
    try:
        yield reactor, server
    finally:
        server.close()
        reactor.close()


class Scraper:
    def __init__(self, server: MetricsServer) -> None:
        self.sock = socket.create_connection(server.sock.getsockname()[:2], timeout=5)
        self.sock.setblocking(False)
        self.data = b""
        self.closed = False

    def poll(self) -> bool:
        """Read what is there; True once the responder closed the connection."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.closed = True
                    return True
                self.data += chunk
        except BlockingIOError:
            return False
        except ConnectionResetError:
            self.closed = True
            return True

    def close(self) -> None:
        self.sock.close()


def exchange(reactor: Reactor, server: MetricsServer, request: bytes) -> bytes:
    scraper = Scraper(server)
    try:
        scraper.sock.sendall(request)
        run_until(reactor, scraper.poll)
        assert scraper.closed
        return scraper.data
    finally:
        scraper.close()


def test_get_metrics_answers_prometheus_text_and_closes(served) -> None:
    reactor, server = served
    data = exchange(reactor, server, b"GET /metrics HTTP/1.1\r\nHost: willi\r\nAccept: */*\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
    assert f"Content-Length: {len(body)}".encode() in head and b"Connection: close" in head
    values = {s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert values["willi_sessions_accepted_total"] == 3
    assert not server.clients


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET / HTTP/1.1\r\n\r\n", b"404"),
    (b"GET /metrics/../etc HTTP/1.1\r\n\r\n", b"404"),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
    (b"HELO me\r\n\r\n", b"400"),
    (b"GET /metrics?name[]=x HTTP/1.0\n\n", b"200"),
])
def test_anything_but_get_metrics_is_refused(served, request_bytes: bytes, status: bytes) -> None:
    reactor, server = served
    assert exchange(reactor, server, request_bytes).startswith(b"HTTP/1.1 " + status)


def test_an_endless_request_head_is_cut_at_its_cap(served) -> None:
    reactor, server = served
    data = exchange(reactor, server, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * MAX_REQUEST_HEAD)
    assert data.startswith(b"HTTP/1.1 400")


def test_a_silent_scraper_is_dropped_at_the_deadline(served) -> None:
    reactor, server = served
    scraper = Scraper(server)
    try:
        scraper.sock.send(b"GET /metr")  # and then nothing
        run_until(reactor, scraper.poll, timeout=3.0)
        assert scraper.closed and scraper.data == b"" and not server.clients
    finally:
        scraper.close()


def test_scrapers_beyond_the_limit_are_closed_at_accept_and_the_slots_come_back(served) -> None:
    reactor, server = served
    hogs = [Scraper(server), Scraper(server)]
    extra = Scraper(server)
    try:
        run_until(reactor, lambda: len(server.clients) == 2 and extra.poll())
        assert extra.closed and extra.data == b""  # closed without a word: no work spent on it
        for hog in hogs:
            hog.close()
        run_until(reactor, lambda: not server.clients)
        assert exchange(reactor, server, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")
    finally:
        extra.close()
        for hog in hogs:
            hog.close()
