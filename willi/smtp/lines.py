"""A bounded CRLF line buffer for the command phase.

Memory stays bounded whatever the client sends: a line longer than the limit
(in octets, its CRLF included, as RFC 5321 §4.5.3.1.4 counts) is reported once
as TOO_LONG and the rest of it is skipped up to its LF, never
stored. The buffer remembers how far it has searched, so a line that arrives
a byte at a time is not rescanned from the start (h11's receive buffer).
A line ending in a bare LF is reported as BARE_LF: it never becomes a command.
Other control characters (a bare CR, VT, FF, NEL) do not end a line (SPEC §7).
"""

from __future__ import annotations

import enum


class LineEvent(enum.Enum):
    TOO_LONG = "too long"
    BARE_LF = "bare LF"


class LineBuffer:
    """Collects bytes, yields complete command lines without their CRLF."""

    __slots__ = ("_buf", "_scanned", "_skipping", "limit", "lines")

    def __init__(self, limit: int = 4096) -> None:
        self._buf = bytearray()
        self._scanned = 0
        self._skipping = False
        self.limit = limit
        self.lines = 0  # LF-ended lines consumed: the per-record deadline's count

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | memoryview) -> None:
        self._buf += data

    def clear(self) -> None:
        """Drop everything buffered (STARTTLS: pipelined plaintext is never a command)."""
        self._buf.clear()
        self._scanned = 0
        self._skipping = False

    def take(self) -> bytes:
        """Hand over everything buffered (the start of a message body)."""
        data = bytes(self._buf)
        self.clear()
        return data

    def next_line(self) -> bytes | LineEvent | None:
        buf = self._buf
        if not buf:
            return None  # everything read is taken (and nothing half-skipped is left)
        end = buf.find(b"\n", self._scanned)
        if end < 0:
            # Its LF still to come, a line of this many octets is over the limit.
            if len(buf) >= self.limit:
                # Keep only what tells whether the skipped line ends in CRLF.
                del buf[:-1]
                self._scanned = 0
                if not self._skipping:
                    self._skipping = True
                    return LineEvent.TOO_LONG
            else:
                self._scanned = len(buf)
            return None
        self._scanned = 0
        self.lines += 1
        if self._skipping:
            del buf[: end + 1]
            self._skipping = False
            return self.next_line()
        if end >= self.limit:  # end + 1 octets with the LF
            del buf[: end + 1]
            return LineEvent.TOO_LONG
        if end == 0 or buf[end - 1] != 13:
            del buf[: end + 1]
            return LineEvent.BARE_LF
        line = bytes(buf[: end - 1])
        del buf[: end + 1]
        return line
