"""The PROXY header Willi writes for an upstream: the exact bytes of the
HAProxy spec (section 2.1 for v1, 2.2 for v2), one family for both ends."""

from __future__ import annotations

import struct

import pytest

from willi.proxy_protocol import V2_SIGNATURE, encode_v1, encode_v2


def test_v1_tcp4_is_one_line_with_addresses_then_ports() -> None:
    assert encode_v1(("192.0.2.1", 40000), ("198.51.100.2", 25)) == \
        b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 25\r\n"


def test_v1_tcp6_uses_the_compressed_form() -> None:
    assert encode_v1(("2001:db8:0:0::1", 1), ("2001:db8::2", 2525)) == \
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2525\r\n"


def test_v1_an_ipv4_mapped_client_is_sent_as_ipv4() -> None:
    assert encode_v1(("::ffff:192.0.2.1", 5), ("192.0.2.9", 25)) == b"PROXY TCP4 192.0.2.1 192.0.2.9 5 25\r\n"


def test_v1_mixed_families_are_both_written_as_ipv6() -> None:
    assert encode_v1(("192.0.2.1", 5), ("2001:db8::2", 25)) == \
        b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 5 25\r\n"


def test_v1_stays_within_the_spec_bound_of_107_bytes() -> None:
    longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
    assert len(encode_v1((longest, 65535), (longest, 65535))) == 104


def test_v2_tcp4_header_and_addresses() -> None:
    header = encode_v2(("192.0.2.1", 40000), ("198.51.100.2", 25))
    assert header[:12] == V2_SIGNATURE
    assert header[12:16] == b"\x21\x11\x00\x0c"  # version 2 PROXY, TCP over IPv4, 12 bytes
    assert header[16:] == bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack("!HH", 40000, 25)


def test_v2_tcp6_header_and_addresses() -> None:
    header = encode_v2(("2001:db8::1", 1), ("2001:db8::2", 2))
    assert header[12:16] == b"\x21\x21\x00\x24"  # TCP over IPv6, 36 bytes
    assert header[16:32] == bytes.fromhex("20010db8000000000000000000000001")
    assert header[32:48] == bytes.fromhex("20010db8000000000000000000000002")
    assert header[48:] == b"\x00\x01\x00\x02"


def test_v2_an_ipv4_mapped_client_is_sent_as_ipv4() -> None:
    assert encode_v2(("::ffff:192.0.2.1", 5), ("127.0.0.1", 25)) == encode_v2(("192.0.2.1", 5), ("127.0.0.1", 25))


@pytest.mark.parametrize("encode", [encode_v1, encode_v2])
@pytest.mark.parametrize("src, dst", [
    (("not-an-ip", 1), ("127.0.0.1", 25)),
    (("127.0.0.1", 70000), ("127.0.0.1", 25)),
    (("127.0.0.1", 1), ("127.0.0.1", -1)),
])
def test_what_is_not_an_endpoint_is_refused(encode, src, dst) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        encode(src, dst)
