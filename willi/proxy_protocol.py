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
from typing import NamedTuple

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


# --- the reader ------------------------------------------------------------------
class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY header Willi accepts: close without a greeting."""


class ProxyHeader(NamedTuple):
    """A complete header. `source`/`destination` are None for LOCAL and
    UNKNOWN (and for v2 families other than TCP over IP): keep the real peer."""

    version: int
    source: Endpoint | None
    destination: Endpoint | None
    trailing: bytes


class ProxyHeaderParser:
    """Incremental: `feed` bytes until it returns a header or raises.

    The version is decided by the first byte (`P` for v1, CR for v2) and each
    further byte is checked against the signature as it comes, so garbage is
    refused at once instead of after a timeout. After a result or an error
    the parser is spent; feeding it again raises.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._done = False

    def feed(self, data: bytes) -> ProxyHeader | None:
        if self._done:
            raise ProxyHeaderError("parser already finished")
        try:
            result = self._feed(data)
        except ProxyHeaderError:
            self._done = True
            raise
        if result is not None:
            self._done = True
        return result

    def _feed(self, data: bytes) -> ProxyHeader | None:
        start = len(self._buffer)
        self._buffer += data
        head = bytes(self._buffer[:len(V2_SIGNATURE)])
        if head[:1] == b"P":
            if not V1_PREFIX.startswith(head[:len(V1_PREFIX)]):
                raise ProxyHeaderError("not a PROXY header")
            return self._v1(start)
        if not V2_SIGNATURE.startswith(head):
            raise ProxyHeaderError("not a PROXY header")
        return self._v2()

    def _v1(self, start: int) -> ProxyHeader | None:
        end = self._buffer.find(b"\r\n", max(0, start - 1))
        if end == -1:
            if len(self._buffer) >= V1_MAX_LENGTH:
                raise ProxyHeaderError("PROXY v1 header longer than 107 bytes")
            return None
        if end + 2 > V1_MAX_LENGTH:
            raise ProxyHeaderError("PROXY v1 header longer than 107 bytes")
        line, trailing = bytes(self._buffer[:end]), bytes(self._buffer[end + 2:])
        source, destination = _v1_addresses(line)
        return ProxyHeader(1, source, destination, trailing)

    def _v2(self) -> ProxyHeader | None:
        if len(self._buffer) < V2_HEADER_LENGTH:
            return None
        command, family, length = struct.unpack_from("!BBH", self._buffer, 12)
        if command >> 4 != 2 or command & 0x0F > 1:
            raise ProxyHeaderError(f"PROXY v2 bad version/command 0x{command:02x}")
        if family >> 4 > 3 or family & 0x0F > 2:
            raise ProxyHeaderError(f"PROXY v2 bad family/protocol 0x{family:02x}")
        if V2_HEADER_LENGTH + length > V2_MAX_LENGTH:
            raise ProxyHeaderError(f"PROXY v2 header of {V2_HEADER_LENGTH + length} bytes is over {V2_MAX_LENGTH}")
        total = V2_HEADER_LENGTH + length
        if len(self._buffer) < total:
            return None
        body, trailing = bytes(self._buffer[V2_HEADER_LENGTH:total]), bytes(self._buffer[total:])
        if command == _V2_LOCAL or family not in (_V2_TCP4, _V2_TCP6):
            return ProxyHeader(2, None, None, trailing)  # health check, UNSPEC, UNIX or UDP
        return ProxyHeader(2, *_v2_addresses(family, body), trailing)


def _v1_addresses(line: bytes) -> tuple[Endpoint | None, Endpoint | None]:
    """`PROXY TCP4|TCP6 src dst sport dport`, single spaces; `PROXY UNKNOWN ...`."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header is not ASCII") from None
    fields = text.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return None, None
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 header malformed")
    version = 4 if fields[1] == "TCP4" else 6
    src, dst = (_v1_ip(field, version) for field in fields[2:4])
    sport, dport = (_v1_port(field) for field in fields[4:6])
    return (src, sport), (dst, dport)


def _v1_ip(field: str, version: int) -> str:
    try:
        parsed = ipaddress.ip_address(field)
    except ValueError:
        raise ProxyHeaderError("PROXY v1 bad address") from None
    if parsed.version != version:
        raise ProxyHeaderError("PROXY v1 address of the wrong family")
    return str(_address(field))  # a mapped IPv4 in TCP6 is the IPv4 client it is


def _v1_port(field: str) -> int:
    if not field.isdigit() or not field.isascii() or len(field) > 5 or (len(field) > 1 and field[0] == "0"):
        raise ProxyHeaderError("PROXY v1 bad port")
    port = int(field)
    if port > 65535:
        raise ProxyHeaderError("PROXY v1 bad port")
    return port


def _v2_addresses(family: int, body: bytes) -> tuple[Endpoint, Endpoint]:
    size = 4 if family == _V2_TCP4 else 16
    if len(body) < 2 * size + 4:
        raise ProxyHeaderError("PROXY v2 address block too short")
    make = ipaddress.IPv4Address if size == 4 else ipaddress.IPv6Address
    src, dst = make(body[:size]), make(body[size:2 * size])
    sport, dport = struct.unpack_from("!HH", body, 2 * size)
    return (str(_address(str(src))), sport), (str(_address(str(dst))), dport)
