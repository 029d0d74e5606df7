"""The reply catalogue checked as a whole: every reply Willi itself sends is a
well-formed SMTP reply (RFC 5321 §4.2) with a matching enhanced status code
(RFC 3463), and the codes SPEC.md names are the ones in the catalogue."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from willi import replies

CONSTANTS = {name: value for name, value in vars(replies).items() if isinstance(value, bytes)}

_LINE = re.compile(rb"(?P<code>[2-5][0-9]{2})(?P<sep>[ -])(?P<text>[^\r\n]*)")
_ENHANCED = re.compile(rb"(?P<cls>[245])\.[0-9]{1,3}\.[0-9]{1,3}(?: |$)")


def reply_lines(reply: bytes) -> list[bytes]:
    """Split a reply into its lines, asserting each ends CRLF and nothing else."""
    assert reply.endswith(b"\r\n"), reply
    lines = reply[:-2].split(b"\r\n")
    for line in lines:
        assert b"\r" not in line and b"\n" not in line, f"bare CR or LF in {reply!r}"
        assert len(line) + 2 <= 512, f"reply line over 512 octets: {reply[:60]!r}..."
    return lines


def check_reply(reply: bytes, enhanced: bool = True) -> int:
    """Assert `reply` is one well-formed reply; return its code."""
    lines = reply_lines(reply)
    codes = set()
    for i, line in enumerate(lines):
        match = _LINE.fullmatch(line)
        assert match, f"not a reply line: {line!r}"
        assert match["sep"] == (b" " if i == len(lines) - 1 else b"-"), f"bad continuation in {reply!r}"
        codes.add(match["code"])
        if enhanced:
            status = _ENHANCED.match(match["text"])
            assert status, f"no enhanced status code in {line!r}"
            assert status["cls"] == match["code"][:1], f"class of {line!r} does not match its code"
    assert len(codes) == 1, f"code changes within {reply!r}"
    return int(codes.pop())


def test_the_catalogue_is_not_empty() -> None:
    assert len(CONSTANTS) >= 30


@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_every_constant_is_a_well_formed_reply_with_enhanced_code(name: str) -> None:
    check_reply(CONSTANTS[name])


def test_the_checker_itself_refuses_broken_replies() -> None:
    for broken in (b"250 2.0.0 Ok", b"250 2.0.0 a\rb\r\n", b"250 Ok\r\n", b"450 2.0.0 Ok\r\n",
                   b"250-2.0.0 a\r\n251 2.0.0 b\r\n", b"25 2.0.0 x\r\n", b"250 2.0.0 " + b"x" * 501 + b"\r\n",
                   b"250 2.0.0 a\nb\r\n", b"250 2.0.0 a\r\n250 2.0.0 b\r\n"):
        with pytest.raises(AssertionError):
            check_reply(broken)


# The replies SPEC.md spells out, code and enhanced code.
SPEC_CODES = {
    "TOO_MANY_CONNECTIONS": b"421 4.7.0",
    "TOO_MANY_ERRORS": b"421 4.7.0",
    "CLIENT_TIMEOUT": b"421 4.4.2",
    "SHUTTING_DOWN": b"421 4.3.2",
    "UPSTREAM_TIMEOUT": b"451 4.4.2",
    "LOOKUP_FAILED": b"451 4.3.0",
    "TOO_MANY_RECIPIENTS": b"452 4.5.3",
    "OTHER_UPSTREAM": b"452 4.5.3",
    "ONE_RCPT_FOR_LMTP": b"452 4.5.3",
    "READY_FOR_TLS": b"220 2.0.0",
    "CLOSING": b"221 2.0.0",
    "RESET_OK": b"250 2.0.0",
    "SENDER_OK": b"250 2.1.0",
    "OK": b"250",
    "HELP": b"214",
    "CANNOT_VRFY": b"252",
    "NOT_IMPLEMENTED": b"502",
    "NO_AUTH": b"502 5.5.1",
    "UNRECOGNIZED": b"500 5.5.2",
    "LINE_TOO_LONG": b"500 5.5.2",
    "SYNTAX_HELO": b"501",
    "SYNTAX_NO_ARGS": b"501",
    "SYNTAX_SIZE": b"501",
    "NEED_HELO": b"503 5.5.1",
    "NEED_MAIL": b"503 5.5.1",
    "TLS_ALREADY_ACTIVE": b"503",
    "NO_VALID_RECIPIENTS": b"554 5.5.1",
    "MESSAGE_TOO_BIG": b"552 5.3.4",
    "BAD_BODY": b"550 5.5.2",
    "NEED_SMTPUTF8": b"553 5.6.7",
}


@pytest.mark.parametrize("name, prefix", sorted(SPEC_CODES.items()))
def test_replies_named_in_the_spec_carry_its_codes(name: str, prefix: bytes) -> None:
    assert CONSTANTS[name].startswith(prefix + b" ")


def test_relay_denied_uses_postfix_wording() -> None:
    reply = replies.relay_denied("user@example.org")
    assert reply == b"554 5.7.1 <user@example.org>: Relay access denied\r\n"
    check_reply(reply)


def test_relay_denied_for_a_very_long_address_stays_within_512_octets() -> None:
    reply = replies.relay_denied("u" * 4000 + "@example.org")
    assert len(reply) == 512
    assert reply.endswith(b">: Relay access denied\r\n")
    check_reply(reply)


def test_relay_denied_never_cuts_a_utf8_character_in_half() -> None:
    reply = replies.relay_denied("é" * 400 + "@example.org")
    reply.decode("utf-8")
    check_reply(reply)


@settings(database=None, max_examples=300)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=4100))
def test_relay_denied_is_a_well_formed_reply_for_any_address(address: str) -> None:
    check_reply(replies.relay_denied(address))


def test_greeting_names_the_host() -> None:
    assert replies.greeting("mx.example.org") == b"220 mx.example.org ESMTP\r\n"
    assert check_reply(replies.greeting("mx.example.org"), enhanced=False) == 220


def test_ehlo_lists_the_host_then_one_capability_per_line() -> None:
    reply = replies.ehlo("mx.example.org", ["PIPELINING", "SIZE 10"])
    assert reply == b"250-mx.example.org\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
    assert check_reply(reply, enhanced=False) == 250


def test_ehlo_without_capabilities_is_one_line() -> None:
    assert replies.ehlo("mx.example.org", []) == b"250 mx.example.org\r\n"


def test_helo_names_the_host() -> None:
    assert replies.helo("mx.example.org") == b"250 mx.example.org\r\n"
