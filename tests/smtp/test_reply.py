"""ReplyReader: upstream replies out of a byte stream, however it is split;
anything that is not an SMTP reply is a ReplyError, never a crash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from willi.smtp.reply import MAX_LINE, MAX_LINES, Reply, ReplyError, ReplyReader


def read(chunks: list[bytes]) -> list[Reply]:
    reader = ReplyReader()
    out: list[Reply] = []
    for chunk in chunks:
        reader.feed(chunk)
        while (reply := reader.next_reply()) is not None:
            out.append(reply)
    return out


def splits(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, and cut in two at every point."""
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    return ways + [[data[:i], data[i:]] for i in range(1, len(data))]


def summary(replies: list[Reply]) -> list[tuple[int, list[bytes], bytes]]:
    return [(r.code, r.lines, r.raw) for r in replies]


def test_single_line_reply() -> None:
    [reply] = read([b"250 2.1.0 Ok\r\n"])
    assert (reply.code, reply.lines, reply.raw) == (250, [b"250 2.1.0 Ok"], b"250 2.1.0 Ok\r\n")
    assert reply.positive and reply.text == "2.1.0 Ok"


def test_multi_line_reply_is_one_reply() -> None:
    data = b"250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
    [reply] = read([data])
    assert reply.code == 250
    assert reply.lines == [b"250-mx.example", b"250-PIPELINING", b"250 8BITMIME"]
    assert reply.raw == data
    assert reply.text == "mx.example PIPELINING 8BITMIME"


def test_replies_split_at_every_point_parse_the_same() -> None:
    data = b"220 mx ESMTP\r\n250-mx\r\n250-SIZE 100\r\n250 STARTTLS\r\n554 5.7.1 no\r\n"
    expected = summary(read([data]))
    assert [code for code, _, _ in expected] == [220, 250, 554]
    for chunks in splits(data):
        assert summary(read(chunks)) == expected, chunks


def test_nothing_until_the_last_line_of_a_multi_line_reply() -> None:
    reader = ReplyReader()
    reader.feed(b"250-mx\r\n250-SIZE\r\n")
    assert reader.next_reply() is None
    assert reader.pending
    reader.feed(b"250 OK\r\n")
    assert reader.next_reply() is not None
    assert not reader.pending


def test_code_alone_is_a_complete_reply() -> None:
    [reply] = read([b"250\r\n"])
    assert reply.code == 250 and reply.raw == b"250\r\n"


def test_bare_lf_line_ends_are_normalised_to_crlf_in_raw() -> None:
    [reply] = read([b"250-a\n250 b\r\n"])
    assert reply.raw == b"250-a\r\n250 b\r\n"


def test_text_is_kept_verbatim() -> None:
    data = b"550-5.1.1 <user@example.org>:  Recipient   address rejected\r\n550 5.1.1 see \xc3\xa9 http://x/?a=b\r\n"
    [reply] = read([data])
    assert reply.raw == data


def test_negative_reply_is_not_positive() -> None:
    assert not read([b"451 4.3.0 later\r\n"])[0].positive
    assert not read([b"354 go ahead\r\n"])[0].positive


def test_code_changing_within_a_multi_line_reply_is_an_error() -> None:
    for chunks in splits(b"250-mx\r\n251 ok\r\n"):
        with pytest.raises(ReplyError):
            read(chunks)


@pytest.mark.parametrize(
    "garbage",
    [b"hello\r\n", b"25\r\n", b"\r\n", b"2x0 ok\r\n", b"2500 ok\r\n", b"250_ok\r\n", b"199 ok\r\n", b"650 ok\r\n",
     b"\xc2\xb250 ok\r\n", b"HTTP/1.1 400 Bad Request\r\n"],
)
def test_garbage_is_an_error(garbage: bytes) -> None:
    with pytest.raises(ReplyError):
        read([garbage])


def test_line_at_the_limit_is_accepted_however_split() -> None:
    line = b"250 " + b"x" * (MAX_LINE - 5) + b"\r\n"  # MAX_LINE octets before the LF
    for chunks in ([line], [line[:-1], line[-1:]], [line[:100], line[100:]]):
        assert read(chunks)[0].raw == line


def test_too_long_line_is_an_error_whole() -> None:
    with pytest.raises(ReplyError):
        read([b"250 " + b"x" * 5000 + b"\r\n"])


def test_too_long_line_is_an_error_byte_by_byte() -> None:
    data = b"250 " + b"x" * 5000 + b"\r\n"
    with pytest.raises(ReplyError):
        read([data[i : i + 1] for i in range(len(data))])


def test_too_long_line_after_a_complete_reply_is_an_error_in_one_feed() -> None:
    data = b"250 ok\r\n" + b"x" * (MAX_LINE + 1)
    reader = ReplyReader()
    with pytest.raises(ReplyError):
        reader.feed(data)
        while reader.next_reply() is not None:
            pass


def test_line_without_lf_stops_growing_at_the_limit() -> None:
    reader = ReplyReader()
    reader.feed(b"250 " + b"x" * (MAX_LINE - 4))
    with pytest.raises(ReplyError):
        reader.feed(b"x")


def test_reply_of_max_lines_is_accepted() -> None:
    data = b"250-x\r\n" * (MAX_LINES - 1) + b"250 x\r\n"
    assert len(read([data])[0].lines) == MAX_LINES


def test_reply_with_too_many_lines_is_an_error() -> None:
    data = b"250-x\r\n" * MAX_LINES + b"250 x\r\n"
    with pytest.raises(ReplyError):
        read([data])


def test_endless_continuation_lines_are_an_error_before_the_reply_ends() -> None:
    reader = ReplyReader()
    with pytest.raises(ReplyError):
        for _ in range(MAX_LINES + 1):
            reader.feed(b"250-x\r\n")
            assert reader.next_reply() is None


def test_clear_forgets_unread_bytes_and_lines() -> None:
    reader = ReplyReader()
    reader.feed(b"250-half\r\n250 injected\r\n220 also")
    reader.clear()
    assert not reader.pending
    assert reader.next_reply() is None
    reader.feed(b"250 fresh\r\n")
    assert reader.next_reply().raw == b"250 fresh\r\n"  # type: ignore[union-attr]


def test_repr_shows_code_and_raw() -> None:
    assert repr(read([b"250 ok\r\n"])[0]) == "Reply(250, b'250 ok\\r\\n')"


_reply = st.builds(
    lambda code, texts: b"".join(
        b"%d%s%s\r\n" % (code, b" " if i == len(texts) - 1 else b"-", text) for i, text in enumerate(texts)
    ),
    st.integers(200, 599),
    st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")), min_size=1, max_size=5),
)


@settings(database=None, max_examples=300)
@given(replies=st.lists(_reply, min_size=1, max_size=5), cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_random_replies_read_the_same_however_split(replies: list[bytes], cuts: list[int]) -> None:
    data = b"".join(replies)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    got = read(chunks)
    assert [r.raw for r in got] == replies
    assert summary(got) == summary(read([data]))


@settings(database=None, max_examples=500)
@given(data=st.binary(max_size=200), cut=st.integers(0, 200))
def test_any_bytes_parse_or_raise_reply_error(data: bytes, cut: int) -> None:
    outcomes = []
    for chunks in ([data], [data[:cut], data[cut:]]):
        try:
            outcomes.append(summary(read(chunks)))
        except ReplyError:
            outcomes.append("error")
    assert outcomes[0] == outcomes[1]
