"""The handshake with an upstream, sans-IO (SPEC §4): typed events in, typed
commands out, one transition per state.

The driver (the dialer) calls `start()`, executes the commands it returns in
order, and feeds back what happened with `handle(event)`: the upstream's
`Reply` to a `Send` or `Expect`, `TLSDone` after `StartTLS`, `NameResolved`
after `NeedName`. The last command of a handshake is `Done(Greeted)` or
`Failed(UpstreamUnavailable)`; a target that fails never gets another
command. Tests drive it over a list of replies; no socket, clock or log.

Order on the connection:

1. the PROXY header, when one is configured: the first bytes, before TLS;
2. TLS at once for `smtps://`; then the greeting, which must be 220;
3. `EHLO <hostname>` (LHLO for LMTP; HELO when EHLO is refused with 5xx);
4. STARTTLS per policy, then the greeting again;
5. XCLIENT per policy, then the greeting again with the client's own name
   and verb (nginx's mail proxy does so): Postfix and Dovecot take the name
   of that greeting as the client's HELO, and its verb as PROTO. A client
   that said HELO is greeted for with HELO, unless AUTH follows, which needs
   EHLO; LMTP always says LHLO;
6. AUTH PLAIN or EXTERNAL, only on a TLS connection.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field
from typing import Mapping

from willi.errors import UpstreamUnavailable
from willi.smtp.reply import Reply
from willi.smtp.upstream import MAX_COMMAND, XCLIENT_ATTRIBUTES, ClientInfo, capabilities, xclient_commands


# --- settings and result --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Credentials:
    """What AUTH PLAIN logs in with. Compared (a pooled link is reused only
    for the same login), never shown: the password is left out of repr."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class HandshakeSettings:
    hostname: str
    lmtp: bool = False
    starttls: str = "if-client"  # if-client | opportunistic | required | off
    client_tls: bool = False  # the client itself used STARTTLS
    tls_active: bool = False  # implicit TLS (smtps://): encrypted before the greeting
    xclient: str = "auto"  # auto | required | off
    proxy_header: bytes = b""  # the PROXY header to send first, if any
    auth: str = "off"  # off | plain | external
    credentials: Credentials | None = None  # for plain


@dataclass(slots=True)
class Greeted:
    """What the handshake established."""

    capabilities: Mapping[str, str] = field(default_factory=dict)
    tls: bool = False
    xclient: bool = False
    proxied: bool = False
    authenticated: bool = False


# --- events in --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TLSDone:
    """The TLS handshake asked for by StartTLS succeeded (a failure ends the
    target in the driver: there is nothing left to say to that upstream)."""


@dataclass(frozen=True, slots=True)
class NameResolved:
    """The client's reverse DNS name asked for by NeedName."""

    name: str


Event = Reply | TLSDone | NameResolved


# --- commands out -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Write:
    """Bytes that get no reply (the PROXY header)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Send:
    """One command; its reply is the next event."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Expect:
    """Wait for a reply without sending anything (the greeting)."""


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Run the TLS handshake as a client; TLSDone is the next event."""


@dataclass(frozen=True, slots=True)
class NeedName:
    """Look up the client's reverse DNS name; NameResolved is the next event."""


@dataclass(frozen=True, slots=True)
class Done:
    greeted: Greeted


@dataclass(frozen=True, slots=True)
class Failed:
    error: UpstreamUnavailable


Command = Write | Send | Expect | StartTLS | NeedName | Done | Failed


class State(enum.Enum):
    START = "start"
    IMPLICIT_TLS = "implicit-tls"
    GREETING = "greeting"
    HELLO = "hello"  # EHLO/LHLO sent
    HELO = "helo"  # HELO sent after EHLO was refused
    STARTTLS = "starttls"  # STARTTLS sent
    TLS = "tls"  # TLS handshake running
    NAME = "name"  # waiting for the reverse name
    XCLIENT = "xclient"  # XCLIENT lines sent, replies outstanding
    AUTH_CHALLENGE = "auth challenge"  # AUTH PLAIN sent without its initial response, 334 awaited
    AUTH = "auth"
    DONE = "done"


class Handshake:
    """One upstream handshake, from the first byte to Done or Failed."""

    def __init__(self, settings: HandshakeSettings, client: ClientInfo) -> None:
        self.settings = settings
        self.client = client
        self.state = State.START
        self.greeted = Greeted(tls=settings.tls_active, proxied=bool(settings.proxy_header))
        self._hello_name = settings.hostname
        self._hello_verb = b"LHLO" if settings.lmtp else b"EHLO"
        self._tls_decided = False
        self._xclient_decided = False
        self._xclient_lines: list[bytes] = []

    # --- the driver's two calls -------------------------------------------------
    def start(self) -> tuple[Command, ...]:
        assert self.state is State.START
        first: tuple[Command, ...] = (Write(self.settings.proxy_header),) if self.settings.proxy_header else ()
        if self.settings.tls_active:
            self.state = State.IMPLICIT_TLS
            return first + (StartTLS(),)
        self.state = State.GREETING
        return first + (Expect(),)

    def handle(self, event: Event) -> tuple[Command, ...]:
        state = self.state
        if isinstance(event, Reply):
            if state is State.GREETING:
                return self._on_greeting(event)
            if state is State.HELLO:
                return self._on_hello(event)
            if state is State.HELO:
                return self._on_helo(event)
            if state is State.STARTTLS:
                return self._on_starttls(event)
            if state is State.XCLIENT:
                return self._on_xclient(event)
            if state is State.AUTH_CHALLENGE:
                return self._on_auth_challenge(event)
            if state is State.AUTH:
                return self._on_auth(event)
        elif isinstance(event, TLSDone):
            if state is State.IMPLICIT_TLS:
                self.state = State.GREETING
                return (Expect(),)
            if state is State.TLS:
                self.greeted.tls = True
                return self._hello()
        elif isinstance(event, NameResolved) and state is State.NAME:
            return self._send_xclient(event.name)
        raise ValueError(f"{type(event).__name__} in handshake state {state.value}")

    # --- transitions ---------------------------------------------------------------
    def _on_greeting(self, reply: Reply) -> tuple[Command, ...]:
        if reply.code != 220:
            return self._fail(f"greeting {reply.code}: {reply.text}")
        return self._hello()

    def _hello(self) -> tuple[Command, ...]:
        self.state = State.HELLO
        return (Send(b"%s %s\r\n" % (self._hello_verb, _token(self._hello_name))),)

    def _on_hello(self, reply: Reply) -> tuple[Command, ...]:
        if reply.positive:
            return self._next(capabilities(reply))
        if self.settings.lmtp or reply.code < 500 or self._hello_verb != b"EHLO":
            return self._fail(f"{self._hello_verb.decode()} refused: {reply.code} {reply.text}")
        self.state = State.HELO
        return (Send(b"HELO %s\r\n" % _token(self._hello_name)),)

    def _on_helo(self, reply: Reply) -> tuple[Command, ...]:
        if not reply.positive:
            return self._fail(f"HELO refused: {reply.code} {reply.text}")
        return self._next({})

    def _next(self, caps: Mapping[str, str]) -> tuple[Command, ...]:
        """After each greeting: the next step that is still to decide."""
        self.greeted.capabilities = caps
        if not self._tls_decided:
            self._tls_decided = True
            if not self.greeted.tls and _wants_starttls(self.settings, caps):
                self.state = State.STARTTLS
                return (Send(b"STARTTLS\r\n"),)
            if self.settings.starttls == "required" and not self.greeted.tls:
                return self._fail("STARTTLS required but not offered")
        if not self._xclient_decided:
            self._xclient_decided = True
            return self._xclient(caps)
        return self._auth(caps)

    def _on_starttls(self, reply: Reply) -> tuple[Command, ...]:
        if reply.code == 220:
            self.state = State.TLS
            return (StartTLS(),)
        if self.settings.starttls == "required":
            return self._fail(f"STARTTLS refused: {reply.code} {reply.text}")
        return self._next(self.greeted.capabilities)  # on in plaintext

    def _xclient(self, caps: Mapping[str, str]) -> tuple[Command, ...]:
        offered = _xclient_offered(caps) if self.settings.xclient != "off" else set()
        if self.settings.xclient == "required":
            if "XCLIENT" not in caps:
                return self._fail("XCLIENT required but not offered")
            if "ADDR" not in offered:
                return self._fail("XCLIENT required but the upstream does not take ADDR")
        if not offered:
            return self._auth(caps)
        if "NAME" in offered:
            self.state = State.NAME
            return (NeedName(),)
        return self._send_xclient(None)

    def _send_xclient(self, name: str | None) -> tuple[Command, ...]:
        """One XCLIENT line at a time: each answers with a fresh greeting."""
        self._xclient_lines = xclient_commands(_xclient_offered(self.greeted.capabilities), self.client, name)
        self.state = State.XCLIENT
        return (Send(self._xclient_lines.pop(0)),)

    def _on_xclient(self, reply: Reply) -> tuple[Command, ...]:
        if not reply.positive:
            return self._fail(f"XCLIENT refused: {reply.code} {reply.text}")
        if self._xclient_lines:
            return (Send(self._xclient_lines.pop(0)),)
        self.greeted.xclient = True
        self._hello_name = self.client.helo or self.settings.hostname
        if not self.settings.lmtp and not self.client.esmtp and self.settings.auth == "off":
            self._hello_verb = b"HELO"  # PROTO stays SMTP, as the client said
        return self._hello()

    def _auth(self, caps: Mapping[str, str]) -> tuple[Command, ...]:
        mechanism = self.settings.auth
        if mechanism == "off":
            return self._done()
        if not self.greeted.tls:
            return self._fail(f"AUTH {mechanism.upper()} needs TLS and this connection has none")
        offered = caps.get("AUTH", "").upper().split()
        if mechanism.upper() not in offered:
            return self._fail(f"AUTH {mechanism.upper()} not offered")
        self.state = State.AUTH
        if mechanism == "external":
            return (Send(b"AUTH EXTERNAL =\r\n"),)
        credentials = self.settings.credentials
        assert credentials is not None
        command = auth_plain_command(credentials)
        if len(command) > MAX_COMMAND:
            # RFC 4954 §4: an initial response that does not fit the command
            # line is left out and sent after the server's empty challenge.
            self.state = State.AUTH_CHALLENGE
            return (Send(b"AUTH PLAIN\r\n"),)
        return (Send(command),)

    def _on_auth_challenge(self, reply: Reply) -> tuple[Command, ...]:
        if reply.code != 334:
            return self._on_auth(reply)
        self.state = State.AUTH
        credentials = self.settings.credentials
        assert credentials is not None
        return (Send(auth_plain_response(credentials) + b"\r\n"),)

    def _on_auth(self, reply: Reply) -> tuple[Command, ...]:
        mechanism = self.settings.auth.upper()
        if reply.code != 235:
            user = f" as {self.settings.credentials.user!r}" if self.settings.credentials else ""
            return self._fail(f"AUTH {mechanism}{user} refused: {reply.code} {reply.text}")
        self.greeted.authenticated = True
        return self._done()

    def _done(self) -> tuple[Command, ...]:
        self.state = State.DONE
        return (Done(self.greeted),)

    def _fail(self, why: str) -> tuple[Command, ...]:
        self.state = State.DONE
        return (Failed(UpstreamUnavailable(why)),)


def auth_plain_response(credentials: Credentials) -> bytes:
    """RFC 4616: no authorisation identity, then the user and the password."""
    message = b"\0%s\0%s" % (credentials.user.encode("utf-8"), credentials.password.encode("utf-8"))
    return base64.b64encode(message)


def auth_plain_command(credentials: Credentials) -> bytes:
    """AUTH PLAIN with its initial response (RFC 4954 §4)."""
    return b"AUTH PLAIN %s\r\n" % auth_plain_response(credentials)


def _token(name: str) -> bytes:
    """A greeting's argument: one printable ASCII word, whatever the client sent."""
    raw = name.encode("ascii", "replace")
    cleaned = bytes(c if 0x21 <= c <= 0x7E else 0x3F for c in raw)[:255]
    return cleaned or b"[UNAVAILABLE]"


def _xclient_offered(caps: Mapping[str, str]) -> set[str]:
    """The attributes Willi can send that the upstream lists after XCLIENT."""
    if "XCLIENT" not in caps:
        return set()
    return set(caps["XCLIENT"].upper().split()) & XCLIENT_ATTRIBUTES


def _wants_starttls(settings: HandshakeSettings, caps: Mapping[str, str]) -> bool:
    if "STARTTLS" not in caps or settings.starttls == "off":
        return False
    return settings.starttls != "if-client" or settings.client_tls
