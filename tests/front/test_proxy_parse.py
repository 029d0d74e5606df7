"""The PROXY header a load balancer sends, read however the bytes arrive:
whole, byte by byte, cut at every point; refused at once when it cannot be
one, and never buffered past its bound (HAProxy's proxy-protocol.txt)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from willi.proxy_protocol import (V1_MAX_LENGTH, V2_MAX_LENGTH, V2_SIGNATURE, ProxyHeader, ProxyHeaderError,
                                  ProxyHeaderParser, encode_v1, encode_v2)

CLIENT = ("192.0.2.1", 40000)
BALANCER_SIDE = ("198.51.100.2", 25)


def splits(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, and cut in two at every point."""
    ways = [[data], [data[i:i + 1] for i in range(len(data))]]
    ways += [[data[:i], data[i:]] for i in range(1, len(data))]
    return ways


def parse(chunks: list[bytes]) -> ProxyHeader | None:
    """Feed chunk by chunk; the result once complete, None if still short."""
    parser = ProxyHeaderParser()
    for index, chunk in enumerate(chunks):
        result = parser.feed(chunk)
        if result is not None:
            rest = b"".join(chunks[index + 1:])
            return result._replace(trailing=result.trailing + rest)
    return None


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", command, family, len(body)) + body


# --- what a balancer sends, however it arrives ---------------------------------------
GOOD = [
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 25\r\n", (CLIENT, BALANCER_SIDE)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n", (("2001:db8::1", 1), ("2001:db8::2", 65535))),
    (b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:198.51.100.2 40000 25\r\n", (CLIENT, BALANCER_SIDE)),
    (b"PROXY UNKNOWN\r\n", (None, None)),
    (b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n", (None, None)),
    (encode_v2(CLIENT, BALANCER_SIDE), (CLIENT, BALANCER_SIDE)),
    (encode_v2(("2001:db8::1", 1), ("2001:db8::2", 2)), (("2001:db8::1", 1), ("2001:db8::2", 2))),
    (v2(0x20, 0x00, b""), (None, None)),                               # LOCAL: a health check
    (v2(0x20, 0x11, bytes(12)), (None, None)),                         # LOCAL with addresses: still ignored
    (v2(0x21, 0x00, b""), (None, None)),                               # PROXY over UNSPEC
    (v2(0x21, 0x31, bytes(216)), (None, None)),                        # AF_UNIX: keep the real peer
    (v2(0x21, 0x12, bytes(12)), (None, None)),                         # UDP: not a client of an SMTP proxy
    (encode_v2(CLIENT, BALANCER_SIDE)[:14] + b"\x00\x13" + encode_v2(CLIENT, BALANCER_SIDE)[16:]
     + b"\x04\x00\x04abcd", (CLIENT, BALANCER_SIDE)),                    # a TLV after the addresses
]


@pytest.mark.parametrize("data, expected", GOOD, ids=[repr(d[:40]) for d, _ in GOOD])
def test_a_good_header_gives_the_same_addresses_however_it_is_split(data: bytes, expected: tuple) -> None:
    for chunks in splits(data + b"EHLO"):
        header = parse(chunks)
        assert header is not None, chunks
        assert (header.source, header.destination) == expected
        assert header.trailing == b"EHLO"  # the bytes after the header are handed back, not eaten
        assert header.version == (1 if data.startswith(b"P") else 2)


@pytest.mark.parametrize("data", [d for d, _ in GOOD])
def test_a_header_cut_short_asks_for_more(data: bytes) -> None:
    for cut in range(len(data)):
        assert parse([data[:cut]]) is None


def test_the_writer_and_the_reader_agree() -> None:
    for encode in (encode_v1, encode_v2):
        for src, dst in [(CLIENT, BALANCER_SIDE), (("2001:db8::5", 7), ("2001:db8::6", 8)),
                         (("::ffff:192.0.2.1", 40000), BALANCER_SIDE)]:
            header = parse([encode(src, dst)])
            assert header is not None and header.source == (src[0].removeprefix("::ffff:"), src[1])


# --- HAProxy 2.6's own bytes (captured from `send-proxy` / `send-proxy-v2`) ------------
HAPROXY_V1 = b"PROXY TCP4 127.0.0.1 127.0.0.1 51234 24301\r\n"
HAPROXY_V2 = bytes.fromhex("0d0a0d0a000d0a515549540a" "2111000c" "7f000001" "7f000001" "c822" "5eed")
HAPROXY_V2_CHECK = bytes.fromhex("0d0a0d0a000d0a515549540a" "20000000")


@pytest.mark.parametrize("data, source", [(HAPROXY_V1, ("127.0.0.1", 51234)), (HAPROXY_V2, ("127.0.0.1", 51234)),
                                          (HAPROXY_V2_CHECK, None)])
def test_haproxy_headers(data: bytes, source: tuple | None) -> None:
    header = parse([data])
    assert header is not None and header.source == source


# --- what is refused at once -------------------------------------------------------------
BAD = [
    b"EHLO client.example\r\n",                                           # an SMTP client, no header
    b"\x16\x03\x01\x02\x00",                                              # a TLS hello
    b"PROXZ TCP4",
    b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",                            # a field short
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n",                        # a field over
    b"PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n",                         # two spaces
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",                         # trailing space
    b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",                        # IPv6 in TCP4
    b"PROXY TCP6 192.0.2.1 2001:db8::1 1 2\r\n",                           # IPv4 in TCP6
    b"PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",                         # a leading zero, ambiguous
    b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 \xd9\xa1 2\r\n",                   # a non-ASCII digit
    b"PROXY TCP4 192.0.2.1\n198.51.100.2 1 2\r\n",                         # a bare LF
    b"PROXY\r\n",
    b"PROXY \r\n",
    V2_SIGNATURE[:5] + b"X",
    v2(0x11, 0x11, bytes(12)),                                            # version 1 in a v2 header
    v2(0x22, 0x11, bytes(12)),                                            # command 2
    v2(0x21, 0x41, bytes(12)),                                            # family 4
    v2(0x21, 0x13, bytes(12)),                                            # protocol 3
    v2(0x21, 0x11, bytes(11)),                                            # TCP4 block one short
    v2(0x21, 0x21, bytes(35)),                                            # TCP6 block one short
]


@pytest.mark.parametrize("data", BAD, ids=[repr(d[:44]) for d in BAD])
def test_a_malformed_header_is_an_error_however_it_is_split(data: bytes) -> None:
    for chunks in splits(data):
        with pytest.raises(ProxyHeaderError):
            assert parse(chunks) is None, "a complete malformed header must be refused, not awaited"


def test_garbage_is_refused_on_its_first_byte() -> None:
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderParser().feed(b"E")
    parser = ProxyHeaderParser()
    assert parser.feed(b"\r\n\r\n") is None
    with pytest.raises(ProxyHeaderError):
        parser.feed(b"\r")  # the signature says \x00 here


def test_a_v1_line_without_its_end_is_refused_at_107_bytes() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY TCP4 " + b"1" * (V1_MAX_LENGTH - 12)) is None
    with pytest.raises(ProxyHeaderError, match="107"):
        parser.feed(b"1")


def test_a_v1_line_whose_crlf_comes_past_107_bytes_is_refused() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15) + b"\r\n"
    assert len(line) == V1_MAX_LENGTH + 1
    with pytest.raises(ProxyHeaderError):
        parse([line[:-1], line[-1:]])
    assert parse([line[:-3] + b"\r\n"]) is not None  # 107 bytes exactly is still a header


def test_a_v2_length_over_the_bound_is_refused_before_its_body_arrives() -> None:
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyHeaderError, match="over"):
        parser.feed(V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, V2_MAX_LENGTH - 15))
    assert parse([v2(0x21, 0x11, bytes(V2_MAX_LENGTH - 16))]) is not None


def test_a_spent_parser_refuses_more() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN\r\n") is not None
    with pytest.raises(ProxyHeaderError):
        parser.feed(b"x")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=700), st.lists(st.integers(0, 700), max_size=6))
def test_any_bytes_give_a_header_need_more_or_the_parser_own_error(data: bytes, cuts: list[int]) -> None:
    points = sorted({c for c in cuts if c < len(data)})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    parser = ProxyHeaderParser()
    fed = 0
    try:
        for chunk in chunks:
            fed += len(chunk)
            result = parser.feed(chunk)
            if result is not None:
                assert len(result.trailing) <= len(chunk)
                break
            assert fed < V2_MAX_LENGTH  # never buffers past the bound while asking for more
    except ProxyHeaderError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([d for d, _ in GOOD]), st.integers(0, 200), st.binary(max_size=3))
def test_mutated_good_headers_never_escape_as_anything_else(data: bytes, at: int, junk: bytes) -> None:
    mutated = data[:at % (len(data) + 1)] + junk + data[at % (len(data) + 1) + len(junk):]
    try:
        parse([mutated])
    except ProxyHeaderError:
        pass
