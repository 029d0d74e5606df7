"""LineBuffer: command lines out of a byte stream, however it is split,
with memory bounded whatever the client sends (SPEC §2, §7)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from willi.smtp.lines import LineBuffer, LineEvent

LIMIT = 4096


def drain(buffer: LineBuffer) -> list[bytes | LineEvent]:
    out: list[bytes | LineEvent] = []
    while (item := buffer.next_line()) is not None:
        out.append(item)
    return out


def run(chunks: list[bytes], limit: int = LIMIT) -> list[bytes | LineEvent]:
    """Feed chunk by chunk, taking every line that is complete after each."""
    buffer = LineBuffer(limit)
    out: list[bytes | LineEvent] = []
    for chunk in chunks:
        buffer.feed(chunk)
        out += drain(buffer)
    return out


def splits(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, and cut in two at every point."""
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    ways += [[data[:i], data[i:]] for i in range(1, len(data))]
    return ways


def test_complete_lines_come_out_without_their_crlf() -> None:
    assert run([b"EHLO a\r\nNOOP\r\n"]) == [b"EHLO a", b"NOOP"]


def test_an_unfinished_line_waits_for_its_crlf() -> None:
    buffer = LineBuffer()
    buffer.feed(b"EHLO a\r")
    assert buffer.next_line() is None
    buffer.feed(b"\n")
    assert buffer.next_line() == b"EHLO a"
    assert buffer.next_line() is None


def test_lines_split_at_every_point_parse_the_same() -> None:
    data = b"EHLO client.example\r\nMAIL FROM:<a@b>\r\n\r\nNOOP\r\n"
    for chunks in splits(data):
        assert run(chunks) == [b"EHLO client.example", b"MAIL FROM:<a@b>", b"", b"NOOP"], chunks


def test_memoryview_input_is_accepted() -> None:
    assert run([memoryview(b"NOOP\r\n")]) == [b"NOOP"]  # type: ignore[list-item]


def test_line_of_exactly_the_limit_with_its_crlf_parses() -> None:
    line = b"N" * (LIMIT - 2)
    for chunks in ([line + b"\r\n"], [line, b"\r\n"], [line + b"\r", b"\n"]):
        assert run(chunks) == [line]


def test_line_one_octet_over_the_limit_is_too_long() -> None:
    line = b"N" * (LIMIT - 1)
    for chunks in ([line + b"\r\n"], [line, b"\r\n"], [line + b"\r", b"\n"]):
        assert run(chunks) == [LineEvent.TOO_LONG]


def test_too_long_line_is_reported_once_and_the_next_line_parses() -> None:
    data = b"X" * 10_000 + b"\r\nNOOP\r\n"
    for chunks in ([data], [data[i : i + 7] for i in range(0, len(data), 7)], [data[:5000], data[5000:]]):
        assert run(chunks) == [LineEvent.TOO_LONG, b"NOOP"]


def test_too_long_line_split_at_every_point_around_its_end() -> None:
    data = b"X" * (LIMIT + 10) + b"\r\nNOOP\r\n"
    for cut in range(LIMIT - 5, len(data)):
        assert run([data[:cut], data[cut:]]) == [LineEvent.TOO_LONG, b"NOOP"], cut


def test_too_long_line_fed_byte_by_byte_is_reported_once() -> None:
    data = b"X" * (LIMIT + 100) + b"\r\nNOOP\r\n"
    assert run([data[i : i + 1] for i in range(len(data))]) == [LineEvent.TOO_LONG, b"NOOP"]


def test_memory_stays_bounded_feeding_ten_megabytes_without_lf() -> None:
    buffer = LineBuffer()
    chunk = b"A" * 65536
    events: list[bytes | LineEvent] = []
    for _ in range(160):  # 10 MiB
        buffer.feed(chunk)
        events += drain(buffer)
        assert len(buffer) <= LIMIT
    assert events == [LineEvent.TOO_LONG]
    buffer.feed(b"\r\nQUIT\r\n")
    assert drain(buffer) == [b"QUIT"]


def test_one_huge_feed_is_trimmed_at_the_next_look() -> None:
    buffer = LineBuffer()
    buffer.feed(b"A" * (10 * 1024 * 1024))
    assert buffer.next_line() is LineEvent.TOO_LONG
    assert len(buffer) <= LIMIT


def test_line_ending_in_bare_lf_is_reported_as_bare_lf() -> None:
    for chunks in splits(b"NOOP\nQUIT\r\n"):
        assert run(chunks) == [LineEvent.BARE_LF, b"QUIT"], chunks


def test_lone_lf_is_a_bare_lf() -> None:
    assert run([b"\n"]) == [LineEvent.BARE_LF]


def test_bare_lf_after_a_too_long_line_is_skipped_with_it() -> None:
    assert run([b"X" * (LIMIT + 1) + b"\nNOOP\r\n"]) == [LineEvent.TOO_LONG, b"NOOP"]


def test_control_characters_inside_a_line_do_not_end_it() -> None:
    # bare CR, VT, FF and NEL (U+0085 in UTF-8) are data, not line ends (SPEC §7)
    data = b"NOOP a\rb\x0bc\x0cd\xc2\x85e\r\nQUIT\r\n"
    for chunks in splits(data):
        assert run(chunks) == [b"NOOP a\rb\x0bc\x0cd\xc2\x85e", b"QUIT"], chunks


def test_cr_cr_lf_keeps_one_cr_in_the_line() -> None:
    assert run([b"NOOP\r\r\n"]) == [b"NOOP\r"]


def test_clear_drops_everything_buffered() -> None:
    buffer = LineBuffer()
    buffer.feed(b"STARTTLS\r\nRSET\r\nNOO")
    assert buffer.next_line() == b"STARTTLS"
    buffer.clear()
    assert len(buffer) == 0
    assert buffer.next_line() is None
    buffer.feed(b"P\r\n")
    assert buffer.next_line() == b"P"


def test_clear_also_ends_skipping_a_too_long_line() -> None:
    buffer = LineBuffer()
    buffer.feed(b"X" * (LIMIT + 1))
    assert buffer.next_line() is LineEvent.TOO_LONG
    buffer.clear()
    buffer.feed(b"NOOP\r\n")
    assert buffer.next_line() == b"NOOP"


def test_take_hands_over_the_unparsed_rest() -> None:
    buffer = LineBuffer()
    buffer.feed(b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    assert buffer.next_line() == b"DATA"
    assert buffer.take() == b"Subject: x\r\n\r\nbody\r\n.\r\n"
    assert len(buffer) == 0 and buffer.next_line() is None


def _reference(data: bytes, limit: int) -> list[bytes | LineEvent]:
    """What the stream means, computed on the whole input at once."""
    out: list[bytes | LineEvent] = []
    pieces = data.split(b"\n")
    for piece in pieces[:-1]:
        if len(piece) + 1 > limit:
            out.append(LineEvent.TOO_LONG)
        elif not piece.endswith(b"\r"):
            out.append(LineEvent.BARE_LF)
        else:
            out.append(piece[:-1])
    if len(pieces[-1]) >= limit:
        out.append(LineEvent.TOO_LONG)
    return out


_stream = st.lists(
    st.one_of(
        st.binary(max_size=20),
        st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\r\n", b"NOOP", b"x" * 40]),
    ),
    max_size=30,
).map(b"".join)


@settings(database=None, max_examples=300)
@given(data=_stream, cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=8), limit=st.integers(8, 64))
def test_any_split_gives_what_the_whole_stream_means(data: bytes, cuts: list[int], limit: int) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    assert run(chunks, limit) == _reference(data, limit)
    assert run([data], limit) == _reference(data, limit)
