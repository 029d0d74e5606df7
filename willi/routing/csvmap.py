"""`csv:PATH`: the original Willi's table of `pattern;server;tls_verify`.

The file is held in memory and re-read when it changes, so operators edit it
without a restart. Editing is where mistakes happen, so a file is taken whole
or not at all: one bad line rejects it, and so does a first line that is not
the header (a file saved without it would silently lose its first route); at
start-up that is an error naming the line, later the table in force is kept
and the reason logged when the file is re-read.

Tables grow to a million rows (a hosting provider's domains), so two things
matter beyond correctness. Reading one takes seconds, which the reactor must
never wait for: once `attach`ed to a reactor and its worker pool, a reactor
timer looks at the file's stamp (mtime, size, inode) once a second, a changed
file is read and parsed in a worker thread, and only the finished table is
swapped in, on the reactor, by one assignment; the old table answers until
then; the parsing worker yields the GIL every thousand lines, and the table
is split over 64 dicts so that no single dict resize holds the GIL for long
(see Table); the replaced table is freed by a worker too, a few thousand
rows at a time, three seconds after the swap (by then no lookup that began
before it can still be reading it), because freeing a million rows at once
holds the GIL for a tenth of a second. And a row should cost little more than its key: there are only
a few distinct servers, so equal routes are one shared Route object (interned
while parsing), and the file is parsed line by line, never held whole.

Unattached (--check, --lookup, tests of the table itself) the stamp is
checked on lookups, at most once a second, and a change is read at once.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from willi.errors import MappingError
from willi.routing import MappingSpec, NotCached, Route
from willi.targets import parse_targets
from willi.workers import PoolFull

_CHECK_INTERVAL = 1.0  # seconds between stat() calls (SPEC §3)
_YIELD_EVERY = 1024  # lines (about 2 ms of parsing): a parsing worker lets the reactor have the GIL this often
# A real sleep, not sleep(0): sleep(0) drops the GIL and takes it straight back
# before a waiting reactor thread is scheduled, which then waits out the whole
# switch interval (5 ms) at each of a NOOP's select, recv and send.
_YIELD_SECONDS = 0.0001
_RETIRE_AFTER = 3.0  # seconds a replaced table is kept before a worker frees it
_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
HEADER_FIELDS = (("pattern", "server"), ("pattern", "server", "tls_verify"))

Stamp = tuple[int, int, int, int]  # st_mtime_ns, st_size, st_ino, st_dev


_SHARD_MASK = 63  # Table.SHARDS - 1


class Table:
    """pattern → Route, held in 64 dicts picked by the pattern's hash.

    One dict of a million keys is rebuilt whole each time it grows past two
    thirds full, a C call that holds the GIL for tens of milliseconds: a
    parsing worker would stall the reactor that long however often it
    yields. Each of 64 dicts grows by a 64th of that.
    """

    __slots__ = ("shards",)
    SHARDS = _SHARD_MASK + 1  # a power of two: the shard is hash & (SHARDS - 1)

    def __init__(self) -> None:
        self.shards: list[dict[str, Route]] = [{} for _ in range(self.SHARDS)]

    def get(self, key: str) -> Route | None:
        return self.shards[hash(key) & (self.SHARDS - 1)].get(key)

    def __getitem__(self, key: str) -> Route:
        return self.shards[hash(key) & (self.SHARDS - 1)][key]

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def items(self) -> Iterator[tuple[str, Route]]:
        for shard in self.shards:
            yield from shard.items()

    def values(self) -> Iterator[Route]:
        for shard in self.shards:
            yield from shard.values()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Table):
            other = dict(other.items())
        return isinstance(other, dict) and dict(self.items()) == other

    __hash__ = None  # type: ignore[assignment]  # mutable while parsed


@dataclass(frozen=True, slots=True)
class _Read:
    """What a worker's look at the file found: a new table, nothing new, or a broken file."""

    table: Table | None = None
    stamp: Stamp | None = None
    error: str | None = None
    changed: bool = True


class CsvMapping:
    """A `pattern;server;tls_verify` file, re-read when it changes."""

    __slots__ = ("name", "blocking", "path", "_logger", "_clock", "_lock", "_table", "_stamp",
                 "_next_check", "_interval", "_retire_after", "_reactor", "_workers", "_timer", "_pending", "_forced")

    def __init__(self, spec: MappingSpec, logger: Any, clock: Callable[[], float] = time.monotonic,
                 *, interval: float = _CHECK_INTERVAL, retire_after: float = _RETIRE_AFTER) -> None:
        self.name = spec.name
        self.blocking = False
        self.path = spec.uri.partition(":")[2]
        self._logger = logger
        self._clock = clock
        self._lock = threading.Lock()
        # Raises MappingError: a bad file at start-up stops the start.
        self._table, self._stamp = load_csv(self.path)
        self._interval = interval
        self._retire_after = retire_after
        self._next_check = clock() + interval
        self._reactor: Any = None
        self._workers: Any = None
        self._timer: Any = None
        self._pending = False  # a worker is reading the file
        self._forced = False  # a SIGHUP came while it was

    def __len__(self) -> int:
        return len(self._table)

    def get(self, key: str) -> Route | None:
        if self._reactor is None and self._clock() >= self._next_check:
            self._reload_if_changed()
        return self._table.shards[hash(key) & _SHARD_MASK].get(key)  # Table.get, inlined

    def peek(self, key: str) -> Route | None | NotCached:
        return self.get(key)

    def attach(self, reactor: Any, workers: Any) -> None:
        """Watch the file from a reactor timer and read it in `workers` from now on."""
        self._reactor, self._workers = reactor, workers
        self._timer = reactor.call_later(self._interval, self._tick)

    def reload(self) -> None:
        """SIGHUP: re-read whether or not the file looks changed."""
        if self._reactor is not None:
            self._forced = True
            if not self._pending:
                self._submit()
            return
        with self._lock:
            self._load_logged()

    def check(self) -> None:
        """--check: raise MappingError when the file (as it is now) is bad."""
        load_csv(self.path)

    def close(self) -> None:
        """Holds no open file between reads; stops watching."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._reactor = self._workers = None
        # Detached now, but not unattached: a lookup must not start re-reading.
        self._next_check = math.inf

    # -- attached: the reactor watches, a worker reads ------------------------

    def _tick(self) -> None:
        self._timer = None
        if self._reactor is None:
            return
        if not self._pending:
            self._submit()
        if not self._pending:  # the pool was full: look again in a second
            self._timer = self._reactor.call_later(self._interval, self._tick)

    def _submit(self) -> None:
        force, self._forced = self._forced, False
        try:
            self._workers.submit(_read_if_changed, (self.path, self._stamp, force), self._read_done)
        except PoolFull:
            self._forced = self._forced or force
            return
        self._pending = True

    def _read_done(self, result: _Read | None, exc: BaseException | None) -> None:
        """On the reactor: swap in the new table, or keep the old one and say why."""
        self._pending = False
        if self._reactor is None:
            return  # closed meanwhile
        if exc is not None:
            self._logger.warning("mapping_reload_failed", mapping=self.name, error=f"{type(exc).__name__}: {exc}")
        elif result is not None:
            old = self._table
            self._apply(result)
            if self._table is not old:
                # Freeing a million rows at once holds the GIL for ~0.1 s; a
                # worker frees them bit by bit, once no lookup can still be
                # reading them (a worker's get() began before the swap).
                self._reactor.call_later(self._retire_after, self._retire, old)
        if self._forced:
            self._submit()
        if not self._pending and self._timer is None:
            self._timer = self._reactor.call_later(self._interval, self._tick)

    def _retire(self, table: Table) -> None:
        if self._workers is None:
            return  # closed: the table goes with the mapping
        try:
            self._workers.submit(_free_gradually, (table,), lambda result, exc: None)
        except PoolFull:
            self._reactor.call_later(self._interval, self._retire, table)

    def _apply(self, result: _Read) -> None:
        if not result.changed:
            return
        if result.error is not None:
            # Remember the broken file's stamp so it is reported once, not every
            # second; taken before reading, so a fix saved meanwhile still counts.
            self._stamp = result.stamp  # type: ignore[assignment]
            self._logger.warning("mapping_reload_failed", mapping=self.name, error=result.error)
            return
        assert result.table is not None and result.stamp is not None
        self._table, self._stamp = result.table, result.stamp
        self._logger.info("mapping_reloaded", mapping=self.name, entries=len(result.table))

    # -- unattached: the lookup that notices a change reads it ----------------

    def _reload_if_changed(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is looking already; serve the current table
        try:
            self._next_check = self._clock() + self._interval
            if _stat(self.path) != self._stamp:
                self._load_logged()
        finally:
            self._lock.release()

    def _load_logged(self) -> None:
        """Swap in the file's table, or keep the old one and log why."""
        self._apply(_read_if_changed(self.path, self._stamp, True))


def _free_gradually(table: Table) -> None:
    """Empty a retired table a few thousand rows at a time, in a worker thread,
    yielding the GIL between, so the reactor never waits for the whole of it."""
    for index, shard in enumerate(table.shards):
        table.shards[index] = {}
        while shard:
            for _ in range(min(len(shard), _YIELD_EVERY)):
                shard.popitem()
            time.sleep(_YIELD_SECONDS)


def _read_if_changed(path: str, stamp: Stamp | None, force: bool) -> _Read:
    """The file's table when its stamp differs from `stamp` (or `force`); worker threads."""
    before = _stat(path)
    if not force and before == stamp:
        return _Read(changed=False)
    try:
        table, new_stamp = load_csv(path, yield_gil=True)
    except MappingError as exc:
        return _Read(stamp=before, error=str(exc))
    return _Read(table=table, stamp=new_stamp)


def load_csv(path: str, yield_gil: bool = False) -> tuple[Table, Stamp]:
    """Read and parse the file; the stamp is taken from the descriptor read."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            stamp = _stamp_of(os.fstat(f.fileno()))
            table = parse_lines(f, path, yield_gil)
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{path}: cannot read: {exc}") from None
    return table, stamp


def parse_csv(text: str, path: str) -> Table:
    """pattern → Route; MappingError naming path and line on the first bad line."""
    return parse_lines(text.splitlines(), path)


def parse_lines(lines: Iterable[str], path: str, yield_gil: bool = False) -> Table:
    """The table of the header line and the lines after it.

    Routes are interned: rows with the same server and tls_verify share one
    Route, so a million rows over fifty servers hold fifty Routes. With
    `yield_gil` (a worker thread parsing) the GIL is released every few
    thousand lines, so the reactor thread waits milliseconds, not the whole
    parse.
    """
    table = Table()
    shards, mask = table.shards, Table.SHARDS - 1
    routes: dict[Any, Route] = {}  # (server, flag) as written, and each Route itself → the shared Route
    header_seen = False
    number = 0
    for number, line in enumerate(lines, start=1):
        if yield_gil and not number % _YIELD_EVERY:
            time.sleep(_YIELD_SECONDS)
        line = line.strip()
        if not line or line[0] == "#":
            continue
        if not header_seen:
            _check_header(line, path, number)
            header_seen = True
            continue
        try:
            pattern, route = _parse_line(line, routes)
        except ValueError as exc:
            raise MappingError(f"{path}:{number}: {exc}") from None
        shard = shards[hash(pattern) & mask]
        size = len(shard)
        shard[pattern] = route
        if len(shard) == size:
            raise MappingError(f"{path}:{number}: duplicate pattern {pattern!r} (first on line "
                               f"{_first_line(path, lines, pattern)})")
    if not header_seen:
        # An empty file is more likely a half-written one than an empty table.
        raise MappingError(f"{path}: no header line (empty file)")
    return table


def _check_header(line: str, path: str, number: int) -> None:
    """The first line names the columns; anything else is a file without its header."""
    fields = tuple(field.strip().lower() for field in line.split(";"))
    if fields not in HEADER_FIELDS:
        raise MappingError(
            f"{path}:{number}: expected the header line pattern;server;tls_verify (or pattern;server), "
            f"got {line[:80]!r}; without it the first route would be taken for the header and lost")


def _parse_line(line: str, routes: dict[Any, Route]) -> tuple[str, Route]:
    fields = line.split(";")
    if len(fields) not in (2, 3):
        raise ValueError(f"expected pattern;server[;tls_verify], got {len(fields)} fields")
    pattern, server = fields[0].strip().lower(), fields[1].strip()
    flag = fields[2].strip() if len(fields) == 3 else ""
    route = routes.get((server, flag))
    if route is None:
        route = _new_route(server, flag)
        # "yes" and "1" are one Route too: equal routes are keys of their own.
        route = routes[(server, flag)] = routes.setdefault(route, route)  # type: ignore[call-overload]
    if not pattern:
        raise ValueError("empty pattern")
    return pattern, route


def _new_route(server: str, flag: str) -> Route:
    """Validated once per distinct (server, tls_verify) of the file."""
    if not server:
        raise ValueError("empty server")
    parse_targets(server)  # ValueError names the bad target
    tls_verify = True
    if flag:
        word = flag.lower()
        if word not in _BOOLS:
            hint = " (a port belongs in the server field: host:port)" if word.isdigit() else ""
            raise ValueError(f"tls_verify {flag!r} is not 1/0, true/false or yes/no{hint}")
        tls_verify = _BOOLS[word]
    return Route(server, tls_verify)


def _first_line(path: str, lines: Iterable[str], pattern: str) -> int | str:
    """Where a duplicate pattern was first seen (the error path only: read again)."""
    source: Iterable[str] = lines if isinstance(lines, list) else []
    try:
        if not source:
            with open(path, encoding="utf-8", newline="") as f:
                source = f.readlines()
    except OSError:
        return "?"
    for number, line in enumerate(source, start=1):
        if line.split(";", 1)[0].strip().lower() == pattern:
            return number
    return "?"


def _stat(path: str) -> Stamp | None:
    try:
        return _stamp_of(os.stat(path))
    except OSError:
        return None  # missing now; load_csv will say why


def _stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
