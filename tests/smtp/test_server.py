"""ServerProtocol: the client-facing command phase (SPEC §2, §7), with no
sockets. Bytes in, events out, replies out in command order."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from willi import replies
from willi.smtp.address import Address
from willi.smtp.body import DataScanner
from willi.smtp.reply import ReplyReader
from willi.smtp.server import (
    Bdat,
    Close,
    Data,
    Event,
    Phase,
    Quit,
    Rcpt,
    Reset,
    ServerProtocol,
    ServerSettings,
    StartTLS,
)

RCPT_OK = b"250 2.1.5 Ok\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
QUEUED = b"250 2.0.0 Ok: queued as 1234\r\n"

PLAIN_EHLO = (b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
              b"250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n")


def make(**options: Any) -> ServerProtocol:
    options.setdefault("max_message_size", 1000)
    options.setdefault("max_recipients", 3)
    options.setdefault("max_errors", 5)
    return ServerProtocol(ServerSettings("mx.example", **options))


def say(proto: ServerProtocol, data: bytes) -> tuple[list[Event], bytes]:
    """Feed `data`, take every event up to the first that waits; no answers."""
    proto.feed(data)
    events: list[Event] = []
    while (event := proto.next_event()) is not None:
        events.append(event)
        if proto.phase is not Phase.COMMAND:
            break
    return events, proto.take_output()


def ready(**options: Any) -> ServerProtocol:
    """After EHLO."""
    proto = make(**options)
    assert say(proto, b"EHLO client.example\r\n")[0] == []
    return proto


def in_transaction(**options: Any) -> ServerProtocol:
    """After EHLO, MAIL and one accepted RCPT."""
    proto = ready(**options)
    say(proto, b"MAIL FROM:<alice@example.org>\r\n")
    [event], _ = say(proto, b"RCPT TO:<bob@example.net>\r\n")
    assert isinstance(event, Rcpt)
    proto.answer(RCPT_OK, True)
    proto.take_output()
    return proto


def codes(output: bytes) -> list[bytes]:
    """The code and enhanced code of each reply line."""
    return [line[:9].rstrip() for line in output.split(b"\r\n") if line]


# --- greeting and EHLO/HELO -------------------------------------------------------
def test_greeting_names_the_host() -> None:
    proto = make()
    proto.greet()
    assert proto.take_output() == b"220 mx.example ESMTP\r\n"


def test_ehlo_lists_capabilities_with_chunking_and_without_starttls_when_tls_is_not_configured() -> None:
    proto = make()
    assert say(proto, b"EHLO client.example\r\n") == ([], PLAIN_EHLO)
    assert proto.helo == "client.example" and proto.esmtp


def test_ehlo_offers_starttls_when_tls_is_configured() -> None:
    _, out = say(make(starttls=True), b"EHLO client.example\r\n")
    assert out == PLAIN_EHLO.replace(b"250 CHUNKING", b"250-CHUNKING\r\n250 STARTTLS")
    assert b"BINARYMIME" not in out  # BDAT content is lines, checked as DATA's are


def test_ehlo_after_tls_no_longer_offers_starttls() -> None:
    proto = ready(starttls=True)
    say(proto, b"STARTTLS\r\n")
    proto.tls_started()
    _, out = say(proto, b"EHLO client.example\r\n")
    assert out == PLAIN_EHLO


def test_helo_answers_with_the_host_name_only() -> None:
    proto = make()
    assert say(proto, b"HELO client.example\r\n") == ([], b"250 mx.example\r\n")
    assert proto.helo == "client.example" and not proto.esmtp


@pytest.mark.parametrize("line", [b"EHLO\r\n", b"EHLO \r\n", b"HELO\r\n", b"HELO   \r\n", b"EHLO a b\r\n"])
def test_ehlo_or_helo_without_one_domain_is_501(line: bytes) -> None:
    proto = make()
    assert say(proto, line) == ([], replies.SYNTAX_HELO)
    assert proto.helo is None


def test_ehlo_inside_a_transaction_resets_it() -> None:
    proto = in_transaction()
    events, out = say(proto, b"EHLO again.example\r\n")
    assert [type(e) for e in events] == [Reset]
    assert out == PLAIN_EHLO
    assert proto.mail is None and proto.accepted == 0
    assert say(proto, b"MAIL FROM:<a@b.example>\r\n") == ([], replies.SENDER_OK)


def test_helo_inside_a_transaction_resets_it() -> None:
    proto = in_transaction()
    events, _ = say(proto, b"HELO again.example\r\n")
    assert [type(e) for e in events] == [Reset]


def test_commands_are_case_insensitive() -> None:
    proto = make()
    say(proto, b"ehlo client.example\r\n")
    assert say(proto, b"mail from:<a@b.example>\r\n") == ([], replies.SENDER_OK)


# --- MAIL ---------------------------------------------------------------------------
def test_mail_before_ehlo_is_503() -> None:
    assert say(make(), b"MAIL FROM:<a@b.example>\r\n") == ([], replies.NEED_HELO)


def test_mail_is_answered_by_willi_itself() -> None:
    proto = ready()
    assert say(proto, b"MAIL FROM:<alice@example.org> SIZE=1000 BODY=8bitmime SMTPUTF8\r\n") == ([], replies.SENDER_OK)
    assert proto.mail == Address("alice", "example.org")
    assert proto.mail_params == {"SIZE": "1000", "BODY": "8bitmime", "SMTPUTF8": None}


def test_null_sender_is_accepted() -> None:
    proto = ready()
    assert say(proto, b"MAIL FROM:<>\r\n") == ([], replies.SENDER_OK)
    assert proto.mail is not None and proto.mail.is_null


def test_nested_mail_is_503() -> None:
    proto = ready()
    say(proto, b"MAIL FROM:<a@b.example>\r\n")
    assert say(proto, b"MAIL FROM:<c@d.example>\r\n") == ([], replies.NESTED_MAIL)
    assert proto.mail == Address("a", "b.example")


@pytest.mark.parametrize("line", [b"MAIL\r\n", b"MAIL TO:<a@b.example>\r\n", b"MAIL FROM<a@b.example>\r\n"])
def test_mail_without_from_colon_is_501(line: bytes) -> None:
    assert say(ready(), line) == ([], replies.SYNTAX_MAIL)


@pytest.mark.parametrize("line", [b"MAIL FROM:\r\n", b"MAIL FROM:<a@b.example\r\n", b"MAIL FROM:<a@@b>\r\n",
                                  b"MAIL FROM:<a\x01@b.example>\r\n", b"MAIL FROM:<a@b.example\xff>\r\n"])
def test_mail_with_a_bad_address_is_501(line: bytes) -> None:
    proto = ready()
    _, out = say(proto, line)
    assert out.startswith(b"501 ")
    assert proto.mail is None


def test_size_over_the_limit_is_552_5_3_4() -> None:
    assert say(ready(), b"MAIL FROM:<a@b.example> SIZE=1001\r\n") == ([], replies.MESSAGE_TOO_BIG)


@pytest.mark.parametrize("param", [b"SIZE=abc", b"SIZE", b"SIZE=-1", b"SIZE=1.5", b"SIZE=" + b"1" * 21,
                                   "SIZE=\u00b2".encode(), "SIZE=\u0661\u0662".encode()])
def test_size_that_is_not_a_number_is_501(param: bytes) -> None:
    proto = ready()
    _, out = say(proto, b"MAIL FROM:<a@b.example> " + param + b"\r\n")
    assert out.startswith(b"501 ")
    assert proto.mail is None


@pytest.mark.parametrize("param", [b"BODY=BINARYMIME", b"BODY", b"SMTPUTF8=yes"])
def test_bad_body_or_smtputf8_value_is_501(param: bytes) -> None:
    assert say(ready(), b"MAIL FROM:<a@b.example> " + param + b"\r\n") == ([], replies.SYNTAX_PARAMETER)


@pytest.mark.parametrize("param", [b"FOO=bar", b"AUTH=<>", b"RET=HDRS", b"ENVID=x"])
def test_unknown_mail_parameter_is_555(param: bytes) -> None:
    assert say(ready(), b"MAIL FROM:<a@b.example> " + param + b"\r\n") == ([], replies.UNKNOWN_PARAMETER)


# --- RCPT ----------------------------------------------------------------------------
def test_rcpt_before_mail_is_503() -> None:
    assert say(ready(), b"RCPT TO:<bob@example.net>\r\n") == ([], replies.NEED_MAIL)


def test_rcpt_becomes_an_event_and_waits_for_the_answer() -> None:
    proto = ready()
    say(proto, b"MAIL FROM:<a@b.example>\r\n")
    [event], out = say(proto, b"RCPT TO:<@relay.example:bob@example.net>\r\nNOOP\r\n")
    assert isinstance(event, Rcpt) and event.address == Address("bob", "example.net")
    assert out == b"" and proto.phase is Phase.WAITING
    assert proto.next_event() is None
    assert proto.take_output() == b""
    proto.answer(RCPT_OK, True)
    assert proto.next_event() is None
    assert proto.take_output() == RCPT_OK + replies.OK
    assert proto.accepted == 1


def test_rejected_rcpt_is_not_counted() -> None:
    proto = ready()
    say(proto, b"MAIL FROM:<a@b.example>\r\n")
    say(proto, b"RCPT TO:<bob@example.net>\r\n")
    proto.answer(replies.relay_denied("bob@example.net"), False)
    assert proto.accepted == 0 and proto.phase is Phase.COMMAND
    assert proto.take_output() == replies.relay_denied("bob@example.net")


@pytest.mark.parametrize("line", [b"RCPT FROM:<bob@example.net>\r\n", b"RCPT\r\n", b"RCPT TO <bob@example.net>\r\n"])
def test_rcpt_without_to_colon_is_501(line: bytes) -> None:
    proto = ready()
    say(proto, b"MAIL FROM:<a@b.example>\r\n")
    assert say(proto, line) == ([], replies.SYNTAX_RCPT)


@pytest.mark.parametrize("address", [b"<bob>", b"<>", b"bob", b"<\"bob@x\">"])
def test_rcpt_address_without_domain_is_501(address: bytes) -> None:
    proto = ready()
    say(proto, b"MAIL FROM:<a@b.example>\r\n")
    assert say(proto, b"RCPT TO:" + address + b"\r\n") == ([], replies.SYNTAX_ADDRESS)


@pytest.mark.parametrize("address", [b"<postmaster>", b"<Postmaster>", b"POSTMASTER"])
def test_postmaster_without_domain_is_accepted(address: bytes) -> None:
    proto = ready()
    say(proto, b"MAIL FROM:<a@b.example>\r\n")
    [event], _ = say(proto, b"RCPT TO:" + address + b"\r\n")
    assert isinstance(event, Rcpt)
    assert event.address.domain == "" and event.address.local.lower() == "postmaster"


def test_rcpt_with_a_parameter_is_555() -> None:
    proto = ready()
    say(proto, b"MAIL FROM:<a@b.example>\r\n")
    assert say(proto, b"RCPT TO:<bob@example.net> NOTIFY=NEVER\r\n") == ([], replies.UNKNOWN_PARAMETER)


def test_rcpt_with_a_bad_address_is_501() -> None:
    proto = ready()
    say(proto, b"MAIL FROM:<a@b.example>\r\n")
    assert say(proto, b"RCPT TO:<bob@exa mple.net>\r\n") == ([], replies.SYNTAX_ADDRESS)


def test_a_recipient_over_the_limit_is_the_relays_to_answer_and_no_error() -> None:
    # WILLI_MAX_RECIPIENTS counts accepted recipients, which the relay's ledger knows;
    # it answers 452 4.5.3 and records the recipient (tests/relay/...::test_more_than_max_recipients...).
    proto = in_transaction(max_recipients=1)
    [event], _ = say(proto, b"RCPT TO:<d@example.net>\r\n")
    assert isinstance(event, Rcpt)
    proto.answer(replies.TOO_MANY_RECIPIENTS, False)
    assert proto.take_output() == replies.TOO_MANY_RECIPIENTS and proto.errors == 0


# --- DATA ---------------------------------------------------------------------------
def test_data_without_mail_is_503() -> None:
    assert say(ready(), b"DATA\r\n") == ([], replies.NEED_MAIL)


def test_data_without_an_accepted_recipient_is_554_5_5_1() -> None:
    proto = ready()
    say(proto, b"MAIL FROM:<a@b.example>\r\n")
    say(proto, b"RCPT TO:<bob@example.net>\r\n")
    proto.answer(replies.relay_denied("bob@example.net"), False)
    proto.take_output()
    assert say(proto, b"DATA\r\n") == ([], replies.NO_VALID_RECIPIENTS)


def test_data_with_an_argument_is_501() -> None:
    assert say(in_transaction(), b"DATA now\r\n") == ([], replies.SYNTAX_NO_ARGS)


def test_data_accepted_starts_the_body_phase_and_hands_over_the_pipelined_body() -> None:
    proto = in_transaction()
    [event], out = say(proto, b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert isinstance(event, Data) and out == b""
    assert proto.next_event() is None
    proto.answer(GO_AHEAD, True)
    assert proto.phase is Phase.BODY
    assert proto.take_output() == GO_AHEAD
    assert proto.take_body_start() == b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n"
    assert proto.next_event() is None
    assert proto.take_body_start() == b""


def test_body_done_relays_the_final_reply_and_resets_the_transaction() -> None:
    proto = in_transaction()
    say(proto, b"DATA\r\n")
    proto.answer(GO_AHEAD, True)
    proto.take_output()
    proto.body_done(QUEUED)
    assert proto.phase is Phase.COMMAND
    assert proto.take_output() == QUEUED
    assert proto.mail is None and proto.accepted == 0
    assert say(proto, b"RCPT TO:<bob@example.net>\r\n") == ([], replies.NEED_MAIL)
    assert say(proto, b"MAIL FROM:<a@b.example>\r\n") == ([], replies.SENDER_OK)


def test_commands_after_the_body_are_fed_back_and_answered() -> None:
    proto = in_transaction()
    say(proto, b"DATA\r\n")
    proto.answer(GO_AHEAD, True)
    proto.body_done(QUEUED)
    events, out = say(proto, b"QUIT\r\n")
    assert [type(e) for e in events] == [Quit]
    assert out == GO_AHEAD + QUEUED + replies.CLOSING


def test_data_refused_by_the_upstream_stays_in_the_command_phase() -> None:
    proto = in_transaction()
    say(proto, b"DATA\r\nNOOP\r\n")
    proto.answer(b"554 5.5.0 no\r\n", False)
    assert proto.phase is Phase.COMMAND
    assert proto.next_event() is None
    assert proto.take_output() == b"554 5.5.0 no\r\n" + replies.OK


def test_bdat_in_a_transaction_is_an_event_and_its_chunk_is_not_read_as_commands() -> None:
    proto = in_transaction()
    [event], out = say(proto, b"BDAT 6 LAST\r\nQUIT\r\n")
    assert isinstance(event, Bdat) and (event.size, event.last) == (6, True) and out == b""
    proto.start_body()
    assert proto.take_body_start() == b"QUIT\r\n"  # the chunk's bytes, handed to the relay


# --- RSET and the small commands -------------------------------------------------------
def test_rset_inside_a_transaction_answers_250_and_resets() -> None:
    proto = in_transaction()
    events, out = say(proto, b"RSET\r\n")
    assert [type(e) for e in events] == [Reset]
    assert out == replies.RESET_OK and out.startswith(b"250 2.0.0")
    assert proto.mail is None
    assert say(proto, b"RCPT TO:<bob@example.net>\r\n") == ([], replies.NEED_MAIL)


def test_rset_after_mail_only_is_still_a_reset() -> None:
    proto = ready()
    say(proto, b"MAIL FROM:<a@b.example>\r\n")
    assert [type(e) for e in say(proto, b"RSET\r\n")[0]] == [Reset]


def test_rset_without_a_transaction_has_no_event() -> None:
    assert say(ready(), b"RSET\r\n") == ([], replies.RESET_OK)
    assert say(make(), b"RSET\r\n") == ([], replies.RESET_OK)


def test_rset_with_an_argument_is_501() -> None:
    proto = in_transaction()
    assert say(proto, b"RSET now\r\n") == ([], replies.SYNTAX_NO_ARGS)
    assert proto.mail is not None


@pytest.mark.parametrize("line, answer", [
    (b"NOOP\r\n", replies.OK),
    (b"NOOP anything\r\n", replies.OK),
    (b"HELP\r\n", replies.HELP),
    (b"HELP MAIL\r\n", replies.HELP),
    (b"VRFY bob\r\n", replies.CANNOT_VRFY),
    (b"VRFY\r\n", replies.SYNTAX_PARAMETER),
    (b"EXPN staff\r\n", replies.NOT_IMPLEMENTED),
    (b"AUTH PLAIN AGJvYgBwdw==\r\n", replies.NO_AUTH),
    (b"ETRN example.org\r\n", replies.UNRECOGNIZED),
    (b"GET / HTTP/1.0\r\n", replies.UNRECOGNIZED),
    (b"\r\n", replies.UNRECOGNIZED),
])
def test_commands_willi_answers_itself(line: bytes, answer: bytes) -> None:
    for proto in (make(), in_transaction()):
        assert say(proto, line) == ([], answer)


def test_small_commands_answer_with_the_spec_codes() -> None:
    assert codes(replies.OK + replies.HELP + replies.CANNOT_VRFY + replies.NOT_IMPLEMENTED + replies.NO_AUTH
                 + replies.UNRECOGNIZED) == [b"250 2.0.0", b"214 2.0.0", b"252 2.0.0", b"502 5.5.1", b"502 5.5.1",
                                             b"500 5.5.2"]


def test_noop_keeps_the_transaction() -> None:
    proto = in_transaction()
    say(proto, b"NOOP\r\n")
    assert proto.mail is not None and proto.accepted == 1


# --- QUIT and the error limit --------------------------------------------------------
def test_quit_answers_221_and_ends_the_session() -> None:
    proto = in_transaction()
    events, out = say(proto, b"QUIT\r\nNOOP\r\n")
    assert [type(e) for e in events] == [Quit]
    assert out == replies.CLOSING
    assert proto.phase is Phase.CLOSED
    assert proto.next_event() is None
    proto.feed(b"NOOP\r\n")
    assert proto.next_event() is None and proto.take_output() == b""
    assert proto.buffered == 0


def test_errors_up_to_the_limit_give_421_and_close() -> None:
    proto = ready(max_errors=3)
    assert say(proto, b"BOGUS\r\nVRFY\r\n") == ([], replies.UNRECOGNIZED + replies.SYNTAX_PARAMETER)
    events, out = say(proto, b"RCPT TO:<a@b.example>\r\nNOOP\r\n")
    assert [type(e) for e in events] == [Close]
    assert out == replies.NEED_MAIL + replies.TOO_MANY_ERRORS
    assert codes(replies.TOO_MANY_ERRORS) == [b"421 4.7.0"]
    assert proto.phase is Phase.CLOSED and proto.next_event() is None


def test_refusals_of_willis_own_count_toward_the_limit_too_so_recipients_cannot_be_probed_for_ever() -> None:
    proto = ready(max_errors=3)
    say(proto, b"MAIL FROM:<alice@example.org>\r\n")
    denied = replies.relay_denied("x@elsewhere.test")
    for n in range(3):
        [event], _ = say(proto, b"RCPT TO:<x@elsewhere.test>\r\nNOOP\r\n")
        assert isinstance(event, Rcpt)
        proto.answer(denied, False, error=True)  # the relay: no route, relay access denied
        events, out = say(proto, b"")
        if n < 2:
            assert events == [] and out == denied + replies.OK  # the NOOP behind it still served
    assert [type(e) for e in events] == [Close] and out == denied + replies.TOO_MANY_ERRORS
    assert proto.error_codes == ["554", "554", "554"] and proto.phase is Phase.CLOSED


def test_a_non_ascii_path_without_smtputf8_is_553_5_6_7() -> None:
    proto = ready()
    assert say(proto, "MAIL FROM:<jösé@origin.test>\r\n".encode()) == ([], replies.UNDECLARED_UTF8)
    assert say(proto, b"MAIL FROM:<s@origin.test>\r\n") == ([], replies.SENDER_OK)
    assert say(proto, "RCPT TO:<ünï@dest.test>\r\n".encode()) == ([], replies.UNDECLARED_UTF8)
    assert proto.error_codes == ["553", "553"]
    # Declared, both go through (towards an upstream without SMTPUTF8 the relay says 553 itself).
    proto = ready()
    assert say(proto, "MAIL FROM:<jösé@origin.test> SMTPUTF8\r\n".encode()) == ([], replies.SENDER_OK)
    [event], _ = say(proto, "RCPT TO:<ünï@dest.test>\r\n".encode())
    assert isinstance(event, Rcpt) and event.address.local == "ünï"


def test_good_commands_do_not_count_as_errors() -> None:
    proto = ready(max_errors=2)
    say(proto, b"BOGUS\r\n")
    for _ in range(20):
        say(proto, b"NOOP\r\nRSET\r\n")
    assert proto.errors == 1 and proto.phase is Phase.COMMAND


def test_line_too_long_is_500_and_the_rest_of_it_is_skipped() -> None:
    proto = ready()
    events, out = say(proto, b"NOOP " + b"QUIT\r" * 2000 + b"\r\nNOOP\r\n")
    assert events == []
    assert out == replies.LINE_TOO_LONG + replies.OK
    assert codes(replies.LINE_TOO_LONG) == [b"500 5.5.2"]


def test_line_too_long_fed_in_pieces_is_one_error() -> None:
    proto = ready(line_limit=64)
    out = b""
    for _ in range(100):
        out += say(proto, b"x" * 50)[1]
    out += say(proto, b"\r\nNOOP\r\n")[1]
    assert out == replies.LINE_TOO_LONG + replies.OK
    assert proto.errors == 1


def test_unprocessed_input_stays_bounded_while_reading_a_too_long_line() -> None:
    proto = ready()
    for _ in range(200):
        say(proto, b"y" * 65536)
        assert proto.buffered <= 4096


def test_command_ending_in_bare_lf_is_refused_not_run() -> None:
    proto = in_transaction()
    events, out = say(proto, b"QUIT\nRSET\n")
    assert events == []
    assert out == replies.BARE_LF_COMMAND * 2
    assert proto.phase is Phase.COMMAND and proto.mail is not None


def test_control_characters_do_not_end_a_command_line() -> None:
    proto = ready()
    # If \r, \x0b, \x0c or NEL ended the line, "QUIT" would be a command of its own.
    for sep in (b"\r", b"\x0b", b"\x0c", b"\xc2\x85"):
        events, out = say(proto, b"NOOP x" + sep + b"QUIT\r\n")
        assert (events, out) == ([], replies.OK)


# --- pipelining ------------------------------------------------------------------------
def test_pipelined_transaction_yields_one_event_at_a_time_with_replies_in_order() -> None:
    proto = ready()
    proto.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<r1@x.example>\r\nRCPT TO:<r2@y.example>\r\nDATA\r\n")
    first = proto.next_event()
    assert isinstance(first, Rcpt) and str(first.address) == "r1@x.example"
    assert proto.next_event() is None and proto.next_event() is None
    proto.answer(b"250 2.1.5 r1\r\n", True)
    second = proto.next_event()
    assert isinstance(second, Rcpt) and str(second.address) == "r2@y.example"
    assert proto.next_event() is None
    proto.answer(b"550 5.1.1 r2 unknown\r\n", False)
    third = proto.next_event()
    assert isinstance(third, Data)
    assert proto.next_event() is None
    proto.answer(GO_AHEAD, True)
    assert proto.take_output() == replies.SENDER_OK + b"250 2.1.5 r1\r\n" + b"550 5.1.1 r2 unknown\r\n" + GO_AHEAD


def test_output_waits_behind_a_pending_event() -> None:
    proto = ready()
    proto.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<r@x.example>\r\nNOOP\r\nBOGUS\r\n")
    assert isinstance(proto.next_event(), Rcpt)
    assert proto.take_output() == replies.SENDER_OK
    assert not proto.has_output
    assert proto.buffered == len(b"NOOP\r\nBOGUS\r\n")
    proto.answer(RCPT_OK, True)
    assert proto.next_event() is None
    assert proto.take_output() == RCPT_OK + replies.OK + replies.UNRECOGNIZED


def test_answer_without_a_pending_event_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError):
        ready().answer(RCPT_OK, True)


def test_reply_queues_a_reply_from_outside_any_event() -> None:
    proto = ready()
    proto.reply(replies.SHUTTING_DOWN)
    assert proto.has_output and proto.take_output() == replies.SHUTTING_DOWN


def test_prerendered_ehlo_replies_are_used_when_given() -> None:
    proto = ServerProtocol(ServerSettings("mx.example"), ehlo_plain=b"250 plain\r\n", ehlo_tls=b"250 tls\r\n")
    assert say(proto, b"EHLO c\r\n")[1] == b"250 plain\r\n"


# --- STARTTLS ----------------------------------------------------------------------------
def test_starttls_without_tls_configured_is_502() -> None:
    assert say(ready(), b"STARTTLS\r\n") == ([], replies.NOT_IMPLEMENTED)


def test_starttls_before_ehlo_is_503() -> None:
    assert say(make(starttls=True), b"STARTTLS\r\n") == ([], replies.NEED_HELO)


def test_starttls_inside_a_mail_transaction_is_503_and_the_transaction_stays() -> None:
    proto = ready(starttls=True)
    say(proto, b"MAIL FROM:<a@example.org>\r\n")
    assert say(proto, b"STARTTLS\r\n") == ([], replies.TRANSACTION_IN_PROGRESS)
    assert proto.mail is not None and not proto.tls_active


def test_starttls_with_an_argument_is_501() -> None:
    assert say(ready(starttls=True), b"STARTTLS now\r\n") == ([], replies.SYNTAX_NO_ARGS)


def test_commands_pipelined_after_starttls_are_thrown_away() -> None:
    proto = ready(starttls=True)
    events, out = say(proto, b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example.org>\r\n")
    assert [type(e) for e in events] == [StartTLS]
    assert out == replies.READY_FOR_TLS
    assert proto.buffered == 0
    proto.tls_started()
    assert proto.next_event() is None
    assert proto.take_output() == b""
    assert proto.tls_active


def test_plaintext_arriving_before_the_handshake_is_thrown_away_too() -> None:
    proto = ready(starttls=True)
    [event], _ = say(proto, b"STARTTLS\r\n")
    assert isinstance(event, StartTLS)
    proto.feed(b"RSET\r\n")  # a second plaintext packet, read before the switch
    assert proto.next_event() is None
    proto.tls_started()
    assert proto.next_event() is None
    assert proto.take_output() == b""


def test_after_tls_the_session_starts_over_and_needs_ehlo_again() -> None:
    proto = ready(starttls=True)
    say(proto, b"MAIL FROM:<a@b.example>\r\n")
    say(proto, b"STARTTLS\r\n")
    proto.tls_started()
    assert proto.mail is None and proto.helo is None
    assert say(proto, b"MAIL FROM:<a@b.example>\r\n") == ([], replies.NEED_HELO)
    say(proto, b"EHLO client.example\r\n")
    assert say(proto, b"MAIL FROM:<a@b.example>\r\n") == ([], replies.SENDER_OK)


def test_second_starttls_inside_tls_is_503() -> None:
    proto = ready(starttls=True)
    say(proto, b"STARTTLS\r\n")
    proto.tls_started()
    assert say(proto, b"STARTTLS\r\n") == ([], replies.TLS_ALREADY_ACTIVE)
    say(proto, b"EHLO client.example\r\n")
    assert say(proto, b"STARTTLS\r\n") == ([], replies.TLS_ALREADY_ACTIVE)
    assert codes(replies.TLS_ALREADY_ACTIVE)[0].startswith(b"503")


# --- properties: whole, byte by byte, at random points ------------------------------------
def drive(proto: ServerProtocol, chunks: list[bytes]) -> tuple[list[str], bytes]:
    """Play the session: answer every event, stream accepted bodies through a
    DataScanner and feed what follows the final dot back, as the session does."""
    log: list[str] = []
    out = bytearray()
    scanner: DataScanner | None = None
    for chunk in chunks:
        data = chunk
        while True:
            if scanner is not None:
                end = scanner.scan(data, 0, len(data))
                if end < 0:
                    break
                log.append(f"body {scanner.violation}")
                proto.body_done(QUEUED)
                scanner, data = None, data[end:]
            proto.feed(data)
            data = b""
            while (event := proto.next_event()) is not None:
                log.append(type(event).__name__ + (f" {event.address}" if isinstance(event, Rcpt) else ""))
                if isinstance(event, Rcpt):
                    proto.answer(RCPT_OK if event.address.domain.startswith("ok") else b"550 5.1.1 no\r\n",
                                 event.address.domain.startswith("ok"))
                elif isinstance(event, Data):
                    proto.answer(GO_AHEAD, True)
                    scanner = DataScanner(10_000)
                    data = proto.take_body_start()
                    break
                elif isinstance(event, StartTLS):
                    proto.tls_started()
            if scanner is None:
                break
        out += proto.take_output()
    return log, bytes(out)


_COMMANDS = [
    b"EHLO client.example\r\n", b"HELO c\r\n", b"MAIL FROM:<a@b.example>\r\n", b"MAIL FROM:<> SIZE=5000\r\n",
    b"MAIL FROM:<a@b.example> SIZE=x\r\n", b"RCPT TO:<r@ok.example>\r\n", b"RCPT TO:<r@no.example>\r\n",
    b"RCPT TO:<postmaster>\r\n", b"RCPT TO:<nodomain>\r\n", b"DATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\n",
    b"DATA\r\nbare\nlf\r\n.\r\n", b"RSET\r\n", b"NOOP\r\n", b"VRFY x\r\n", b"BOGUS\r\n", b"NOOP\n",
    b"NOOP " + b"x" * 100 + b"\r\n", b"BDAT 1 LAST\r\n", b"QUIT\r\n",
]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


def _well_formed(output: bytes) -> None:
    reader = ReplyReader()
    reader.feed(output)
    while reader.next_reply() is not None:
        pass
    assert not reader.pending
    assert all(re.fullmatch(rb"[2-5][0-9]{2}[ -][^\r\n]*", line) for line in output.split(b"\r\n")[:-1])


@settings(database=None, max_examples=300)
@given(script=st.lists(st.sampled_from(_COMMANDS), max_size=25), cuts=st.lists(st.integers(0, 5000), max_size=12))
def test_a_conversation_goes_the_same_whole_byte_by_byte_and_split_at_random(script: list[bytes], cuts: list[int]) -> None:
    data = b"".join(script)
    whole = drive(make(line_limit=64, max_errors=6), [data])
    assert drive(make(line_limit=64, max_errors=6), _split(data, cuts)) == whole
    if len(data) < 400:
        assert drive(make(line_limit=64, max_errors=6), [data[i : i + 1] for i in range(len(data))]) == whole
    _well_formed(whole[1])


@settings(database=None, max_examples=300)
@given(lines=st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(_COMMANDS)), max_size=20),
       cuts=st.lists(st.integers(0, 5000), max_size=8), tls=st.booleans())
def test_any_bytes_give_well_formed_replies_and_never_an_exception(lines: list[bytes], cuts: list[int], tls: bool) -> None:
    proto = make(line_limit=64, starttls=tls)
    proto.greet()
    log, out = drive(proto, _split(b"\r\n".join(lines) + b"\r\n", cuts))
    _well_formed(out)
    assert out.startswith(b"220 mx.example ESMTP\r\n")
