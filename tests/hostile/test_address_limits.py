"""RFC 5321 §4.5.3.1 sizes at MAIL and RCPT (issue 9 item 4), in octets.

A local part may have 64 octets, a domain 255, a path 256 with its angle
brackets and any source route. One octet more is `501 5.1.3`, the code
Postfix gives an address it cannot use; exactly at the limit is accepted.
The protocol is driven without sockets: client says, Willi answers.
"""

from __future__ import annotations

import pytest

from tests.support.names import domain_of
from willi import replies
from willi.smtp import server as smtp
from willi.smtp.address import (
    MAX_LOCAL_PART, MAX_PATH, AddressError, AddressTooLong, parse_path_argument,
)


LONGEST_DOMAIN = domain_of(MAX_PATH - 2 - 1 - 1)  # "<", "@", ">", a one-octet local part


def test_a_local_part_of_64_octets_is_accepted_and_65_is_too_long() -> None:
    address, _ = parse_path_argument(f"<{'a' * MAX_LOCAL_PART}@b.test>")
    assert len(address.local) == 64
    with pytest.raises(AddressTooLong):
        parse_path_argument(f"<{'a' * (MAX_LOCAL_PART + 1)}@b.test>")


def test_the_local_part_counts_octets_not_characters() -> None:
    parse_path_argument(f"<{'é' * 32}@b.test>")  # 64 octets in UTF-8
    with pytest.raises(AddressTooLong):
        parse_path_argument(f"<{'é' * 32}x@b.test>")


def test_a_quoted_local_part_counts_its_quotes() -> None:
    parse_path_argument(f'<"{"a b" * 20}x">'.replace(">", "@b.test>"))  # 62 + 2 quotes
    with pytest.raises(AddressTooLong):
        parse_path_argument(f'<"{"a b" * 21}">'.replace(">", "@b.test>"))


def test_a_path_of_256_octets_is_accepted_and_257_is_too_long() -> None:
    address, _ = parse_path_argument(f"<a@{LONGEST_DOMAIN}>")
    assert len(str(address)) + 2 == MAX_PATH
    with pytest.raises(AddressTooLong):
        parse_path_argument(f"<ab@{LONGEST_DOMAIN}>")


def test_a_bare_address_is_measured_as_if_it_had_its_brackets() -> None:
    parse_path_argument(f"a@{LONGEST_DOMAIN}")
    with pytest.raises(AddressTooLong):
        parse_path_argument(f"ab@{LONGEST_DOMAIN}")


def test_a_source_route_counts_towards_the_path_although_it_is_stripped() -> None:
    route = "@" + domain_of(200) + ":"
    with pytest.raises(AddressTooLong):
        parse_path_argument(f"<{route}user@{domain_of(60)}>")


def test_a_3_kb_address_is_too_long_on_the_fast_path_and_the_general_one() -> None:
    for arg in (f"<{'a' * 3000}@b.test>", f"<{'a' * 60}@{domain_of(3000)}>", f'<"{"x" * 3000}"@b.test>'):
        with pytest.raises(AddressTooLong) as caught:
            parse_path_argument(arg)
        assert caught.value.reply == replies.ADDRESS_TOO_LONG


def test_too_long_is_an_address_error_with_postfixs_code() -> None:
    assert issubclass(AddressTooLong, AddressError)
    assert replies.ADDRESS_TOO_LONG.startswith(b"501 5.1.3 ")


# --- the conversation --------------------------------------------------------
def _session() -> smtp.ServerProtocol:
    proto = smtp.ServerProtocol(smtp.ServerSettings(hostname="willi.test"))
    proto.greet()
    proto.feed(b"EHLO client.test\r\n")
    assert proto.next_event() is None
    proto.take_output()
    return proto


def test_client_sends_a_3_kb_mail_from_and_willi_answers_501_5_1_3_itself() -> None:
    proto = _session()
    proto.feed(b"MAIL FROM:<" + b"s" * 3000 + b"@origin.test>\r\n")
    assert proto.next_event() is None
    assert proto.take_output() == replies.ADDRESS_TOO_LONG
    assert proto.mail is None and proto.errors == 1


def test_client_sends_a_3_kb_rcpt_to_and_no_rcpt_event_is_raised() -> None:
    proto = _session()
    proto.feed(b"MAIL FROM:<s@origin.test>\r\n")
    assert proto.next_event() is None
    assert proto.take_output() == replies.SENDER_OK
    proto.feed(b"RCPT TO:<user@" + domain_of(3000).encode() + b">\r\n")
    assert proto.next_event() is None  # no Rcpt event: the router and upstream never see it
    assert proto.take_output() == replies.ADDRESS_TOO_LONG


def test_client_sends_the_longest_allowed_rcpt_and_it_is_routed() -> None:
    proto = _session()
    proto.feed(b"MAIL FROM:<s@origin.test>\r\nRCPT TO:<a@" + LONGEST_DOMAIN.encode() + b">\r\n")
    event = proto.next_event()
    assert isinstance(event, smtp.Rcpt)
    assert event.address.domain == LONGEST_DOMAIN
