"""xtext (RFC 3461 §4): the encoding of XCLIENT attribute values.

Octets outside "!".."~", and "+" and "=", become "+HH" (upper-case hex).
"""

from __future__ import annotations

_SAFE = frozenset(range(33, 127)) - {ord("+"), ord("=")}
_HEX = frozenset(b"0123456789ABCDEF")


def encode(value: bytes) -> bytes:
    if all(b in _SAFE for b in value):
        return value
    return b"".join(bytes((b,)) if b in _SAFE else b"+%02X" % b for b in value)


def decode(value: bytes) -> bytes:
    """The inverse of encode; ValueError on anything that is not xtext (a
    stray octet, or "+" not followed by two upper-case hex digits)."""
    out = bytearray()
    i = 0
    while i < len(value):
        if value[i] == ord("+"):
            pair = value[i + 1 : i + 3]
            if len(pair) != 2 or any(b not in _HEX for b in pair):
                raise ValueError(f"bad xtext escape at {i}: {value[i : i + 3]!r}")
            out.append(int(pair, 16))
            i += 3
        elif value[i] in _SAFE:
            out.append(value[i])
            i += 1
        else:
            raise ValueError(f"octet {value[i]:#04x} at {i} is not xtext")
    return bytes(out)
