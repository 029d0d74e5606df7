"""The /metrics responder: a tiny HTTP/1.1 server on the reactor (SPEC §6).

It answers `GET /metrics` with the Prometheus text and anything else with
404 (405 for another method), one request per connection (`Connection:
close`). It lives on the mail reactor, so it must never cost a session
anything: it has its own connection limit (more scrapers are closed at
accept), a cap on the request head, and one deadline for the whole exchange
after which the connection is dropped, whether the scraper was slow to ask
or slow to read. Rendering is a few hundred lines from bounded label sets.
"""

from __future__ import annotations

import socket
from typing import Callable

from willi.connection import Connection
from willi.metrics import CONTENT_TYPE
from willi.reactor import READ, Reactor, Timer

MAX_CLIENTS = 4
EXCHANGE_TIMEOUT = 5.0
MAX_REQUEST_HEAD = 8 * 1024
ACCEPTS_PER_EVENT = 16

OK = "200 OK"
BAD_REQUEST = "400 Bad Request"
NOT_FOUND = "404 Not Found"
NOT_ALLOWED = "405 Method Not Allowed"


def response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
             extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n")
    return head.encode("ascii") + body


def answer(head: bytes, render: Callable[[], str]) -> bytes:
    """The response to one request head (request line and headers)."""
    parts = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return response(BAD_REQUEST, b"bad request\n")
    method, target = parts[0], parts[1]
    if target.split(b"?", 1)[0] != b"/metrics":
        return response(NOT_FOUND, b"not found: try /metrics\n")
    if method != b"GET":
        return response(NOT_ALLOWED, b"GET only\n", extra="Allow: GET\r\n")
    return response(OK, render().encode("utf-8"), CONTENT_TYPE)


class MetricsServer:
    """Accepts scrapers on `sock` and answers them from `render`."""

    def __init__(self, reactor: Reactor, sock: socket.socket, render: Callable[[], str],
                 max_clients: int = MAX_CLIENTS, timeout: float = EXCHANGE_TIMEOUT) -> None:
        self.reactor = reactor
        self.sock = sock
        self.render = render
        self.max_clients = max_clients
        self.timeout = timeout
        self.clients: set[_Scrape] = set()
        self._listening = False

    def start(self) -> None:
        self.reactor.register(self.sock, READ, self)
        self._listening = True

    def close(self) -> None:
        if self._listening:
            self.reactor.unregister(self.sock)
            self._listening = False
        self.sock.close()
        for client in list(self.clients):
            client.finish()

    def on_readable(self) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                sock, _address = self.sock.accept()
            except OSError:
                return  # EAGAIN, or EMFILE and friends: sessions matter more, try at the next event
            if len(self.clients) >= self.max_clients:
                sock.close()
                continue
            sock.setblocking(False)
            self.clients.add(_Scrape(self, sock))

    def on_writable(self) -> None:  # pragma: no cover - never registered for write
        return None


class _Scrape:
    """One scraper's connection: read the head, answer, close."""

    __slots__ = ("server", "conn", "head", "timer", "answered")

    def __init__(self, server: MetricsServer, sock: socket.socket) -> None:
        self.server = server
        self.head = bytearray()
        self.answered = False
        self.timer: Timer = server.reactor.call_later(server.timeout, self.finish)
        self.conn = Connection.accepted(server.reactor, sock, self)

    def on_data(self, conn: Connection, data: memoryview) -> None:
        if self.answered:
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            end = self.head.find(b"\n\n")
        if end < 0 and len(self.head) <= MAX_REQUEST_HEAD:
            return
        self.answered = True
        self.conn.pause_reading()
        reply = answer(bytes(self.head[:MAX_REQUEST_HEAD]), self.server.render) if end >= 0 else response(
            BAD_REQUEST, b"request head too long\n")
        self.conn.write(reply)
        self.conn.close_when_flushed(self.server.timeout)
        if self.conn.closed:
            self.finish()  # all sent at once; else the deadline ends it

    def on_lost(self, conn: Connection, exc: BaseException | None) -> None:
        self.finish()

    def on_pause_writing(self, conn: Connection) -> None:
        return None

    def on_resume_writing(self, conn: Connection) -> None:
        return None

    def finish(self) -> None:
        self.timer.cancel()
        self.conn.close()
        self.server.clients.discard(self)
