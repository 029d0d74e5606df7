"""BDAT through a live Willi (SPEC §2 BDAT row, RFC 3030, issue 8 item 5).

The client is a raw socket writing BDAT itself; the upstreams are our
ScriptableUpstream with CHUNKING and without it, which record the message
byte for byte. Through either, the message arrives byte-identical.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.support.net import SmtpRawClient, wait_until
from tests.support.upstream import DEFAULT_CAPABILITIES, FaultScript, ScriptableUpstream
from tests.support.willi_process import open_session
from willi import replies

CONTENT = (b"Subject: chunked\r\n\r\n.a line with a dot\r\nthen \r\n.\r\n in the middle is data\r\n"
           + "Grüße\r\n".encode())


@pytest.fixture(scope="module")
def upstreams(module_launch):
    return {
        "chunking": module_launch.upstream(capabilities=[*DEFAULT_CAPABILITIES, "CHUNKING"]),
        "plain": module_launch.upstream(),
    }


@pytest.fixture(scope="module")
def willi(module_launch, upstreams, tmp_path_factory):
    table = tmp_path_factory.mktemp("bdat") / "routes.csv"
    table.write_text("pattern;server;tls_verify\n"
                     f"chunking.test;{upstreams['chunking'].address};no\n"
                     f"plain.test;{upstreams['plain'].address};no\n")
    return module_launch.willi({"WILLI_MAPPING_1": f"csv:{table}", "WILLI_MAX_MESSAGE_SIZE": "100000"})


def envelope(client: SmtpRawClient, rcpt: str) -> None:
    assert client.command("MAIL FROM:<s@origin.test>").code == 250
    assert client.command(f"RCPT TO:<{rcpt}>").code == 250


def bdat(client: SmtpRawClient, chunk: bytes, last: bool = False) -> None:
    client.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk)


def latest(upstream: ScriptableUpstream, rcpt: str):
    return wait_until(lambda: next((m for m in reversed(upstream.messages) if m.rcpt_tos == [rcpt.encode()]), None),
                      10, 0.02, f"the message to {rcpt}")


def test_ehlo_offers_chunking_and_not_binarymime(willi):
    with SmtpRawClient(willi.host, willi.port) as client:
        client.read_reply()
        ehlo = client.command("EHLO client.test").raw
    assert b"250-CHUNKING\r\n" in ehlo or b"250 CHUNKING\r\n" in ehlo
    assert b"BINARYMIME" not in ehlo


@pytest.mark.parametrize("kind", ["chunking", "plain"])
def test_chunks_arrive_byte_identical_with_chunking_upstream_or_translated_to_data(willi, upstreams, kind):
    rcpt = f"whole@{kind}.test"
    with open_session(willi) as client:
        envelope(client, rcpt)
        bdat(client, CONTENT[:10])
        bdat(client, CONTENT[10:50])
        bdat(client, CONTENT[50:], last=True)
        first, second, final = client.read_replies(3)  # pipelined, answered in order
        assert (first.code, second.code, final.code) == (250, 250, 250), (first, second, final)
        assert client.command("QUIT").code == 221
    message = latest(upstreams[kind], rcpt)
    assert message.body == CONTENT
    assert message.via == ("BDAT" if kind == "chunking" else "DATA")
    if kind == "chunking":  # LAST only once the last chunk's bytes were in
        assert message.raw == CONTENT


@pytest.mark.parametrize("kind", ["chunking", "plain"])
def test_bdat_0_last_ends_the_message(willi, upstreams, kind):
    rcpt = f"zero@{kind}.test"
    with open_session(willi) as client:
        envelope(client, rcpt)
        bdat(client, b"Subject: z\r\n\r\nbody\r\n")
        bdat(client, b"", last=True)
        assert [r.code for r in client.read_replies(2)] == [250, 250]
    assert latest(upstreams[kind], rcpt).body == b"Subject: z\r\n\r\nbody\r\n"


@pytest.mark.parametrize("kind", ["chunking", "plain"])
def test_the_size_limit_counts_across_chunks(willi, upstreams, kind):
    rcpt = f"big@{kind}.test"
    line = b"x" * 998 + b"\r\n"
    with open_session(willi) as client:
        envelope(client, rcpt)
        for _ in range(60):  # 60 kB
            bdat(client, line * 30)[:0] if False else bdat(client, line * 1)
        client.read_replies(60)
        bdat(client, line * 50, last=True)  # 50 kB more: over 100000
        final = client.read_reply()
        assert final.raw == replies.MESSAGE_TOO_BIG
        assert client.command("NOOP").code == 250  # not one chunk byte was a command
    assert not any(m.rcpt_tos == [rcpt.encode()] for m in upstreams[kind].messages)


def test_a_refused_chunk_is_read_and_thrown_away_never_parsed_as_commands(willi, upstreams):
    smuggled = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@chunking.test>\r\nQUIT\r\n"
    with open_session(willi) as client:
        bdat(client, smuggled, last=True)  # out of sequence: no MAIL
        assert client.read_reply().raw == replies.NEED_MAIL
        assert client.command("NOOP").code == 250
        assert client.command("MAIL FROM:<s@origin.test>").code == 250
        assert client.command("RCPT TO:<nobody@unrouted.test>").code == 554
        bdat(client, smuggled, last=True)  # after a failed RCPT
        assert client.read_reply().raw == replies.NO_VALID_RECIPIENTS
        assert client.command("NOOP").code == 250
    assert b"MAIL FROM:<evil@x>" not in upstreams["chunking"].commands


def test_a_bdat_size_that_is_not_a_number_gets_5xx_and_the_session_closes(willi):
    with open_session(willi) as client:
        envelope(client, "nan@chunking.test")
        client.send(b"BDAT lots LAST\r\nQUIT\r\n")
        reply = client.read_reply()
        assert reply.raw == replies.BDAT_UNFRAMED
        assert client.expect_closed(timeout=5) == b""


def test_bdat_then_data_in_one_session_and_no_data_inside_a_bdat_transaction(willi, upstreams):
    with open_session(willi) as client:
        envelope(client, "mixed@plain.test")
        bdat(client, b"first\r\n")
        assert client.read_reply().code == 250
        assert client.command("DATA").raw == replies.DATA_IN_BDAT
        bdat(client, b"", last=True)
        assert client.read_reply().code == 250
        envelope(client, "second@plain.test")
        assert client.command("DATA").code == 354
        client.send(b"second\r\n")
        assert client.command(".").code == 250
    assert latest(upstreams["plain"], "mixed@plain.test").body == b"first\r\n"
    assert latest(upstreams["plain"], "second@plain.test").body == b"second\r\n"


@pytest.mark.parametrize("kind", ["chunking", "plain"])
def test_a_client_vanishing_mid_chunk_never_lets_the_upstream_see_last_or_a_dot(willi, upstreams, kind):
    upstream = upstreams[kind]
    rcpt = f"RCPT TO:<vanish@{kind}.test>".encode()
    before = len(upstream.messages)
    with SmtpRawClient(willi.host, willi.port) as client:
        client.read_reply()
        client.command("EHLO client.test")
        envelope(client, f"vanish@{kind}.test")
        client.send(b"BDAT 100000 LAST\r\n" + b"y" * 998 + b"\r\n")
        mine = wait_until(lambda: next((s for s in upstream.sessions if rcpt in s.commands), None), 5, 0.02,
                          "the upstream session of this transaction")
        wait_until(lambda: mine.commands[-1] != rcpt, 5, 0.02, "BDAT or DATA upstream")
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert mine.ended.wait(10), "the upstream connection was not dropped"
    assert len(upstream.messages) == before
    assert not any(c.upper().endswith(b"LAST") for c in mine.commands)


def refusing_the_second_bdat(module_launch, reply: bytes):
    """A CHUNKING upstream that answers its second BDAT line with `reply`, a
    Willi in front of it, and the BDAT lines the upstream saw."""
    seen: list[bytes] = []

    def on_command(session, line):
        if line.upper().startswith(b"BDAT"):
            seen.append(line)
            if len(seen) == 2:
                return reply
        return None

    upstream = module_launch.upstream(capabilities=[*DEFAULT_CAPABILITIES, "CHUNKING"], on_command=on_command)
    return upstream, module_launch.willi({"WILLI_MAPPING_1": f"static:{upstream.address}"}), seen


def test_an_upstream_that_rejects_a_middle_chunk_has_every_later_chunk_answered_with_it(module_launch):
    reject = b"554 5.6.0 I do not like this chunk\r\n"
    upstream, willi, _ = refusing_the_second_bdat(module_launch, reject)
    with open_session(willi) as client:
        envelope(client, "u@example.org")
        for part in (b"one\r\n", b"two\r\n", b"three\r\n"):
            bdat(client, part)
        bdat(client, b"four\r\n", last=True)
        got = [r.raw for r in client.read_replies(4)]
    assert got[0].startswith(b"250") and got[1:] == [reject, reject, reject]
    assert upstream.messages == []


@pytest.mark.parametrize("kind", ["chunking", "plain"])
def test_an_upstream_lost_between_chunks_ends_the_transaction_and_the_next_mail_needs_no_rset(module_launch,
                                                                                             kind):
    chunking = kind == "chunking"
    upstream = module_launch.upstream(
        capabilities=[*DEFAULT_CAPABILITIES, "CHUNKING"] if chunking else DEFAULT_CAPABILITIES,
        faults=FaultScript(close_on="BDAT" if chunking else "DATA", sessions={1}))
    willi = module_launch.willi({"WILLI_MAPPING_1": f"static:{upstream.address}"})
    with open_session(willi) as client:
        envelope(client, "u@example.org")
        bdat(client, b"one\r\n")
        assert client.read_reply().code == 451
        # The transaction is over: no "503 nested MAIL", no "503 RCPT after BDAT".
        envelope(client, "u@example.org")
        bdat(client, CONTENT, last=True)
        assert client.read_reply().code == 250
    assert latest(upstream, "u@example.org").body == CONTENT
    assert len(upstream.messages) == 1


def test_a_link_whose_translated_data_was_refused_is_reused_without_a_transaction_open(module_launch):
    refused: list[int] = []

    def on_command(session, line):
        if line.upper() == b"DATA" and not refused:
            refused.append(session.number)
            return b"451 4.7.1 Try DATA later\r\n"
        return None

    upstream = module_launch.upstream(on_command=on_command)  # no CHUNKING: BDAT becomes DATA
    willi = module_launch.willi({"WILLI_MAPPING_1": f"static:{upstream.address}",
                                 "WILLI_UPSTREAM_POOL_IDLE": "30s"})
    with open_session(willi) as client:
        envelope(client, "first@example.org")
        bdat(client, b"hello\r\n", last=True)
        assert client.read_reply().raw == b"451 4.7.1 Try DATA later\r\n"
        # Willi resets the upstream's half-open transaction at once.
        wait_until(lambda: b"RSET" in [line.upper() for line in upstream.sessions[0].commands], 5, 0.02,
                   "RSET upstream")
    # The next client gets the link from the pool (once the RSET's reply is in; else a new one),
    # and finds no MAIL of the first open on it.
    with open_session(willi) as client:
        envelope(client, "second@example.org")
        bdat(client, CONTENT, last=True)
        assert client.read_reply().code == 250
    assert latest(upstream, "second@example.org").body == CONTENT


def test_an_upstream_that_refuses_the_last_chunk_never_sees_last_so_no_truncated_message_is_queued(
        module_launch):
    refuse = b"452 4.3.1 Insufficient system storage\r\n"
    upstream, willi, seen = refusing_the_second_bdat(module_launch, refuse)
    with open_session(willi) as client:
        envelope(client, "u@example.org")
        bdat(client, b"Hi\r\n")
        assert client.read_reply().code == 250
        bdat(client, b"Bye\r\n", last=True)
        assert client.read_reply().raw == refuse
        assert client.command("NOOP").code == 250  # the session goes on
    assert seen[:2] == [b"BDAT 4", b"BDAT 5"] and not any(line.upper().endswith(b"LAST") for line in seen)
    assert upstream.messages == []  # "Hi" alone was never made a message


@pytest.mark.parametrize("kind", ["chunking", "plain"])
def test_a_cr_ending_the_content_before_an_empty_last_chunk_is_a_bare_cr(willi, upstreams, kind):
    rcpt = f"cr@{kind}.test"
    before = len(upstreams[kind].messages)
    with open_session(willi) as client:
        envelope(client, rcpt)
        bdat(client, b"hello\r")
        assert client.read_reply().code == 250
        bdat(client, b"", last=True)
        assert client.read_reply().raw == replies.BAD_BODY
    assert len(upstreams[kind].messages) == before


def test_memory_stays_bounded_for_a_1_gb_chunk_announced_in_one_bdat(willi, upstreams):
    line = b"z" * 998 + b"\r\n"
    block = line * 1024  # 1 MiB
    with open_session(willi) as client:
        envelope(client, "huge@plain.test")
        before = willi.rss_kib()
        client.send(b"BDAT 1000000000 LAST\r\n")
        deadline = time.monotonic() + 60
        for _ in range(40):  # 40 MiB of the announced 1 GB: far over the size limit, all thrown away
            client.sock.sendall(block)
            assert time.monotonic() < deadline
        growth = willi.rss_kib() - before
    assert growth < 20 * 1024, f"Willi grew by {growth} KiB"


def test_a_rcpt_between_translated_chunks_is_503_and_never_reaches_the_upstream_body(willi, upstreams):
    with open_session(willi) as client:
        envelope(client, "between@plain.test")
        bdat(client, b"first\r\n")
        assert client.read_reply().code == 250
        assert client.command("RCPT TO:<late@plain.test>").raw == replies.RCPT_AFTER_BDAT
        bdat(client, b"second\r\n", last=True)
        assert client.read_reply().code == 250
    message = latest(upstreams["plain"], "between@plain.test")
    assert message.body == b"first\r\nsecond\r\n" and message.rcpt_tos == [b"between@plain.test"]
