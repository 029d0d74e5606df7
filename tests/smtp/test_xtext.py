"""xtext (RFC 3461 §4), the encoding of XCLIENT values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from willi.smtp.xtext import decode, encode


def test_printable_ascii_is_left_alone() -> None:
    assert encode(b"mx.example.org") == b"mx.example.org"
    assert encode(b"[UNAVAILABLE]") == b"[UNAVAILABLE]"


def test_plus_and_equals_are_hex_escaped() -> None:
    assert encode(b"a+b=c") == b"a+2Bb+3Dc"


def test_space_and_controls_are_hex_escaped_in_upper_case() -> None:
    assert encode(b"a b\r\n\x00\x7f") == b"a+20b+0D+0A+00+7F"


def test_non_ascii_octets_are_hex_escaped() -> None:
    assert encode("é".encode()) == b"+C3+A9"


def test_empty_value_stays_empty() -> None:
    assert encode(b"") == b"" and decode(b"") == b""


def test_decode_reverses_the_escapes() -> None:
    assert decode(b"a+2Bb+3Dc+20+C3+A9") == "a+b=c é".encode()


@pytest.mark.parametrize("bad", [b"+", b"+2", b"a+2", b"+2b", b"+ 2", b"+-1", b"+GG", b"a=b", b"a b", b"\xc3\xa9", b"\x00"])
def test_decode_refuses_what_is_not_xtext(bad: bytes) -> None:
    with pytest.raises(ValueError):
        decode(bad)


@settings(database=None, max_examples=500)
@given(st.binary(max_size=100))
def test_encoded_values_are_xchars_and_hexchars_only(value: bytes) -> None:
    encoded = encode(value)
    assert all(33 <= b <= 126 and b != ord("=") for b in encoded)
    assert decode(encoded) == value


@settings(database=None, max_examples=500)
@given(st.binary(max_size=100))
def test_decode_parses_or_raises_value_error(value: bytes) -> None:
    try:
        decoded = decode(value)
    except ValueError:
        return
    assert encode(decoded) == value
