"""The mysql:// mapping against a real MariaDB server (tests/support/mariadb.py).

Nothing here mocks the database: the behaviour worth testing is PyMySQL's and
the server's — types of columns, lost connections, refused passwords, read
timeouts. Time is driven through an injected clock, so TTLs are tested without
sleeping; only the read-timeout test measures real time, with a bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.mariadb import MariaDB
from willi.errors import MappingError
from willi.log import LevelMethods
from willi.routing import NOT_CACHED, MappingSpec, Route
from willi.routing.mysql import MysqlMapping, parse_uri

PASSWORD = "secret"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingLogger(LevelMethods):
    """Keeps every log call, so tests can assert on events and on what no
    line may contain (the password)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def log(self, level: str, event: str, **fields: Any) -> None:
        with self._lock:
            self.records.append((level, event, fields))

    def events(self) -> list[str]:
        return [event for _, event, _ in self.records]

    def text(self) -> str:
        return repr(self.records)


class Table:
    """The upstreams table through an administrator connection."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __call__(self, pattern: str, server: str, tls_verify: str | None = None) -> None:
        self.execute("INSERT INTO upstreams VALUES (%s, %s, %s)", (pattern, server, tls_verify))

    def execute(self, statement: str, args: tuple[Any, ...] = ()) -> None:
        with self._conn.cursor() as cursor:
            cursor.execute(statement, args)


@pytest.fixture
def rows(mariadb: MariaDB) -> Iterator[Table]:
    """An empty upstreams table; rows(pattern, server, tls_verify) adds one."""
    with mariadb.connect("mail") as conn:
        table = Table(conn)
        table.execute("DELETE FROM upstreams")
        yield table


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def logger() -> RecordingLogger:
    return RecordingLogger()


@pytest.fixture
def make(mariadb: MariaDB, clock: Clock, logger: RecordingLogger) -> Iterator[Any]:
    """Builds MysqlMappings on the test server and closes them all afterwards."""
    made: list[MysqlMapping] = []

    def build(uri: str | None = None, **options: Any) -> MysqlMapping:
        spec_fields = {k: options.pop(k) for k in list(options) if k in MappingSpec.__dataclass_fields__}
        spec = MappingSpec(index=2, uri=uri or mariadb.url(), **spec_fields)
        mapping = MysqlMapping(spec, logger, clock, **options)
        made.append(mapping)
        return mapping

    yield build
    for mapping in made:
        mapping.close()


# -- the URI --------------------------------------------------------------------


def test_uri_decodes_user_password_and_defaults_the_port() -> None:
    spec = MappingSpec(index=1, uri="mysql://us%40er:p%3Aa%40ss%2Fw@db.example.org/mail?ssl_ca=/etc/ca.pem")
    db = parse_uri(spec)
    assert (db.user, db.password, db.host, db.port, db.database) == ("us@er", "p:a@ss/w", "db.example.org", 3306, "mail")
    assert db.ssl_ca == "/etc/ca.pem" and db.unix_socket is None
    assert "p:a@ss/w" not in repr(db)


@pytest.mark.parametrize(
    "uri",
    [
        "mysql://willi:hunter2@db.example.org:99999/mail",
        "mysql://willi:hunter2@db.example.org:port/mail",
        "mysql://willi:hunter2@db.example.org/",
        "mysql://willi:hunter2@db.example.org/mail/extra",
        "mysql://willi:hunter2@/mail",
        "mysql://:hunter2@db.example.org/mail",
        "mysql://willi:hunter2@db.example.org/mail?sslca=/x",
        "mysql://willi:hunter2@db.example.org/mail?ssl_ca=",
        "mysql://willi:hunter2@[::1/mail",
        "mysql://db.example.org/mail",
    ],
)
def test_bad_uri_names_the_mapping_not_the_password(uri: str, logger: RecordingLogger) -> None:
    spec = MappingSpec(index=2, uri=uri)
    with pytest.raises(MappingError) as raised:
        MysqlMapping(spec, logger)
    assert str(raised.value).startswith("mapping_2=mysql:")
    assert "hunter2" not in str(raised.value)


# -- answers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("1", True),
        ("0", False),
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("False", False),
        ("yes", True),
        ("no", False),
        ("Yes", True),
        ("NO", False),
        (None, True),
    ],
)
def test_tls_verify_spellings(rows: Table, make: Any, stored: str | None, expected: bool) -> None:
    rows("example.org", "mx.example.org:2525", stored)
    assert make().get("example.org") == Route("mx.example.org:2525", expected)


def test_tls_verify_as_number_and_bit(rows: Table, make: Any) -> None:
    rows("example.org", "mx.example.org", None)
    as_int = make(query="SELECT server, 0 FROM upstreams WHERE pattern = %s")
    as_bit = make(query="SELECT server, b'0' FROM upstreams WHERE pattern = %s")
    one_column = make(query="SELECT server FROM upstreams WHERE pattern = %s")
    assert as_int.get("example.org") == Route("mx.example.org", False)
    assert as_bit.get("example.org") == Route("mx.example.org", False)
    assert one_column.get("example.org") == Route("mx.example.org", True)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT server, 'maybe' FROM upstreams WHERE pattern = %s",
        "SELECT server, 2 FROM upstreams WHERE pattern = %s",
        "SELECT NULL, tls_verify FROM upstreams WHERE pattern = %s",
        "SELECT server, tls_verify, 1 FROM upstreams WHERE pattern = %s",
        "SELECT server FROM upstreams WHERE pattern = 'x'",  # no parameter
        "SELECT server FROM no_such_table WHERE pattern = %s",
    ],
)
def test_bad_answer_is_a_mapping_error(rows: Table, make: Any, logger: RecordingLogger, query: str) -> None:
    rows("example.org", "mx.example.org", None)
    with pytest.raises(MappingError, match="^mapping_2=mysql://127.0.0.1:"):
        make(query=query).get("example.org")
    assert logger.events() == ["mapping_failed"]


def test_first_row_wins(rows: Table, make: Any) -> None:
    rows("a.example.org", "first.example.net", "no")
    rows("b.example.org", "second.example.net", "yes")
    mapping = make(query="SELECT server, tls_verify FROM upstreams WHERE pattern LIKE CONCAT('%%', %s) ORDER BY pattern")
    assert mapping.get("example.org") == Route("first.example.net", False)


def test_custom_query_with_concat_and_join(rows: Table, make: Any) -> None:
    rows("example.org", "mx.example.org", "false")
    mapping = make(
        query=(
            "SELECT CONCAT('lmtp://', u.server, ':24'), u.tls_verify"
            " FROM upstreams u JOIN (SELECT %s AS k) AS q ON u.pattern = q.k"
        )
    )
    assert mapping.get("example.org") == Route("lmtp://mx.example.org:24", False)
    assert mapping.get("example.net") is None


def test_unix_socket_and_percent_encoded_password(mariadb: MariaDB, rows: Table, make: Any) -> None:
    odd = "p@ss:w/rd%?#x"
    with mariadb.connect() as conn, conn.cursor() as cursor:
        cursor.execute("CREATE USER IF NOT EXISTS 'odd'@'localhost' IDENTIFIED BY %s", (odd,))
        cursor.execute("GRANT SELECT ON mail.* TO 'odd'@'localhost'")
    rows("example.org", "mx.example.org", "1")
    mapping = make(mariadb.socket_url("odd", odd))
    mapping.check()
    assert mapping.get("example.org") == Route("mx.example.org", True)


# -- the cache ------------------------------------------------------------------


def test_hit_is_cached_for_cache_ttl(rows: Table, make: Any, clock: Clock) -> None:
    rows("example.org", "mx.example.org")
    mapping = make(cache_ttl=60.0)
    assert mapping.get("example.org") == Route("mx.example.org")
    assert mapping.queries == 1
    clock.advance(59)
    assert mapping.get("example.org") == Route("mx.example.org")
    assert mapping.queries == 1
    clock.advance(2)
    assert mapping.get("example.org") == Route("mx.example.org")
    assert mapping.queries == 2


def test_miss_is_cached_for_miss_ttl(rows: Table, make: Any, clock: Clock) -> None:
    mapping = make(cache_ttl=60.0, miss_ttl=10.0)
    assert mapping.get("nowhere.example") is None
    assert mapping.get("nowhere.example") is None
    assert mapping.queries == 1
    clock.advance(9.5)
    assert mapping.get("nowhere.example") is None
    assert mapping.queries == 1
    rows("nowhere.example", "mx.example.org")
    clock.advance(1)
    assert mapping.get("nowhere.example") == Route("mx.example.org")
    assert mapping.queries == 2


def test_peek_answers_from_memory_only(rows: Table, make: Any, clock: Clock) -> None:
    rows("example.org", "mx.example.org", "no")
    mapping = make(cache_ttl=60.0, miss_ttl=10.0)
    assert mapping.peek("example.org") is NOT_CACHED
    assert mapping.peek("nowhere.example") is NOT_CACHED
    assert mapping.queries == 0
    mapping.get("example.org")
    mapping.get("nowhere.example")
    assert mapping.peek("example.org") == Route("mx.example.org", False)
    assert mapping.peek("nowhere.example") is None
    clock.advance(30)
    assert mapping.peek("nowhere.example") is NOT_CACHED  # past miss_ttl
    assert mapping.peek("example.org") == Route("mx.example.org", False)
    clock.advance(31)
    assert mapping.peek("example.org") is NOT_CACHED  # stale is for outages, not for peek
    assert mapping.queries == 2


def test_reload_forgets_the_cache(rows: Table, make: Any) -> None:
    rows("example.org", "old.example.org")
    mapping = make()
    assert mapping.get("example.org") == Route("old.example.org")
    rows.execute("UPDATE upstreams SET server = 'new.example.org'")
    assert mapping.get("example.org") == Route("old.example.org")  # cached
    mapping.reload()
    assert mapping.peek("example.org") is NOT_CACHED
    assert mapping.get("example.org") == Route("new.example.org")
    assert mapping.queries == 2


def test_cache_is_bounded(rows: Table, make: Any) -> None:
    rows("a.example", "mx.example.org")
    mapping = make(cache_size=2)
    for key in ("a.example", "b.example", "c.example"):
        mapping.get(key)
    assert mapping.peek("a.example") is NOT_CACHED  # the oldest went
    assert mapping.peek("b.example") is None and mapping.peek("c.example") is None


# -- failures ---------------------------------------------------------------------


def test_connection_killed_while_idle_is_replaced_transparently(mariadb: MariaDB, rows: Table, make: Any) -> None:
    rows("example.org", "mx.example.org")
    mapping = make(cache_ttl=0.0, miss_ttl=0.0)
    assert mapping.get("example.org") == Route("mx.example.org")
    with mariadb.connect() as conn, conn.cursor() as cursor:
        cursor.execute("SELECT id FROM information_schema.processlist WHERE user = 'willi'")
        for (thread_id,) in cursor.fetchall():
            cursor.execute(f"KILL {int(thread_id)}")
    assert mapping.get("example.org") == Route("mx.example.org")
    assert mapping.queries == 3  # the query on the dead connection, then the retry


def test_outage_serves_stale_routes_and_fails_unknown_keys(
    mariadb: MariaDB, rows: Table, make: Any, clock: Clock, logger: RecordingLogger
) -> None:
    rows("example.org", "mx.example.org", "no")
    mapping = make(cache_ttl=60.0, stale_ttl=3600.0)
    assert mapping.get("example.org") == Route("mx.example.org", False)
    mariadb.stop()
    try:
        clock.advance(120)  # past cache_ttl, within stale_ttl
        assert mapping.get("example.org") == Route("mx.example.org", False)
        assert logger.events() == ["mapping_stale_answer"]
        with pytest.raises(MappingError) as raised:
            mapping.get("unknown.example")
        message = str(raised.value)
        assert message.startswith(f"mapping_2=mysql://127.0.0.1:{mariadb.port}/mail: (2003) ")
        assert "secret" not in message
        clock.advance(3600)  # past stale_ttl as well
        with pytest.raises(MappingError):
            mapping.get("example.org")
        assert logger.events() == ["mapping_stale_answer", "mapping_failed", "mapping_failed"]
        assert "secret" not in logger.text()
    finally:
        mariadb.start()
    # The same mapping object reconnects on its own once the server is back.
    assert mapping.get("unknown.example") is None
    assert mapping.get("example.org") == Route("mx.example.org", False)


def test_restart_between_lookups_costs_no_failure(mariadb: MariaDB, rows: Table, make: Any) -> None:
    rows("example.org", "mx.example.org")
    mapping = make(cache_ttl=0.0, miss_ttl=0.0)
    assert mapping.get("example.org") == Route("mx.example.org")
    mariadb.restart()
    assert mapping.get("example.org") == Route("mx.example.org")


def test_wrong_password_fails_check_without_showing_it(mariadb: MariaDB, make: Any) -> None:
    mapping = make(mariadb.url(password="not-the-secret"))
    with pytest.raises(MappingError) as raised:
        mapping.check()
    message = str(raised.value)
    assert message.startswith("mapping_2=mysql://127.0.0.1:")
    assert "(1045) Access denied" in message
    assert "not-the-secret" not in message


def test_check_passes_on_a_good_configuration(rows: Table, make: Any) -> None:
    make().check()


def test_slow_query_times_out(rows: Table, make: Any) -> None:
    mapping = make(
        query="SELECT 'mx.example.org' FROM (SELECT SLEEP(3)) AS s WHERE %s IS NOT NULL",
        read_timeout=0.5,
    )
    started = time.monotonic()
    with pytest.raises(MappingError, match="timed out"):
        mapping.get("example.org")
    assert time.monotonic() - started < 2.0
    assert mapping.queries == 1  # a timeout is not retried


def test_close_closes_every_threads_connection_and_get_reconnects(rows: Table, make: Any) -> None:
    rows("example.org", "mx.example.org")
    mapping = make(cache_ttl=0.0)
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda _: mapping.get("example.org"), range(12)))
    mapping.close()
    assert mapping.get("example.org") == Route("mx.example.org")


def test_concurrent_lookups_each_get_their_answer(rows: Table, make: Any) -> None:
    keys = [f"d{n}.example" for n in range(40)]
    for n, key in enumerate(keys):
        rows(key, f"mx{n}.example.net", "yes" if n % 2 else "no")
    mapping = make(cache_ttl=0.0, miss_ttl=0.0)
    expected = {key: Route(f"mx{n}.example.net", bool(n % 2)) for n, key in enumerate(keys)}
    expected["missing.example"] = None
    work = list(expected) * 10
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(mapping.get, work))
    assert answers == [expected[key] for key in work]
    assert mapping.queries == len(work)
