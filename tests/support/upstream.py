"""A scriptable SMTP upstream for fault injection in Willi's integration tests.

`ScriptableUpstream` is a small, correct ESMTP server (thread per connection,
plain blocking sockets) that records everything it receives byte for byte and
can be told to misbehave: reply differently to a command, close the
connection at a chosen point, stall until released, delay replies, read the
body slowly. Willi's behaviour against a misbehaving upstream is the thing
under test, so the upstream must be boring and exact when not told otherwise.

Order in which a command is handled (first match wins):

1. the `FaultScript` (close / stall / delay at this verb),
2. `on_command(session, line)` returning bytes, an `Action` or a `Delay`,
3. `replies[VERB]`,
4. the default reply.

An override reply with a 2xx/3xx code still has the command's normal effect
(an accepted RCPT is added, a 354 starts the body); any other code has none.
A `421` override closes the connection after it is sent, as real servers do.
The end of data is handled as the pseudo-verb `"."`.
"""

from __future__ import annotations

import enum
import itertools
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Union

from .net import LOOPBACK_V4, LoopbackServer, wait_until

DEFAULT_CAPABILITIES = (
    "PIPELINING",
    "SIZE 100000000",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
)
XCLIENT_CAPABILITY = "XCLIENT NAME ADDR PORT PROTO HELO"
MAX_LINE = 65536


class Action(enum.Enum):
    """What `on_command` may return besides reply bytes or None (default)."""

    CLOSE = "close"  # close the connection without replying
    STALL = "stall"  # stop reading and replying until `release` is set


@dataclass
class Delay:
    """Reply after `seconds`; with `reply` that reply, else the default one."""

    seconds: float
    reply: bytes | None = None


Outcome = Union[bytes, Action, Delay, None]


class XclientReply(enum.Enum):
    POSTFIX = "postfix"  # 220 + fresh session, as Postfix does
    SINK = "sink"  # 250, as smtp-sink does


@dataclass
class FaultScript:
    """Faults a session plays. Verbs are upper-case; "." is end of data.

    `sessions` limits the faults to those session numbers (1-based, in
    accept order); None applies them to every session.
    """

    close_on_connect: bool = False  # close before the greeting
    close_after_greeting: bool = False
    close_on: str | None = None  # verb: close instead of replying
    close_after_body_bytes: int | None = None
    stall_before_greeting: bool = False
    stall_on: str | None = None  # verb: stall before replying
    stall_after_body_bytes: int | None = None
    delays: dict[str, float] = field(default_factory=dict)  # verb -> seconds
    body_rate: int | None = None  # slow reader: body bytes per second
    body_chunk: int = 4096  # recv size while reading the body
    sessions: set[int] | None = None

    def applies_to(self, number: int) -> bool:
        return self.sessions is None or number in self.sessions


@dataclass
class ReceivedMessage:
    """One completed DATA (or BDAT) transaction as the upstream saw it."""

    session: int
    helo: bytes | None
    mail_from: bytes  # address without brackets
    mail_options: list[bytes]
    rcpt_tos: list[bytes]
    raw: bytes  # between the 354 and the final ".\r\n", still dot-stuffed
    reply: bytes  # what the upstream answered to the end of data
    xclient: dict[str, bytes]  # attributes of the session's XCLIENT, if any
    via: str = "DATA"

    @property
    def body(self) -> bytes:
        """The message with dot-stuffing removed (RFC 5321 4.5.2)."""
        if self.via != "DATA":
            return self.raw
        lines = self.raw.split(b"\r\n")
        return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)

    @property
    def accepted(self) -> bool:
        return self.reply.startswith(b"2")


class _Closed(Exception):
    """The session ends (peer closed, fault, QUIT, stop)."""


class Session:
    """State of one upstream connection; visible to `on_command` hooks."""

    def __init__(self, number: int, sock: socket.socket, peer: tuple) -> None:
        self.number = number
        self.sock = sock
        self.peer = peer
        self.buffer = bytearray()
        self.commands: list[bytes] = []
        self.helo: bytes | None = None
        self.xclient: dict[str, bytes] = {}
        self.ended = threading.Event()
        self.in_body = False
        self.pending_raw = b""
        self.reset()

    def reset(self) -> None:
        self.mail_from: bytes | None = None
        self.mail_options: list[bytes] = []
        self.rcpt_tos: list[bytes] = []
        self.bdat_chunks: list[bytes] = []


def _split_path(arg: bytes, keyword: bytes) -> tuple[bytes, list[bytes]]:
    """`FROM:<a@b> SIZE=1` -> (b"a@b", [b"SIZE=1"])."""
    rest = arg[len(keyword) :].lstrip()
    if rest.startswith(b"<"):
        end = rest.find(b">")
        path, options = rest[1:end], rest[end + 1 :]
    else:
        path, _, options = rest.partition(b" ")
    return path, options.split()


class ScriptableUpstream(LoopbackServer):
    """Thread-per-connection ESMTP server on loopback; see module docstring."""

    def __init__(
        self,
        host: str = LOOPBACK_V4,
        port: int = 0,
        *,
        hostname: str = "upstream.test",
        capabilities: list[str] | tuple[str, ...] = DEFAULT_CAPABILITIES,
        greeting: bytes | None = None,
        replies: dict[str, bytes] | None = None,
        on_command: Callable[[Session, bytes], Outcome] | None = None,
        faults: FaultScript | None = None,
        xclient_reply: XclientReply | bytes = XclientReply.POSTFIX,
        lmtp: bool = False,
        keep_bodies: bool = True,
        rcvbuf: int | None = None,
        stall_timeout: float = 60.0,
        idle_timeout: float = 60.0,
    ) -> None:
        self.host = host
        self.port = port
        self.hostname = hostname
        self.capabilities = list(capabilities)
        self.greeting = greeting or f"220 {hostname} ESMTP\r\n".encode()
        self.replies = dict(replies or {})
        self.on_command = on_command
        self.faults = faults or FaultScript()
        self.xclient_reply = xclient_reply
        self.lmtp = lmtp
        self.keep_bodies = keep_bodies
        self.rcvbuf = rcvbuf
        self.stall_timeout = stall_timeout
        self.idle_timeout = idle_timeout
        # what happened
        self.commands: list[bytes] = []
        self.messages: list[ReceivedMessage] = []
        self.xclient_lines: list[bytes] = []
        self.sessions: list[Session] = []
        self.aborted_bodies = 0
        self.body_bytes_received = 0
        # control
        self.release = threading.Event()  # set it to end every stall
        self.stalled = threading.Event()  # set when a session starts stalling
        self._lock = threading.Lock()
        self._queue_ids = itertools.count(1)
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "ScriptableUpstream":
        if self.host.startswith("/"):  # a Unix socket path (lmtp+unix: routes)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self.host)
        else:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.rcvbuf:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            listener.bind((self.host, self.port))
        listener.listen(128)
        listener.settimeout(0.05)
        if listener.family != socket.AF_UNIX:
            self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept_loop)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, end every session, join every thread."""
        if self._listener is None:
            return
        self._stopping.set()
        deadline = time.monotonic() + timeout
        self._threads[0].join(timeout)  # the accept loop: no new sessions now
        for session in list(self.sessions):
            self._shutdown(session.sock)
        for thread in list(self._threads):
            thread.join(max(deadline - time.monotonic(), 0.0))
        alive = [t.name for t in self._threads if t.is_alive()]
        self._listener.close()
        self._listener = None
        if alive:
            raise AssertionError(f"upstream threads did not stop: {alive}")



    # -- waiting ---------------------------------------------------------
    def wait_for_messages(self, n: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        wait_until(lambda: len(self.messages) >= n, timeout, message=f"{n} messages upstream")
        return list(self.messages)

    def wait_for_sessions(self, n: int, timeout: float = 10.0) -> list[Session]:
        wait_until(lambda: len(self.sessions) >= n, timeout, message=f"{n} upstream sessions")
        return list(self.sessions)

    def wait_for_sessions_ended(self, n: int, timeout: float = 10.0) -> None:
        wait_until(
            lambda: sum(s.ended.is_set() for s in self.sessions) >= n,
            timeout,
            message=f"{n} upstream sessions to end",
        )

    def wait_for_stall(self, timeout: float = 10.0) -> None:
        if not self.stalled.wait(timeout):
            raise AssertionError("upstream never reached its stall point")

    def wait_for_aborted(self, n: int, timeout: float = 10.0) -> None:
        wait_until(lambda: self.aborted_bodies >= n, timeout, message=f"{n} aborted bodies")

    def wait_for_command(self, verb: str, timeout: float = 10.0) -> bytes:
        """The first received command line whose verb is `verb`."""

        def find() -> bytes | None:
            return next((c for c in list(self.commands) if _verb(c) == verb.upper()), None)

        return wait_until(find, timeout, message=f"upstream command {verb}")

    @property
    def verbs(self) -> list[str]:
        return [_verb(c) for c in self.commands]

    # -- threads ---------------------------------------------------------
    def _spawn(self, target: Callable, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        numbers = itertools.count(1)
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(self.idle_timeout)
            session = Session(next(numbers), sock, peer)
            self.sessions.append(session)
            self._spawn(self._serve, session)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _serve(self, session: Session) -> None:
        try:
            self._converse(session)
        except (_Closed, OSError):
            pass
        finally:
            if session.in_body:
                with self._lock:
                    self.aborted_bodies += 1
            session.sock.close()
            session.ended.set()

    # -- the conversation ------------------------------------------------
    def _faults_for(self, session: Session) -> FaultScript:
        faults = self.faults
        return faults if faults.applies_to(session.number) else FaultScript()

    def _converse(self, session: Session) -> None:
        faults = self._faults_for(session)
        if faults.close_on_connect:
            raise _Closed
        if faults.stall_before_greeting:
            self._stall(session)
        self._send(session, self.greeting)
        if self.greeting[:3] == b"421" or faults.close_after_greeting:
            raise _Closed
        while True:
            line = self._read_line(session)
            self._handle(session, line, faults)

    def _handle(self, session: Session, line: bytes, faults: FaultScript) -> None:
        session.commands.append(line)
        self.commands.append(line)
        verb = _verb(line)
        outcome = self._scripted(session, verb, line, faults)
        if outcome is Action.CLOSE:
            raise _Closed
        if outcome is Action.STALL:
            self._stall(session)
            outcome = None
        if isinstance(outcome, Delay):
            time.sleep(outcome.seconds)  # fault injection, not synchronisation
            outcome = outcome.reply
        if outcome is None:
            outcome = self.replies.get(verb)
        self._respond(session, verb, line, outcome)

    def _scripted(
        self, session: Session, verb: str, line: bytes, faults: FaultScript
    ) -> Outcome:
        if faults.close_on == verb:
            return Action.CLOSE
        if faults.stall_on == verb:
            self._stall(session)
        if verb in faults.delays:
            time.sleep(faults.delays[verb])  # fault injection, not synchronisation
        if self.on_command is not None:
            return self.on_command(session, line)
        return None

    def _respond(
        self, session: Session, verb: str, line: bytes, override: bytes | None
    ) -> None:
        """Send the override or default reply; apply the command's effect."""
        if verb == ".":
            reply = self._complete(session, session.pending_raw, "DATA", override)
        elif override is not None and override[:1] not in (b"2", b"3"):
            reply = override
            if verb == "BDAT":
                self._skip_bdat_chunk(session, line)
        else:
            default = self._default_reply(session, verb, line)
            reply = default if override is None else override
        self._send(session, reply)
        if verb == "QUIT" or reply[:3] == b"421":
            raise _Closed
        if session.in_body:
            self._read_body(session, self._faults_for(session))

    def _default_reply(self, session: Session, verb: str, line: bytes) -> bytes:
        handler = getattr(self, f"_cmd_{verb.lower()}", None) if verb.isalpha() else None
        if handler is None:
            return b"502 5.5.2 Error: command not recognized\r\n"
        return handler(session, line)

    # -- default command handlers -----------------------------------------
    def _ehlo_reply(self) -> bytes:
        lines = [self.hostname, *self.capabilities]
        out = [f"250-{l}\r\n" for l in lines[:-1]] + [f"250 {lines[-1]}\r\n"]
        return "".join(out).encode()

    def _cmd_ehlo(self, session: Session, line: bytes) -> bytes:
        if self.lmtp:
            return b"500 5.5.1 Error: use LHLO\r\n"
        return self._greeted(session, line)

    def _cmd_lhlo(self, session: Session, line: bytes) -> bytes:
        if not self.lmtp:
            return b"502 5.5.2 Error: command not recognized\r\n"
        return self._greeted(session, line)

    def _greeted(self, session: Session, line: bytes) -> bytes:
        session.helo = line[5:].strip() or None
        session.reset()
        return self._ehlo_reply()

    def _cmd_helo(self, session: Session, line: bytes) -> bytes:
        session.helo = line[5:].strip() or None
        session.reset()
        return f"250 {self.hostname}\r\n".encode()

    def _cmd_mail(self, session: Session, line: bytes) -> bytes:
        if session.helo is None:
            return b"503 5.5.1 Error: send HELO/EHLO first\r\n"
        if session.mail_from is not None:
            return b"503 5.5.1 Error: nested MAIL command\r\n"
        session.mail_from, session.mail_options = _split_path(line[5:], b"FROM:")
        return b"250 2.1.0 Ok\r\n"

    def _cmd_rcpt(self, session: Session, line: bytes) -> bytes:
        if session.mail_from is None:
            return b"503 5.5.1 Error: need MAIL command\r\n"
        rcpt, _options = _split_path(line[5:], b"TO:")
        session.rcpt_tos.append(rcpt)
        return b"250 2.1.5 Ok\r\n"

    def _cmd_data(self, session: Session, line: bytes) -> bytes:
        if not session.rcpt_tos:
            return b"503 5.5.1 Error: need RCPT command\r\n"
        session.in_body = True
        return b"354 End data with <CR><LF>.<CR><LF>\r\n"

    def _cmd_bdat(self, session: Session, line: bytes) -> bytes:
        parts = line.split()
        if not any(c.upper().startswith("CHUNKING") for c in self.capabilities):
            return b"502 5.5.2 Error: command not recognized\r\n"
        if not session.rcpt_tos or len(parts) < 2 or not parts[1].isdigit():
            return b"503 5.5.1 Error: need RCPT command\r\n"
        session.bdat_chunks.append(self._read_exact(session, int(parts[1])))
        if len(parts) > 2 and parts[2].upper() == b"LAST":
            return self._complete(session, b"".join(session.bdat_chunks), "BDAT", self.replies.get("."))
        return f"250 2.0.0 Ok: {len(session.bdat_chunks[-1])} octets\r\n".encode()

    def _cmd_rset(self, session: Session, line: bytes) -> bytes:
        session.reset()
        return b"250 2.0.0 Ok\r\n"

    def _cmd_noop(self, session: Session, line: bytes) -> bytes:
        return b"250 2.0.0 Ok\r\n"

    def _cmd_quit(self, session: Session, line: bytes) -> bytes:
        return b"221 2.0.0 Bye\r\n"

    def _cmd_xclient(self, session: Session, line: bytes) -> bytes:
        self.xclient_lines.append(line)
        if not any(c.upper().startswith("XCLIENT") for c in self.capabilities):
            return b"502 5.5.2 Error: command not recognized\r\n"
        if isinstance(self.xclient_reply, bytes):
            reply = self.xclient_reply
        elif self.xclient_reply is XclientReply.SINK:
            reply = b"250 2.0.0 Ok\r\n"
        else:
            reply = self.greeting
        if reply[:1] == b"2":
            session.xclient = dict(_parse_xclient(line))
            session.helo = None
            session.reset()
        return reply

    # -- body ------------------------------------------------------------
    def _read_body(self, session: Session, faults: FaultScript) -> None:
        """Read the DATA body, then handle its end as the pseudo-command "."."""
        session.pending_raw = self._receive_body(session, faults)
        session.in_body = False
        self._handle(session, b".", faults)

    def _receive_body(self, session: Session, faults: FaultScript) -> bytes:
        """Bytes up to CRLF.CRLF (exclusive of ".CRLF"), honouring body faults.

        Bytes after the final dot go back to the command buffer (pipelining).
        With keep_bodies=False only a tail is kept and b"" is returned.
        """
        kept = bytearray(b"\r\n")  # a virtual CRLF: the body may start with "."
        received, scan_from, stalled = 0, 0, False
        while (end := kept.find(b"\r\n.\r\n", scan_from)) < 0:
            if not self.keep_bodies and len(kept) > 65536:
                # Trim only after a scan found nothing: the last 4 bytes can
                # then hold at most the start of the 5-byte marker.
                del kept[: len(kept) - 4]
            scan_from = max(0, len(kept) - 4)
            chunk = self._body_chunk(session, faults)
            received += len(chunk)
            with self._lock:
                self.body_bytes_received += len(chunk)
            limit = faults.close_after_body_bytes
            if limit is not None and received >= limit:
                raise _Closed
            limit = faults.stall_after_body_bytes
            if limit is not None and not stalled and received >= limit:
                stalled = True
                self._stall(session)
            kept += chunk
        session.buffer[:0] = kept[end + 5 :]
        return bytes(kept[2 : end + 2]) if self.keep_bodies else b""

    def _skip_bdat_chunk(self, session: Session, line: bytes) -> None:
        parts = line.split()
        if len(parts) > 1 and parts[1].isdigit():
            self._read_exact(session, int(parts[1]))

    def _complete(
        self, session: Session, raw: bytes, via: str, override: bytes | None = None
    ) -> bytes:
        reply = self._final_reply(session, override)
        message = ReceivedMessage(
            session=session.number,
            helo=session.helo,
            mail_from=session.mail_from or b"",
            mail_options=session.mail_options,
            rcpt_tos=list(session.rcpt_tos),
            raw=raw,
            reply=reply,
            xclient=dict(session.xclient),
            via=via,
        )
        self.messages.append(message)
        session.reset()
        return reply

    def _final_reply(self, session: Session, override: bytes | None) -> bytes:
        """One reply, or one per recipient for LMTP (RFC 2033 4.2)."""
        count = len(session.rcpt_tos) if self.lmtp else 1
        if override is not None:
            return override * count
        return b"".join(
            f"250 2.0.0 Ok: queued as {next(self._queue_ids)}\r\n".encode()
            for _ in range(count)
        )

    def _body_chunk(self, session: Session, faults: FaultScript) -> bytes:
        if session.buffer:
            take = faults.body_chunk if faults.body_rate else len(session.buffer)
            chunk = bytes(session.buffer[:take])
            del session.buffer[:take]
            return chunk
        chunk = session.sock.recv(faults.body_chunk if faults.body_rate else 65536)
        if not chunk:
            raise _Closed
        if faults.body_rate:
            time.sleep(len(chunk) / faults.body_rate)  # rate limit, not synchronisation
        return chunk

    # -- I/O -------------------------------------------------------------
    def _send(self, session: Session, data: bytes) -> None:
        session.sock.sendall(data)

    def _recv_into_buffer(self, session: Session) -> None:
        if self._stopping.is_set():
            raise _Closed
        chunk = session.sock.recv(65536)
        if not chunk:
            raise _Closed
        session.buffer += chunk

    def _read_line(self, session: Session) -> bytes:
        while True:
            end = session.buffer.find(b"\n")
            if end >= 0:
                line = bytes(session.buffer[:end])
                del session.buffer[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(session.buffer) > MAX_LINE:
                raise _Closed
            self._recv_into_buffer(session)

    def _read_exact(self, session: Session, size: int) -> bytes:
        while len(session.buffer) < size:
            self._recv_into_buffer(session)
        data = bytes(session.buffer[:size])
        del session.buffer[:size]
        return data

    def _stall(self, session: Session) -> None:
        """Stop reading and replying until `release`, stop() or the deadline."""
        self.stalled.set()
        deadline = time.monotonic() + self.stall_timeout
        while not self.release.wait(0.02):
            if self._stopping.is_set() or time.monotonic() >= deadline:
                raise _Closed


def _verb(line: bytes) -> str:
    if line == b".":
        return "."
    return line.split(b" ", 1)[0].split(b":", 1)[0].decode("latin-1").upper()


def _parse_xclient(line: bytes) -> list[tuple[str, bytes]]:
    pairs = []
    for item in line.split()[1:]:
        name, _, value = item.partition(b"=")
        pairs.append((name.decode("latin-1").upper(), value))
    return pairs
