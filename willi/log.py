"""Structured logs: one line per event, logfmt or JSON lines, on a stream.

Operators grep and ship these lines, so each call writes exactly one line,
whatever the values hold: logfmt values with spaces, quotes or control
characters are quoted and escaped, and JSON escapes everything non-ASCII.
There is no global logger: `cli` builds one and passes it down; `bind`
makes a child that stamps fields such as the session id on every line.
The level check comes first so a disabled debug call costs almost nothing.
"""

from __future__ import annotations

import json
import threading
import time
from types import MappingProxyType
from typing import Callable, Mapping, TextIO

LEVELS: Mapping[str, int] = MappingProxyType({"debug": 10, "info": 20, "warning": 30, "error": 40})
FORMATS = ("logfmt", "json")

# Characters that force a logfmt value into quotes (besides non-printables).
_NEEDS_QUOTES = frozenset(' ="')
_ESCAPES = MappingProxyType({'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


class Logger:
    """Writes `ts level event key=value...` lines to `stream`, flushed per line."""

    __slots__ = ("_stream", "_fmt", "_level", "_threshold", "_clock", "_fields", "_lock")

    def __init__(
        self,
        stream: TextIO,
        fmt: str = "logfmt",
        level: str = "info",
        clock: Callable[[], float] = time.time,
        *,
        fields: Mapping[str, object] | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
        if level not in LEVELS:
            raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
        self._stream = stream
        self._fmt = fmt
        self._level = level
        self._threshold = LEVELS[level]
        self._clock = clock
        self._fields = dict(fields or {})
        # Shared with children: worker threads may log too, and two lines
        # written at once must not interleave.
        self._lock = lock or threading.Lock()

    def bind(self, **fields: object) -> Logger:
        """A child logger adding `fields` to every line; same stream and level."""
        return Logger(
            self._stream,
            self._fmt,
            self._level,
            self._clock,
            fields={**self._fields, **fields},
            lock=self._lock,
        )

    def enabled(self, level: str) -> bool:
        """Whether a line at `level` would be written (to skip costly fields)."""
        return LEVELS[level] >= self._threshold

    def log(self, level: str, event: str, **fields: object) -> None:
        """Write one line at `level`; fields that are None are left out."""
        if LEVELS[level] < self._threshold:
            return
        record = {"ts": format_time(self._clock()), "level": level, "event": event}
        for key, value in {**self._fields, **fields}.items():
            if value is not None:
                record[key] = value
        line = format_json(record) if self._fmt == "json" else format_logfmt(record)
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()  # stdout may be a pipe to a log shipper
            except OSError:
                pass  # a closed log pipe must not take the mail flow down with it

    def debug(self, event: str, **fields: object) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: object) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: object) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: object) -> None:
        self.log("error", event, **fields)


def format_time(timestamp: float) -> str:
    """UTC, millisecond precision: 2026-11-22T10:00:00.123Z."""
    # Round once on the whole value: .123 is not exact in binary, and
    # truncating the fraction alone would print .122.
    seconds, millis = divmod(round(timestamp * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def format_logfmt(record: Mapping[str, object]) -> str:
    """`key=value` pairs separated by spaces; values quoted only when needed."""
    return " ".join(f"{key}={_logfmt_value(value)}" for key, value in record.items())


def format_json(record: Mapping[str, object]) -> str:
    """One JSON object; ASCII only, so no character can split the line."""
    plain = {key: _plain(value) for key, value in record.items()}
    return json.dumps(plain, separators=(",", ":"), default=str)


def _plain(value: object) -> object:
    """Bytes become text (undecodable bytes escaped); the rest stays as is."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    return value


def _logfmt_value(value: object) -> str:
    """One logfmt value: bools as true/false, text quoted when it must be."""
    if value is True or value is False:
        return "true" if value else "false"
    value = _plain(value)
    text = value if isinstance(value, str) else str(value)
    if text and not any(char in _NEEDS_QUOTES or not char.isprintable() for char in text):
        return text
    return '"' + "".join(_escape(char) for char in text) + '"'


def _escape(char: str) -> str:
    """One character inside a quoted logfmt value."""
    if char in _ESCAPES:
        return _ESCAPES[char]
    if not char.isprintable():
        return f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"
    return char
