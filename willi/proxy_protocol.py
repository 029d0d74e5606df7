"""The PROXY protocol, versions 1 and 2, without sockets (HAProxy's spec).

A TCP load balancer that hands Willi a connection says who the client really
is in a header sent before any SMTP byte; Willi in turn may say it to an
upstream that expects one. Both directions live here as pure functions and
one incremental parser, so they are tested byte by byte with no socket, as
`smtp/lines.py` is.

The writer: `encode_v1(src, dst)` and `encode_v2(src, dst)` take
`(ip, port)` pairs as strings and ints. An IPv4-mapped IPv6 address
(`::ffff:192.0.2.1`, what a dual-stack socket reports for an IPv4 client) is
sent as the IPv4 it is; when the two ends are still of different families,
both are written as IPv6 (the header has one family for both).

The reader: `ProxyHeaderParser.feed(data)` takes bytes as they arrive and
returns `None` while it needs more, a `ProxyHeader` once the header is
complete (with the bytes after it in `trailing`), or raises
`ProxyHeaderError`. It never holds more than `V1_MAX_LENGTH` or
`V2_MAX_LENGTH` bytes. `LOCAL` (v2) and `UNKNOWN` (v1), what balancers send
for health checks, give a header with no addresses: the connection keeps the
balancer's own.
"""

from __future__ import annotations

import ipaddress
import struct

Endpoint = tuple[str, int]
IP = ipaddress.IPv4Address | ipaddress.IPv6Address

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the spec's bound, CRLF included
V2_HEADER_LENGTH = 16
# Addresses (at most 216 bytes for AF_UNIX) plus room for TLVs such as
# HAProxy's unique-id (up to 128) and ALPN/authority; the spec sets no bound,
# so this is Willi's: a longer header is refused, not buffered.
V2_MAX_LENGTH = V2_HEADER_LENGTH + 512

_V2_LOCAL = 0x20
_V2_PROXY = 0x21
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21


def _address(ip: str) -> IP:
    """An IP address, an IPv4-mapped IPv6 one as the IPv4 it carries."""
    parsed = ipaddress.ip_address(ip)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def _pair(src: Endpoint, dst: Endpoint) -> tuple[IP, IP]:
    """Both addresses in one family: IPv4 when both are, else IPv6."""
    for _, port in (src, dst):
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
    a, b = _address(src[0]), _address(dst[0])
    if a.version != b.version:
        a, b = (ipaddress.IPv6Address(f"::ffff:{x}") if x.version == 4 else x for x in (a, b))
    return a, b


def _text(ip: IP) -> str:
    """The compressed form; a mapped IPv4 in dotted form on every Python."""
    mapped = getattr(ip, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(ip)


def encode_v1(src: Endpoint, dst: Endpoint) -> bytes:
    """`PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`."""
    a, b = _pair(src, dst)
    family = "TCP4" if a.version == 4 else "TCP6"
    return f"PROXY {family} {_text(a)} {_text(b)} {src[1]} {dst[1]}\r\n".encode("ascii")


def encode_v2(src: Endpoint, dst: Endpoint) -> bytes:
    """The binary header, command PROXY, over TCP/IPv4 or TCP/IPv6, no TLVs."""
    a, b = _pair(src, dst)
    family = _V2_TCP4 if a.version == 4 else _V2_TCP6
    body = a.packed + b.packed + struct.pack("!HH", src[1], dst[1])
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body
