"""`sqlite:PATH`: recipient keys looked up in an SQLite file (SPEC §3).

For tables too large to hold in memory (a csv: table of millions of rows
costs its rows in RAM), as Postfix's and maddy's sqlite maps: the file stays
on disk, indexed, and only the answers asked for are cached. It behaves like
the mysql:// mapping, from the same rules in routing/cached.py: the same
default query and WILLI_MAPPING_N_QUERY (written with one `%s`, as for MySQL;
it becomes SQLite's `?`), the same cache and stale TTLs, queries only in
worker threads, each thread with a connection of its own.

The file is opened read-only (a URI with mode=ro), so Willi can never write
to it or create it: a missing file is an error, not an empty table. Whoever
maintains the table can rebuild it elsewhere and rename it into place; a
SIGHUP then makes every thread open the new file (and forgets the cache),
where an open connection would keep reading the old one.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from willi.errors import MappingError
from willi.routing import MappingSpec
from willi.routing.cached import DEFAULT_CACHE_SIZE, Answer, CachedMapping, Logger, LookupFailure, row_to_route

DEFAULT_TIMEOUT = 5.0  # seconds a query waits for a writer's lock (SQLite's busy timeout)


def sqlite_query(query: str) -> str:
    """The MySQL-style query (one %s) with SQLite's placeholder."""
    return query.replace("%s", "?")


class SqliteMapping(CachedMapping):
    """WILLI_MAPPING_N=sqlite:PATH: the Mapping protocol over the stdlib's sqlite3."""

    def __init__(self, spec: MappingSpec, logger: Logger, clock: Callable[[], float] = time.monotonic,
                 *, timeout: float = DEFAULT_TIMEOUT, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        super().__init__(spec, logger, clock, cache_size)
        self.path = spec.uri.partition(":")[2].strip()
        if not self.path:
            raise MappingError(f"{spec.name}: sqlite: needs a file path")
        self._uri = f"file:{quote(str(Path(self.path).absolute()))}?mode=ro"
        self._query_text = sqlite_query(spec.query)
        self._timeout = timeout
        self._local = threading.local()  # .connection, .generation: this thread's own
        self._connections: set[sqlite3.Connection] = set()  # every thread's, for close()
        self._lock = threading.Lock()
        self._generation = 0  # bumped by reload(): threads reopen the file
        self._queries = 0
        # A file that is missing or lacks the table stops the start, as a bad
        # csv: file does: unlike a database server, it will not come back by itself.
        self.check()
        self.close()

    @property
    def queries(self) -> int:
        """How many queries were run (tests, metrics)."""
        with self._lock:
            return self._queries

    def reload(self) -> None:
        """SIGHUP: forget the cache, and reopen the file (it may have been replaced)."""
        with self._lock:
            self._generation += 1
        super().reload()

    def close(self) -> None:
        """Close every thread's connection; a later get() opens the file afresh."""
        with self._lock:
            connections, self._connections = self._connections, set()
            self._generation += 1
        for connection in connections:
            connection.close()

    def _lookup(self, key: str) -> Answer:
        try:
            connection = self._connection()
            with self._lock:
                self._queries += 1
            row = connection.execute(self._query_text, (key,)).fetchone()  # the first row wins
            return None if row is None else row_to_route(tuple(row))
        except sqlite3.Error as error:
            self._forget()
            raise LookupFailure(f"{self.path}: {type(error).__name__}: {error}") from None
        except ValueError as error:  # a row that is not server[, tls_verify]
            raise LookupFailure(f"{self.path}: {error}") from None

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened when it has none or reload() came since."""
        local = self._local
        connection = getattr(local, "connection", None)
        if connection is not None and local.generation == self._generation:
            return connection
        if connection is not None:
            self._forget()
        generation = self._generation
        # check_same_thread=False only so that close() may close every thread's
        # connection at shutdown; each is used by its own thread alone.
        connection = sqlite3.connect(self._uri, uri=True, timeout=self._timeout, check_same_thread=False)
        local.connection, local.generation = connection, generation
        with self._lock:
            self._connections.add(connection)
        return connection

    def _forget(self) -> None:
        """Drop this thread's connection (after an error, or a reload)."""
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is None:
            return
        with self._lock:
            self._connections.discard(connection)
        connection.close()
