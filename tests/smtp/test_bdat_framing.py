"""BDAT framing on the client side (RFC 3030): the argument, refused chunks
read and thrown away, an unframeable size, DATA inside a BDAT transaction,
and the content checks and dot-stuffing of willi.smtp.bdat at every split."""

from __future__ import annotations

import pytest

from tests.smtp.test_server import in_transaction, ready, say
from willi import replies
from willi.smtp.bdat import BadChunkSize, ChunkScanner, DotStuffer, parse_bdat
from willi.smtp.body import BAD_LINE_ENDING, NUL, TOO_BIG
from willi.smtp.server import Bdat, Close, Phase


@pytest.mark.parametrize(("arg", "parsed"), [
    (b"0 LAST", (0, True, True)), (b"10", (10, False, True)), (b"10 last", (10, True, True)),
    (b"10 LAST x", (10, True, False)), (b"10 FIRST", (10, False, False)),
])
def test_bdat_arguments(arg: bytes, parsed: tuple[int, bool, bool]) -> None:
    assert parse_bdat(arg) == parsed


@pytest.mark.parametrize("arg", [b"", b"LAST", b"-1", b"1e3", b"\xd9\xa1", b"1" * 21, b"0x10 LAST"])
def test_a_size_that_is_not_a_number_cannot_be_framed(arg: bytes) -> None:
    with pytest.raises(BadChunkSize):
        parse_bdat(arg)


def test_an_unframeable_bdat_gets_501_and_the_session_closes() -> None:
    proto = in_transaction()
    [event], out = say(proto, b"BDAT ten LAST\r\nRSET\r\n")
    assert isinstance(event, Close) and out == replies.BDAT_UNFRAMED and proto.phase is Phase.CLOSED


@pytest.mark.parametrize(("setup", "refusal"), [
    (lambda: ready(), replies.NEED_MAIL),
    (lambda: _mail_only(), replies.NO_VALID_RECIPIENTS),
])
def test_a_refused_chunk_is_read_and_thrown_away_never_parsed(setup, refusal: bytes) -> None:
    proto = setup()
    chunk = b"QUIT\r\nRSET\r\n"
    events, out = say(proto, b"BDAT %d LAST\r\n" % len(chunk) + chunk[:5])
    assert events == [] and out == refusal
    events, out = say(proto, chunk[5:] + b"NOOP\r\n")  # the rest of it, then a real command
    assert events == [] and out == replies.OK


def _mail_only():
    proto = ready()
    say(proto, b"MAIL FROM:<a@b.example>\r\n")
    return proto


def test_data_inside_a_bdat_transaction_is_503() -> None:
    proto = in_transaction()
    [event], _ = say(proto, b"BDAT 3\r\nabc")
    assert isinstance(event, Bdat)
    proto.start_body()
    assert proto.take_body_start() == b"abc"
    proto.answer(replies.chunk_received(3), True)
    proto.take_output()
    assert say(proto, b"DATA\r\n") == ([], replies.DATA_IN_BDAT)


def test_rcpt_after_a_chunk_is_503_never_a_recipient_inside_the_message() -> None:
    proto = in_transaction()
    say(proto, b"BDAT 3\r\nabc")
    proto.start_body()
    proto.take_body_start()
    proto.answer(replies.chunk_received(3), True)
    proto.take_output()
    assert say(proto, b"RCPT TO:<late@d.example>\r\n") == ([], replies.RCPT_AFTER_BDAT)


def test_after_the_last_chunk_a_data_transaction_may_follow() -> None:
    proto = in_transaction()
    say(proto, b"BDAT 0 LAST\r\n")
    proto.body_done(b"250 2.0.0 Ok\r\n")
    proto.take_output()
    say(proto, b"MAIL FROM:<a@b.example>\r\n")
    [event], _ = say(proto, b"RCPT TO:<c@d.example>\r\n")
    proto.answer(b"250 2.1.5 Ok\r\n", True)
    [event], _ = say(proto, b"DATA\r\n")
    assert type(event).__name__ == "Data"


def test_after_the_upstream_is_lost_between_chunks_a_new_mail_starts_a_clean_transaction() -> None:
    proto = in_transaction()
    say(proto, b"BDAT 3\r\nabc")
    proto.start_body()
    proto.take_body_start()
    proto.answer(replies.UPSTREAM_LOST, False)  # the relay: the upstream went away under the chunk
    proto.void_transaction()
    proto.take_output()
    # The rest of the client's chunks are refused (and read), then MAIL needs no RSET ...
    assert say(proto, b"BDAT 2 LAST\r\nde") == ([], replies.UPSTREAM_LOST)
    assert say(proto, b"MAIL FROM:<a@b.example>\r\n") == ([], replies.SENDER_OK)
    # ... and nothing of the BDAT transaction carries over: RCPT and DATA work again.
    [event], _ = say(proto, b"RCPT TO:<c@d.example>\r\n")
    assert type(event).__name__ == "Rcpt"
    proto.answer(b"250 2.1.5 Ok\r\n", True)
    [event], _ = say(proto, b"DATA\r\n")
    assert type(event).__name__ == "Data"


# --- content checks ------------------------------------------------------------------
@pytest.mark.parametrize(("content", "violation"), [
    (b"ok\r\nfine\r\n", None), (b"bare\nlf\r\n", BAD_LINE_ENDING), (b"bare\rcr\r\n", BAD_LINE_ENDING),
    (b"cr\r\r\n", BAD_LINE_ENDING), (b"nul\0\r\n", NUL), (b"ends in cr\r", BAD_LINE_ENDING),
    (b"\r\n.\r\n is data in BDAT\r\n", None), (b"x" * 11, TOO_BIG),
])
def test_chunk_content_is_checked_the_same_at_every_split(content: bytes, violation) -> None:
    for cut in range(len(content) + 1):
        scanner = ChunkScanner(max_size=10 if violation is TOO_BIG else 1000)
        scanner.scan(content, 0, cut)
        scanner.scan(content, cut, len(content))
        scanner.finish()
        assert scanner.violation is violation, cut


def test_pass_mode_checks_only_the_size() -> None:
    scanner = ChunkScanner(max_size=100, strict=False)
    scanner.scan(b"bare\nlf\0\r", 0, 9)
    scanner.finish()
    assert scanner.violation is None


@pytest.mark.parametrize("content", [b".a\r\n.b\r\n\r\n", b"no final crlf", b"", b"..\r\n.\r\n", b"\r\n.\r\n"])
def test_dot_stuffing_is_the_same_at_every_split_and_ends_with_crlf_dot_crlf(content: bytes) -> None:
    lines = content.split(b"\r\n")
    stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    expected = stuffed + (b".\r\n" if content.endswith(b"\r\n") or not content else b"\r\n.\r\n")
    for cut in range(len(content) + 1):
        stuffer = DotStuffer()
        first, second = stuffer.feed(content[:cut]), stuffer.feed(content[cut:])
        assert not first.endswith(b"\r") and not second.endswith(b"\r")  # a CR waits for its next byte
        assert first + second + stuffer.finish() == expected, cut
