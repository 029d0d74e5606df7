"""`csv:PATH`: the original Willi's table of `pattern;server;tls_verify`.

The file is held in memory and re-read when it changes, so operators edit it
without a restart. Editing is where mistakes happen, so a file is taken whole
or not at all: one bad line rejects it, at start-up with an error naming the
line, later by keeping the table in force and logging why (a half-saved file
must never drop routes). Changes are noticed by stat (mtime, size, inode),
checked at most once a second on lookups, and on SIGHUP unconditionally.

Lookups come from the reactor and from worker threads at once; the table is
replaced by one assignment, and a lock taken without waiting keeps two
threads from re-reading the same change twice.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from willi.errors import MappingError
from willi.routing import MappingSpec, NotCached, Route
from willi.targets import parse_targets

_CHECK_INTERVAL = 1.0  # seconds between stat() calls (SPEC §3)
_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}

Stamp = tuple[int, int, int, int]  # st_mtime_ns, st_size, st_ino, st_dev


class CsvMapping:
    """A `pattern;server;tls_verify` file, re-read when it changes."""

    __slots__ = ("name", "blocking", "path", "_logger", "_clock", "_lock", "_table", "_stamp", "_next_check")

    def __init__(self, spec: MappingSpec, logger: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = spec.name
        self.blocking = False
        self.path = spec.uri.partition(":")[2]
        self._logger = logger
        self._clock = clock
        self._lock = threading.Lock()
        # Raises MappingError: a bad file at start-up stops the start.
        self._table, self._stamp = load_csv(self.path)
        self._next_check = clock() + _CHECK_INTERVAL

    def get(self, key: str) -> Route | None:
        if self._clock() >= self._next_check:
            self._reload_if_changed()
        return self._table.get(key)

    def peek(self, key: str) -> Route | None | NotCached:
        return self.get(key)

    def reload(self) -> None:
        """SIGHUP: re-read whether or not the file looks changed."""
        with self._lock:
            self._load_logged()

    def check(self) -> None:
        """--check: raise MappingError when the file (as it is now) is bad."""
        load_csv(self.path)

    def close(self) -> None:
        """Holds no open file between reads."""

    def _reload_if_changed(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is looking already; serve the current table
        try:
            self._next_check = self._clock() + _CHECK_INTERVAL
            if _stat(self.path) != self._stamp:
                self._load_logged()
        finally:
            self._lock.release()

    def _load_logged(self) -> None:
        """Swap in the file's table, or keep the old one and log why."""
        before = _stat(self.path)
        try:
            table, stamp = load_csv(self.path)
        except MappingError as exc:
            # Remember the broken file's stamp so it is reported once, not every
            # second; taken before reading, so a fix saved meanwhile still counts.
            self._stamp = before
            self._logger.warning("mapping_reload_failed", mapping=self.name, error=str(exc))
            return
        self._table, self._stamp = table, stamp
        self._logger.info("mapping_reloaded", mapping=self.name, entries=len(table))


def load_csv(path: str) -> tuple[dict[str, Route], Stamp]:
    """Read and parse the file; the stamp is taken from the descriptor read."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            stamp = _stamp_of(os.fstat(f.fileno()))
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{path}: cannot read: {exc}") from None
    return parse_csv(text, path), stamp


def parse_csv(text: str, path: str) -> dict[str, Route]:
    """pattern → Route; MappingError naming path and line on the first bad line."""
    table: dict[str, Route] = {}
    first_line: dict[str, int] = {}
    header_seen = False
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not header_seen:
            header_seen = True  # the original format starts with column names
            continue
        try:
            pattern, route = _parse_line(line)
            if pattern in table:
                raise ValueError(f"duplicate pattern {pattern!r} (first on line {first_line[pattern]})")
        except ValueError as exc:
            raise MappingError(f"{path}:{number}: {exc}") from None
        table[pattern] = route
        first_line[pattern] = number
    if not header_seen:
        # An empty file is more likely a half-written one than an empty table.
        raise MappingError(f"{path}: no header line (empty file)")
    return table


def _parse_line(line: str) -> tuple[str, Route]:
    fields = [field.strip() for field in line.split(";")]
    if len(fields) not in (2, 3):
        raise ValueError(f"expected pattern;server[;tls_verify], got {len(fields)} fields")
    pattern, server = fields[0].lower(), fields[1]
    if not pattern:
        raise ValueError("empty pattern")
    if not server:
        raise ValueError("empty server")
    parse_targets(server)  # ValueError names the bad target
    tls_verify = True
    if len(fields) == 3 and fields[2]:
        flag = fields[2].lower()
        if flag not in _BOOLS:
            hint = " (a port belongs in the server field: host:port)" if flag.isdigit() else ""
            raise ValueError(f"tls_verify {fields[2]!r} is not 1/0, true/false or yes/no{hint}")
        tls_verify = _BOOLS[flag]
    return pattern, Route(server, tls_verify)


def _stat(path: str) -> Stamp | None:
    try:
        return _stamp_of(os.stat(path))
    except OSError:
        return None  # missing now; load_csv will say why


def _stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
