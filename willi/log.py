"""Structured logs: one line per event, logfmt or JSON lines, on a stream.

Operators grep and ship these lines, so each call writes exactly one line,
whatever the values hold: logfmt values with spaces, quotes or control
characters are quoted and escaped, and JSON escapes everything non-ASCII.
There is no global logger: `cli` builds one and passes it down; `bind`
makes a child that stamps fields such as the session id on every line.
The level check comes first so a disabled debug call costs almost nothing.

Writing never blocks the reactor (SPEC §6): a serving process hands its lines
to a `LogWriter`, a bounded buffer drained by one writer thread. When the
reader of stdout stalls (a stuck journald or container log collector) the
buffer fills, further lines are dropped and counted, and once the writer
catches up it writes `event=log_dropped count=N`. A stalled session would
be worse than a lost line. Tools (`--check`, `--lookup`) and tests write
directly (`DirectSink`).

Under systemd (`JOURNAL_STREAM` names our stdout) lines carry the journald
priority prefix `<N>` instead of a timestamp: journald stamps them itself.
"""

from __future__ import annotations

import collections
import io
import json
import os
import select
import threading
import time
from types import MappingProxyType
from typing import Callable, Mapping, Protocol, TextIO

LEVELS: Mapping[str, int] = MappingProxyType({"debug": 10, "info": 20, "warning": 30, "error": 40})
FORMATS = ("logfmt", "json")
# syslog(3) priorities, as journald reads them from a `<N>` line prefix (sd-daemon(3)).
PRIORITIES: Mapping[str, str] = MappingProxyType({"debug": "<7>", "info": "<6>", "warning": "<4>", "error": "<3>"})
BUFFER_LINES = 10_000  # about 3 MB of lines held while the reader of stdout stalls

# Characters that force a logfmt value into quotes (besides non-printables).
_NEEDS_QUOTES = frozenset(' ="')
_ESCAPES = MappingProxyType({'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


class Sink(Protocol):
    """Where finished lines go."""

    dropped: int  # lines lost since the start (a full buffer, a closed stream)

    def put(self, line: str) -> None: ...

    def start(self, report: Callable[[int], str]) -> None: ...

    def close(self, timeout: float) -> None: ...


class DirectSink:
    """Writes and flushes each line at once, on the caller's thread."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()  # worker threads log too: lines must not interleave
        self.dropped = 0

    def put(self, line: str) -> None:
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()  # stdout may be a pipe to a log shipper
            except OSError:
                self.dropped += 1  # a closed log pipe must not take the mail flow down with it

    def start(self, report: Callable[[int], str]) -> None:
        return None

    def close(self, timeout: float) -> None:
        return None


class LogWriter:
    """A bounded buffer of lines and the thread that writes them to `stream`.

    Until `start()` it writes directly (the start-up lines, a supervisor
    process that never serves); after it, `put` only appends under a lock held
    for a few instructions and never waits for the stream. `close(timeout)`
    writes what is buffered, waiting at most `timeout` for a stalled reader.
    """

    def __init__(self, stream: TextIO, limit: int = BUFFER_LINES) -> None:
        self._direct = DirectSink(stream)
        self._fd = -1
        self._stream = stream
        self._limit = limit
        self._lines: collections.deque[str] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._idle = False
        self._closing = False
        self._unreported = 0
        self._report: Callable[[int], str] = lambda count: f"event=log_dropped count={count}"
        self.dropped = 0

    def put(self, line: str) -> None:
        if self._thread is None:
            self._direct.put(line)
            self.dropped = self._direct.dropped
            return
        with self._cond:
            if self._closing or len(self._lines) >= self._limit:
                self._unreported += 1
                self.dropped += 1
                return
            self._lines.append(line)
            if self._idle:
                self._cond.notify()

    def start(self, report: Callable[[int], str]) -> None:
        """From now on lines go through the buffer (call it after any fork)."""
        if self._thread is not None:
            return
        try:
            self._stream.flush()
            self._fd = self._stream.fileno()
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return  # no descriptor (a test's StringIO): keep writing directly
        self._report = report
        self._thread = threading.Thread(target=self._run, name="willi-log", daemon=True)
        self._thread.start()

    def close(self, timeout: float) -> None:
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify()
        thread.join(timeout)  # a reader that never comes back: the daemon thread dies with us

    @property
    def buffered(self) -> int:
        return len(self._lines)

    def _run(self) -> None:
        fd = self._fd
        while True:
            with self._cond:
                while not self._lines and not self._closing:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                if not self._lines and not self._unreported:
                    return
                batch = list(self._lines)
                self._lines.clear()
                unreported, self._unreported = self._unreported, 0
            if unreported:
                try:
                    batch.append(self._report(unreported))
                except Exception:  # the writer must outlive a bad formatter
                    batch.append(f"event=log_dropped count={unreported}")
            text = "".join(line + "\n" for line in batch)
            if not _write_all(fd, text.encode("utf-8", "backslashreplace")):
                with self._cond:
                    self.dropped += len(batch)


def journal_stream(value: str | None, stream: TextIO) -> bool:
    """Whether `JOURNAL_STREAM` (`dev:inode`, set by systemd) names `stream`
    itself, not an inherited variable while stdout went elsewhere."""
    if not value:
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return value.strip() == f"{status.st_dev}:{status.st_ino}"


# A write of at most this much to a pipe is never interleaved with another
# process's (POSIX PIPE_BUF): WILLI_WORKERS share one stdout.
ATOMIC_WRITE = select.PIPE_BUF


def _write_all(fd: int, data: bytes) -> bool:
    """Blocking write of all of `data`, whole lines at most ATOMIC_WRITE
    octets at a time (a longer line alone); False when the stream is gone."""
    view, start, size = memoryview(data), 0, len(data)
    while start < size:
        end = size
        if size - start > ATOMIC_WRITE:
            cut = data.rfind(b"\n", start, start + ATOMIC_WRITE)
            end = cut + 1 if cut >= 0 else (data.find(b"\n", start + ATOMIC_WRITE) + 1 or size)
        if not _write_piece(fd, view[start:end]):
            return False
        start = end
    return True


def _write_piece(fd: int, view: memoryview) -> bool:
    """Blocking write of all of `view` (the writer thread may wait)."""
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [], 1.0)  # someone made our stdout non-blocking
        except InterruptedError:
            continue
        except OSError:
            return False
    return True


class LevelMethods:
    """`debug`, `info`, `warning` and `error` as `log(level, ...)`, written once
    for every logger shape (the Logger, the Observer's ObservedLogger)."""

    __slots__ = ()

    def log(self, level: str, event: str, **fields: object) -> None:
        raise NotImplementedError

    def debug(self, event: str, **fields: object) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: object) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: object) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: object) -> None:
        self.log("error", event, **fields)


class Logger(LevelMethods):
    """Writes `ts level event key=value...` lines to a sink, one per call."""

    __slots__ = ("_sink", "_fmt", "_level", "_threshold", "_clock", "_fields", "_journal")

    def __init__(
        self,
        stream: TextIO | None,
        fmt: str = "logfmt",
        level: str = "info",
        clock: Callable[[], float] = time.time,
        *,
        fields: Mapping[str, object] | None = None,
        sink: Sink | None = None,
        journal: bool = False,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
        if level not in LEVELS:
            raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
        if sink is None:
            assert stream is not None, "a Logger needs a stream or a sink"
            sink = DirectSink(stream)
        self._sink = sink
        self._fmt = fmt
        self._level = level
        self._threshold = LEVELS[level]
        self._clock = clock
        self._fields = dict(fields or {})
        self._journal = journal

    @property
    def sink(self) -> Sink:
        return self._sink

    def bind(self, **fields: object) -> Logger:
        """A child logger adding `fields` to every line; same sink and level."""
        return Logger(None, self._fmt, self._level, self._clock, fields={**self._fields, **fields},
                      sink=self._sink, journal=self._journal)

    def enabled(self, level: str) -> bool:
        """Whether a line at `level` would be written (to skip costly fields)."""
        return LEVELS[level] >= self._threshold

    def render(self, level: str, event: str, **fields: object) -> str:
        """The line `log` would write, without its newline."""
        record: dict[str, object] = {"level": level, "event": event}
        if not self._journal:
            record = {"ts": format_time(self._clock()), **record}
        for key, value in {**self._fields, **fields}.items():
            if value is not None:
                record[key] = value
        line = format_json(record) if self._fmt == "json" else format_logfmt(record)
        return PRIORITIES[level] + line if self._journal else line

    def log(self, level: str, event: str, **fields: object) -> None:
        """Write one line at `level`; fields that are None are left out."""
        if LEVELS[level] < self._threshold:
            return
        self._sink.put(self.render(level, event, **fields))


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
