"""The mysql:// mapping: recipient keys looked up with one SQL query (SPEC §3).

A database is the one mapping that can be slow or gone, so this module is
built around that. Queries run only in worker threads, each with a PyMySQL
connection of its own (a connection is not thread-safe) and short connect,
read and write timeouts, so a dead database costs seconds, not a stuck worker.
Answers are cached — hits for cache_ttl, misses for miss_ttl — so that the
reactor can answer most recipients from memory through `peek` without ever
touching the network. While the database fails, a route older than its TTL but
younger than stale_ttl is still served: a database outage must not turn every
known recipient into a 451. (Those cache rules are routing/cached.py's, shared
with sqlite:; this module is the database half.) A connection that died while idle (server restart,
killed by the server) is replaced and the query retried once, so a restart
costs no failed lookup. The password is kept out of every message and log
line: errors are built from PyMySQL's text with the password scrubbed, and the
mapping is named by MappingSpec.name, which drops the user information.

This is the only module that imports PyMySQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pymysql

from willi.errors import MappingError
from willi.routing import MappingSpec
from willi.routing.cached import (  # noqa: F401  (re-exported: the row rules are the mysql ones)
    CHECK_KEY, DEFAULT_CACHE_SIZE, Answer, CachedMapping, Logger, LookupFailure, RouteCache,
    parse_tls_verify, row_to_route)

DEFAULT_PORT = 3306
DEFAULT_TIMEOUT = 5.0  # seconds; "a few seconds" (SPEC §3)
QUERY_PARAMETERS = ("ssl_ca", "unix_socket")

# -- the URI ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Database:
    """Where and as whom to connect, decoded from the mapping's URI."""

    user: str
    password: str = field(repr=False)  # never in a repr that could reach a log
    host: str
    port: int
    database: str
    unix_socket: str | None = None
    ssl_ca: str | None = None


def parse_uri(spec: MappingSpec) -> Database:
    """Decode mysql://USER:PASSWORD@HOST[:PORT]/DB[?ssl_ca=PATH&unix_socket=PATH].

    User, password and database are percent-decoded, so a password may hold
    any character. Errors name the mapping (spec.name) and never the password.
    """

    def bad(reason: str) -> MappingError:
        return MappingError(f"{spec.name}: bad mysql URI: {reason}")

    try:
        parts = urlsplit(spec.uri)
    except ValueError:  # e.g. an unclosed [ of an IPv6 address
        raise bad("cannot be parsed") from None
    if parts.scheme != "mysql" or "@" not in parts.netloc:
        raise bad("expected mysql://USER:PASSWORD@HOST[:PORT]/DB")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise bad("port is not a number from 1 to 65535") from None
    options = _parse_options(parts.query, bad)
    user = unquote(parts.username or "")
    database = unquote(parts.path.removeprefix("/"))
    host = parts.hostname or ""
    if not user:
        raise bad("no user")
    if not database or "/" in database:
        raise bad("expected exactly one database name after the host")
    if not host and "unix_socket" not in options:
        raise bad("no host (give one, or unix_socket=PATH)")
    return Database(
        user=user,
        password=unquote(parts.password or ""),
        host=host or "localhost",
        port=port,
        database=database,
        unix_socket=options.get("unix_socket"),
        ssl_ca=options.get("ssl_ca"),
    )


def _parse_options(query: str, bad: Callable[[str], MappingError]) -> dict[str, str]:
    """The query string: known keys only, each once, so a typo is an error
    at start rather than a silently unencrypted connection."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise bad("malformed query string") from None
    options: dict[str, str] = {}
    for key, value in pairs:
        if key not in QUERY_PARAMETERS:
            raise bad(f"unknown parameter {key!r} (known: {', '.join(QUERY_PARAMETERS)})")
        if key in options:
            raise bad(f"parameter {key!r} given twice")
        if not value:
            raise bad(f"parameter {key!r} is empty")
        options[key] = value
    return options


class MysqlMapping(CachedMapping):
    """WILLI_MAPPING_N=mysql://...: the Mapping protocol over PyMySQL."""

    def __init__(
        self,
        spec: MappingSpec,
        logger: Logger,
        clock: Callable[[], float] = time.monotonic,
        *,
        connect_timeout: float = DEFAULT_TIMEOUT,
        read_timeout: float = DEFAULT_TIMEOUT,
        write_timeout: float = DEFAULT_TIMEOUT,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        super().__init__(spec, logger, clock, cache_size)
        self._database = parse_uri(spec)
        self._timeouts = (connect_timeout, read_timeout, write_timeout)
        self._local = threading.local()  # .connection: this thread's own
        self._connections: set[pymysql.connections.Connection] = set()  # every thread's, for close()
        self._lock = threading.Lock()
        self._queries = 0

    @property
    def queries(self) -> int:
        """How many queries were sent to the database (tests, metrics)."""
        with self._lock:
            return self._queries

    def close(self) -> None:
        """Close every thread's connection; a later get() connects afresh."""
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            _close_quietly(connection)

    # -- internals -------------------------------------------------------------

    def _lookup(self, key: str) -> Answer:
        """Run the query, retrying once on a fresh connection when the reused
        one turns out to have died while idle. Raises LookupFailure."""
        try:
            connection, reused = self._connection()
            try:
                return self._query(connection, key)
            except pymysql.err.Error as error:
                if not (reused and _died_idle(connection, error)):
                    raise
                self._forget(connection)
            connection, _ = self._connection()
            return self._query(connection, key)
        except pymysql.err.Error as error:
            raise LookupFailure(self._scrub(_describe(error))) from None
        except (TypeError, ValueError) as error:  # query without one %s, a bad row
            raise LookupFailure(self._scrub(str(error))) from None
        except OSError as error:  # ssl_ca unreadable, TLS set-up refused
            raise LookupFailure(self._scrub(f"{type(error).__name__}: {error}")) from None
        except RuntimeError as error:
            if "cryptography" not in str(error):
                raise
            # PyMySQL without the `cryptography` package (not bundled: it is not
            # pure Python) cannot send a caching_sha2_password (MySQL 8's default)
            # in the clear: over TLS or a Unix socket it needs none.
            raise LookupFailure(self._scrub(f"{error}; connect with ?ssl_ca=PATH or ?unix_socket=PATH, "
                                            "or give the account mysql_native_password")) from None

    def _query(self, connection: pymysql.connections.Connection, key: str) -> Answer:
        with self._lock:
            self._queries += 1
        try:
            with connection.cursor() as cursor:
                cursor.execute(self.spec.query, (key,))
                row = cursor.fetchone()  # the first row wins
        except pymysql.err.Error:
            if not connection.open:
                self._forget(connection)
            raise
        return None if row is None else row_to_route(row)

    def _connection(self) -> tuple[pymysql.connections.Connection, bool]:
        """This thread's connection, opened if it has none (or close() closed
        it); the flag says whether it was reused rather than just opened."""
        connection = getattr(self._local, "connection", None)
        if connection is not None and connection.open:
            return connection, True
        connection = self._connect()
        self._local.connection = connection
        with self._lock:
            self._connections.add(connection)
        return connection, False

    def _connect(self) -> pymysql.connections.Connection:
        db = self._database
        connect_timeout, read_timeout, write_timeout = self._timeouts
        return pymysql.connect(
            host=db.host,
            port=db.port,
            unix_socket=db.unix_socket,
            user=db.user,
            password=db.password,
            database=db.database,
            charset="utf8mb4",
            autocommit=True,  # each lookup sees the rows committed before it
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            ssl_ca=db.ssl_ca,
            # With a CA given, check the host name too, as a mail operator
            # expects of a verified connection (PyMySQL's default does not).
            ssl_verify_identity=db.ssl_ca is not None and db.unix_socket is None,
        )

    def _forget(self, connection: pymysql.connections.Connection) -> None:
        if getattr(self._local, "connection", None) is connection:
            self._local.connection = None
        with self._lock:
            self._connections.discard(connection)
        _close_quietly(connection)

    def _scrub(self, text: str) -> str:
        """Belt and braces: PyMySQL's messages do not carry the password, but
        nothing that reaches an exception or a log line may."""
        password = self._database.password
        for form in {password, quote(password, safe=""), quote(password)}:
            if form:
                text = text.replace(form, "***")
        return text


def _died_idle(connection: pymysql.connections.Connection, error: pymysql.err.Error) -> bool:
    """A connection that is closed after the error died under us (server
    restarted, connection killed) and deserves one retry — unless it was a
    timeout: the server is slow, and a second try would only double the wait."""
    if connection.open:
        return False  # the server answered with an error: the query is at fault
    cause: BaseException | None = error
    for _ in range(8):  # a chain, not a cycle, but stay bounded whatever it is
        if cause is None:
            break
        if isinstance(cause, TimeoutError):
            return False
        cause = cause.__cause__ or cause.__context__
    return True


def _describe(error: pymysql.err.Error) -> str:
    """"(2003) Can't connect to MySQL server on ..." from PyMySQL's (code, text) args."""
    if len(error.args) == 2 and isinstance(error.args[0], int):
        code, message = error.args
        return f"({code}) {message}" if code else str(message) or type(error).__name__
    return str(error) or type(error).__name__


def _close_quietly(connection: pymysql.connections.Connection) -> None:
    """Close, ignoring a connection that is already closed or broken."""
    try:
        connection.close()
    except (pymysql.err.Error, OSError):
        pass
