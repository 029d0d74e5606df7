"""Relaying through a running Willi (SPEC §2, §4): the upstream's replies reach
the client as they are, transactions pick and reuse upstream connections, and
a route's targets fail over.

Every test starts its own Willi and upstreams (a Willi starts in a fraction of
a second), so connection and session counts belong to one test alone. The
client is a raw socket: it sends exactly the bytes meant (pipelined commands
in one packet) and sees exactly the bytes Willi answered.
"""

from __future__ import annotations

import pytest

from willi import replies
from tests.support.net import Reply, SmtpRawClient, free_port, wait_until
from tests.support.upstream import DEFAULT_CAPABILITIES, Delay, Session
from tests.support.willi_process import WilliProcess, open_session

SENDER = "sender@origin.test"
BODY = b"Subject: relay\r\n\r\nhello\r\n"


# --- helpers ----------------------------------------------------------------------
def csv_willi(launch, routes: dict[str, str], **env: str) -> WilliProcess:
    """A Willi routing by a CSV table of pattern -> server."""
    table = launch.tmp_path / f"routes-{len(list(launch.tmp_path.glob('routes-*')))}.csv"
    table.write_text("pattern;server\n" + "".join(f"{k};{v}\n" for k, v in routes.items()))
    return launch.willi({"WILLI_MAPPING_1": f"csv:{table}", **env})


def static_willi(launch, server: str, **env: str) -> WilliProcess:
    return launch.willi({"WILLI_MAPPING_1": f"static:{server}", **env})




def mail(client: SmtpRawClient, sender: str = SENDER) -> None:
    assert client.command(f"MAIL FROM:<{sender}>").raw == replies.SENDER_OK


def send_body(client: SmtpRawClient, body: bytes = BODY) -> Reply:
    """DATA already answered 354: the body, the final dot, the final reply."""
    client.send(body + b".\r\n")
    return client.read_reply()


def deliver(client: SmtpRawClient, rcpt: str, body: bytes = BODY) -> Reply:
    """One whole transaction; returns the final reply."""
    mail(client)
    assert client.command(f"RCPT TO:<{rcpt}>").code == 250
    assert client.command("DATA").code == 354
    return send_body(client, body)


def transactions(willi: WilliProcess, n: int) -> list[dict[str, str]]:
    def found() -> list[dict[str, str]] | None:
        lines = [r for r in willi.log_lines() if r.get("event") == "transaction"]
        return lines if len(lines) >= n else None

    return wait_until(found, 5.0, 0.02, f"{n} transaction log lines")


def reply_to(replies_by_address: dict[bytes, bytes]):
    """An on_command hook: RCPT replies by recipient address."""

    def hook(session: Session, line: bytes) -> bytes | None:
        if line.upper().startswith(b"RCPT TO:"):
            return replies_by_address.get(line[8:].strip(b"<>"))
        return None

    return hook


# --- upstream replies, verbatim ---------------------------------------------------------
@pytest.mark.parametrize(
    "reject",
    [
        b"550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown\r\n",
        b"550-5.1.1 first\r\n550 5.1.1 second\r\n",
        b"450 4.2.0 <gone@example.org>: Recipient address rejected: Greylisted, see\r\n",
        b"553-5.7.1 line one\r\n553-5.7.1 line two\r\n553 5.7.1 line three\r\n",
    ],
    ids=["550", "550-multi-line", "450", "553-three-lines"],
)
def test_an_upstream_rcpt_reject_reaches_the_client_byte_for_byte(launch, reject):
    upstream = launch.upstream(on_command=reply_to({b"gone@example.org": reject}))
    willi = static_willi(launch, upstream.address)
    with open_session(willi) as client:
        mail(client)
        assert client.command("RCPT TO:<gone@example.org>").raw == reject
        assert client.command("DATA").raw == replies.NO_VALID_RECIPIENTS  # no 250 anywhere
        assert client.command("QUIT").code == 221
    assert upstream.messages == []
    assert b"RCPT TO:<gone@example.org>" in upstream.commands
    (record,) = transactions(willi, 1)
    assert record["code"] == reject[:3].decode()
    assert record["text"] == reject[4:].split(b"\r\n")[0].decode()


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
def test_an_upstream_mail_from_reject_is_what_the_client_gets_for_its_first_rcpt(
    launch, pipelining
):
    reject = b"553-5.7.1 <spammer@bad.example>: Sender address rejected\r\n553 5.7.1 Access denied\r\n"
    capabilities = [c for c in DEFAULT_CAPABILITIES if pipelining or c != "PIPELINING"]
    upstream = launch.upstream(capabilities=capabilities, replies={"MAIL": reject})
    willi = static_willi(launch, upstream.address)
    with open_session(willi) as client:
        mail(client, "spammer@bad.example")  # Willi answers MAIL FROM itself
        assert client.command("RCPT TO:<rcpt@example.org>").raw == reject
        assert client.command("DATA").raw == replies.NO_VALID_RECIPIENTS
        assert client.command("QUIT").code == 221
    assert upstream.wait_for_command("MAIL") == b"MAIL FROM:<spammer@bad.example>"
    assert upstream.messages == []
    if not pipelining:
        assert "RCPT" not in upstream.verbs  # nothing follows a refused MAIL FROM


@pytest.mark.parametrize(
    "garbage",
    [b"550-5.1.1 first\r\n551 5.1.1 the code changed\r\n", b"hello, I am not SMTP\r\n"],
    ids=["code-changes-mid-reply", "not-a-reply"],
)
def test_an_upstream_reply_that_is_not_smtp_gives_451_and_a_fresh_connection_next(launch, garbage):
    upstream = launch.upstream(on_command=reply_to({b"garbled@example.org": garbage}))
    willi = static_willi(launch, upstream.address)
    with open_session(willi) as client:
        mail(client)
        assert client.command("RCPT TO:<garbled@example.org>").raw == replies.UPSTREAM_PROTOCOL
        upstream.wait_for_sessions_ended(1)  # never trusted again
        assert client.command("RCPT TO:<fine@example.org>").raw == b"250 2.1.5 Ok\r\n"
        assert client.command("DATA").code == 354
        assert send_body(client).code == 250
        assert client.command("QUIT").code == 221
    (message,) = upstream.wait_for_messages(1)
    assert (message.session, message.rcpt_tos) == (2, [b"fine@example.org"])


@pytest.mark.parametrize(
    "final",
    [
        b"554 5.7.1 spam\r\n",
        b"554-5.7.1 Message rejected as spam\r\n554 5.7.1 see https://upstream.test/why\r\n",
        b"451 4.7.1 try again later\r\n",
    ],
    ids=["554", "554-multi-line", "451"],
)
def test_an_upstream_reject_after_data_is_relayed_verbatim(launch, final):
    upstream = launch.upstream(replies={".": final})
    willi = static_willi(launch, upstream.address)
    with open_session(willi) as client:
        mail(client)
        assert client.command("RCPT TO:<rcpt@example.org>").raw == b"250 2.1.5 Ok\r\n"
        assert client.command("DATA").code == 354
        assert send_body(client).raw == final
        assert client.command("QUIT").code == 221
    (message,) = upstream.wait_for_messages(1)
    assert message.body == BODY and message.reply == final
    (record,) = transactions(willi, 1)
    assert record["code"] == final[:3].decode()
    assert record["rcpts"] == "rcpt@example.org"


def test_an_upstream_refusing_data_itself_is_relayed_and_no_body_is_sent(launch):
    refusal = b"451 4.3.0 Error: queue file write error\r\n"
    upstream = launch.upstream(replies={"DATA": refusal})
    willi = static_willi(launch, upstream.address)
    with open_session(willi) as client:
        mail(client)
        assert client.command("RCPT TO:<rcpt@example.org>").code == 250
        assert client.command("DATA").raw == refusal
        # Back in command state: a new transaction works on the same session.
        assert client.command("RSET").raw == replies.RESET_OK
        assert client.command("QUIT").code == 221
    assert upstream.messages == []


def test_every_accepting_reply_is_the_upstreams_own_text(launch):
    own = {
        "RCPT": b"250 2.1.5 recipient fine, says upstream\r\n",
        "DATA": b"354 upstream says go ahead\r\n",
        ".": b"250 2.0.0 Ok: queued as UPSTREAM42\r\n",
    }
    upstream = launch.upstream(replies=own)
    willi = static_willi(launch, upstream.address)
    with open_session(willi) as client:
        mail(client)
        assert client.command("RCPT TO:<rcpt@example.org>").raw == own["RCPT"]
        assert client.command("DATA").raw == own["DATA"]
        assert send_body(client).raw == own["."]
        assert client.command("QUIT").code == 221
    (record,) = transactions(willi, 1)
    assert (record["code"], record["text"]) == ("250", "2.0.0 Ok: queued as UPSTREAM42")
    assert record["upstream"] == f"smtp://{upstream.address}"


# --- pipelining ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "upstream_pipelining", [True, False], ids=["upstream-pipelining", "upstream-without"]
)
def test_pipelined_mail_rcpt_rcpt_data_in_one_packet_get_their_replies_in_order(
    launch, upstream_pipelining
):
    first = b"250 2.1.5 <first@example.org> ok (slowly)\r\n"
    second = b"250 2.1.5 <second@example.org> ok\r\n"

    def hook(session: Session, line: bytes):
        if line == b"RCPT TO:<first@example.org>":
            return Delay(0.3, first)  # the first reply is late; order must hold
        if line == b"RCPT TO:<second@example.org>":
            return second
        return None

    capabilities = [c for c in DEFAULT_CAPABILITIES if upstream_pipelining or c != "PIPELINING"]
    upstream = launch.upstream(
        capabilities=capabilities, on_command=hook, replies={"DATA": b"354 send it\r\n"}
    )
    willi = static_willi(launch, upstream.address)
    with open_session(willi) as client:
        client.send(
            f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<first@example.org>\r\n"
            "RCPT TO:<second@example.org>\r\nDATA\r\n".encode()
        )
        got = [r.raw for r in client.read_replies(4)]
        assert got == [replies.SENDER_OK, first, second, b"354 send it\r\n"]
        client.send(BODY + b".\r\nQUIT\r\n")
        final, bye = client.read_replies(2)
        assert final.raw.startswith(b"250 2.0.0 Ok: queued as ")
        assert bye.raw == replies.CLOSING
    (message,) = upstream.wait_for_messages(1)
    assert message.rcpt_tos == [b"first@example.org", b"second@example.org"]
    assert message.raw == BODY


def test_pipelined_replies_keep_their_order_when_willi_answers_some_itself(launch):
    upstream = launch.upstream(on_command=lambda s, line: (
        Delay(0.3) if line == b"RCPT TO:<first@example.org>" else None))
    willi = csv_willi(launch, {"example.org": upstream.address})
    with open_session(willi) as client:
        client.send(
            f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<first@example.org>\r\n"
            "RCPT TO:<stray@unmapped.example>\r\nRCPT TO:<second@example.org>\r\nDATA\r\n".encode()
        )
        got = [r.raw for r in client.read_replies(5)]
        assert got[:4] == [
            replies.SENDER_OK,
            b"250 2.1.5 Ok\r\n",
            b"554 5.7.1 <stray@unmapped.example>: Relay access denied\r\n",
            b"250 2.1.5 Ok\r\n",
        ]
        assert got[4].startswith(b"354 ")
        assert send_body(client).code == 250
        assert client.command("QUIT").code == 221
    (message,) = upstream.wait_for_messages(1)
    assert message.rcpt_tos == [b"first@example.org", b"second@example.org"]


def test_a_next_transaction_pipelined_behind_the_final_dot_is_answered_after_the_final_reply(
    launch,
):
    def slow_first_final_reply(session: Session, line: bytes):
        if line == b"." and session.rcpt_tos == [b"first@example.org"]:
            return Delay(0.3, b"250 2.0.0 Ok: first queued\r\n")
        return None

    upstream = launch.upstream(on_command=slow_first_final_reply)
    willi = static_willi(launch, upstream.address)
    with open_session(willi) as client:
        mail(client)
        assert client.command("RCPT TO:<first@example.org>").code == 250
        assert client.command("DATA").code == 354
        # The end of one message and the whole envelope of the next in one packet.
        client.send(
            BODY + f".\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<second@example.org>\r\nDATA\r\n".encode()
        )
        got = [r.raw for r in client.read_replies(4)]
        assert got[:3] == [b"250 2.0.0 Ok: first queued\r\n", replies.SENDER_OK, b"250 2.1.5 Ok\r\n"]
        assert got[3].startswith(b"354 ")
        assert send_body(client, b"second\r\n").raw.startswith(b"250 2.0.0 Ok: queued as ")
        assert client.command("QUIT").code == 221
    first, second = upstream.wait_for_messages(2)
    assert (first.rcpt_tos, first.raw) == ([b"first@example.org"], BODY)
    assert (second.rcpt_tos, second.raw) == ([b"second@example.org"], b"second\r\n")


# --- one upstream per transaction ---------------------------------------------------------
def test_a_recipient_of_another_upstream_gets_452_and_goes_there_in_the_next_transaction(launch):
    one, two = launch.upstream(), launch.upstream()
    willi = csv_willi(launch, {"one.example": one.address, "two.example": two.address})
    with open_session(willi) as client:
        mail(client)
        assert client.command("RCPT TO:<a@one.example>").code == 250
        assert client.command("RCPT TO:<b@two.example>").raw == replies.OTHER_UPSTREAM
        assert client.command("DATA").code == 354
        assert send_body(client).code == 250
        # The client retries the deferred recipient in a transaction of its own.
        final = deliver(client, "b@two.example")
        assert final.raw.startswith(b"250 2.0.0 Ok: queued as ")
        assert client.command("QUIT").code == 221
    assert [m.rcpt_tos for m in one.wait_for_messages(1)] == [[b"a@one.example"]]
    assert [m.rcpt_tos for m in two.wait_for_messages(1)] == [[b"b@two.example"]]
    assert "RCPT TO:<b@two.example>".encode() not in one.commands
    first, second = transactions(willi, 2)
    assert (first["rcpts"], first["refused"]) == ("a@one.example", "1")
    assert first["upstream"] == f"smtp://{one.address}"
    assert second["rcpts"] == "b@two.example"
    assert second["upstream"] == f"smtp://{two.address}"


def test_a_transaction_whose_first_recipient_was_refused_follows_the_next_recipient(launch):
    # Only an accepted recipient binds a transaction to its upstream.
    refusal = b"550 5.1.1 <gone@one.example>: User unknown\r\n"
    one = launch.upstream(on_command=reply_to({b"gone@one.example": refusal}))
    two = launch.upstream()
    willi = csv_willi(launch, {"one.example": one.address, "two.example": two.address})
    with open_session(willi) as client:
        mail(client)
        assert client.command("RCPT TO:<gone@one.example>").raw == refusal
        assert client.command("RCPT TO:<b@two.example>").raw == b"250 2.1.5 Ok\r\n"
        assert client.command("DATA").code == 354
        assert send_body(client).code == 250
        assert client.command("QUIT").code == 221
    assert [m.rcpt_tos for m in two.wait_for_messages(1)] == [[b"b@two.example"]]
    assert one.messages == []
    one.wait_for_sessions_ended(1)
    assert one.sessions[0].commands[-1] == b"QUIT"


def test_pipelined_recipients_of_two_upstreams_get_250_then_452_in_order(launch):
    one, two = launch.upstream(), launch.upstream()
    willi = csv_willi(launch, {"one.example": one.address, "two.example": two.address})
    with open_session(willi) as client:
        client.send(
            f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<a@one.example>\r\nRCPT TO:<b@two.example>\r\n"
            "RCPT TO:<c@one.example>\r\nDATA\r\n".encode()
        )
        got = [r.raw for r in client.read_replies(5)]
        assert got[:4] == [
            replies.SENDER_OK, b"250 2.1.5 Ok\r\n", replies.OTHER_UPSTREAM, b"250 2.1.5 Ok\r\n",
        ]
        assert got[4].startswith(b"354 ")
        assert send_body(client).code == 250
        assert client.command("QUIT").code == 221
    assert [m.rcpt_tos for m in one.wait_for_messages(1)] == [[b"a@one.example", b"c@one.example"]]
    assert two.sessions == []


def test_with_split_recipients_off_both_recipients_go_to_the_first_upstream(launch):
    one, two = launch.upstream(), launch.upstream()
    willi = csv_willi(
        launch, {"one.example": one.address, "two.example": two.address},
        WILLI_SPLIT_RECIPIENTS="off",
    )
    with open_session(willi) as client:
        mail(client)
        assert client.command("RCPT TO:<a@one.example>").code == 250
        assert client.command("RCPT TO:<b@two.example>").raw == b"250 2.1.5 Ok\r\n"
        assert client.command("DATA").code == 354
        assert send_body(client).code == 250
        assert client.command("QUIT").code == 221
    (message,) = one.wait_for_messages(1)
    assert message.rcpt_tos == [b"a@one.example", b"b@two.example"]
    assert two.sessions == []


# --- upstream connection reuse ------------------------------------------------------------
def test_two_transactions_to_the_same_upstream_share_one_upstream_connection(launch):
    upstream = launch.upstream()
    willi = csv_willi(launch, {"one.example": upstream.address})
    with open_session(willi) as client:
        assert deliver(client, "a@one.example").code == 250
        assert deliver(client, "b@one.example").code == 250
        assert client.command("QUIT").code == 221
    messages = upstream.wait_for_messages(2)
    assert [m.rcpt_tos for m in messages] == [[b"a@one.example"], [b"b@one.example"]]
    assert len(upstream.sessions) == 1
    assert {m.session for m in messages} == {1}
    # One greeting, one EHLO: the second transaction started with MAIL FROM.
    assert [c for c in upstream.sessions[0].commands if c.startswith(b"EHLO")] == [b"EHLO willi.test"]
    upstream.wait_for_sessions_ended(1)
    assert upstream.sessions[0].commands[-1] == b"QUIT"


def test_a_transaction_to_another_upstream_makes_willi_quit_the_first(launch):
    one, two = launch.upstream(), launch.upstream()
    willi = csv_willi(launch, {"one.example": one.address, "two.example": two.address})
    with open_session(willi) as client:
        assert deliver(client, "a@one.example").code == 250
        assert deliver(client, "b@two.example").code == 250
        one.wait_for_sessions_ended(1)  # while the client session is still open
        assert one.sessions[0].commands[-1] == b"QUIT"
        assert not two.sessions[0].ended.is_set()
        assert client.command("QUIT").code == 221
    assert len(one.sessions) == 1 and len(two.sessions) == 1
    two.wait_for_sessions_ended(1)
    assert two.sessions[0].commands[-1] == b"QUIT"


# --- failover ---------------------------------------------------------------------------------
def test_a_refused_first_target_fails_over_to_the_next(launch):
    live = launch.upstream()
    willi = static_willi(launch, f"127.0.0.1:{free_port()},{live.address}")
    with open_session(willi) as client:
        assert deliver(client, "rcpt@example.org").code == 250
        assert client.command("QUIT").code == 221
    (message,) = live.wait_for_messages(1)
    assert message.rcpt_tos == [b"rcpt@example.org"]
    (record,) = transactions(willi, 1)
    assert record["upstream"] == f"smtp://{live.address}"


def test_a_target_greeting_421_is_skipped(launch):
    busy = launch.upstream(greeting=b"421 4.3.2 busy.test Service not available\r\n")
    live = launch.upstream()
    willi = static_willi(launch, f"{busy.address},{live.address}")
    with open_session(willi) as client:
        assert deliver(client, "rcpt@example.org").code == 250
        assert client.command("QUIT").code == 221
    assert len(busy.sessions) == 1 and busy.commands == []
    assert [m.rcpt_tos for m in live.wait_for_messages(1)] == [[b"rcpt@example.org"]]


def test_all_targets_dead_gives_451_at_rcpt_and_nothing_is_delivered(launch):
    busy = launch.upstream(greeting=b"421 4.3.2 busy\r\n")
    server = f"127.0.0.1:{free_port()},{busy.address}"
    willi = static_willi(launch, server)
    with open_session(willi) as client:
        mail(client)
        assert client.command("RCPT TO:<rcpt@example.org>").raw == replies.UPSTREAM_UNAVAILABLE
        assert client.command("DATA").raw == replies.NO_VALID_RECIPIENTS
        assert client.command("QUIT").code == 221
    assert busy.messages == [] and busy.commands == []
    record = willi.wait_for_log(lambda r: r.get("event") == "upstream_unavailable")
    assert record["server"] == server
    (txn,) = transactions(willi, 1)
    assert (txn["code"], txn["refused"]) == ("451", "1")


def test_a_failed_target_is_not_tried_first_by_the_next_session(launch):
    busy = launch.upstream(greeting=b"421 4.3.2 busy\r\n")
    live = launch.upstream()
    willi = static_willi(launch, f"{busy.address},{live.address}", WILLI_UPSTREAM_RETRY_AFTER="30s")
    for rcpt in ("one@example.org", "two@example.org", "three@example.org"):
        with open_session(willi) as client:
            assert deliver(client, rcpt).code == 250
            assert client.command("QUIT").code == 221
    assert len(busy.sessions) == 1  # only the first session paid for it
    assert len(live.wait_for_messages(3)) == 3


def test_a_failed_target_is_tried_first_again_once_retry_after_has_passed(launch):
    busy = launch.upstream(greeting=b"421 4.3.2 busy\r\n")
    live = launch.upstream()
    # Dial order is what is tested: no parked connection may answer instead.
    willi = static_willi(launch, f"{busy.address},{live.address}", WILLI_UPSTREAM_RETRY_AFTER="1s",
                         WILLI_UPSTREAM_POOL_IDLE="0")

    def one_delivery() -> int:
        with open_session(willi) as client:
            assert deliver(client, "rcpt@example.org").code == 250
            assert client.command("QUIT").code == 221
        return len(busy.sessions)

    assert one_delivery() == 1
    wait_until(lambda: one_delivery() == 2, 5.0, 0.1, "the failed target to be tried again")


def test_a_failed_target_is_still_tried_when_no_other_target_is_left(launch):
    busy = launch.upstream(greeting=b"421 4.3.2 busy\r\n")
    willi = static_willi(launch, f"{busy.address},127.0.0.1:{free_port()}")
    for expected_sessions in (1, 2):
        with open_session(willi) as client:
            mail(client)
            assert client.command("RCPT TO:<rcpt@example.org>").raw == replies.UPSTREAM_UNAVAILABLE
            assert client.command("QUIT").code == 221
        assert len(busy.sessions) == expected_sessions


# --- LMTP ---------------------------------------------------------------------------------------
def test_an_lmtp_unix_socket_route_delivers_over_the_socket(launch, tmp_path):
    path = str(tmp_path / "lmtp.sock")
    delivered = b"250 2.0.0 <u@lmtp.example> delivered over the socket\r\n"
    lmtp = launch.upstream(host=path, lmtp=True, replies={".": delivered})
    willi = static_willi(launch, f"lmtp+unix:{path}")
    with open_session(willi) as client:
        assert deliver(client, "u@lmtp.example").raw == delivered
        assert client.command("QUIT").code == 221
    [message] = lmtp.wait_for_messages(1)
    assert message.rcpt_tos == [b"u@lmtp.example"] and message.body == BODY
    assert lmtp.sessions[0].commands[0].startswith(b"LHLO ")


def test_an_lmtp_route_says_lhlo_and_carries_one_recipient_per_transaction(launch):
    delivered = b"250 2.1.5 <a@lmtp.example> delivered to mailbox\r\n"
    lmtp = launch.upstream(lmtp=True, replies={".": delivered})
    willi = static_willi(launch, f"lmtp://{lmtp.address}")
    with open_session(willi) as client:
        mail(client)
        assert client.command("RCPT TO:<a@lmtp.example>").raw == b"250 2.1.5 Ok\r\n"
        assert client.command("RCPT TO:<b@lmtp.example>").raw == replies.ONE_RCPT_FOR_LMTP
        assert client.command("DATA").code == 354
        assert send_body(client).raw == delivered
        assert deliver(client, "b@lmtp.example").raw == delivered
        assert client.command("QUIT").code == 221
    messages = lmtp.wait_for_messages(2)
    assert [m.rcpt_tos for m in messages] == [[b"a@lmtp.example"], [b"b@lmtp.example"]]
    assert all(m.body == BODY for m in messages)
    assert len(lmtp.sessions) == 1
    hellos = [c for c in lmtp.commands if c[:4] in (b"LHLO", b"EHLO", b"HELO")]
    assert hellos == [b"LHLO willi.test"]


def test_an_lmtp_final_reject_is_relayed_verbatim(launch):
    full = b"552 5.2.2 <a@lmtp.example>: mailbox full\r\n"
    lmtp = launch.upstream(lmtp=True, replies={".": full})
    willi = static_willi(launch, f"lmtp://{lmtp.address}")
    with open_session(willi) as client:
        mail(client)
        assert client.command("RCPT TO:<a@lmtp.example>").code == 250
        assert client.command("DATA").code == 354
        assert send_body(client).raw == full
        assert client.command("QUIT").code == 221
    (record,) = transactions(willi, 1)
    assert record["code"] == "552"
    assert record["upstream"] == f"lmtp://{lmtp.address}"
