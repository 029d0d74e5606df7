"""The relay machine, conversation by conversation, without a socket.

Each test is the exact exchange: `>>` what happens (the client says, the
router answers, the upstream says), `<<` what Willi does. The machine alone
is played (tests/support/playbook.py); the integration tests keep what needs
real sockets.

Which test covers which row of SPEC §2 (the client-only rows are played
against ServerProtocol in tests/smtp/test_server.py):

| SPEC §2 row / bullet | tests |
| --- | --- |
| (connects) limits, 220 | tests/smtp/test_server.py::test_greeting_names_the_host; tests/integration/test_limits.py (listener) |
| EHLO/HELO: capabilities; resets any transaction | test_server.py::test_ehlo_inside_a_transaction_resets_it; here: test_a_reset_sends_rset_upstream_and_ends_the_transaction |
| STARTTLS: 220, injection, start over | test_server.py::test_commands_pipelined_after_starttls_are_thrown_away; here: test_starttls_lets_the_link_go_and_starts_the_handshake |
| MAIL FROM: Willi answers, upstream sees it when a recipient picks it | test_server.py::test_mail_is_answered_by_willi_itself; here: test_the_first_routed_recipient_dials_and_replays_the_envelope_pipelined |
| RCPT: no route 554 5.7.1 | test_no_route_is_relay_access_denied_and_refused |
| RCPT: lookup failure 451 4.3.0 | test_a_failed_lookup_is_451_and_deferred |
| RCPT: first routed: dial, replay, relay verbatim | test_the_first_routed_recipient_dials_and_replays_the_envelope_pipelined, test_without_pipelining_the_envelope_goes_one_command_at_a_time |
| RCPT: MAIL reject relayed instead | test_a_refused_mail_from_is_the_answer_to_the_rcpt |
| RCPT: same upstream forwarded | test_a_second_recipient_for_the_same_upstream_is_forwarded |
| RCPT: different upstream 452 4.5.3 | test_a_recipient_routed_elsewhere_gets_452_4_5_3 |
| RCPT: WILLI_SPLIT_RECIPIENTS=off | test_with_splitting_off_it_goes_to_the_first_upstream |
| RCPT: first refused, later binds elsewhere | test_only_an_accepted_recipient_binds_the_transaction |
| RCPT: more than WILLI_MAX_RECIPIENTS 452 | test_more_than_max_recipients_is_452_4_5_3_never_routed_and_recorded |
| LMTP: one recipient (SPEC §4) | test_lmtp_carries_one_recipient_per_transaction |
| upstream 421 demoted to 451 (§7) | test_an_upstream_421_at_rcpt_reaches_the_client_as_451_and_drops_the_link, test_an_upstream_421_to_the_message_is_451 |
| DATA: no accepted recipient 554 | test_server.py::test_data_without_an_accepted_recipient_is_554_5_5_1 |
| DATA: 354 relayed, body streamed, final relayed | test_a_message_streams_through_and_the_final_reply_is_relayed |
| DATA refused by the upstream | test_data_refused_upstream_is_relayed_and_the_transaction_stays |
| DATA: over the size limit 552 5.3.4 after end of data | test_an_oversized_body_drops_the_upstream_and_552_follows_the_end_of_data |
| BDAT: streamed to a CHUNKING upstream, replies in order | tests/relay/test_relay_bdat.py::test_chunks_stream_as_bdat_to_an_upstream_with_chunking_replies_in_order, tests/integration/test_bdat.py, tests/integration/test_exim_client.py |
| BDAT: translated to DATA (dot-stuffed, CRLF.CRLF) | test_relay_bdat.py::test_without_chunking_upstream_the_chunks_become_one_dot_stuffed_data_body, test_translated_chunks_end_with_crlf_dot_crlf_and_the_final_reply_is_relayed |
| BDAT: refused chunk read and discarded; unframeable size 5xx + close | tests/smtp/test_bdat_framing.py::test_a_refused_chunk_is_read_and_thrown_away_never_parsed, test_an_unframeable_bdat_gets_501_and_the_session_closes |
| BDAT: size across chunks, middle chunk rejected, client gone mid-chunk | test_relay_bdat.py::test_the_size_limit_counts_across_chunks, test_an_upstream_that_rejects_a_middle_chunk_has_every_later_chunk_answered_with_it, test_a_client_vanishing_mid_chunk_aborts_the_upstream_before_last_or_a_dot |
| RSET: 250, upstream reset too | test_a_reset_sends_rset_upstream_and_ends_the_transaction |
| NOOP HELP VRFY EXPN AUTH, unknown, errors | test_server.py::test_small_commands_answer_with_the_spec_codes, test_errors_up_to_the_limit_give_421_and_close |
| QUIT: 221, both sides closed | test_a_client_that_quits_after_rcpt_leaves_its_recipients_deferred |
| PIPELINING, replies in order | test_server.py::test_pipelined_transaction_yields_one_event_at_a_time_with_replies_in_order; here: test_commands_pipelined_behind_the_dot_go_back_to_the_client_protocol |
| line too long | test_server.py::test_line_too_long_is_500_and_the_rest_of_it_is_skipped |
| end of data CRLF.CRLF only; bare LF/CR/NUL refused | test_a_bare_lf_in_the_body_refuses_the_message_without_a_dot, tests/smtp/test_body.py |
| chunk-final CR held back (issue 9) | test_a_chunk_final_cr_is_held_back_until_the_next_byte_is_known, test_a_split_end_of_data_reaches_the_upstream_only_whole |
| reuse after the transaction, routes afresh | test_the_next_transaction_reuses_the_link_when_it_routes_there_again |
| timeouts: lookup, connect, upstream command, data, client idle | test_each_timeout_is_a_4xx_and_never_a_dot (parametrized), test_an_upstream_timeout_at_rcpt_is_451_4_4_2, test_an_upstream_that_stops_reading_the_body_gets_dropped_and_451_follows |
| timeouts: client idle, TLS handshake | tests/integration/test_faults.py, tests/integration/test_session_bugs.py |
| half-close | tests/integration/test_session_bugs.py::test_a_half_closed_client_gets_every_reply |
| upstream vanishing: 4xx, never 250, transaction over | test_an_upstream_lost_in_each_phase_is_a_4xx_never_250 (parametrized by phase), test_after_the_upstream_is_lost_the_transaction_is_over |
| client vanishing drops the upstream | test_a_client_gone_mid_body_aborts_the_upstream |
| a reused link found dead: dial anew | test_a_pooled_link_that_died_is_replaced_by_a_fresh_dial |
| fault isolation (issue 9) | tests/test_reactor.py, tests/integration/test_fault_isolation.py |
"""

from __future__ import annotations

import pytest

from tests.support.playbook import FakeLink, Playbook, addr, machine, rcpt, reply
from willi import replies
from willi.errors import UpstreamLost, UpstreamTimeout
from willi.records import RecipientRecord, TransactionRecord
from willi.relay import State
from willi.relay import commands as c
from willi.relay import events as e
from willi.routing import Route

A = Route("a.example.net")
B = Route("b.example.net")
MAIL = b"MAIL FROM:<s@origin.test>\r\n"
OK_MAIL = b"250 2.1.0 Ok\r\n"
OK_RCPT = b"250 2.1.5 Ok\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
QUEUED = b"250 2.0.0 Ok: queued as 42\r\n"


def rcpt_line(to: str) -> bytes:
    return b"RCPT TO:<%s>\r\n" % to.encode()


def bound(pb: Playbook, to: str = "a@a.example.net", link: FakeLink | None = None) -> FakeLink:
    """The client's first recipient accepted by upstream A."""
    link = link or FakeLink(A)
    assert (pb
            >> rcpt(to) << c.LookUp(addr(to))
            >> e.RouteAnswered(link.route) << c.Dial(link.route)
            >> e.LinkReady(link) << c.Send((MAIL, rcpt_line(to)))
            >> reply(OK_MAIL)
            >> reply(OK_RCPT) << c.Answer(OK_RCPT, True))
    return link


def in_body(pb: Playbook) -> FakeLink:
    link = bound(pb)
    assert (pb
            >> e.ClientData() << c.Send((b"DATA\r\n",))
            >> reply(GO_AHEAD) << c.Answer(GO_AHEAD, True) << c.ReadBody())
    return link


def body(data: bytes) -> e.BodyReceived:
    return e.BodyReceived(data, 0, len(data))


# --- RCPT ----------------------------------------------------------------------
def test_the_first_routed_recipient_dials_and_replays_the_envelope_pipelined() -> None:
    pb = Playbook()
    bound(pb)
    assert pb.relay.state is State.IDLE and pb.relay.upstream_open


def test_without_pipelining_the_envelope_goes_one_command_at_a_time() -> None:
    link = FakeLink(A, capabilities={})
    assert (Playbook()
            >> rcpt("a@a.example.net") << c.LookUp(addr("a@a.example.net"))
            >> e.RouteAnswered(A) << c.Dial(A)
            >> e.LinkReady(link) << c.Send((MAIL,))
            >> reply(OK_MAIL) << c.Send((rcpt_line("a@a.example.net"),))
            >> reply(OK_RCPT) << c.Answer(OK_RCPT, True))


def test_no_route_is_relay_access_denied_and_refused() -> None:
    pb = Playbook()
    denied = replies.relay_denied("x@nowhere.test")
    assert (pb
            >> rcpt("x@nowhere.test") << c.LookUp(addr("x@nowhere.test"))
            >> e.RouteAnswered(None) << c.Answer(denied, False, error=True))  # counted as a client error
    (record,) = pb.records
    assert (record.status, record.code, record.src) == ("refused", 554, "willi")


def test_a_failed_lookup_is_451_and_deferred() -> None:
    pb = Playbook()
    assert (pb
            >> rcpt("x@a.example.net") << c.LookUp(addr("x@a.example.net"))
            >> e.RouteAnswered(None, replies.LOOKUP_FAILED, "database down") << c.Answer(replies.LOOKUP_FAILED, False))
    assert pb.records[0].status == "deferred" and pb.notices[0].name == "lookup_failed"


def test_a_refused_mail_from_is_the_answer_to_the_rcpt() -> None:
    refused = b"550 5.7.1 Sender blocked\r\n"
    bad_rcpt = b"503 5.5.1 Error: need MAIL command\r\n"
    pb = Playbook()
    assert (pb
            >> rcpt("a@a.example.net") << c.LookUp(addr("a@a.example.net"))
            >> e.RouteAnswered(A) << c.Dial(A)
            >> e.LinkReady(FakeLink(A)) << c.Send((MAIL, rcpt_line("a@a.example.net")))
            >> reply(refused)
            >> reply(bad_rcpt) << c.Answer(refused, False))
    assert not pb.relay.upstream_open


def test_a_second_recipient_for_the_same_upstream_is_forwarded() -> None:
    pb = Playbook()
    bound(pb)
    assert (pb
            >> rcpt("b@a.example.net") << c.LookUp(addr("b@a.example.net"))
            >> e.RouteAnswered(A) << c.Send((rcpt_line("b@a.example.net"),))
            >> reply(OK_RCPT) << c.Answer(OK_RCPT, True))


def test_a_recipient_routed_elsewhere_gets_452_4_5_3() -> None:
    pb = Playbook()
    bound(pb)
    assert (pb
            >> rcpt("b@b.example.net") << c.LookUp(addr("b@b.example.net"))
            >> e.RouteAnswered(B) << c.Answer(replies.OTHER_UPSTREAM, False))


def test_with_splitting_off_it_goes_to_the_first_upstream() -> None:
    pb = Playbook(machine(split=False))
    bound(pb)
    assert (pb
            >> rcpt("b@b.example.net") << c.LookUp(addr("b@b.example.net"))
            >> e.RouteAnswered(B) << c.Send((rcpt_line("b@b.example.net"),))
            >> reply(OK_RCPT) << c.Answer(OK_RCPT, True))


def test_only_an_accepted_recipient_binds_the_transaction() -> None:
    unknown = b"550 5.1.1 User unknown\r\n"
    pb = Playbook()
    assert (pb
            >> rcpt("gone@a.example.net") << c.LookUp(addr("gone@a.example.net"))
            >> e.RouteAnswered(A) << c.Dial(A)
            >> e.LinkReady(FakeLink(A)) << c.Send((MAIL, rcpt_line("gone@a.example.net")))
            >> reply(OK_MAIL)
            >> reply(unknown) << c.Answer(unknown, False)
            # The next one routes elsewhere: the open MAIL on A is QUIT, not parked.
            >> rcpt("b@b.example.net") << c.LookUp(addr("b@b.example.net"))
            >> e.RouteAnswered(B) << c.DropLink(abort=False, reusable=False) << c.Dial(B))


def test_more_than_max_recipients_is_452_4_5_3_never_routed_and_recorded() -> None:
    pb = Playbook(machine(max_recipients=1))
    bound(pb)  # one accepted
    assert (pb
            >> rcpt("b@a.example.net") << c.Answer(replies.TOO_MANY_RECIPIENTS, False)  # no LookUp
            >> rcpt("c@b.example.net") << c.Answer(replies.TOO_MANY_RECIPIENTS, False))
    assert [(r.to, r.status, r.code, r.src) for r in pb.records] == [
        ("b@a.example.net", "deferred", 452, "willi"), ("c@b.example.net", "deferred", 452, "willi")]
    assert pb.relay.txn is not None and pb.relay.txn.refused == 2


def test_lmtp_carries_one_recipient_per_transaction() -> None:
    pb = Playbook()
    bound(pb, link=FakeLink(A, is_lmtp=True))
    assert (pb
            >> rcpt("b@a.example.net") << c.LookUp(addr("b@a.example.net"))
            >> e.RouteAnswered(A) << c.Answer(replies.ONE_RCPT_FOR_LMTP, False))


def test_an_upstream_421_at_rcpt_reaches_the_client_as_451_and_drops_the_link() -> None:
    pb = Playbook()
    bound(pb)
    assert (pb
            >> rcpt("b@a.example.net") << c.LookUp(addr("b@a.example.net"))
            >> e.RouteAnswered(A) << c.Send((rcpt_line("b@a.example.net"),))
            >> reply(b"421 4.3.2 Shutting down\r\n")
            << c.DropLink(abort=True, reusable=False)
            << c.Answer(b"451 4.3.2 Shutting down\r\n", False)
            << c.EndClientTransaction())


def test_an_upstream_timeout_at_rcpt_is_451_4_4_2() -> None:
    assert (Playbook()
            >> rcpt("a@a.example.net") << c.LookUp(addr("a@a.example.net"))
            >> e.RouteAnswered(A) << c.Dial(A)
            >> e.LinkReady(FakeLink(A)) << c.Send((MAIL, rcpt_line("a@a.example.net")))
            >> reply(OK_MAIL)
            >> e.UpstreamFailed(UpstreamTimeout("upstream timed out"))
            << c.DropLink(abort=True, reusable=False) << c.Answer(replies.UPSTREAM_TIMEOUT, False))


def test_a_pooled_link_that_died_is_replaced_by_a_fresh_dial() -> None:
    pb = Playbook()
    assert (pb
            >> rcpt("a@a.example.net") << c.LookUp(addr("a@a.example.net"))
            >> e.RouteAnswered(A) << c.Dial(A)
            >> e.LinkReady(FakeLink(A, reused=True)) << c.Send((MAIL, rcpt_line("a@a.example.net")))
            >> e.UpstreamFailed(UpstreamLost("connection closed by upstream"))
            << c.DropLink(abort=True) << c.Dial(A)
            >> e.LinkReady(FakeLink(A)) << c.Send((MAIL, rcpt_line("a@a.example.net")))
            >> reply(OK_MAIL)
            >> reply(OK_RCPT) << c.Answer(OK_RCPT, True))


def test_a_dial_that_fails_is_451_4_4_1_and_the_next_rcpt_routes_afresh() -> None:
    pb = Playbook()
    assert (pb
            >> rcpt("a@a.example.net") << c.LookUp(addr("a@a.example.net"))
            >> e.RouteAnswered(A) << c.Dial(A)
            >> e.DialFailed("connect: refused") << c.Answer(replies.UPSTREAM_UNAVAILABLE, False)
            >> rcpt("b@a.example.net") << c.LookUp(addr("b@a.example.net"))
            >> e.RouteAnswered(A) << c.Dial(A))


def test_smtputf8_towards_an_upstream_without_it_is_553_5_6_7() -> None:
    link = FakeLink(A, capabilities={"PIPELINING": ""})
    assert (Playbook()
            >> rcpt("a@a.example.net", SMTPUTF8=None) << c.LookUp(addr("a@a.example.net"))
            >> e.RouteAnswered(A) << c.Dial(A)
            >> e.LinkReady(link) << c.Answer(replies.NEED_SMTPUTF8, False))


# --- DATA and the body -------------------------------------------------------------
def test_a_message_streams_through_and_the_final_reply_is_relayed() -> None:
    pb = Playbook()
    in_body(pb)
    assert (pb
            >> body(b"Subject: hi\r\n\r\nhello\r\n") << c.SendBody(b"Subject: hi\r\n\r\nhello\r\n")
            >> body(b".\r\n") << c.SendBody(b".\r\n") << c.Send((), c.DATA_TIMEOUT)
            >> reply(QUEUED) << c.BodyDone(QUEUED))
    recipient, transaction = pb.records
    assert isinstance(recipient, RecipientRecord) and isinstance(transaction, TransactionRecord)
    assert (recipient.status, recipient.code, recipient.src) == ("sent", 250, "upstream")
    assert (transaction.txn, transaction.status, transaction.size) == ("s1.1", "sent", 22)
    assert transaction.accepted == ("a@a.example.net",) and transaction.upstream == "smtp://a.example.net"


def test_a_final_reply_that_is_no_2xx_is_never_recorded_as_sent() -> None:
    # A 3xx cannot end a message (RFC 5321 §4.2.1); relayed as it came, it is no delivery.
    pb = Playbook()
    in_body(pb)
    assert (pb
            >> body(b"x\r\n.\r\n") << c.SendBody(b"x\r\n.\r\n") << c.Send((), c.DATA_TIMEOUT)
            >> reply(b"354 what?\r\n") << c.BodyDone(b"354 what?\r\n"))
    assert [(r.status, r.code) for r in pb.records] == [("deferred", 354), ("deferred", 354)]


def test_commands_pipelined_behind_the_dot_go_back_to_the_client_protocol() -> None:
    pb = Playbook()
    in_body(pb)
    assert (pb
            >> body(b"hello\r\n.\r\nQUIT\r\n")
            << c.SendBody(b"hello\r\n.\r\n") << c.FeedClient(b"QUIT\r\n") << c.Send((), c.DATA_TIMEOUT))


def test_data_refused_upstream_is_relayed_and_the_transaction_stays() -> None:
    pb = Playbook()
    bound(pb)
    refused = b"554 5.5.1 Error: no valid recipients\r\n"
    assert pb >> e.ClientData() << c.Send((b"DATA\r\n",)) >> reply(refused) << c.Answer(refused, False)
    assert pb.relay.upstream_open and pb.relay.txn is not None


def test_an_upstream_421_to_the_message_is_451() -> None:
    pb = Playbook()
    in_body(pb)
    assert (pb
            >> body(b"x\r\n.\r\n") << c.SendBody(b"x\r\n.\r\n") << c.Send((), c.DATA_TIMEOUT)
            >> reply(b"421 4.4.2 Timeout\r\n")
            << c.DropLink(abort=True, reusable=False) << c.BodyDone(b"451 4.4.2 Timeout\r\n"))


def test_an_oversized_body_drops_the_upstream_and_552_follows_the_end_of_data() -> None:
    pb = Playbook(machine(max_size=5))
    in_body(pb)
    assert (pb
            >> body(b"0123456789\r\n") << c.DropLink(abort=True, reusable=False)
            >> body(b"more\r\n")
            >> body(b".\r\n") << c.BodyDone(replies.MESSAGE_TOO_BIG))
    assert [n.fields for n in pb.notices] == [(("kind", "too_big"),)]
    assert pb.records[-1].code == 552 and pb.records[-1].status == "bounced"


def test_a_bare_lf_in_the_body_refuses_the_message_without_a_dot() -> None:
    pb = Playbook()
    in_body(pb)
    assert (pb
            >> body(b"ok\r\n") << c.SendBody(b"ok\r\n")
            >> body(b"bad\n\r\n.\r\n") << c.DropLink(abort=True, reusable=False) << c.BodyDone(replies.BAD_BODY))


def test_a_chunk_final_cr_is_held_back_until_the_next_byte_is_known() -> None:
    # Issue 9: "...hello\r\n.\r" then "X\r\n.\r\n" must never show a lenient
    # upstream ".\r" as if it ended the data.
    pb = Playbook()
    in_body(pb)
    assert (pb
            >> body(b"hello\r\n.\r") << c.SendBody(b"hello\r\n.")
            >> body(b"X\r\n.\r\n") << c.DropLink(abort=True, reusable=False) << c.BodyDone(replies.BAD_BODY))


def test_a_split_end_of_data_reaches_the_upstream_only_whole() -> None:
    pb = Playbook()
    in_body(pb)
    assert (pb
            >> body(b"hello\r\n.\r") << c.SendBody(b"hello\r\n.")
            >> body(b"\n") << c.SendBody(b"\r") << c.SendBody(b"\n") << c.Send((), c.DATA_TIMEOUT))


MESSAGE = b"one\r\n.two\r\n\r\n.\r\n"


@pytest.mark.parametrize("cut", range(1, len(MESSAGE)))
def test_every_split_point_forwards_the_same_bytes_and_never_ends_on_an_unknown_cr(cut: int) -> None:
    pb = Playbook()
    in_body(pb)
    sent = b""
    for part in (MESSAGE[:cut], MESSAGE[cut:]):
        for cmd in pb.relay.handle(body(part), 1.0):
            if isinstance(cmd, c.SendBody):
                sent += bytes(cmd.data)
        # What the upstream has so far never ends in a CR whose next byte is unknown.
        assert not sent.endswith(b"\r")
    assert sent == MESSAGE and pb.relay.state is State.FINAL


def test_an_upstream_that_stops_reading_the_body_gets_dropped_and_451_follows() -> None:
    pb = Playbook()
    in_body(pb)
    assert (pb
            >> body(b"a lot\r\n") << c.SendBody(b"a lot\r\n")
            >> e.TimerFired(e.UPSTREAM_STALLED) << c.DropLink(abort=True, reusable=False)
            >> body(b".\r\n") << c.BodyDone(replies.UPSTREAM_TIMEOUT))


def test_a_client_gone_mid_body_aborts_the_upstream() -> None:
    pb = Playbook()
    in_body(pb)
    assert pb >> body(b"half a message\r\n") << c.SendBody(b"half a message\r\n")
    assert pb >> e.ClientGone("client lost") << c.DropLink(abort=True, reusable=False)
    recipient, transaction = pb.records
    assert (recipient.status, recipient.aborted, transaction.code) == ("deferred", "client lost", None)


# --- upstream loss in each phase ----------------------------------------------------
LOST = UpstreamLost("connection closed by upstream")


def _to_mail_sent(pb: Playbook) -> None:
    assert (pb >> rcpt("a@a.example.net") << c.LookUp(addr("a@a.example.net"))
            >> e.RouteAnswered(A) << c.Dial(A)
            >> e.LinkReady(FakeLink(A)) << c.Send((MAIL, rcpt_line("a@a.example.net"))))


def _to_data_sent(pb: Playbook) -> None:
    bound(pb)
    assert pb >> e.ClientData() << c.Send((b"DATA\r\n",))


def _to_final(pb: Playbook) -> None:
    in_body(pb)
    assert pb >> body(b"x\r\n.\r\n") << c.SendBody(b"x\r\n.\r\n") << c.Send((), c.DATA_TIMEOUT)


@pytest.mark.parametrize(("setup", "event", "expected"), [
    (_to_mail_sent, e.UpstreamFailed(LOST),
     [c.DropLink(abort=True), c.Answer(replies.UPSTREAM_LOST, False)]),
    (bound, e.UpstreamLost(LOST), [c.EndClientTransaction()]),
    (_to_data_sent, e.UpstreamFailed(LOST),
     [c.DropLink(abort=True, reusable=False), c.Answer(replies.UPSTREAM_LOST, False), c.EndClientTransaction()]),
    (in_body, e.UpstreamLost(LOST), [c.DropLink(abort=True, reusable=False)]),
    (_to_final, e.UpstreamFailed(LOST), [c.DropLink(abort=True, reusable=False), c.BodyDone(replies.UPSTREAM_LOST)]),
    # A write found the link gone before the command awaiting its reply went out.
    (_to_final, e.UpstreamLost(LOST), [c.DropLink(abort=True, reusable=False), c.BodyDone(replies.UPSTREAM_LOST)]),
    (_to_data_sent, e.UpstreamLost(LOST),
     [c.DropLink(abort=True, reusable=False), c.Answer(replies.UPSTREAM_LOST, False), c.EndClientTransaction()]),
], ids=["at-mail", "idle-after-rcpt", "at-data", "mid-body", "awaiting-final", "write-failed-before-final",
        "write-failed-before-data-reply"])
def test_an_upstream_lost_in_each_phase_is_a_4xx_never_250(setup, event, expected) -> None:
    pb = Playbook()
    setup(pb)
    pb >> event
    for cmd in expected:
        pb << cmd
    assert pb
    if isinstance(event, e.UpstreamLost) and pb.relay.state is State.DRAIN:
        assert pb >> body(b".\r\n") << c.BodyDone(replies.UPSTREAM_LOST)
    assert pb.relay.state is State.IDLE and pb.relay.link is None
    assert all(r.code != 250 for r in pb.records if isinstance(r, TransactionRecord))
    # Reported with the target the transaction went to (willi_upstream_failures_total{target=...}).
    failed = [dict(n.fields) for n in pb.notices if n.name == "upstream_failed"]
    assert failed and all(f["target"] == "smtp://a.example.net" for f in failed), failed


def test_after_the_upstream_is_lost_the_transaction_is_over() -> None:
    # Issue 8 item 6: the next MAIL (the client protocol allows it without
    # RSET) routes afresh: a new transaction, a new dial.
    pb = Playbook()
    bound(pb)
    assert pb >> e.ClientData() << c.Send((b"DATA\r\n",))
    assert (pb >> e.UpstreamFailed(LOST)
            << c.DropLink(abort=True, reusable=False) << c.Answer(replies.UPSTREAM_LOST, False)
            << c.EndClientTransaction())
    assert pb >> rcpt("a@a.example.net") << c.LookUp(addr("a@a.example.net")) >> e.RouteAnswered(A) << c.Dial(A)
    assert [r.txn for r in pb.records if isinstance(r, TransactionRecord)] == ["s1.1"]
    assert pb.relay.txn is not None and pb.relay.txn.txn == "s1.2"


# --- RSET, STARTTLS, QUIT, reuse -----------------------------------------------------
def test_a_reset_sends_rset_upstream_and_ends_the_transaction() -> None:
    pb = Playbook()
    bound(pb)
    assert pb >> e.ClientReset() << c.Send((b"RSET\r\n",))
    assert pb >> reply(b"250 2.0.0 Ok\r\n")  # swallowed: the client had its 250 from Willi
    assert pb.records[-1].aborted == "reset" and not pb.relay.upstream_open


def test_the_next_transaction_reuses_the_link_when_it_routes_there_again() -> None:
    pb = Playbook()
    in_body(pb)
    assert (pb >> body(b"x\r\n.\r\n") << c.SendBody(b"x\r\n.\r\n") << c.Send((), c.DATA_TIMEOUT)
            >> reply(QUEUED) << c.BodyDone(QUEUED)
            >> rcpt("c@a.example.net") << c.LookUp(addr("c@a.example.net"))
            >> e.RouteAnswered(A) << c.Send((MAIL, rcpt_line("c@a.example.net"))))


def test_the_next_transaction_routed_elsewhere_releases_the_link_and_dials() -> None:
    pb = Playbook()
    in_body(pb)
    assert (pb >> body(b"x\r\n.\r\n") << c.SendBody(b"x\r\n.\r\n") << c.Send((), c.DATA_TIMEOUT)
            >> reply(QUEUED) << c.BodyDone(QUEUED)
            >> rcpt("c@b.example.net") << c.LookUp(addr("c@b.example.net"))
            >> e.RouteAnswered(B) << c.DropLink(abort=False) << c.Dial(B))


def test_starttls_lets_the_link_go_and_starts_the_handshake() -> None:
    pb = Playbook()
    in_body(pb)
    assert (pb >> body(b"x\r\n.\r\n") << c.SendBody(b"x\r\n.\r\n") << c.Send((), c.DATA_TIMEOUT)
            >> reply(QUEUED) << c.BodyDone(QUEUED)
            >> e.ClientStartTLS() << c.DropLink(abort=False) << c.StartClientTLS())


def test_a_client_that_quits_after_rcpt_leaves_its_recipients_deferred() -> None:
    pb = Playbook()
    bound(pb)
    assert pb >> e.ClientGone("client quit") << c.DropLink(abort=False, reusable=False)
    recipient, transaction = pb.records
    assert (recipient.status, recipient.code, recipient.aborted) == ("deferred", None, "client quit")
    assert (transaction.status, transaction.code, transaction.aborted) == ("deferred", None, "client quit")


def test_an_event_the_table_does_not_allow_is_a_relay_error() -> None:
    from willi.relay import RelayError

    relay = machine()
    relay.handle(rcpt("a@a.example.net"), 1.0)
    with pytest.raises(RelayError, match="ClientData in state routing"):
        relay.handle(e.ClientData(), 2.0)


def test_after_the_end_late_news_is_ignored() -> None:
    pb = Playbook()
    assert pb >> rcpt("a@a.example.net") << c.LookUp(addr("a@a.example.net"))
    assert pb >> e.ClientGone("client lost") << c.DropLink(abort=True)
    assert pb >> e.RouteAnswered(A) >> e.LinkReady(FakeLink(A)) >> reply(OK_RCPT)


def test_a_link_that_fails_under_an_rset_fails_the_next_transactions_envelope_too() -> None:
    # RSET, then the next transaction's MAIL and RCPT pipelined on the same
    # link; it breaks: the RSET's failure is swallowed, the envelope's is not.
    pb = Playbook()
    bound(pb)
    assert (pb >> e.ClientReset() << c.Send((b"RSET\r\n",))
            >> rcpt("b@a.example.net") << c.LookUp(addr("b@a.example.net"))
            >> e.RouteAnswered(A) << c.Send((MAIL, rcpt_line("b@a.example.net")))
            >> e.UpstreamFailed(LOST)
            >> e.UpstreamFailed(LOST) << c.DropLink(abort=True) << c.Dial(A))  # a reused link: dial anew


# --- each timeout (SPEC §2: 451 4.4.2, 451 4.3.0 for the lookup) ---------------------
TIMED_OUT = UpstreamTimeout("upstream timed out")


def _to_routing(pb: Playbook) -> None:
    assert pb >> rcpt("a@a.example.net") << c.LookUp(addr("a@a.example.net"))


def _to_dialing(pb: Playbook) -> None:
    _to_routing(pb)
    assert pb >> e.RouteAnswered(A) << c.Dial(A)


@pytest.mark.parametrize(("setup", "event", "expected"), [
    (_to_routing, e.RouteAnswered(None, replies.LOOKUP_FAILED, "lookup timed out"),
     [c.Answer(replies.LOOKUP_FAILED, False)]),
    (_to_dialing, e.DialFailed("connect timed out"), [c.Answer(replies.UPSTREAM_UNAVAILABLE, False)]),
    (_to_data_sent, e.UpstreamFailed(TIMED_OUT),
     [c.DropLink(abort=True, reusable=False), c.Answer(replies.UPSTREAM_TIMEOUT, False), c.EndClientTransaction()]),
    (_to_final, e.UpstreamFailed(TIMED_OUT),
     [c.DropLink(abort=True, reusable=False), c.BodyDone(replies.UPSTREAM_TIMEOUT)]),
    (in_body, e.ClientGone("client timeout"), [c.DropLink(abort=True, reusable=False)]),
], ids=["lookup", "connect", "command-at-data", "final-reply", "client-idle-mid-body"])
def test_each_timeout_is_a_4xx_and_never_a_dot(setup, event, expected) -> None:
    pb = Playbook()
    setup(pb)
    pb >> event
    for cmd in expected:
        pb << cmd
    assert pb
    assert not any(isinstance(r, TransactionRecord) and r.code == 250 for r in pb.records)
