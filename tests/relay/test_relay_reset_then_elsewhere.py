"""A reset transaction, then one routed to another upstream, without a socket
(and the same after the RSET that follows a refused middle BDAT chunk).

The fuzzer's input 8444 of seed 20261201 (tests/fuzz/test_fuzz_findings.py,
"reset-then-pipelined-second-transaction"): the client pipelines its first
transaction, RSET, and a second transaction with its body; the first is
bound to upstream A, the second routes to upstream B. The RSET's reply is
owed by A, and A is let go before it comes (the session drops every reply of
a link the relay no longer holds), so B's first reply must not be taken for
it. Before the fix the relay swallowed B's reply to MAIL as the RSET's, took
B's reply to RCPT for MAIL's, and waited for a reply B never owed: the
client's RCPT was never answered, its pipelined DATA and body never carried
out.
"""

from __future__ import annotations

from tests.support.playbook import FakeLink, Playbook, addr, rcpt, reply
from willi.relay import State
from willi.relay import commands as c
from willi.relay import events as e
from willi.routing import Route

A = Route("a.test")
B = Route("b.test")
OK_MAIL = b"250 2.1.0 Ok\r\n"
OK_RCPT = b"250 2.1.5 Ok\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
QUEUED = b"250 2.0.0 Ok: queued as 42\r\n"


def mail(sender: str) -> bytes:
    return b"MAIL FROM:<%s>\r\n" % sender.encode()


def rcpt_line(to: str) -> bytes:
    return b"RCPT TO:<%s>\r\n" % to.encode()


def test_after_a_reset_a_transaction_routed_to_another_upstream_hears_its_own_replies() -> None:
    pb = Playbook()
    first, second = "fz7@origin.test", "fz0@origin.test"
    # The client: MAIL, RCPT other@a.test (accepted by A), a DATA line the
    # client protocol refuses itself, then RSET.
    assert (pb
            >> rcpt("other@a.test", first) << c.LookUp(addr("other@a.test"))
            >> e.RouteAnswered(A) << c.Dial(A)
            >> e.LinkReady(FakeLink(A)) << c.Send((mail(first), rcpt_line("other@a.test")))
            >> reply(OK_MAIL)
            >> reply(OK_RCPT) << c.Answer(OK_RCPT, True)
            >> e.ClientReset() << c.Send((b"RSET\r\n",)))
    # Pipelined behind the RSET: MAIL, RCPT user@b.test (routed to B before
    # A answered the RSET: A is let go with its reply still owed), DATA, body.
    assert (pb
            >> rcpt("user@b.test", second) << c.LookUp(addr("user@b.test"))
            >> e.RouteAnswered(B) << c.DropLink(abort=False) << c.Dial(B)
            >> e.LinkReady(FakeLink(B)) << c.Send((mail(second), rcpt_line("user@b.test")))
            >> reply(OK_MAIL)  # B's reply to MAIL: the client's RCPT waits for the next
            >> reply(OK_RCPT) << c.Answer(OK_RCPT, True))
    assert pb.relay.state is State.IDLE and pb.relay.upstream_open
    body = b"Subject: big\r\n\r\n" + b"y" * 78 + b"\r\n.\r\n"
    assert (pb
            >> e.ClientData() << c.Send((b"DATA\r\n",))
            >> reply(GO_AHEAD) << c.Answer(GO_AHEAD, True) << c.ReadBody()
            >> e.BodyReceived(body, 0, len(body)) << c.SendBody(body) << c.Send((), c.DATA_TIMEOUT)
            >> reply(QUEUED) << c.BodyDone(QUEUED))
    *_, transaction = pb.records
    assert (transaction.upstream, transaction.accepted, transaction.code) == ("smtp://b.test", ("user@b.test",), 250)


def test_after_a_refused_middle_chunk_the_next_transaction_elsewhere_hears_its_own_replies() -> None:
    # The other reply nobody waits for: the RSET after a refused middle BDAT
    # chunk (RFC 3030 §4.2), still owed by A when the next transaction goes to B.
    reject = b"552 5.3.4 Chunk too big for me\r\n"
    chunking = {"PIPELINING": "", "8BITMIME": "", "SMTPUTF8": "", "CHUNKING": ""}
    pb = Playbook()
    first, second = "fz7@origin.test", "fz0@origin.test"
    assert (pb
            >> rcpt("other@a.test", first) << c.LookUp(addr("other@a.test"))
            >> e.RouteAnswered(A) << c.Dial(A)
            >> e.LinkReady(FakeLink(A, capabilities=chunking)) << c.Send((mail(first), rcpt_line("other@a.test")))
            >> reply(OK_MAIL)
            >> reply(OK_RCPT) << c.Answer(OK_RCPT, True)
            >> e.ClientBdat(2, False) << c.Send((b"BDAT 2\r\n",)) << c.ReadBody()
            >> e.BodyReceived(b"ab", 0, 2) << c.SendBody(b"ab")
            >> reply(reject) << c.Send((b"RSET\r\n",)) << c.Answer(reject, False)
            >> e.ClientBdat(2, True) << c.ReadBody()
            >> e.BodyReceived(b"cd", 0, 2) << c.BodyDone(reject))
    assert (pb
            >> rcpt("user@b.test", second) << c.LookUp(addr("user@b.test"))
            >> e.RouteAnswered(B) << c.DropLink(abort=False) << c.Dial(B)
            >> e.LinkReady(FakeLink(B)) << c.Send((mail(second), rcpt_line("user@b.test")))
            >> reply(OK_MAIL)
            >> reply(OK_RCPT) << c.Answer(OK_RCPT, True))
