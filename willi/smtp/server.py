"""The client-facing SMTP state machine (RFC 5321 §4.1, RFC 2920, RFC 3207).

Sans-IO: bytes in (`feed`), events out (`next_event`), reply bytes out
(`take_output`). Everything Willi can answer by itself is answered here;
what needs the router or an upstream comes out as an event, and the
protocol then waits: `next_event` returns None until the session answers
(`answer`, `body_done`, `tls_started`). Commands the client pipelined stay in
the line buffer meanwhile, so replies always leave in command order.

After `answer(..., accepted=True)` for a Data event the protocol is in the
BODY phase: the session streams the body itself and hands the bytes after the
end of data back through `feed` once the message is done.

BDAT (RFC 3030): a chunk in sequence is a Bdat event; the session takes its
bytes (`start_body`, `take_body_start`) and answers it with `answer` (the
transaction goes on) or `body_done` (it is over). A chunk refused here (out
of sequence, no recipient) is still read and thrown away, so no byte of it is
ever parsed as a command; a size that is not a number cannot be framed: 501
and close.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from willi import replies
from willi.smtp.address import Address, AddressError, parse_params, parse_path_argument
from willi.smtp.bdat import BadChunkSize, parse_bdat
from willi.smtp.lines import LineBuffer, LineEvent

# Replies queued at most before the next pipelined command waits for them to
# be taken: 64 KiB of EHLO replies is about 400 commands ahead.
OUT_LIMIT = 64 * 1024


class Phase(enum.Enum):
    COMMAND = "command"  # reading commands
    WAITING = "waiting"  # an event awaits the session's answer
    BODY = "body"  # the session streams a message body
    CLOSED = "closed"  # QUIT or an error limit: nothing more is read


class Phases:
    """Phase's members as plain class attributes for the per-line code (see
    relay.states.S: in Python 3.11 `Phase.X` goes through EnumType's hook)."""

    COMMAND = Phase.COMMAND
    WAITING = Phase.WAITING
    BODY = Phase.BODY
    CLOSED = Phase.CLOSED


# --- events ------------------------------------------------------------------
class Event:
    __slots__ = ()


class Rcpt(Event):
    """RCPT TO: route it; answer with the reply and whether it was accepted."""

    __slots__ = ("address",)

    def __init__(self, address: Address) -> None:
        self.address = address


class Data(Event):
    """DATA with at least one accepted recipient: answer with the upstream's
    reply; accepted=True (a 354) starts the BODY phase."""

    __slots__ = ()


DATA = Data()  # it carries nothing: one for every DATA


class Reset(Event):
    """The client dropped its transaction (RSET, EHLO, HELO): reset upstream."""

    __slots__ = ()


class Quit(Event):
    """221 is queued: flush it and close both sides."""

    __slots__ = ()


class Close(Event):
    """A 421 (error limit) or a 501 (unframeable BDAT) is queued: flush it
    and close both sides."""

    __slots__ = ("reason",)

    def __init__(self, reason: str = "too many errors") -> None:
        self.reason = reason


class Bdat(Event):
    """BDAT in sequence: `size` bytes of content follow; `last` ends the message."""

    __slots__ = ("size", "last")

    def __init__(self, size: int, last: bool) -> None:
        self.size = size
        self.last = last


class StartTLS(Event):
    """220 is queued: flush it, then handshake; call tls_started() after."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the protocol needs to know of the configuration."""

    hostname: str
    max_message_size: int = 20 * 1024 * 1024
    max_recipients: int = 100
    max_errors: int = 10
    starttls: bool = False  # a certificate is configured
    line_limit: int = 4096

    def capabilities(self, tls_active: bool) -> list[str]:
        caps = ["PIPELINING", f"SIZE {self.max_message_size}", "8BITMIME", "SMTPUTF8",
                "ENHANCEDSTATUSCODES", "CHUNKING"]
        if self.starttls and not tls_active:
            caps.append("STARTTLS")
        return caps


_MAIL_BODY_VALUES = ("7BIT", "8BITMIME")


class ServerProtocol:
    """One client session's command phase."""

    __slots__ = (
        "settings", "phase", "_lines", "out", "_pending", "helo", "esmtp",
        "tls_active", "mail", "mail_params", "accepted", "errors",
        "_ehlo_plain", "_ehlo_tls", "_void", "_bdat", "_skip", "error_codes",
    )

    def __init__(self, settings: ServerSettings, ehlo_plain: bytes | None = None,
                 ehlo_tls: bytes | None = None) -> None:
        self.settings = settings
        self.phase = Phases.COMMAND
        self._lines = LineBuffer(settings.line_limit)
        self.out = bytearray()  # replies queued, in command order: the session takes them (take_output)
        self._pending: Event | None = None
        self.helo: str | None = None
        self.esmtp = False
        self.tls_active = False
        self.mail: Address | None = None
        self.mail_params: dict[str, str | None] = {}
        self.accepted = 0
        self.errors = 0
        self.error_codes: list[str] = []  # of the errors counted, for the session to report (protocol_error)
        self._void = False  # the upstream went away inside this transaction
        self._bdat = False  # this transaction is sent with BDAT: no DATA in it
        self._skip = 0  # bytes of a refused BDAT chunk still to throw away
        # Pre-rendered once per configuration, shared by every session.
        self._ehlo_plain = ehlo_plain or replies.ehlo(settings.hostname, settings.capabilities(False))
        self._ehlo_tls = ehlo_tls or replies.ehlo(settings.hostname, settings.capabilities(True))

    # --- I/O surface ----------------------------------------------------------
    def greet(self) -> None:
        self.out += replies.greeting(self.settings.hostname)

    def feed(self, data: bytes | memoryview) -> None:
        if self._skip:
            cut = min(self._skip, len(data))
            self._skip -= cut
            data = data[cut:]
        if self.phase is not Phases.CLOSED and data:
            self._lines.feed(data)

    @property
    def lines_read(self) -> int:
        """Complete command lines read so far (ClientDeadline.fed)."""
        return self._lines.lines

    @property
    def buffered(self) -> int:
        """Unprocessed input: the session stops reading above a limit."""
        return len(self._lines)

    def take_output(self) -> bytes:
        """The replies queued so far (b"" when none), in command order."""
        if not self.out:
            return b""
        out = bytes(self.out)
        self.out.clear()
        return out

    @property
    def has_output(self) -> bool:
        return bool(self.out)

    def reply(self, data: bytes) -> None:
        """Queue a reply the session produced outside any event (421 on shutdown)."""
        self.out += data

    def next_event(self) -> Event | None:
        """The next event of the pipelined commands buffered, None when they
        are all answered, or when OUT_LIMIT of replies wait to be taken (a
        client that pipelines and never reads must not make them pile up)."""
        if self.errors >= self.settings.max_errors and self.phase is Phases.COMMAND:
            # A refusal the session answered (answer(error=True)) reached the limit.
            self.out += replies.TOO_MANY_ERRORS
            self.close()
            return Close()
        while self.phase is Phases.COMMAND:
            line = self._lines.next_line()
            if line is None:
                return None
            if line.__class__ is bytes:
                event = self._command(line)  # type: ignore[arg-type]
            elif line is LineEvent.TOO_LONG:
                event = self._error(replies.LINE_TOO_LONG)
            else:  # LineEvent.BARE_LF
                event = self._error(replies.BARE_LF_COMMAND)
            if event is not None:
                return event
            if len(self.out) >= OUT_LIMIT:
                return None  # answered this far ahead of the client: the rest waits
        return None

    # --- answers from the session ---------------------------------------------
    def answer(self, reply: bytes, accepted: bool, error: bool = False) -> None:
        """Finish the pending Rcpt or Data event with the reply to relay;
        `error`: Willi's own refusal, counted as a command error is."""
        event, self._pending = self._pending, None
        self.out += reply
        if error:
            self._count_error(reply)  # at the limit, 421 comes before the next command
        if isinstance(event, Rcpt):
            self.accepted += accepted
            self.phase = Phases.COMMAND
        elif isinstance(event, Data):
            self.phase = Phases.BODY if accepted else Phases.COMMAND
        elif isinstance(event, Bdat):
            self.phase = Phases.COMMAND  # the chunk is in; the transaction goes on
        else:
            raise RuntimeError(f"answer() without a pending event: {event!r}")

    def start_body(self) -> None:
        """The session reads a BDAT chunk now: input is not commands."""
        self.phase = Phases.BODY

    def take_body_start(self) -> bytes:
        """Bytes the client sent after DATA, before our 354: the body's start."""
        return self._lines.take()

    def body_done(self, reply: bytes) -> None:
        """The message is finished (relayed, refused or lost): back to commands."""
        self.out += reply
        self._pending = None
        self._reset_transaction()
        self.phase = Phases.COMMAND

    def void_transaction(self) -> None:
        """The upstream went away inside the transaction, and the client has
        its 4xx (SPEC §2): the recipients accepted are void. Later RCPT and
        DATA of it get 451 too, and a new MAIL needs no RSET."""
        self._void = True
        self.accepted = 0

    def tls_started(self) -> None:
        """RFC 3207 §4.2: after the handshake the session starts over."""
        self.tls_active = True
        # Plaintext that arrived after STARTTLS but before the handshake is
        # never a command either (RFC 3207 §4.2, CVE-2011-0411).
        self._lines.clear()
        self.helo = None
        self.esmtp = False
        self._reset_transaction()
        self._pending = None
        self.phase = Phases.COMMAND

    def close(self) -> None:
        self.phase = Phases.CLOSED
        self._lines.clear()

    # --- commands ---------------------------------------------------------------
    def _command(self, line: bytes) -> Event | None:
        space = line.find(b" ")
        verb = (line if space < 0 else line[:space]).upper()
        arg = b"" if space < 0 else line[space + 1 :]
        handler = _HANDLERS.get(verb)
        if handler is None:
            return self._error(replies.UNRECOGNIZED)
        return handler(self, arg)

    def _ehlo(self, arg: bytes) -> Event | None:
        return self._hello(arg, esmtp=True)

    def _helo(self, arg: bytes) -> Event | None:
        return self._hello(arg, esmtp=False)

    def _hello(self, arg: bytes, esmtp: bool) -> Event | None:
        name = arg.strip()
        if not name or b" " in name:
            return self._error(replies.SYNTAX_HELO)
        self.helo = name.decode("utf-8", "replace")
        self.esmtp = esmtp
        if esmtp:
            self.out += self._ehlo_tls if self.tls_active else self._ehlo_plain
        else:
            self.out += replies.helo(self.settings.hostname)
        return self._drop_transaction()

    def _mail(self, arg: bytes) -> Event | None:
        if self.helo is None:
            return self._error(replies.NEED_HELO)
        if self.mail is not None and not self._void:
            return self._error(replies.NESTED_MAIL)
        if arg[:5].upper() != b"FROM:":
            return self._error(replies.SYNTAX_MAIL)
        try:
            address, raw = parse_path_argument(arg[5:].decode("utf-8", "surrogateescape"))
            params = parse_params(raw)
        except AddressError as exc:
            return self._error(exc.reply)
        problem = self._check_mail_params(params)
        if problem is None and not arg.isascii() and "SMTPUTF8" not in params:
            problem = replies.UNDECLARED_UTF8  # a non-ASCII path needs the parameter
        if problem is not None:
            return self._error(problem)
        self._reset_transaction()  # after a voided one, nothing of it (BDAT included) carries over
        self.mail = address
        self.mail_params = params
        self.out += replies.SENDER_OK
        return None

    def _check_mail_params(self, params: dict[str, str | None]) -> bytes | None:
        for key, value in params.items():
            if key == "SIZE":
                # ASCII digits only: str.isdigit() also takes "²" and "١".
                if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
                    return replies.SYNTAX_SIZE
                if int(value) > self.settings.max_message_size:
                    return replies.MESSAGE_TOO_BIG
            elif key == "BODY":
                if value is None or value.upper() not in _MAIL_BODY_VALUES:
                    return replies.SYNTAX_PARAMETER
            elif key == "SMTPUTF8":
                if value is not None:
                    return replies.SYNTAX_PARAMETER
            else:
                return replies.UNKNOWN_PARAMETER
        return None

    def _rcpt(self, arg: bytes) -> Event | None:
        if self.mail is None:
            return self._error(replies.NEED_MAIL)
        if self._void:
            self.out += replies.UPSTREAM_LOST
            return None
        if self._bdat:
            # The message is under way (maybe as a DATA body upstream): no more recipients.
            return self._error(replies.RCPT_AFTER_BDAT)
        if arg[:3].upper() != b"TO:":
            return self._error(replies.SYNTAX_RCPT)
        try:
            address, raw = parse_path_argument(arg[3:].decode("utf-8", "surrogateescape"))
        except AddressError as exc:
            return self._error(exc.reply)
        if raw:
            return self._error(replies.UNKNOWN_PARAMETER)
        if not arg.isascii() and "SMTPUTF8" not in self.mail_params:
            return self._error(replies.UNDECLARED_UTF8)
        if address.is_null or (not address.domain and address.local.lower() != "postmaster"):
            return self._error(replies.SYNTAX_ADDRESS)
        return self._wait(Rcpt(address))  # the relay answers, WILLI_MAX_RECIPIENTS included

    def _data(self, arg: bytes) -> Event | None:
        if arg.strip():
            return self._error(replies.SYNTAX_NO_ARGS)
        if self.mail is None:
            return self._error(replies.NEED_MAIL)
        if self._void:
            self.out += replies.UPSTREAM_LOST
            return None
        if self._bdat:
            return self._error(replies.DATA_IN_BDAT)
        if not self.accepted:
            return self._error(replies.NO_VALID_RECIPIENTS)
        return self._wait(DATA)

    def _rset(self, arg: bytes) -> Event | None:
        if arg.strip():
            return self._error(replies.SYNTAX_NO_ARGS)
        self.out += replies.RESET_OK
        return self._drop_transaction()

    def _noop(self, arg: bytes) -> Event | None:
        self.out += replies.OK
        return None

    def _help(self, arg: bytes) -> Event | None:
        self.out += replies.HELP
        return None

    def _vrfy(self, arg: bytes) -> Event | None:
        if not arg.strip():
            return self._error(replies.SYNTAX_PARAMETER)
        self.out += replies.CANNOT_VRFY
        return None

    def _expn(self, arg: bytes) -> Event | None:
        return self._error(replies.NOT_IMPLEMENTED)

    def _auth(self, arg: bytes) -> Event | None:
        return self._error(replies.NO_AUTH)

    def _chunk(self, arg: bytes) -> Event | None:
        try:
            size, last, well_formed = parse_bdat(arg)
        except BadChunkSize:
            # Where its chunk ends is unknown: nothing after it can be read as a command.
            self._count_error(replies.BDAT_UNFRAMED)
            self.out += replies.BDAT_UNFRAMED
            self.close()
            return Close("unframeable BDAT")
        refusal = None
        if not well_formed:
            refusal = replies.SYNTAX_BDAT
        elif self.helo is None:
            refusal = replies.NEED_HELO
        elif self.mail is None:
            refusal = replies.NEED_MAIL
        elif self._void:
            refusal = replies.UPSTREAM_LOST
        elif not self.accepted:
            refusal = replies.NO_VALID_RECIPIENTS
        if refusal is not None:
            self._throw_away(size)  # RFC 3030 §3: a refused chunk is still read
            if refusal is replies.UPSTREAM_LOST:  # not the client's error
                self.out += refusal
                return None
            return self._error(refusal)
        self._bdat = True
        return self._wait(Bdat(size, last))

    def _throw_away(self, size: int) -> None:
        buffered = self._lines.take()
        if len(buffered) >= size:
            self._lines.feed(buffered[size:])
        else:
            self._skip = size - len(buffered)

    def _quit(self, arg: bytes) -> Event | None:
        self.out += replies.CLOSING
        self.close()
        return Quit()

    def _starttls(self, arg: bytes) -> Event | None:
        if not self.settings.starttls:
            return self._error(replies.NOT_IMPLEMENTED)
        if arg.strip():
            return self._error(replies.SYNTAX_NO_ARGS)
        if self.tls_active:
            return self._error(replies.TLS_ALREADY_ACTIVE)
        if self.helo is None:
            return self._error(replies.NEED_HELO)
        if self.mail is not None:
            # Postfix's answer too: the handshake would silently drop the envelope.
            return self._error(replies.TRANSACTION_IN_PROGRESS)
        self.out += replies.READY_FOR_TLS
        # Whatever the client pipelined after STARTTLS is plaintext that must
        # never be read as a command (CVE-2011-0411).
        self._lines.clear()
        return self._wait(StartTLS())

    # --- helpers ---------------------------------------------------------------
    def _wait(self, event: Event) -> Event:
        self._pending = event
        self.phase = Phases.WAITING
        return event

    def _drop_transaction(self) -> Event | None:
        had = self.mail is not None
        self._reset_transaction()
        return Reset() if had else None

    def _reset_transaction(self) -> None:
        self.mail = None
        self.mail_params = {}
        self.accepted = 0
        self._void = False
        self._bdat = False

    def _count_error(self, reply: bytes) -> None:
        self.errors += 1
        self.error_codes.append(reply[:3].decode("ascii", "replace"))

    def _error(self, reply: bytes) -> Event | None:
        self._count_error(reply)
        self.out += reply
        if self.errors >= self.settings.max_errors:
            self.out += replies.TOO_MANY_ERRORS
            self.close()
            return Close()
        return None


_HANDLERS = {
    b"EHLO": ServerProtocol._ehlo,
    b"HELO": ServerProtocol._helo,
    b"MAIL": ServerProtocol._mail,
    b"RCPT": ServerProtocol._rcpt,
    b"DATA": ServerProtocol._data,
    b"RSET": ServerProtocol._rset,
    b"NOOP": ServerProtocol._noop,
    b"HELP": ServerProtocol._help,
    b"VRFY": ServerProtocol._vrfy,
    b"EXPN": ServerProtocol._expn,
    b"AUTH": ServerProtocol._auth,
    b"BDAT": ServerProtocol._chunk,
    b"QUIT": ServerProtocol._quit,
    b"STARTTLS": ServerProtocol._starttls,
}
