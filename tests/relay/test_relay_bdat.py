"""BDAT through the relay machine (RFC 3030, SPEC §2 BDAT row), no sockets.

Towards an upstream with CHUNKING each chunk goes out as a BDAT of its own
and the upstream's replies come back in order; towards one without, the
chunks become one dot-stuffed DATA body. A refused chunk is read and thrown
away; an upstream that refuses a middle chunk has that reply repeated for
every later chunk (RFC 3030 §4.2); the size limit counts across chunks.
"""

from __future__ import annotations

from tests.relay.test_relay_conversations import (A, GO_AHEAD, MAIL, OK_MAIL, OK_RCPT, QUEUED, bound, body,
                                                   rcpt_line)
from tests.support.playbook import FakeLink, Playbook, addr, machine, rcpt, reply
from willi import replies
from willi.errors import UpstreamLost
from willi.records import TransactionRecord
from willi.relay import State
from willi.relay import commands as c
from willi.relay import events as e

CHUNKING = {"PIPELINING": "", "8BITMIME": "", "SMTPUTF8": "", "CHUNKING": ""}
CHUNK_OK = b"250 2.0.0 Ok: 6 octets\r\n"


def chunking(pb: Playbook) -> FakeLink:
    return bound(pb, link=FakeLink(A, capabilities=dict(CHUNKING)))


def test_chunks_stream_as_bdat_to_an_upstream_with_chunking_replies_in_order() -> None:
    pb = Playbook()
    chunking(pb)
    assert (pb
            >> e.ClientBdat(7, False) << c.Send((b"BDAT 7\r\n",)) << c.ReadBody()
            >> body(b"hello\r") << c.SendBody(b"hello\r")  # framed by size: a CR here ends nothing
            >> body(b"\nBDAT 3 LAST\r\n") << c.SendBody(b"\n") << c.FeedClient(b"BDAT 3 LAST\r\n")
            >> reply(CHUNK_OK) << c.Answer(CHUNK_OK, True)
            >> e.ClientBdat(3, True) << c.Send((b"BDAT 3\r\n",)) << c.ReadBody()
            >> body(b"ok\n") << c.DropLink(abort=True, reusable=False) << c.BodyDone(replies.BAD_BODY))


def test_the_last_chunks_reply_is_the_messages_and_is_recorded_as_chunking() -> None:
    # LAST goes up only once the upstream has taken the chunk: "BDAT n", its 250, then "BDAT 0 LAST".
    pb = Playbook()
    chunking(pb)
    assert (pb
            >> e.ClientBdat(4, True) << c.Send((b"BDAT 4\r\n",)) << c.ReadBody()
            >> body(b"hi\r\n") << c.SendBody(b"hi\r\n")
            >> reply(CHUNK_OK) << c.Send((b"BDAT 0 LAST\r\n",), c.DATA_TIMEOUT)
            >> reply(QUEUED) << c.BodyDone(QUEUED))
    txn = pb.records[-1]
    assert isinstance(txn, TransactionRecord) and (txn.status, txn.chunking, txn.size) == ("sent", True, 4)


def test_bdat_0_last_ends_the_message_at_once() -> None:
    pb = Playbook()
    chunking(pb)
    assert (pb
            >> e.ClientBdat(0, True) << c.Send((b"BDAT 0 LAST\r\n",), c.DATA_TIMEOUT)
            >> reply(QUEUED) << c.BodyDone(QUEUED))


def test_without_chunking_upstream_the_chunks_become_one_dot_stuffed_data_body() -> None:
    pb = Playbook()
    bound(pb)
    assert (pb
            >> e.ClientBdat(7, False) << c.Send((b"DATA\r\n",))
            >> reply(GO_AHEAD) << c.ReadBody()
            >> body(b".hello\r") << c.SendBody(b"..hello") << c.Answer(replies.chunk_received(7), True)
            >> e.ClientBdat(2, True) << c.ReadBody()
            >> body(b"\n.") << c.SendBody(b"\r\n..") << c.SendBody(b"\r\n.\r\n") << c.Send((), c.DATA_TIMEOUT)
            >> reply(QUEUED) << c.BodyDone(QUEUED))


def test_translated_chunks_end_with_crlf_dot_crlf_and_the_final_reply_is_relayed() -> None:
    pb = Playbook()
    bound(pb)
    assert (pb
            >> e.ClientBdat(3, False) << c.Send((b"DATA\r\n",))
            >> reply(GO_AHEAD) << c.ReadBody()
            >> body(b"a\r\n") << c.SendBody(b"a\r\n") << c.Answer(replies.chunk_received(3), True)
            >> e.ClientBdat(4, True) << c.ReadBody()
            >> body(b".b\r\n") << c.SendBody(b"..b\r\n") << c.SendBody(b".\r\n") << c.Send((), c.DATA_TIMEOUT)
            >> reply(QUEUED) << c.BodyDone(QUEUED))


def test_a_refused_data_at_translation_is_each_chunks_answer_and_its_bytes_are_thrown_away() -> None:
    refused = b"451 4.7.1 Try again later\r\n"
    pb = Playbook()
    bound(pb)
    assert (pb
            >> e.ClientBdat(2, False) << c.Send((b"DATA\r\n",))
            # MAIL and RCPT are still open upstream, the client's BDAT transaction has failed: reset them.
            >> reply(refused) << c.Send((b"RSET\r\n",)) << c.ReadBody()
            >> body(b"ab") << c.Answer(refused, False)
            >> e.ClientBdat(2, True) << c.ReadBody()
            >> body(b"cd") << c.BodyDone(refused)
            >> reply(b"250 2.0.0 Ok\r\n")  # the RSET's: nobody's to hear
            # The next transaction on the same link starts clean: no "503 nested MAIL".
            >> rcpt("b@a.example.net") << c.LookUp(addr("b@a.example.net"))
            >> e.RouteAnswered(A) << c.Send((MAIL, rcpt_line("b@a.example.net")))
            >> reply(OK_MAIL) >> reply(OK_RCPT) << c.Answer(OK_RCPT, True))
    assert [(r.status, r.code) for r in pb.records if isinstance(r, TransactionRecord)] == [("deferred", 451)]


def test_a_link_whose_translated_data_was_refused_goes_back_without_an_open_transaction() -> None:
    pb = Playbook()
    bound(pb)
    assert (pb
            >> e.ClientBdat(2, True) << c.Send((b"DATA\r\n",))
            >> reply(b"554 5.7.0 No\r\n") << c.Send((b"RSET\r\n",)) << c.ReadBody()
            >> body(b"ab") << c.BodyDone(b"554 5.7.0 No\r\n")
            # QUIT: the link may be parked, since the upstream has no transaction open on it.
            >> e.ClientGone("client quit") << c.DropLink(abort=False, reusable=True))


def test_an_upstream_lost_at_a_middle_chunk_ends_the_transaction_and_a_new_mail_needs_no_rset() -> None:
    pb = Playbook()
    chunking(pb)
    assert (pb
            >> e.ClientBdat(2, False) << c.Send((b"BDAT 2\r\n",)) << c.ReadBody()
            >> body(b"ab") << c.SendBody(b"ab")
            >> e.UpstreamLost(UpstreamLost("gone")) << c.DropLink(abort=True, reusable=False)
            << c.Answer(replies.UPSTREAM_LOST, False) << c.EndClientTransaction())
    assert pb.relay.state is State.IDLE and pb.relay.txn is None
    txn = pb.records[-1]
    assert isinstance(txn, TransactionRecord) and (txn.status, txn.code, txn.chunking) == ("deferred", 451, True)
    # The client protocol refuses the rest of its chunks; its next MAIL starts afresh and dials.
    assert (pb
            >> rcpt("b@a.example.net") << c.LookUp(addr("b@a.example.net"))
            >> e.RouteAnswered(A) << c.Dial(A))


def test_each_way_of_losing_the_upstream_under_a_middle_chunk_ends_the_transaction() -> None:
    closing = b"421 4.3.2 Shutting down\r\n"
    lost = e.UpstreamLost(UpstreamLost("gone"))
    ways = {
        "421 to the chunk": (dict(CHUNKING), [body(b"ab"), reply(closing)]),
        "lost before the chunk is all in": (dict(CHUNKING), [lost, body(b"ab")]),
        "stalled": (dict(CHUNKING), [e.TimerFired(e.UPSTREAM_STALLED), body(b"ab")]),
        "421 to the translated DATA": ({"PIPELINING": ""}, [reply(closing), body(b"ab")]),
        "lost at the translated DATA": ({"PIPELINING": ""}, [lost, body(b"ab")]),
    }
    for way, (caps, events) in ways.items():
        pb = Playbook()
        bound(pb, link=FakeLink(A, capabilities=caps))
        got = [cmd for event in [e.ClientBdat(2, False), *events] for cmd in pb.relay.handle(event, 1.0)
               if not isinstance(cmd, (c.Emit, c.Notice, c.Send, c.ReadBody, c.SendBody))]
        # The chunk hears a 4xx, then the transaction is over; the link is gone.
        assert got == [c.DropLink(abort=True, reusable=False), c.Answer(got[1].reply, False),  # type: ignore[union-attr]
                       c.EndClientTransaction()], way
        assert got[1].reply[:1] == b"4", way  # type: ignore[union-attr]
        assert pb.relay.txn is None and pb.relay.state is State.IDLE, way


def test_a_body_violation_in_a_middle_chunk_does_not_end_the_transaction() -> None:
    # The client's own fault, not the upstream's: later chunks hear the same 5xx (RFC 3030 §4.2).
    pb = Playbook()
    chunking(pb)
    assert (pb
            >> e.ClientBdat(3, False) << c.Send((b"BDAT 3\r\n",)) << c.ReadBody()
            >> body(b"a\nb") << c.DropLink(abort=True, reusable=False) << c.Answer(replies.BAD_BODY, False)
            >> e.ClientBdat(1, True) << c.ReadBody()
            >> body(b"c") << c.BodyDone(replies.BAD_BODY))


def test_an_upstream_that_rejects_a_middle_chunk_has_every_later_chunk_answered_with_it() -> None:
    reject = b"552 5.3.4 Chunk too big for me\r\n"
    pb = Playbook()
    chunking(pb)
    assert (pb
            >> e.ClientBdat(2, False) << c.Send((b"BDAT 2\r\n",)) << c.ReadBody()
            >> body(b"ab") << c.SendBody(b"ab")
            >> reply(reject) << c.Send((b"RSET\r\n",)) << c.Answer(reject, False)
            >> e.ClientBdat(2, False) << c.ReadBody()
            >> body(b"cd") << c.Answer(reject, False)
            >> e.ClientBdat(2, True) << c.ReadBody()
            >> body(b"ef") << c.BodyDone(reject))


def test_the_size_limit_counts_across_chunks() -> None:
    pb = Playbook(machine(max_size=5))
    chunking(pb)
    assert (pb
            >> e.ClientBdat(3, False) << c.Send((b"BDAT 3\r\n",)) << c.ReadBody()
            >> body(b"ab\n"[:2] + b"c") << c.SendBody(b"abc")
            >> reply(b"250 2.0.0 Ok\r\n") << c.Answer(b"250 2.0.0 Ok\r\n", True)
            >> e.ClientBdat(3, True) << c.Send((b"BDAT 3\r\n",)) << c.ReadBody()
            >> body(b"def") << c.DropLink(abort=True, reusable=False) << c.BodyDone(replies.MESSAGE_TOO_BIG))


def test_a_client_vanishing_mid_chunk_aborts_the_upstream_before_last_or_a_dot() -> None:
    for caps in (dict(CHUNKING), {"PIPELINING": ""}):
        pb = Playbook()
        bound(pb, link=FakeLink(A, capabilities=caps))
        pb >> e.ClientBdat(100, True)
        pb.relay.handle(pb.script[-1][0], 1.0)
        pb.script.pop()
        if pb.relay.state is State.CHUNK_DATA_SENT:
            pb.relay.handle(reply(GO_AHEAD), 2.0)
        pb.relay.handle(body(b"half"), 3.0)
        assert pb.relay.handle(e.ClientGone("client lost"), 4.0)[0] == c.DropLink(abort=True, reusable=False)


def test_an_upstream_lost_while_a_translated_chunk_streams_fails_the_chunk() -> None:
    pb = Playbook()
    bound(pb)
    assert (pb
            >> e.ClientBdat(4, True) << c.Send((b"DATA\r\n",))
            >> reply(GO_AHEAD) << c.ReadBody()
            >> body(b"ab") << c.SendBody(b"ab")
            >> e.UpstreamLost(UpstreamLost("gone")) << c.DropLink(abort=True, reusable=False)
            >> body(b"cd") << c.BodyDone(replies.UPSTREAM_LOST))


def test_an_rset_between_translated_chunks_aborts_the_upstream_never_types_rset_into_the_body() -> None:
    pb = Playbook()
    bound(pb)
    assert (pb
            >> e.ClientBdat(2, False) << c.Send((b"DATA\r\n",))
            >> reply(GO_AHEAD) << c.ReadBody()
            >> body(b"ab") << c.SendBody(b"ab") << c.Answer(replies.chunk_received(2), True)
            >> e.ClientReset() << c.DropLink(abort=True, reusable=False))


def test_a_refused_last_chunk_is_the_final_reply_and_no_bdat_0_last_can_complete_the_rest() -> None:
    # An upstream that refused the last chunk never sees LAST (RFC 3030 §4.2): the chunks it
    # took before cannot become a truncated message. Its transaction is reset instead.
    for reject in (b"554 5.6.0 Content refused\r\n", b"452 4.3.1 Out of space for now\r\n"):
        pb = Playbook()
        chunking(pb)
        assert (pb
                >> e.ClientBdat(2, False) << c.Send((b"BDAT 2\r\n",)) << c.ReadBody()
                >> body(b"ab") << c.SendBody(b"ab")
                >> reply(CHUNK_OK) << c.Answer(CHUNK_OK, True)
                >> e.ClientBdat(2, True) << c.Send((b"BDAT 2\r\n",)) << c.ReadBody()
                >> body(b"cd") << c.SendBody(b"cd")
                >> reply(reject) << c.Send((b"RSET\r\n",)) << c.BodyDone(reject)
                >> reply(b"250 2.0.0 Ok\r\n"))  # the RSET's: nobody's to hear
        assert pb.records[-1].status == ("bounced" if reject[:1] == b"5" else "deferred")


def test_a_refused_bdat_0_last_resets_the_upstream_so_the_next_transaction_starts_clean() -> None:
    refused = b"550 5.7.1 Message refused\r\n"
    pb = Playbook()
    chunking(pb)
    assert (pb
            >> e.ClientBdat(2, True) << c.Send((b"BDAT 2\r\n",)) << c.ReadBody()
            >> body(b"ab") << c.SendBody(b"ab")
            >> reply(CHUNK_OK) << c.Send((b"BDAT 0 LAST\r\n",), c.DATA_TIMEOUT)
            >> reply(refused) << c.Send((b"RSET\r\n",)) << c.BodyDone(refused)
            >> reply(b"250 2.0.0 Ok\r\n")  # the RSET's: nobody's to hear
            >> rcpt("b@a.example.net") << c.LookUp(addr("b@a.example.net"))
            >> e.RouteAnswered(A) << c.Send((MAIL, rcpt_line("b@a.example.net"))))


def test_an_empty_last_chunk_still_judges_the_cr_the_chunk_before_ended_in() -> None:
    # "hello\r" then "BDAT 0 LAST": the CR is bare, so the message is refused, and neither a
    # LAST nor a final dot goes up (towards an upstream without CHUNKING it would be "\r\r\n.\r\n").
    for caps in (dict(CHUNKING), {"PIPELINING": ""}):
        pb = Playbook()
        bound(pb, link=FakeLink(A, capabilities=caps))
        events = [e.ClientBdat(6, False), *([] if "CHUNKING" in caps else [reply(GO_AHEAD)]), body(b"hello\r"),
                  *([reply(CHUNK_OK)] if "CHUNKING" in caps else []), e.ClientBdat(0, True)]
        got = [cmd for event in events for cmd in pb.relay.handle(event, 1.0)]
        sent = b"".join(bytes(cmd.data) for cmd in got if isinstance(cmd, c.SendBody))
        lines = [line for cmd in got if isinstance(cmd, c.Send) for line in cmd.lines]
        assert c.BodyDone(replies.BAD_BODY) in got and c.DropLink(abort=True, reusable=False) in got, caps
        assert b"\r\n." not in sent and not any(line.endswith(b"LAST\r\n") for line in lines), (caps, sent, lines)
