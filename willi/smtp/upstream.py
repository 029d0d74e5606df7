"""What Willi says to an upstream, sans-IO (SPEC §4): who the client is
(ClientInfo), what the upstream offers (its EHLO capabilities), and the
command lines Willi builds (XCLIENT, MAIL FROM, RCPT TO). The handshake that
uses them is willi.smtp.handshake.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from willi.errors import NeedsSMTPUTF8
from willi.smtp import xtext
from willi.smtp.address import Address
from willi.smtp.reply import Reply

MAX_COMMAND = 512  # RFC 5321 §4.5.3.1.4, the CRLF included
MAX_XCLIENT_VALUE = 255
XCLIENT_ATTRIBUTES = frozenset({"ADDR", "PORT", "NAME", "HELO", "PROTO"})


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """The real client, as XCLIENT or a PROXY header passes it on."""

    addr: str
    port: int
    helo: str | None = None
    esmtp: bool = True
    local_addr: str | None = None  # where the client connected to: a PROXY header's destination
    local_port: int = 0


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
    """The value as xtext, cut to its longest prefix of whole octets that
    fits MAX_XCLIENT_VALUE: one pass, whatever the length (a 4 KB HELO name
    of escapes must not cost the reactor seconds)."""
    raw = value.encode("utf-8", "replace")
    encoded = xtext.encode(raw)
    if len(encoded) <= MAX_XCLIENT_VALUE:
        return encoded
    pieces, size = [], 0
    for octet in raw:
        piece = xtext.encode(bytes((octet,)))
        size += len(piece)
        if size > MAX_XCLIENT_VALUE:
            break
        pieces.append(piece)
    return b"".join(pieces)


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
        if key == "SIZE" and "SIZE" in caps and value is not None:
            out.append(b"SIZE=%s" % value.encode())
        elif key == "BODY" and "8BITMIME" in caps and value is not None:
            out.append(b"BODY=%s" % value.upper().encode())
        elif key == "SMTPUTF8":
            if "SMTPUTF8" not in caps:
                raise NeedsSMTPUTF8("upstream does not offer SMTPUTF8")
            out.append(b"SMTPUTF8")
    return b" ".join(out) + b"\r\n"


def rcpt_command(recipient: Address) -> bytes:
    return b"RCPT TO:<%s>\r\n" % str(recipient).encode("utf-8", "surrogateescape")
