"""Listening sockets, the accept loop, the PROXY header and the connection
limits (SPEC §2, §5).

Accepting happens in a loop per readiness event, bounded so one busy port
cannot starve the rest of the reactor. Running out of file descriptors
(EMFILE) pauses accepting for a moment instead of spinning. Connections over
the global limit, the per-IP limit or the per-IP connection rate get
`421 4.7.0` and are closed before any session object exists for them.

With `WILLI_PROXY_PROTOCOL=on` a connection from a trusted balancer is first
handed to a `_ProxyReader`: a reactor handler that reads the PROXY header
(never more than the header: it peeks, then consumes only header bytes, so
what the client sends next stays in the socket for the session) within
`WILLI_PROXY_PROTOCOL_TIMEOUT`, and then admits the connection under the
address the header carries. A connection from anywhere else is refused:
serving it as itself would, the day the balancer's address changes, make
every client look like the balancer, whose address upstreams may trust.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path
from typing import Any, Callable, Iterable

from willi import replies
from willi.anvil import ConnectionRate, client_key
from willi.errors import WilliError
from willi.portowner import describe_owner
from willi.proxy_protocol import V2_MAX_LENGTH, ProxyHeader, ProxyHeaderError, ProxyHeaderParser
from willi.reactor import READ, Reactor, Timer
from willi.records import NullObserver, Observer

ACCEPTS_PER_EVENT = 64
EMFILE_PAUSE = 1.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Peer = tuple[str, int]


def client_ip(address: str) -> str:
    """IPv4 clients on a dual-stack socket show up as ::ffff:a.b.c.d."""
    return address[7:] if address.startswith("::ffff:") and "." in address else address


def show_address(host: str, port: int) -> str:
    """As WILLI_LISTEN writes it: `[::1]:25`, `127.0.0.1:25`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def interfaces(host: str) -> str | None:
    """What a wildcard address binds, said in words (`:2525` is 0.0.0.0:2525)."""
    if host == "0.0.0.0":
        return "all IPv4 interfaces"
    if host == "::":
        return "all interfaces, IPv4 and IPv6"
    return None


class ListenError(WilliError):
    """A listening socket could not be opened; the text names the address and the fix."""


def open_listener(host: str, port: int, key: str = "WILLI_LISTEN") -> socket.socket:
    """Bound and listening, non-blocking. Never SO_REUSEPORT: a second Willi
    on a port in use must fail here, not silently share the traffic; the
    workers of one Willi share the sockets their parent opened. `key` is
    the setting an error names (WILLI_METRICS_LISTEN for the metrics port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart past TIME_WAIT only
        if family == socket.AF_INET6 and host in ("::", "[::]"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(explain_bind_error(host, port, exc, key=key)) from exc
    return sock


def open_listeners(addresses: Iterable[tuple[str, int]]) -> list[socket.socket]:
    """All of them or none: on an error the ones already open are closed."""
    sockets: list[socket.socket] = []
    try:
        for host, port in addresses:
            sockets.append(open_listener(host, port))
    except ListenError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def explain_bind_error(host: str, port: int, exc: OSError, proc: Path = Path("/proc"),
                       key: str = "WILLI_LISTEN") -> str:
    """`cannot listen on 0.0.0.0:25: <why>; <what to do>`."""
    where = f"cannot listen on {show_address(host, port)}"
    if exc.errno == errno.EADDRINUSE:
        owner = describe_owner(port, proc)
        who = f"by {owner}" if owner else "by another process (`ss -ltnp sport = :%d` says which)" % port
        return (f"{where}: the port is already in use {who}; stop that process (another Willi?) "
                f"or choose another {key}")
    if exc.errno == errno.EACCES:
        start = _unprivileged_port_start(proc)
        if port < start:
            return (f"{where}: permission denied: ports below {start} need root or CAP_NET_BIND_SERVICE "
                    f"(systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE; or a port >= {start} "
                    f"with a redirect from {port})")
        return f"{where}: permission denied (not a privileged port: a security module or a container policy?)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: no interface of this machine has the address {host}; check {key}"
    return f"{where}: {exc.strerror or exc}"


def _unprivileged_port_start(proc: Path) -> int:
    try:
        return int((proc / "sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


class _LoggedEvents(NullObserver):
    """Until the real Observer is passed in: events become log lines."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def event(self, name: str, level: str = "info", **fields: object) -> None:
        self.logger.log(level, name, **fields)


def within(ip: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


class Networks:
    """`ip in networks`, asked for every connection: parsing an address costs
    more than the rest of an accept, so answers are kept per address (at
    most MAX_KNOWN of them; then forgotten all at once)."""

    MAX_KNOWN = 4096

    __slots__ = ("networks", "_known")

    def __init__(self, networks: tuple[Network, ...]) -> None:
        self.networks = networks
        self._known: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        known = self._known.get(ip)
        if known is None:
            if len(self._known) >= self.MAX_KNOWN:
                self._known.clear()
            known = self._known[ip] = within(ip, self.networks)
        return known


class Front:
    """Accepts clients on every listening socket, reads their PROXY header
    when there is one, and counts them."""

    def __init__(self, reactor: Reactor, sockets: list[socket.socket],
                 new_session: Callable[[socket.socket, Peer], Any],
                 max_connections: int, max_per_ip: int, logger: Any, *,
                 rate: ConnectionRate | None = None, rate_exceptions: tuple[Network, ...] = (),
                 proxy_from: tuple[Network, ...] | None = None, proxy_timeout: float = 5.0,
                 observer: Observer | None = None) -> None:
        self.reactor = reactor
        self.sockets = sockets
        self.new_session = new_session
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.logger = logger
        self.rate = rate if rate is not None else ConnectionRate(0)
        self.rate_exceptions = Networks(rate_exceptions)
        self.proxy_from = proxy_from  # None: no PROXY protocol
        self.proxy_timeout = proxy_timeout
        self.observer: Observer = observer if observer is not None else _LoggedEvents(logger)
        self.sessions: dict[Any, str] = {}
        self.pending: set[_ProxyReader] = set()  # connections still owing their header
        self.per_ip: dict[str, int] = {}
        self._handlers = [_Acceptor(self, sock) for sock in sockets]

    def start(self) -> None:
        for handler in self._handlers:
            handler.listen()

    def close_listeners(self) -> None:
        """SIGTERM: refuse new connections at once (and drop unfinished headers)."""
        for handler in self._handlers:
            handler.close()
        for reader in list(self.pending):
            reader.close()

    def accepted(self, sock: socket.socket, address: tuple) -> None:
        ip = client_ip(address[0])
        if len(self.sessions) + len(self.pending) >= self.max_connections:
            self.refuse(sock, ip, "global_limit", replies.TOO_MANY_CONNECTIONS)
        elif self.proxy_from is None:
            self.admit(sock, (ip, address[1]), balancer=None)
        elif not within(ip, self.proxy_from):
            self.refuse(sock, ip, "proxy_untrusted", replies.PROXY_REQUIRED)
        else:
            sock.setblocking(False)
            reader = _ProxyReader(self, sock, (ip, address[1]))
            self.pending.add(reader)
            reader.start()

    def admit(self, sock: socket.socket, peer: Peer, balancer: str | None, counted: bool = True) -> None:
        """The client's own address is known: the per-IP checks, then a session.
        `counted=False` for a balancer speaking for itself (LOCAL, UNKNOWN)."""
        ip = peer[0]
        if counted and ip not in self.rate_exceptions and not self.rate.connect(ip, self.reactor.time()):
            self.refuse(sock, ip, "rate_limit", replies.CONNECTION_RATE_EXCEEDED, balancer)
            return
        # One client is an IPv4 address or an IPv6 /84 (Postfix's smtpd_client_ipv6_prefix_length):
        # a host that takes a new IPv6 address per connection is still one client.
        client = client_key(ip)
        if self.per_ip.get(client, 0) >= self.max_per_ip:
            self.refuse(sock, ip, "per_ip_limit", replies.TOO_MANY_CONNECTIONS, balancer)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.per_ip[client] = self.per_ip.get(client, 0) + 1
        try:
            session = self.new_session(sock, peer)
        except Exception:
            self._release(client)  # it never started: its per-IP slot is free again (the guard reports it)
            raise
        if session.closed:  # closed during its own greeting
            self._release(client)
        else:
            self.sessions[session] = client

    def refuse(self, sock: socket.socket, ip: str, reason: str, reply: bytes | None,
               balancer: str | None = None, **fields: object) -> None:
        """`reply` None: close without a word (a bad PROXY header gets no greeting)."""
        if balancer is not None:
            fields["balancer"] = balancer
        self.observer.event("connection_refused", client=ip, reason=reason, **fields)
        if reply is not None:
            try:
                sock.send(reply)
            except OSError:
                pass
        sock.close()

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


class _ProxyReader:
    """Reactor handler for one connection until its PROXY header is read.

    Each readiness event peeks at what is there, feeds the new bytes to the
    sans-IO parser and consumes exactly the ones that belong to the header
    (all of them while it is incomplete: a header has no gaps), so the
    reactor never blocks, never spins on bytes left unread, and never takes
    a byte of the SMTP dialogue. Bounded in bytes by the parser and in time
    by the timer.
    """

    __slots__ = ("front", "sock", "balancer", "parser", "fed", "timer")

    def __init__(self, front: Front, sock: socket.socket, balancer: Peer) -> None:
        self.front = front
        self.sock = sock
        self.balancer = balancer
        self.parser = ProxyHeaderParser()
        self.fed = 0
        self.timer: Timer | None = None

    def start(self) -> None:
        self.front.reactor.register(self.sock, READ, self)
        self.timer = self.front.reactor.call_later(self.front.proxy_timeout, self._timed_out)

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(max(1, V2_MAX_LENGTH - self.fed), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(f"connection lost: {exc.strerror or exc}", "debug")
            return
        if not data:
            self._fail("closed before the PROXY header", "debug")
            return
        try:
            header = self.parser.feed(data)
        except ProxyHeaderError as exc:
            self._fail(str(exc))
            return
        used = len(data) - len(header.trailing) if header is not None else len(data)
        try:
            taken = len(self.sock.recv(used))
        except OSError as exc:
            self._fail(f"connection lost: {exc.strerror or exc}", "debug")
            return
        self.fed += taken
        if taken != used:  # pragma: no cover - the kernel gave back less than it showed
            self._fail("PROXY header bytes vanished")
        elif header is not None:
            self._done(header)

    def on_writable(self) -> None:  # pragma: no cover - never registered for write
        return None

    def close(self) -> None:
        self._detach()
        self.sock.close()

    def _detach(self) -> None:
        self.front.pending.discard(self)
        self.front.reactor.unregister(self.sock)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _done(self, header: ProxyHeader) -> None:
        self._detach()
        if header.source is None:  # LOCAL / UNKNOWN: the balancer's own connection
            self.front.admit(self.sock, self.balancer, balancer=self.balancer[0], counted=False)
            return
        client = (client_ip(header.source[0]), header.source[1])
        # HAProxy's v1 health checks carry its own address: a balancer is not a client to rate.
        counted = not within(client[0], self.front.proxy_from or ())
        self.front.admit(self.sock, client, balancer=self.balancer[0], counted=counted)

    def _timed_out(self) -> None:
        self.timer = None
        self._fail(f"no PROXY header within {self.front.proxy_timeout:g}s")

    def _fail(self, error: str, level: str = "info") -> None:
        self._detach()
        self.front.observer.event("connection_refused", level=level, client=self.balancer[0],
                                  reason="proxy_header", error=error)
        self.sock.close()


class _Acceptor:
    """Reactor handler for one listening socket."""

    __slots__ = ("front", "sock", "listening", "_kind")

    def __init__(self, front: Front, sock: socket.socket) -> None:
        self.front = front
        self.sock = sock
        self.listening = False
        # socket.accept() converts family and type to enums for every client.
        self._kind = (int(sock.family), int(sock.type), sock.proto)

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
        family, kind, proto = self._kind
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                fd, address = self.sock._accept()
                sock = socket.socket(family, kind, proto, fileno=fd)
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
