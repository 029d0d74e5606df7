"""Reading upstream replies (RFC 5321 §4.2): `250-...` lines up to `250 ...`.

The raw bytes of a complete reply are kept so the client gets the upstream's
reply verbatim. Limits keep a hostile or broken upstream from growing memory:
a line over 4096 octets or a reply over 100 lines is a protocol error.
"""

from __future__ import annotations

from willi.errors import WilliError

MAX_LINE = 4096
MAX_LINES = 100


# Every valid reply code, for the one-line fast path (a dict lookup instead of
# isdigit + int).
_CODES = {b"%d" % code: code for code in range(200, 600)}


class ReplyError(WilliError):
    """The upstream sent something that is not an SMTP reply."""


class Reply:
    """One complete reply: its code, its lines (without CRLF) and raw bytes."""

    __slots__ = ("code", "lines", "raw")

    def __init__(self, code: int, lines: list[bytes], raw: bytes) -> None:
        self.code = code
        self.lines = lines
        self.raw = raw

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def text(self) -> str:
        """The reply's text for log lines: its lines joined, without codes."""
        return " ".join(line[4:].decode("utf-8", "replace") for line in self.lines)

    def __repr__(self) -> str:
        return f"Reply({self.code}, {self.raw!r})"


class ReplyReader:
    """Feed bytes, take complete replies in order."""

    __slots__ = ("_buf", "_lines")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._lines: list[bytes] = []

    def feed(self, data: bytes | memoryview) -> None:
        buf = self._buf
        buf += data
        # Only the unfinished last line can still grow; complete lines are
        # measured by next_reply, so the limit holds however the bytes arrive.
        if len(buf) > MAX_LINE and len(buf) - buf.rfind(b"\n") - 1 > MAX_LINE:
            raise ReplyError("upstream reply line too long")

    def clear(self) -> None:
        """Forget everything unread (after STARTTLS: response injection)."""
        self._buf.clear()
        self._lines.clear()

    @property
    def pending(self) -> bool:
        return bool(self._buf) or bool(self._lines)

    def next_reply(self) -> Reply | None:
        buf = self._buf
        if not buf:
            return None  # the common case after a reply: nothing more came with it
        if not self._lines:
            # The common case: a whole one-line reply, parsed without the loop.
            end = buf.find(b"\r\n")
            if 3 <= end <= MAX_LINE and (end == 3 or buf[3] == 32) and buf.find(b"\n", 0, end) < 0:
                code = _CODES.get(bytes(buf[:3]))
                if code is not None:
                    raw = bytes(buf[: end + 2])
                    del buf[: end + 2]
                    return Reply(code, [raw[:-2]], raw)
        while True:
            end = buf.find(b"\n")
            if end < 0:
                return None
            if end > MAX_LINE:
                raise ReplyError("upstream reply line too long")
            line = bytes(buf[:end]).rstrip(b"\r")
            del buf[: end + 1]
            code, last = self._check(line)
            self._lines.append(line)
            if len(self._lines) > MAX_LINES:
                raise ReplyError("upstream reply has too many lines")
            if last:
                lines, self._lines = self._lines, []
                raw = b"".join(l + b"\r\n" for l in lines)
                return Reply(code, lines, raw)

    def _check(self, line: bytes) -> tuple[int, bool]:
        if len(line) < 3 or not line[:3].isdigit() or line[0] not in b"2345":
            raise ReplyError(f"not an SMTP reply: {line[:80]!r}")
        if len(line) > 3 and line[3] not in b" -":
            raise ReplyError(f"not an SMTP reply: {line[:80]!r}")
        code = int(line[:3])
        if self._lines and int(self._lines[0][:3]) != code:
            raise ReplyError("reply code changed within a multi-line reply")
        return code, len(line) == 3 or line[3] == 32
