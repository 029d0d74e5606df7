"""BDAT (RFC 3030 CHUNKING) framing, sans-IO: the command's argument, the
checks a chunk's bytes get, and the dot-stuffing that turns chunks into a
DATA body for an upstream without CHUNKING.

A BDAT chunk is framed by its size, not by a marker, so "\\r\\n.\\r\\n" inside
it is data. The smuggling rules of DATA still hold in `reject` mode: a bare
CR, a bare LF or a NUL anywhere in the content refuses the message, checked
with C-speed bytes methods over each piece, with one byte (a pending CR)
carried across pieces and chunks. BINARYMIME is not offered, so content is
always lines.
"""

from __future__ import annotations

from willi.smtp.body import BAD_LINE_ENDING, NUL, TOO_BIG, Violation, line_ends

MAX_SIZE_DIGITS = 20


class BadChunkSize(ValueError):
    """A BDAT whose size is not a number: the chunk cannot be framed."""


def parse_bdat(arg: bytes) -> tuple[int, bool, bool]:
    """`size [LAST]` -> (size, last, well_formed). Raises BadChunkSize when
    the size is missing or not ASCII digits (nothing after it can be framed);
    well_formed is False for a framed chunk with anything else wrong."""
    parts = arg.split()
    if not parts or not parts[0].isdigit() or not parts[0].isascii() or len(parts[0]) > MAX_SIZE_DIGITS:
        raise BadChunkSize(arg[:40].decode("ascii", "replace"))
    size = int(parts[0])
    if len(parts) == 1:
        return size, False, True
    last = parts[1].upper() == b"LAST"
    return size, last, last and len(parts) == 2


class ChunkScanner:
    """Checks the content of a BDAT transaction, piece by piece."""

    __slots__ = ("size", "max_size", "strict", "violation", "_cr")

    def __init__(self, max_size: int, strict: bool = True) -> None:
        self.size = 0
        self.max_size = max_size
        self.strict = strict
        self.violation: Violation | None = None
        self._cr = False  # the last byte seen was a CR: only an LF may follow

    def scan(self, buf: bytes | bytearray | memoryview, start: int, stop: int) -> None:
        if self.violation is not None or stop <= start:
            return
        self.size += stop - start
        if self.size > self.max_size:
            self.violation = TOO_BIG
            return
        if not self.strict:
            return
        crlf, cr, lf, nul = line_ends(buf, start, stop)  # type: ignore[arg-type]
        if nul:
            self.violation = NUL
            return
        if self._cr:
            if buf[start] != 10:
                self.violation = BAD_LINE_ENDING
                return
            lf -= 1
        self._cr = buf[stop - 1] == 13
        if self._cr:
            cr -= 1
        if lf != crlf or cr != crlf:
            self.violation = BAD_LINE_ENDING

    def finish(self) -> None:
        """The LAST chunk is in: a CR at the very end is a bare CR."""
        if self.violation is None and self.strict and self._cr:
            self.violation = BAD_LINE_ENDING


class DotStuffer:
    """Chunks in, a DATA body out (RFC 5321 §4.5.2): a line that starts with
    a dot gets one more, a CR that ends a piece is held until the next byte
    is known (issue 9), and `finish()` ends it with CRLF.CRLF."""

    __slots__ = ("_tail", "_held")

    def __init__(self) -> None:
        self._tail = b"\r\n"  # the message starts at a line start
        self._held = False

    def feed(self, data: bytes | memoryview) -> bytes:
        if not data:
            return b""
        piece = (b"\r" if self._held else b"") + bytes(data)
        joined = self._tail + piece
        out = joined.replace(b"\r\n.", b"\r\n..")[len(self._tail):]
        self._tail = joined[-2:]
        self._held = out.endswith(b"\r")
        return out[:-1] if self._held else out

    def finish(self) -> bytes:
        held = b"\r" if self._held else b""
        self._held = False
        ends_line = self._tail == b"\r\n"
        return held + (b".\r\n" if ends_line else b"\r\n.\r\n")
