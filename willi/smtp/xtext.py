"""xtext (RFC 3461 §4): the encoding of XCLIENT attribute values.

Octets outside "!".."~", and "+" and "=", become "+HH" (upper-case hex).
"""

from __future__ import annotations

_SAFE = frozenset(range(33, 127)) - {ord("+"), ord("=")}


def encode(value: bytes) -> bytes:
    if all(b in _SAFE for b in value):
        return value
    return b"".join(bytes((b,)) if b in _SAFE else b"+%02X" % b for b in value)


def decode(value: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(value):
        if value[i] == ord("+"):
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(value[i])
            i += 1
    return bytes(out)
