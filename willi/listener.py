"""Listening sockets, the accept loop and the connection limits (SPEC §2, §5).

Accepting happens in a loop per readiness event, bounded so one busy port
cannot starve the rest of the reactor. Running out of file descriptors
(EMFILE) pauses accepting for a moment instead of spinning. Connections over
the global or per-IP limit get `421 4.7.0` and are closed before any session
object exists for them.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Callable

from willi import replies
from willi.reactor import READ, Reactor

ACCEPTS_PER_EVENT = 64
EMFILE_PAUSE = 1.0


def client_ip(address: str) -> str:
    """IPv4 clients on a dual-stack socket show up as ::ffff:a.b.c.d."""
    return address[7:] if address.startswith("::ffff:") and "." in address else address


def open_listener(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host in ("::", "[::]"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Front:
    """Accepts clients on every listening socket and counts them."""

    def __init__(self, reactor: Reactor, sockets: list[socket.socket],
                 new_session: Callable[[socket.socket, tuple[str, int]], Any],
                 max_connections: int, max_per_ip: int, logger: Any) -> None:
        self.reactor = reactor
        self.sockets = sockets
        self.new_session = new_session
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.logger = logger
        self.sessions: dict[Any, str] = {}
        self.per_ip: dict[str, int] = {}
        self._handlers = [_Acceptor(self, sock) for sock in sockets]

    def start(self) -> None:
        for handler in self._handlers:
            handler.listen()

    def close_listeners(self) -> None:
        """SIGTERM: refuse new connections at once."""
        for handler in self._handlers:
            handler.close()

    def accepted(self, sock: socket.socket, address: tuple) -> None:
        ip = client_ip(address[0])
        if len(self.sessions) >= self.max_connections or self.per_ip.get(ip, 0) >= self.max_per_ip:
            self.logger.info("connection_refused", client=ip, reason="connection limit")
            try:
                sock.send(replies.TOO_MANY_CONNECTIONS)
            except OSError:
                pass
            sock.close()
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        session = self.new_session(sock, (ip, address[1]))
        if session.closed:  # closed during its own greeting
            self._release(ip)
        else:
            self.sessions[session] = ip

    def session_closed(self, session: Any) -> None:
        ip = self.sessions.pop(session, None)
        if ip is not None:
            self._release(ip)

    def _release(self, ip: str) -> None:
        count = self.per_ip.get(ip, 0) - 1
        if count > 0:
            self.per_ip[ip] = count
        else:
            self.per_ip.pop(ip, None)


class _Acceptor:
    """Reactor handler for one listening socket."""

    __slots__ = ("front", "sock", "listening")

    def __init__(self, front: Front, sock: socket.socket) -> None:
        self.front = front
        self.sock = sock
        self.listening = False

    def listen(self) -> None:
        if not self.listening and self.sock.fileno() != -1:
            self.front.reactor.register(self.sock, READ, self)
            self.listening = True

    def pause(self) -> None:
        if self.listening:
            self.front.reactor.unregister(self.sock)
            self.listening = False

    def close(self) -> None:
        self.pause()
        self.sock.close()

    def on_readable(self) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                sock, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.front.logger.error("accept_failed", error=str(exc))
                    self.pause()
                    self.front.reactor.call_later(EMFILE_PAUSE, self.listen)
                return  # ECONNABORTED and friends: the next event will do
            self.front.accepted(sock, address)

    def on_writable(self) -> None:  # pragma: no cover - never registered for write
        return None
