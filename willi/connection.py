"""One non-blocking socket: reads into the reactor's shared buffer, an
out-queue with water marks, and optionally a TLS engine in the path.

The owner (a session) gets plaintext as a memoryview that is valid only during
`on_data`; a write first tries `send` directly and queues only the remainder
(copied, because the view may point into the shared receive buffer). When the
out-queue passes HIGH_WATER the owner is told to stop feeding it; below
LOW_WATER it may resume: that is how backpressure crosses from one side of a
session to the other. Pending TLS output counts towards the queue too.

There is one fatal path: `_lost(exc)` tells the owner once and closes.
`close()` is idempotent and never calls the owner back. When a callback of
this connection raises, the reactor's guard calls `fatal(exc)`: the
exception goes to the `guardian` (the session that pairs this connection
with another, so a fault on either side ends the session), else the owner's
own `fatal`, else the connection counts as lost and the fault is reported.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import TYPE_CHECKING, Any, Callable, Protocol

from willi.errors import TLSError
from willi.reactor import READ, WRITE, Reactor

if TYPE_CHECKING:
    from willi.tls import TLSEngine

HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)


class Owner(Protocol):
    """What a connection reports to whoever owns it."""

    def on_data(self, conn: "Connection", data: memoryview) -> None: ...

    def on_lost(self, conn: "Connection", exc: BaseException | None) -> None: ...

    def on_pause_writing(self, conn: "Connection") -> None: ...

    def on_resume_writing(self, conn: "Connection") -> None: ...

    # Optional: `on_eof(conn)`. An owner that has it is told of a read EOF
    # (the peer half-closed) and may still write; one that has not is told
    # `on_lost(conn, None)`.


class Connection:
    """A non-blocking stream socket driven by the reactor."""

    __slots__ = (
        "reactor", "sock", "owner", "_out", "_out_size", "_events", "closed",
        "_reading", "_write_paused", "_close_when_flushed", "tls", "_tls_done",
        "_connect_done", "bytes_in", "bytes_out", "guardian", "at_eof", "_linger", "__weakref__",
    )

    def __init__(self, reactor: Reactor, sock: socket.socket, owner: Owner) -> None:
        self.reactor = reactor
        self.sock = sock
        self.owner = owner
        # What the kernel has not taken yet. Usually nothing: an empty tuple
        # until then, not a list (56 bytes) or a deque (760) for every idle
        # connection; the queue stays short (the owner stops past HIGH_WATER).
        self._out: list[bytes] | tuple[()] = ()
        self._out_size = 0
        self._events = 0
        self.closed = False
        self._reading = True
        self._write_paused = False
        self._close_when_flushed = False
        self.tls: TLSEngine | None = None
        self._tls_done: Callable[[BaseException | None], None] | None = None
        self._connect_done: Callable[[BaseException | None], None] | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.guardian: Any = None  # who ends when a callback of this connection raises
        self.at_eof = False  # the peer half-closed: nothing more to read
        self._linger: Any = None  # the timer that ends a close_when_flushed the peer does not read

    # --- opening ------------------------------------------------------------
    @classmethod
    def accepted(cls, reactor: Reactor, sock: socket.socket, owner: Owner) -> "Connection":
        conn = cls(reactor, sock, owner)
        conn._update_interest()
        return conn

    @classmethod
    def connect(
        cls,
        reactor: Reactor,
        family: int,
        address: Any,
        owner: Owner,
        done: Callable[[BaseException | None], None],
    ) -> "Connection":
        """Start a non-blocking connect; `done(None)` or `done(exc)` follows."""
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = cls(reactor, sock, owner)
        conn._reading = False
        conn._connect_done = done
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            reactor.call_soon(conn._finish_connect, OSError(err, errno.errorcode.get(err, "connect")))
        else:
            conn._events = WRITE
            reactor.register(sock, WRITE, conn)
        return conn

    def _finish_connect(self, exc: BaseException | None) -> None:
        done, self._connect_done = self._connect_done, None
        if exc is not None:
            self.close()
        else:
            self._reading = True
            self._update_interest()
        if done is not None:
            done(exc)

    # --- reading ------------------------------------------------------------
    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._update_interest()

    def resume_reading(self) -> None:
        if not self._reading and not self.closed and self._connect_done is None and not self.at_eof:
            self._reading = True
            self._update_interest()
            if self.tls is not None and self._tls_done is None and self.tls.buffered_input:
                # Decrypted data may wait in the engine with no socket event to announce it.
                self.reactor.call_soon(self._deliver_plaintext)

    def on_readable(self) -> None:
        if self.closed:
            return
        reactor = self.reactor
        try:
            n = self.sock.recv_into(reactor.recv_buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if n == 0:
            self._eof()
            return
        self.bytes_in += n
        if self.tls is None:
            self.owner.on_data(self, reactor.recv_view[:n])
        else:
            self._tls_received(reactor.recv_view[:n])

    # --- writing ------------------------------------------------------------
    @property
    def out_size(self) -> int:
        return self._out_size

    def write(self, data: bytes | memoryview) -> None:
        """Send data; whatever the kernel does not take now is queued."""
        if self.closed or not data:
            return
        if self.tls is not None:
            try:
                self.tls.write(data)
            except TLSError as exc:
                self._lost(exc)
                return
            data = self.tls.take_output()
            if not data:
                return
        self._send(data)

    def _send(self, data: bytes | memoryview) -> None:
        if not self._out:
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._lost(exc)
                return
            self.bytes_out += n
            if n == len(data):
                return
            data = data[n:]
        chunk = bytes(data)  # the caller's view may be the shared receive buffer
        if self._out:
            self._out.append(chunk)  # type: ignore[union-attr]
        else:
            self._out = [chunk]
        self._out_size += len(chunk)
        if self._events & WRITE == 0:
            self._update_interest()
        if not self._write_paused and self._out_size > HIGH_WATER:
            self._write_paused = True
            self.owner.on_pause_writing(self)

    def on_writable(self) -> None:
        if self._connect_done is not None:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            # Still registered for WRITE: _finish_connect turns it into READ
            # with one modify instead of an unregister and a register.
            exc = OSError(err, errno.errorcode.get(err, "connect")) if err else None
            self._finish_connect(exc)
            return
        self._flush()

    def _flush(self) -> None:
        out = self._out
        if out:
            # Everything queued in one send: many small replies are one segment.
            data = out[0] if len(out) == 1 else b"".join(out)
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._lost(exc)
                return
            self.bytes_out += n
            self._out_size -= n
            out = self._out = [data[n:]] if n < len(data) else ()
        if not out:
            if self._close_when_flushed:
                self.close()
                return
            self._update_interest()
        if self._write_paused and self._out_size <= LOW_WATER:
            self._write_paused = False
            self.owner.on_resume_writing(self)

    def close_when_flushed(self, linger: float) -> None:
        """Close once everything queued has been sent (after 221 or 421), or
        after `linger` seconds, when the peer does not read it: a socket is
        never kept for a peer that does not take its last reply.

        Over TLS the last thing sent is close_notify (RFC 8446 §6.1): without
        it the peer cannot tell the end of the session from a truncation, and
        OpenSSL 3 peers report "unexpected eof while reading".
        """
        if self.closed:
            return
        self._reading = False
        if self.tls is not None and self.tls.established:
            self.tls.close()
            self._flush_tls()
            if self.closed:
                return
        if not self._out:
            self.close()
            return
        self._close_when_flushed = True
        self._update_interest()
        if self._linger is None:
            self._linger = self.reactor.call_later(linger, self._linger_over, owner=self)

    def _linger_over(self) -> None:
        self._linger = None
        self.abort()  # what is still queued will not be read: RST, not a FIN after it

    # --- TLS ----------------------------------------------------------------
    def start_tls(self, engine: "TLSEngine", done: Callable[[BaseException | None], None]) -> None:
        """Put `engine` in the path and handshake; `done` reports the outcome.

        Anything queued before this call goes out in plaintext first (the
        `220 Ready to start TLS`), everything after it is ciphertext.
        """
        self.tls = engine
        self._tls_done = done
        self._advance_handshake()

    def _advance_handshake(self) -> None:
        engine = self.tls
        assert engine is not None
        try:
            complete = engine.handshake()
        except TLSError as exc:
            self._flush_tls()
            self._finish_handshake(exc)
            return
        self._flush_tls()
        if complete:
            self._finish_handshake(None)
            if not self.closed:
                self._deliver_plaintext()  # data may already wait in the BIO

    def _finish_handshake(self, exc: BaseException | None) -> None:
        done, self._tls_done = self._tls_done, None
        if done is not None:
            done(exc)

    def _tls_received(self, data: memoryview) -> None:
        engine = self.tls
        assert engine is not None
        engine.feed(data)
        if self._tls_done is not None:
            self._advance_handshake()
        else:
            self._deliver_plaintext()

    def _deliver_plaintext(self) -> None:
        engine = self.tls
        assert engine is not None
        view = self.reactor.tls_view
        while not self.closed and self.tls is engine:
            try:
                n = engine.read_into(view)
            except TLSError as exc:
                self._lost(exc)
                return
            self._flush_tls()
            if n == 0:
                if engine.peer_closed:
                    self._eof()
                return
            self.owner.on_data(self, view[:n])

    def _flush_tls(self) -> None:
        engine = self.tls
        if engine is not None and not self.closed:
            data = engine.take_output()
            if data:
                self._send(data)

    # --- interest and closing -------------------------------------------------
    def _update_interest(self) -> None:
        if self.closed:
            return
        events = (READ if self._reading else 0) | (WRITE if self._out else 0)
        if events == self._events:
            return
        if self._events == 0:
            self.reactor.register(self.sock, events, self)
        elif events == 0:
            self.reactor.unregister(self.sock)
        else:
            self.reactor.modify(self.sock, events, self)
        self._events = events

    def _eof(self) -> None:
        """The peer will send nothing more; it may still read (half-close)."""
        on_eof = getattr(self.owner, "on_eof", None)
        if on_eof is None or self._tls_done is not None:  # a handshake cannot finish without the peer
            self._lost(None)
            return
        self.at_eof = True
        self._reading = False
        self._update_interest()
        on_eof(self)

    def fatal(self, exc: BaseException) -> None:
        """The reactor's guard: one of this connection's callbacks raised."""
        for who in (self.guardian, self.owner):
            fatal = getattr(who, "fatal", None)
            if fatal is not None:
                fatal(exc)
                return
        self.reactor.on_fault(exc, self.owner)
        self._lost(exc)

    def _lost(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.close()
        if self._tls_done is not None:
            # Whoever waits for the handshake hears it failed now, not at its timeout
            # (a dial goes on to the next target at once).
            self._finish_handshake(TLSError(f"connection lost during the TLS handshake: {exc or 'closed'}"))
        self.owner.on_lost(self, exc)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._events:
            self.reactor.unregister(self.sock)
            self._events = 0
        self._out = ()
        self._out_size = 0
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self) -> None:
        """Close with RST where possible: the peer must not mistake it for QUIT."""
        if not self.closed:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        self.close()
