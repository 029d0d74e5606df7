"""Scanning a DATA body as it streams through, without per-line Python work.

The body is forwarded as it arrives; this scanner only answers, for each
chunk, "where does the message end" and "is this chunk acceptable". Both are
answered with bytes methods that run in C over the whole chunk: `find` for the
end of data, `replace` and `find` for line endings and NUL. Only the 4 bytes of
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


# Every byte but CR, LF and NUL (bench/scanner.py times a translate() with it).
NOT_LINE_END = bytes(b for b in range(256) if b not in (0, 10, 13))


def line_end_fault(buf: bytes | bytearray | memoryview, start: int, stop: int, after_cr: bool) -> Violation | None:
    """NUL or BAD_LINE_ENDING for buf[start:stop], or None when every line
    end in it is CRLF. `after_cr`: the byte before `start` was a CR, so an LF
    must come first; a CR as the last byte is let through (its LF may be
    the next chunk's first byte: the caller checks that, or the message's end).

    One replace() pass takes the CRLF pairs out; what is left must hold no
    CR, LF or NUL, which memchr finds at no cost. That is a third less than
    a translate() keeping the line ends plus a count of the pairs, and half
    of three count() passes (BENCHMARKS.md, the strict scanner)."""
    chunk = buf[start:stop] if buf.__class__ is bytes else bytes(memoryview(buf)[start:stop])
    if chunk.find(0) >= 0:
        return NUL
    left = chunk.replace(b"\r\n", b"")
    first = 0
    if after_cr:
        if chunk[0] != 10:
            return BAD_LINE_ENDING
        first = 1  # that LF ends the previous chunk's CR (it cannot be in a pair here)
    last = len(left) - 1 if chunk[-1] == 13 else len(left)
    if left.find(10, first, last) >= 0 or left.find(13, first, last) >= 0:
        return BAD_LINE_ENDING
    return None


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
        # A CR that ends this chunk is judged with the next one (_tail); the
        # end of data always follows a CRLF, so none is left unjudged.
        self.violation = line_end_fault(buf, start, stop, after_cr=self._tail[-1:] == b"\r")
