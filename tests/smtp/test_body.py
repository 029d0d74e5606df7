"""DataScanner: where a DATA body ends, and whether it is acceptable, chunk by
chunk (SPEC §2: CRLF.CRLF and nothing else; bare CR/LF and NUL refused)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from willi.smtp.body import BAD_LINE_ENDING, NUL, TOO_BIG, DataScanner, Violation

BIG = 1 << 30


def scan_chunks(chunks: list[bytes], max_size: int = BIG, strict: bool = True) -> tuple[int, Violation | None, DataScanner]:
    """Scan chunk after chunk, as the session does, each one inside a larger
    buffer (start/stop are not 0/len). Return the end as an offset into the
    concatenated stream (-1 if never found)."""
    scanner = DataScanner(max_size, strict)
    offset = 0
    for chunk in chunks:
        buf = bytearray(b"##" + chunk + b"##")
        end = scanner.scan(buf, 2, 2 + len(chunk))
        if end >= 0:
            return offset + end - 2, scanner.violation, scanner
        offset += len(chunk)
    return -1, scanner.violation, scanner


def two_ways(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, and cut in two at every point."""
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    return ways + [[data[:i], data[i:]] for i in range(1, len(data))]


def test_end_of_data_is_found_whole() -> None:
    data = b"Subject: hi\r\n\r\nbody\r\n.\r\n"
    assert scan_chunks([data])[:2] == (len(data), None)


def test_end_split_at_every_position_across_two_chunks_is_found() -> None:
    data = b"Subject: hi\r\n\r\nbody\r\n.\r\n"
    for chunks in two_ways(data):
        assert scan_chunks(chunks)[:2] == (len(data), None), chunks


def test_dot_line_right_after_data_is_an_empty_message() -> None:
    for chunks in two_ways(b".\r\n"):
        end, violation, scanner = scan_chunks(chunks)
        assert (end, violation) == (3, None), chunks


def test_empty_line_then_dot_ends_after_the_dot() -> None:
    for chunks in two_ways(b"\r\n.\r\n"):
        assert scan_chunks(chunks)[:2] == (5, None), chunks


def test_dot_stuffed_line_is_not_the_end() -> None:
    data = b"a\r\n..\r\n.. \r\n...\r\n..\r\n"
    for chunks in two_ways(data):
        assert scan_chunks(chunks)[:2] == (-1, None), chunks
    assert scan_chunks([data + b".\r\n"])[:2] == (len(data) + 3, None)


def test_dot_stuffed_first_line_is_not_the_end() -> None:
    assert scan_chunks([b"..\r\n"])[:2] == (-1, None)


def test_lf_dot_lf_is_not_the_end() -> None:
    end, violation, _ = scan_chunks([b"a\n.\nb\r\n"])
    assert end == -1 and violation is BAD_LINE_ENDING


def test_bytes_after_the_end_are_not_scanned() -> None:
    data = b"body\r\n.\r\n" + b"MAIL FROM:<a@b>\n\0\r"
    for chunks in two_ways(data)[:1] + [[b"body\r\n.\r", b"\nMAIL\n\0\r"]]:
        end, violation, scanner = scan_chunks(chunks)
        assert (end, violation) == (9, None), chunks


def test_bytes_after_the_end_do_not_count_towards_the_size() -> None:
    scanner = DataScanner(BIG)
    buf = b"body\r\n.\r\nNOOP\r\nNOOP\r\n"
    assert scanner.scan(buf, 0, len(buf)) == 9
    assert scanner.size == 9


@pytest.mark.parametrize(
    "body, violation",
    [
        (b"bare\nLF\r\n", BAD_LINE_ENDING),
        (b"bare\rCR\r\n", BAD_LINE_ENDING),
        (b"cr cr lf\r\r\n", BAD_LINE_ENDING),
        (b"nul\0here\r\n", NUL),
        (b"\nstarts with LF\r\n", BAD_LINE_ENDING),
        (b"ends with CR\r", BAD_LINE_ENDING),
        (b"smuggle\n.\r\nMAIL FROM:<x@y>\r\n", BAD_LINE_ENDING),
        (b"smuggle\r\n.\nMAIL FROM:<x@y>\r\n", BAD_LINE_ENDING),
        (b"smuggle\r.\r\nMAIL FROM:<x@y>\r\n", BAD_LINE_ENDING),
    ],
)
def test_bad_bytes_in_the_body_are_detected_however_split(body: bytes, violation: Violation) -> None:
    data = b"ok line\r\n" + body + b"more\r\n.\r\n"
    for chunks in two_ways(data):
        end, found, _ = scan_chunks(chunks)
        assert found is violation, chunks
        assert end == len(data), chunks


def test_bare_cr_at_the_end_of_a_chunk_followed_by_other_than_lf_is_detected() -> None:
    assert scan_chunks([b"a\r", b"b\r\n.\r\n"])[1] is BAD_LINE_ENDING
    assert scan_chunks([b"a\r", b"\r\n.\r\n"])[1] is BAD_LINE_ENDING


def test_bare_cr_ending_a_chunk_is_not_paired_with_a_later_bare_lf() -> None:
    # Counting alone would balance one bare CR against one bare LF.
    assert scan_chunks([b"a\r", b"x\ny\r\n.\r\n"])[1] is BAD_LINE_ENDING


def test_bare_lf_at_the_start_of_a_chunk_is_detected() -> None:
    assert scan_chunks([b"a", b"\nb\r\n.\r\n"])[1] is BAD_LINE_ENDING
    assert scan_chunks([b"a\r\n", b"\n.\r\n"])[1] is BAD_LINE_ENDING


def test_crlf_split_across_chunks_is_fine() -> None:
    assert scan_chunks([b"a\r", b"\nb\r", b"\n.\r", b"\n"])[:2] == (9, None)


def test_crlf_split_across_a_one_byte_chunk_is_fine() -> None:
    assert scan_chunks([b"a", b"\r", b"\n", b".", b"\r", b"\n"])[:2] == (6, None)


def test_pass_mode_forwards_bare_line_endings_without_a_violation() -> None:
    data = b"bare\nLF\rCR\0NUL\r\n.\r\n"
    for chunks in two_ways(data):
        assert scan_chunks(chunks, strict=False)[:2] == (len(data), None)


def test_pass_mode_still_counts_the_size() -> None:
    assert scan_chunks([b"x" * 100 + b"\r\n.\r\n"], max_size=50, strict=False)[1] is TOO_BIG


def test_message_of_exactly_the_limit_is_accepted() -> None:
    body = b"x" * 98 + b"\r\n"  # 100 octets, then the final dot
    for chunks in two_ways(body + b".\r\n"):
        end, violation, scanner = scan_chunks(chunks, max_size=100)
        assert (end, violation) == (103, None), chunks


def test_message_one_octet_over_the_limit_is_too_big() -> None:
    body = b"x" * 99 + b"\r\n"
    for chunks in two_ways(body + b".\r\n"):
        end, violation, _ = scan_chunks(chunks, max_size=100)
        assert (end, violation) == (104, TOO_BIG), chunks


def test_size_violation_is_found_before_the_end_arrives() -> None:
    scanner = DataScanner(1000)
    chunk = b"x" * 998 + b"\r\n"
    assert scanner.scan(chunk, 0, len(chunk)) == -1 and scanner.violation is None
    assert scanner.scan(chunk, 0, len(chunk)) == -1 and scanner.violation is TOO_BIG


def test_size_counts_the_body_up_to_the_end() -> None:
    _, _, scanner = scan_chunks([b"abc\r\n", b".\r\n"])
    assert scanner.size == 8


def test_first_violation_is_kept() -> None:
    end, violation, _ = scan_chunks([b"a\0b\r\n", b"c\nd\r\n.\r\n"])
    assert violation is NUL and end == 13


def test_empty_chunk_changes_nothing() -> None:
    scanner = DataScanner(BIG)
    assert scanner.scan(b"a\r", 0, 2) == -1
    assert scanner.scan(b"", 0, 0) == -1
    assert scanner.scan(b"\n.\r\n", 0, 4) == 4
    assert scanner.violation is None


def test_violation_repr_names_the_reason() -> None:
    assert "NUL" in repr(NUL)


# --- properties ----------------------------------------------------------------
_line = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b""))
_lines = st.lists(st.one_of(_line, st.sampled_from([b".", b"..", b". x", b".\r", b""])), max_size=15)


def _clean(line: bytes) -> bytes:
    return line.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")


def _stuffed(lines: list[bytes]) -> bytes:
    """CRLF-terminated lines, dot-stuffed the way a client must send them."""
    out = [b"." + _clean(line) if _clean(line).startswith(b".") else _clean(line) for line in lines]
    return b"".join(line + b"\r\n" for line in out)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


_cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@settings(database=None, max_examples=400)
@given(lines=_lines, trailer=st.binary(max_size=20), cuts=_cuts)
def test_random_clean_bodies_end_at_the_same_index_however_split(lines: list[bytes], trailer: bytes, cuts: list[int]) -> None:
    body = _stuffed(lines)
    data = body + b".\r\n" + trailer
    whole = scan_chunks([data])
    assert whole[:2] == (len(body) + 3, None)
    assert scan_chunks(_chunks(data, cuts))[:2] == whole[:2]


@settings(database=None, max_examples=400)
@given(lines=_lines, where=st.integers(min_value=0), cuts=_cuts, bad=st.sampled_from([b"\n", b"\r", b"\0", b"\r\r\n", b"\n.\n"]))
def test_random_bodies_with_an_injected_bad_byte_always_give_a_violation(
    lines: list[bytes], where: int, cuts: list[int], bad: bytes
) -> None:
    body = _stuffed(lines)
    # Inject anywhere except inside a CRLF (that would make a bare CR *and*
    # keep the LF paired, still a violation, but keep the test simple).
    positions = [i for i in range(len(body) + 1) if not (0 < i < len(body) and body[i - 1 : i + 1] == b"\r\n")]
    at = positions[where % len(positions)]
    data = body[:at] + bad + body[at:] + b".\r\n"
    end, violation, _ = scan_chunks(_chunks(data, cuts))
    assert violation is not None
    assert violation in (BAD_LINE_ENDING, NUL)


@settings(database=None, max_examples=300)
@given(data=st.binary(max_size=60).map(lambda b: b + b"\r\n.\r\n"), cuts=_cuts)
def test_any_stream_scans_the_same_whole_and_split(data: bytes, cuts: list[int]) -> None:
    whole = scan_chunks([data])
    split = scan_chunks(_chunks(data, cuts))
    # Which violation is named first may depend on the split (a NUL and a
    # bare CR in different chunks); whether there is one may not.
    assert split[0] == whole[0]
    assert (split[1] is None) == (whole[1] is None)
    assert whole[0] == _reference_end(data)
    assert (whole[1] is not None) == _reference_bad(data[: whole[0]])


def _reference_end(data: bytes) -> int:
    return (b"\r\n" + data).find(b"\r\n.\r\n") + 5 - 2


def _reference_bad(body: bytes) -> bool:
    if b"\0" in body:
        return True
    stripped = body.replace(b"\r\n", b"")
    return b"\r" in stripped or b"\n" in stripped


# Line ends, dots and NULs next to each other, where a bare CR and a later bare
# LF could pass for a pair if only their counts were compared.
_mail_bytes = st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\0", b"\r\n.", b"\r\n.\r\n", b"a\r"]),
                       max_size=40).map(b"".join)


@settings(database=None, max_examples=600)
@given(data=_mail_bytes.map(lambda b: b + b"\r\n.\r\n"), cuts=_cuts)
def test_streams_of_line_ends_dots_and_nuls_match_the_reference_whole_and_split(data: bytes, cuts: list[int]) -> None:
    for chunks in ([data], _chunks(data, cuts)):
        end, violation, _ = scan_chunks(chunks)
        assert end == _reference_end(data)
        assert (violation is not None) == _reference_bad(data[:end])


def test_a_bare_cr_and_a_later_bare_lf_are_not_a_pair() -> None:
    assert scan_chunks([b"one\rtwo\nthree\r\n.\r\n"])[1] is BAD_LINE_ENDING
