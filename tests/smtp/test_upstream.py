"""What Willi says to an upstream, built without sockets (SPEC §4): EHLO
capabilities parsed, MAIL FROM with the parameters the upstream supports,
RCPT TO."""

from __future__ import annotations

import pytest

from tests.support.reply import reply
from willi import replies
from willi.errors import NeedsSMTPUTF8, UpstreamError
from willi.smtp.address import Address
from willi.smtp.upstream import capabilities, mail_command, rcpt_command


# --- capabilities and the transaction's commands ------------------------------------
def test_capabilities_are_upper_cased_with_their_parameters_and_skip_the_name() -> None:
    caps = capabilities(reply(b"250-up.example greets you\r\n250-size 1000\r\n250-Xclient NAME ADDR\r\n250 8bitmime\r\n"))
    assert caps == {"SIZE": "1000", "XCLIENT": "NAME ADDR", "8BITMIME": ""}


def test_single_line_ehlo_reply_has_no_capabilities() -> None:
    assert capabilities(reply(b"250 up.example\r\n")) == {}


SENDER = Address("alice", "example.org")
ALL_CAPS = {"SIZE": "1000", "8BITMIME": "", "SMTPUTF8": ""}


def test_mail_command_without_parameters() -> None:
    assert mail_command(SENDER, {}, {}) == b"MAIL FROM:<alice@example.org>\r\n"


def test_mail_command_for_the_null_sender() -> None:
    assert mail_command(Address("", ""), {}, ALL_CAPS) == b"MAIL FROM:<>\r\n"


def test_mail_command_passes_parameters_the_upstream_offers_in_client_order() -> None:
    params: dict[str, str | None] = {"SMTPUTF8": None, "BODY": "8bitmime", "SIZE": "123"}
    assert mail_command(SENDER, params, ALL_CAPS) == b"MAIL FROM:<alice@example.org> SMTPUTF8 BODY=8BITMIME SIZE=123\r\n"


def test_mail_command_drops_size_and_body_the_upstream_does_not_offer() -> None:
    params: dict[str, str | None] = {"SIZE": "123", "BODY": "8BITMIME"}
    assert mail_command(SENDER, params, {"PIPELINING": ""}) == b"MAIL FROM:<alice@example.org>\r\n"
    assert mail_command(SENDER, params, {"SIZE": ""}) == b"MAIL FROM:<alice@example.org> SIZE=123\r\n"
    assert mail_command(SENDER, params, {"8BITMIME": ""}) == b"MAIL FROM:<alice@example.org> BODY=8BITMIME\r\n"


def test_smtputf8_requested_but_not_offered_raises_needs_smtputf8_with_553() -> None:
    with pytest.raises(NeedsSMTPUTF8) as caught:
        mail_command(Address("jörg", "例え.jp"), {"SMTPUTF8": None}, {"SIZE": "", "8BITMIME": ""})
    assert caught.value.reply == replies.NEED_SMTPUTF8
    assert isinstance(caught.value, UpstreamError)


def test_utf8_address_is_sent_as_utf8() -> None:
    command = mail_command(Address("jörg", "例え.jp"), {"SMTPUTF8": None}, ALL_CAPS)
    assert command == "MAIL FROM:<jörg@例え.jp> SMTPUTF8\r\n".encode()


def test_rcpt_command() -> None:
    assert rcpt_command(Address("bob", "example.net")) == b"RCPT TO:<bob@example.net>\r\n"
    assert rcpt_command(Address('"a b"', "example.net")) == b'RCPT TO:<"a b"@example.net>\r\n'
    assert rcpt_command(Address("postmaster", "")) == b"RCPT TO:<postmaster>\r\n"
