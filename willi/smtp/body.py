"""Scanning a DATA body as it streams through, without per-line Python work.

The body is forwarded as it arrives; this scanner only answers, for each
chunk, "where does the message end" and "is this chunk acceptable". Both are
answered with bytes methods that run in C over the whole chunk: `find` for the
end of data, `count` for line endings, `in` for NUL. Only the 4 bytes of
context that a chunk boundary can split are carried from chunk to chunk.

End of data is CRLF.CRLF and nothing else (RFC 5321 §4.1.1.4). A bare LF, a
bare CR (including `\\r\\r\\n`) or a NUL in the body is what SMTP smuggling is
made of; in `reject` mode such a body is refused as a whole. The scanner also
counts the size against the limit. The caller acts on `violation`: it drops
the upstream connection (never sending the final dot) and answers the client
once the client's own end of data arrives.
"""

from __future__ import annotations

END = b"\r\n.\r\n"
# Every byte but CR, LF and NUL: what translate() deletes to leave only those.
NOT_LINE_END = bytes(b for b in range(256) if b not in (0, 10, 13))


def line_ends(buf: bytes | bytearray, start: int, stop: int) -> tuple[int, int, int, bool]:
    """(CRLF pairs, CRs, LFs, any NUL) in buf[start:stop].

    One translate() pass leaves only the CR, LF and NUL bytes, a few per
    line, which are counted at no cost; only the pairs need a pass of their
    own. Three count() passes cost half as much again (BENCHMARKS.md,
    the strict scanner)."""
    # bytes.translate runs at twice the speed of bytearray.translate.
    chunk = buf[start:stop] if buf.__class__ is bytes else bytes(memoryview(buf)[start:stop])
    ends = chunk.translate(None, NOT_LINE_END)
    return buf.count(b"\r\n", start, stop), ends.count(13), ends.count(10), 0 in ends


class Violation:
    """Why a body is refused; `None` on the scanner means none so far."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Violation({self.reason})"


TOO_BIG = Violation("size")
BAD_LINE_ENDING = Violation("bare CR or LF")
NUL = Violation("NUL")


class DataScanner:
    """Finds the end of a DATA body and checks what precedes it."""

    __slots__ = ("_tail", "size", "max_size", "strict", "violation")

    def __init__(self, max_size: int, strict: bool = True) -> None:
        # The CRLF that ended the DATA command counts: ".\r\n" at once is an
        # empty message.
        self._tail = b"\r\n"
        self.size = 0
        self.max_size = max_size
        self.strict = strict
        self.violation: Violation | None = None

    def scan(self, buf: bytes | bytearray, start: int, stop: int) -> int:
        """Scan buf[start:stop] (no copy is made). Return the index in buf just
        past the end-of-data marker, or -1 when all of it belongs to the
        message and the end is still to come."""
        end = self._find_end(buf, start, stop)
        body_stop = stop if end < 0 else end
        self.size += body_stop - start
        if self.violation is None:
            if self.size > self.max_size + 3:  # the final ".\r\n" is no content
                self.violation = TOO_BIG
            elif self.strict and body_stop > start:
                self._check(buf, start, body_stop)
        if end < 0 and stop > start:
            self._tail = (self._tail + bytes(buf[max(start, stop - 4) : stop]))[-4:]
        return end

    def _find_end(self, buf: bytes | bytearray, start: int, stop: int) -> int:
        # A marker split across the chunk boundary: look in tail + chunk head.
        tail = self._tail
        head = bytes(buf[start : min(stop, start + 4)])
        pos = (tail + head).find(END)
        if pos >= 0:
            return start + pos + 5 - len(tail)
        # Inside the chunk the marker needs a dot: memchr finds the first in
        # no time, and a chunk without one (base64, the bulk of large mail)
        # needs no five-byte search at all.
        dot = buf.find(b".", start + 2, stop)
        if dot < 0:
            return -1
        pos = buf.find(END, dot - 2, stop)
        return -1 if pos < 0 else pos + 5

    def _check(self, buf: bytes | bytearray, start: int, stop: int) -> None:
        crlf, cr, lf, nul = line_ends(buf, start, stop)
        if nul:
            self.violation = NUL
            return
        if self._tail[-1:] == b"\r":
            # The previous chunk ended in CR: only an LF may complete it.
            if buf[start] != 10:
                self.violation = BAD_LINE_ENDING
                return
            lf -= 1
        if buf[stop - 1] == 13:
            cr -= 1  # its LF may come with the next chunk
        if lf != crlf or cr != crlf:
            self.violation = BAD_LINE_ENDING
