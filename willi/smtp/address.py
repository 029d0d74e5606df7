"""Envelope addresses: the path argument of MAIL FROM and RCPT TO.

Routing keys, relay-denied replies and the RCPT sent upstream all start from
what this module returns, so it has to split an address exactly where a mail
server would: the domain follows the last *unquoted* `@` (a quoted local part
may contain `@` and spaces), a source route (`<@a,@b:u@c>`, RFC 5321 §4.1.2)
is dropped, and `<>` is the null path. Like Postfix, a bare address without
angle brackets is accepted too. SMTPUTF8 (RFC 6531) local parts and domains are
allowed; control characters and lone surrogates (undecodable bytes the caller
kept with surrogateescape) are not. The sizes of RFC 5321 §4.5.3.1 are
enforced in octets: a local part of 64, a domain of 255, a path of 256 with
its brackets (and any source route), so every MAIL and RCPT line Willi
builds from an address stays far below the 512-octet command limit.
Sans-IO: strings in, values out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from willi import replies
from willi.errors import WilliError

# RFC 5322 atext plus ".", so dot-strings are taken leniently (a..b, as Postfix).
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~.")
# A domain label: letters, digits, hyphen; "_" appears in the wild; non-ASCII for SMTPUTF8.
_LABEL = re.compile(r"[A-Za-z0-9_\-\u0080-\U0010ffff]+")
# The everyday path, `<dot-string@host.name>` plus parameters, in one match:
# exactly what the general parser accepts for inputs without quotes,
# backslashes, brackets or source routes, without its per-character loops.
_SIMPLE_PATH = re.compile(
    r"<([A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.\u0080-\U0010ffff]+)"
    r"@([A-Za-z0-9_\-\u0080-\U0010ffff]+(?:\.[A-Za-z0-9_\-\u0080-\U0010ffff]+)*)>"
    r"((?: .*)?)",
    re.DOTALL,
)
_PARAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
# RFC 5321 esmtp-value: printable ASCII but "=" and space; RFC 6531 adds UTF-8.
_PARAM_VALUE = re.compile(r"[!-<>-~\u00a0-\ud7ff\ue000-\U0010ffff]+")
# C0, DEL, C1 (NEL and friends) and the surrogate range left by surrogateescape.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 §4.5.3.1.2
MAX_PATH = 256  # RFC 5321 §4.5.3.1.3, "<" and ">" and any source route included


class AddressError(WilliError):
    """A path or address that does not parse: 501 5.1.3."""

    reply = replies.SYNTAX_ADDRESS


class AddressTooLong(AddressError):
    """A local part, domain or path over RFC 5321's sizes: 501 5.1.3, as
    Postfix answers an address it cannot use."""

    reply = replies.ADDRESS_TOO_LONG


class ParameterError(AddressError):
    """A malformed ESMTP parameter after the path: 501 5.5.4."""

    reply = replies.SYNTAX_PARAMETER


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox as written by the client, minus brackets and source route."""

    local: str  # quotes kept as written
    domain: str  # "" when absent

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else self.local

    @property
    def is_null(self) -> bool:
        """The null reverse path `<>` (bounces)."""
        return not self.local and not self.domain


def parse_path_argument(arg: str) -> tuple[Address, list[str]]:
    """Split what follows `MAIL FROM:` / `RCPT TO:` into address and parameters.

    Raises AddressError when the path does not parse.
    """
    if _FORBIDDEN.search(arg):
        raise AddressError("control character or undecodable byte in path")
    text = arg.lstrip(" ")
    simple = _SIMPLE_PATH.fullmatch(text)
    if simple is not None:
        local, domain, rest = simple.groups()
        address = Address(local, domain)
        if (len(local) > MAX_LOCAL_PART or len(domain) > MAX_DOMAIN or len(local) + len(domain) + 3 > MAX_PATH
                or not text.isascii()):  # else no octet count can be over a limit
            _check_sizes(_octets(local) + 1 + _octets(domain) + 2, address)
        return address, _split_params(rest) if rest else []
    return _parse_path(text)


def _parse_path(text: str) -> tuple[Address, list[str]]:
    """The general case: quotes, escapes, source routes, literals, no brackets."""
    if text.startswith("<"):
        end = _scan(text, 1, stop=">")
        if end == len(text):
            raise AddressError("missing '>'")
        path, rest = text[1:end], text[end + 1 :]
        if path == "":
            return Address("", ""), _split_params(rest)
    else:
        end = _scan(text, 0, stop=" ")
        path, rest = text[:end], text[end:]
        if path == "":
            raise AddressError("empty path")
    address = _parse_mailbox(_strip_source_route(path))
    _check_sizes(_octets(path) + 2, address)
    return address, _split_params(rest)


def _octets(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))


def _check_sizes(path_octets: int, address: Address) -> None:
    """RFC 5321 §4.5.3.1: servers need not take longer objects, and Willi
    must not send them on (a path of 3 KB would make a 3 KB RCPT line)."""
    if path_octets > MAX_PATH:
        raise AddressTooLong(f"path of {path_octets} octets (at most {MAX_PATH})")
    if _octets(address.local) > MAX_LOCAL_PART:
        raise AddressTooLong(f"local part over {MAX_LOCAL_PART} octets")
    if _octets(address.domain) > MAX_DOMAIN:
        raise AddressTooLong(f"domain over {MAX_DOMAIN} octets")


def parse_params(params: list[str]) -> dict[str, str | None]:
    """`KEY=VALUE` / `KEY` → {KEY: VALUE or None}, keys upper-cased (RFC 5321 §4.1.2)."""
    result: dict[str, str | None] = {}
    for param in params:
        key, eq, value = param.partition("=")
        if not _PARAM_KEY.fullmatch(key):
            raise ParameterError(f"bad parameter keyword in {param!r}")
        if eq and not _PARAM_VALUE.fullmatch(value):
            raise ParameterError(f"bad parameter value in {param!r}")
        key = key.upper()
        if key in result:
            # Which one would win is anyone's guess; refuse rather than pick.
            raise ParameterError(f"duplicate parameter {key}")
        result[key] = value if eq else None
    return result


def _split_params(rest: str) -> list[str]:
    # Parameters follow the path after a space; extra spaces are tolerated.
    if rest and not rest.startswith(" "):
        raise AddressError("garbage after path")
    return [param for param in rest.split(" ") if param]


def _scan(text: str, start: int, stop: str) -> int:
    """Index of the first unquoted `stop` from `start` (len(text) if none).

    Raises AddressError on an unbalanced quote, a dangling backslash or a
    stray `<` (nested brackets are never valid).
    """
    quoted = False
    i = start
    while i < len(text):
        ch = text[i]
        if quoted and ch == "\\":
            if i + 1 == len(text):
                raise AddressError("dangling backslash")
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == stop:
            return i
        elif not quoted and ch in "<>":
            raise AddressError(f"unexpected {ch!r}")
        i += 1
    if quoted:
        raise AddressError("unbalanced quote")
    return i


# One source-route hop: "@domain" then "," (another hop) or ":" (the mailbox).
_HOP = re.compile(r"@(\[[^\[\]\\]*\]|[^,:@\[\]\"]*)([,:])")


def _strip_source_route(path: str) -> str:
    """`@a,@b:u@c` → `u@c`; RFC 5321 §4.1.2 says to ignore the route."""
    pos = 0
    while path.startswith("@", pos):
        hop = _HOP.match(path, pos)
        if hop is None:
            raise AddressError("bad source route")
        _check_domain(hop.group(1))
        pos = hop.end()
        if hop.group(2) == ":":
            if pos == len(path):
                raise AddressError("source route without mailbox")
            return path[pos:]
    if pos:
        raise AddressError("bad source route")  # "," not followed by "@"
    return path


def _parse_mailbox(path: str) -> Address:
    """Split at the last unquoted `@`; no `@` at all means no domain."""
    at = -1
    quoted = False
    i = 0
    while i < len(path):
        ch = path[i]
        if quoted and ch == "\\":
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == "@" and not quoted:
            at = i
        i += 1
    if at < 0:
        _check_local(path)
        return Address(path, "")
    local, domain = path[:at], path[at + 1 :]
    _check_local(local)
    _check_domain(domain)
    return Address(local, domain)


def _check_local(local: str) -> None:
    """Dot-string or quoted-string (RFC 5321 §4.1.2), mixed forms tolerated."""
    if not local:
        raise AddressError("empty local part")
    quoted = False
    escaped = False
    for ch in local:
        if escaped:
            escaped = False
        elif ch == '"':
            quoted = not quoted
        elif quoted:
            escaped = ch == "\\"
        elif ch not in _ATEXT and ch < "\x80":
            raise AddressError(f"bad character {ch!r} in local part")


def _check_domain(domain: str) -> None:
    """A host name of non-empty labels, or an address literal in brackets."""
    if not domain:
        raise AddressError("empty domain")
    if domain.startswith("["):
        inner = domain[1:-1]
        if not domain.endswith("]") or not inner or any(ch in "[]\\ " for ch in inner):
            raise AddressError(f"bad address literal {domain!r}")
        return
    for label in domain.split("."):
        if not _LABEL.fullmatch(label):
            raise AddressError(f"bad domain {domain!r}")
