"""The upstream-facing dialogue, sans-IO (SPEC §4).

`handshake()` is a generator that says what to do next and is sent what
happened: it yields bytes to send (and is sent the upstream's Reply), EXPECT
to wait for a reply without sending (the greeting), START_TLS to run the TLS
handshake (sent None once it is done), or NEED_NAME for the client's reverse
DNS name (sent the name). It returns the upstream's final capabilities, or
raises UpstreamUnavailable when this target cannot be used. The session runs it
over a real connection; tests run it over a list of replies.

Order after the greeting (SPEC §4): EHLO (LHLO for LMTP; HELO when EHLO is
refused), STARTTLS per policy then EHLO again, XCLIENT per policy then EHLO
again. Command builders for the transaction (MAIL, RCPT, XCLIENT) are here too.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generator, Mapping

from willi.errors import NeedsSMTPUTF8, UpstreamUnavailable
from willi.smtp import xtext
from willi.smtp.address import Address
from willi.smtp.reply import Reply


class _Action:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


EXPECT = _Action("EXPECT")
START_TLS = _Action("START_TLS")
NEED_NAME = _Action("NEED_NAME")

Step = "bytes | _Action"
Dialogue = Generator["bytes | _Action", "Reply | str | None", "Greeted"]

MAX_COMMAND = 512  # RFC 5321 §4.5.3.1.4, the CRLF included
MAX_XCLIENT_VALUE = 255
XCLIENT_ATTRIBUTES = frozenset({"ADDR", "PORT", "NAME", "HELO", "PROTO"})


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """The real client, as XCLIENT passes it on."""

    addr: str
    port: int
    helo: str | None = None
    esmtp: bool = True


@dataclass(frozen=True, slots=True)
class HandshakeSettings:
    hostname: str
    lmtp: bool = False
    starttls: str = "if-client"  # if-client | opportunistic | required | off
    client_tls: bool = False  # the client itself used STARTTLS
    tls_active: bool = False  # implicit TLS (smtps://): already encrypted
    xclient: str = "auto"  # auto | required | off


@dataclass(slots=True)
class Greeted:
    """What the handshake established."""

    capabilities: Mapping[str, str] = field(default_factory=dict)
    tls: bool = False
    xclient: bool = False


def capabilities(reply: Reply) -> Mapping[str, str]:
    """EHLO keywords (upper-cased) and their parameters; the first line is the name.

    An upstream answers EHLO the same way every time, so the parse is
    memoised on the reply's bytes; the result is read-only for that reason.
    """
    return _capabilities(reply.raw)


@functools.lru_cache(maxsize=256)
def _capabilities(raw: bytes) -> Mapping[str, str]:
    caps: dict[str, str] = {}
    for line in raw.split(b"\r\n")[1:]:
        keyword, _, params = line[4:].decode("ascii", "replace").strip().partition(" ")
        if keyword:
            caps[keyword.upper()] = params.strip()
    return MappingProxyType(caps)


def handshake(settings: HandshakeSettings, client: ClientInfo) -> Dialogue:
    greeting = yield EXPECT
    if greeting.code != 220:  # type: ignore[union-attr]
        raise UpstreamUnavailable(f"greeting {greeting.code}: {greeting.text}")  # type: ignore[union-attr]
    caps = yield from _hello(settings)
    greeted = Greeted(caps, tls=settings.tls_active)
    if not greeted.tls and _wants_starttls(settings, caps):
        reply = yield b"STARTTLS\r\n"
        if reply.code == 220:  # type: ignore[union-attr]
            yield START_TLS
            greeted.tls = True
            caps = yield from _hello(settings)
        elif settings.starttls == "required":
            raise UpstreamUnavailable(f"STARTTLS refused: {reply.code} {reply.text}")  # type: ignore[union-attr]
    elif settings.starttls == "required" and not greeted.tls:
        raise UpstreamUnavailable("STARTTLS required but not offered")
    offered = _xclient_offered(caps) if settings.xclient != "off" else set()
    if offered:
        name = (yield NEED_NAME) if "NAME" in offered else None
        for command in xclient_commands(offered, client, name):  # type: ignore[arg-type]
            reply = yield command
            if not reply.positive:  # type: ignore[union-attr]
                raise UpstreamUnavailable(f"XCLIENT refused: {reply.code} {reply.text}")  # type: ignore[union-attr]
        greeted.xclient = True
        caps = yield from _hello(settings)
    elif settings.xclient == "required":
        raise UpstreamUnavailable("XCLIENT required but not offered")
    greeted.capabilities = caps
    return greeted


def _xclient_offered(caps: dict[str, str]) -> set[str]:
    """The attributes Willi can send that the upstream lists after XCLIENT."""
    if "XCLIENT" not in caps:
        return set()
    return set(caps["XCLIENT"].upper().split()) & XCLIENT_ATTRIBUTES


def _wants_starttls(settings: HandshakeSettings, caps: Mapping[str, str]) -> bool:
    if "STARTTLS" not in caps or settings.starttls == "off":
        return False
    return settings.starttls != "if-client" or settings.client_tls


def _hello(settings: HandshakeSettings) -> Generator[bytes, Reply, Mapping[str, str]]:
    host = settings.hostname.encode("ascii", "replace")
    verb = b"LHLO" if settings.lmtp else b"EHLO"
    reply = yield b"%s %s\r\n" % (verb, host)
    if reply.positive:
        return capabilities(reply)
    if settings.lmtp or reply.code < 500:
        raise UpstreamUnavailable(f"{verb.decode()} refused: {reply.code} {reply.text}")
    reply = yield b"HELO %s\r\n" % host
    if not reply.positive:
        raise UpstreamUnavailable(f"HELO refused: {reply.code} {reply.text}")
    return {}


# --- command builders ----------------------------------------------------------
def xclient_commands(offered: set[str], client: ClientInfo, name: str | None) -> list[bytes]:
    """XCLIENT lines carrying the attributes the upstream offered, each value
    xtext-encoded and at most 255 octets, each line at most 512 octets."""
    # NAME and ADDR last: once ADDR is sent the upstream checks its XCLIENT
    # authorisation against that address, and refuses any further XCLIENT
    # line (Postfix XCLIENT_README). Packing keeps ADDR in the last line.
    values: list[tuple[str, str]] = []
    if "HELO" in offered:
        values.append(("HELO", client.helo or "[UNAVAILABLE]"))
    if "PROTO" in offered:
        values.append(("PROTO", "ESMTP" if client.esmtp else "SMTP"))
    if "NAME" in offered:
        values.append(("NAME", name or "[UNAVAILABLE]"))
    if "PORT" in offered:
        values.append(("PORT", str(client.port)))
    if "ADDR" in offered:
        ip = ipaddress.ip_address(client.addr)
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # an IPv4 client on a dual-stack [::] listener
        values.append(("ADDR", f"IPV6:{ip.compressed}" if ip.version == 6 else str(ip)))
    attributes = [b"%s=%s" % (key.encode(), _xtext_value(value)) for key, value in values]
    return _pack(b"XCLIENT", attributes)


def _xtext_value(value: str) -> bytes:
    raw = value.encode("utf-8", "replace")
    encoded = xtext.encode(raw)
    while len(encoded) > MAX_XCLIENT_VALUE:
        raw = raw[:-1]
        encoded = xtext.encode(raw)
    return encoded


def _pack(verb: bytes, attributes: list[bytes]) -> list[bytes]:
    lines: list[bytes] = []
    current = verb
    for attribute in attributes:
        if len(current) + 1 + len(attribute) + 2 > MAX_COMMAND and current != verb:
            lines.append(current + b"\r\n")
            current = verb
        current += b" " + attribute
    if current != verb:
        lines.append(current + b"\r\n")
    return lines


def mail_command(sender: Address, params: dict[str, str | None], caps: Mapping[str, str]) -> bytes:
    """MAIL FROM with the client's parameters that the upstream supports."""
    out = [b"MAIL FROM:<%s>" % str(sender).encode("utf-8", "surrogateescape")]
    for key, value in params.items():
        if key == "SIZE" and "SIZE" in caps:
            out.append(b"SIZE=%s" % value.encode())  # type: ignore[union-attr]
        elif key == "BODY" and "8BITMIME" in caps:
            out.append(b"BODY=%s" % value.upper().encode())  # type: ignore[union-attr]
        elif key == "SMTPUTF8":
            if "SMTPUTF8" not in caps:
                raise NeedsSMTPUTF8("upstream does not offer SMTPUTF8")
            out.append(b"SMTPUTF8")
    return b" ".join(out) + b"\r\n"


def rcpt_command(recipient: Address) -> bytes:
    return b"RCPT TO:<%s>\r\n" % str(recipient).encode("utf-8", "surrogateescape")
