"""Routing through a real MariaDB, seen from outside: a real Willi process, real
upstreams (aiosmtpd), a real database server that the tests stop and restart.

tests/routing/test_mysql.py covers the mapping object on its own (URI, row
types, TTL arithmetic with a hand-moved clock). This file checks what only the
whole program shows: that the key forms route mail to the upstream a row
names, that MySQL takes its place in a chain with CSV, that the reactor stays
free while a query is slow or the database is gone (the lookup runs in a
worker thread, a timer turns a slow one into 451 4.3.0), that a cache hit
never reaches the database, that an outage is survived without restarting
Willi, and that the password shows nowhere.

Every table row belongs to a domain under `.mysql-it.test`, so the rows of
this module never meet those of another. The database's general query log
(logged to a table) counts the queries Willi sends for a key.
"""

from __future__ import annotations

import select
import smtplib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mariadb import PASSWORD, MariaDB
from tests.support.net import Reply, SmtpRawClient, wait_until
from tests.support.recorder import RecordingUpstream
from tests.support.willi_process import WilliProcess

SLEEP_SECONDS = 3  # below PyMySQL's read timeout in Willi (5 s)
SLOW_QUERY = f"SELECT server, tls_verify FROM upstreams WHERE pattern = %s AND SLEEP({SLEEP_SECONDS}) = 0"
WRONG_PASSWORD = "Wr0ng-Pa55word-x7q"

# Which upstream (a, b or c) each table row names, and its tls_verify column.
ROWS: dict[str, tuple[str, str | None]] = {
    # the key forms
    "exact+tag@keys.mysql-it.test": ("a", None),
    "plus@keys.mysql-it.test": ("b", "no"),
    "keys.mysql-it.test": ("c", None),
    ".sub.mysql-it.test": ("a", "0"),
    # cache
    "count@cache.mysql-it.test": ("b", None),
    # chains with CSV
    "both.chain.mysql-it.test": ("b", None),
    "dbonly.chain.mysql-it.test": ("c", None),
    # outage
    "outage.mysql-it.test": ("a", None),
    "cached@stale.mysql-it.test": ("b", None),
    "stale-domain.mysql-it.test": ("c", None),
    # slow queries
    "slow.mysql-it.test": ("b", None),
    "timeout.mysql-it.test": ("a", None),
}
CSV_ROWS = {  # the CSV file of the chains
    "both.chain.mysql-it.test": "a",
    "csvonly.chain.mysql-it.test": "a",
    "fast.mysql-it.test": "a",
}


# -- the database -----------------------------------------------------------------


def admin(mariadb: MariaDB, statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement as root on a connection of its own (the server may have
    been restarted since the last one)."""
    with mariadb.connect("mail") as conn, conn.cursor() as cursor:
        cursor.execute(statement, args)
        return list(cursor.fetchall())


class QueryLog:
    """The server's general query log, to a table: which lookups reached it."""

    def __init__(self, mariadb: MariaDB) -> None:
        self.mariadb = mariadb

    def start(self) -> None:
        admin(self.mariadb, "SET GLOBAL general_log = 0")
        admin(self.mariadb, "TRUNCATE TABLE mysql.general_log")
        admin(self.mariadb, "SET GLOBAL log_output = 'TABLE'")
        admin(self.mariadb, "SET GLOBAL general_log = 1")

    def stop(self) -> None:
        admin(self.mariadb, "SET GLOBAL general_log = 0")
        admin(self.mariadb, "TRUNCATE TABLE mysql.general_log")

    def lookups(self, fragment: str) -> list[str]:
        """Willi's lookup queries whose key contains `fragment` (root's own
        queries, this one included, do not start with SELECT server)."""
        found = admin(
            self.mariadb,
            "SELECT argument FROM mysql.general_log WHERE command_type = 'Query'"
            " AND argument LIKE 'SELECT server, tls_verify FROM upstreams%%' AND argument LIKE %s",
            (f"%{fragment}%",),
        )
        return [_text(argument) for (argument,) in found]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)


def running_lookups(mariadb: MariaDB, fragment: str) -> int:
    """Queries of Willi's (user willi) for `fragment` executing right now."""
    rows = admin(
        mariadb,
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'willi' AND INFO LIKE %s",
        (f"%{fragment}%",),
    )
    return int(rows[0][0])


@pytest.fixture
def query_log(mariadb: MariaDB) -> Iterator[QueryLog]:
    log = QueryLog(mariadb)
    log.start()
    try:
        yield log
    finally:
        log.stop()


@pytest.fixture
def outage(mariadb: MariaDB) -> Iterator[Callable[[], None]]:
    """stop(): the database goes away; it is always running again afterwards,
    because the server is shared by the whole test session."""
    try:
        yield mariadb.stop
    finally:
        mariadb.start()


# -- upstreams, rows, Willi processes --------------------------------------------------


@pytest.fixture(scope="module")
def upstreams(module_launch: Any) -> dict[str, RecordingUpstream]:
    """Three real SMTP servers (aiosmtpd) that the rows point at."""
    return {name: module_launch.recorder(server_hostname=f"upstream-{name}.test") for name in ("a", "b", "c")}


@pytest.fixture(scope="module")
def rows(mariadb: MariaDB, upstreams: dict[str, RecordingUpstream]) -> Iterator[None]:
    """This module's rows in the upstreams table, removed afterwards."""
    patterns = tuple(ROWS)
    placeholders = ", ".join(["%s"] * len(patterns))
    admin(mariadb, f"DELETE FROM upstreams WHERE pattern IN ({placeholders})", patterns)
    for pattern, (name, tls_verify) in ROWS.items():
        admin(mariadb, "INSERT INTO upstreams VALUES (%s, %s, %s)", (pattern, upstreams[name].address, tls_verify))
    yield
    admin(mariadb, f"DELETE FROM upstreams WHERE pattern IN ({placeholders})", patterns)


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory, upstreams: dict[str, RecordingUpstream]) -> Path:
    path = tmp_path_factory.mktemp("csv") / "upstreams.csv"
    lines = ["pattern;server;tls_verify"]
    lines += [f"{pattern};{upstreams[name].address};false" for pattern, name in CSV_ROWS.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def start_willi(module_launch: Any, rows: None) -> Callable[..., WilliProcess]:
    """Starts a Willi with these WILLI_ settings, once the rows are in place;
    every one is stopped at the end of the module."""
    return lambda **settings: module_launch.willi(settings)


def base_env(mariadb: MariaDB) -> dict[str, str]:
    return {"WILLI_HOSTNAME": "willi.test", "WILLI_LISTEN": "127.0.0.1:2525", "WILLI_MAPPING_1": mariadb.url()}


@pytest.fixture(scope="module")
def willi(start_willi: Callable[..., WilliProcess], mariadb: MariaDB) -> WilliProcess:
    """MySQL alone, with a recipient delimiter and the default TTLs."""
    return start_willi(WILLI_MAPPING_1=mariadb.url(), WILLI_RECIPIENT_DELIMITER="+")


@pytest.fixture(scope="module")
def willi_csv_first(start_willi: Callable[..., WilliProcess], mariadb: MariaDB, csv_file: Path) -> WilliProcess:
    return start_willi(WILLI_MAPPING_1=f"csv:{csv_file}", WILLI_MAPPING_2=mariadb.url())


@pytest.fixture(scope="module")
def willi_mysql_first(start_willi: Callable[..., WilliProcess], mariadb: MariaDB, csv_file: Path) -> WilliProcess:
    return start_willi(WILLI_MAPPING_1=mariadb.url(), WILLI_MAPPING_2=f"csv:{csv_file}")


@pytest.fixture(scope="module")
def willi_short_ttl(start_willi: Callable[..., WilliProcess], mariadb: MariaDB) -> WilliProcess:
    """Answers go stale after a second and stay servable for an hour."""
    return start_willi(
        WILLI_MAPPING_1=mariadb.url(),
        WILLI_MAPPING_1_CACHE_TTL="1s",
        WILLI_MAPPING_1_MISS_TTL="1s",
        WILLI_MAPPING_1_STALE_TTL="1h",
    )


@pytest.fixture(scope="module")
def willi_slow_db(start_willi: Callable[..., WilliProcess], mariadb: MariaDB, csv_file: Path) -> WilliProcess:
    """CSV first; a MySQL query that sleeps on every row it finds."""
    return start_willi(
        WILLI_MAPPING_1=f"csv:{csv_file}",
        WILLI_MAPPING_2=mariadb.url(),
        WILLI_MAPPING_2_QUERY=SLOW_QUERY,
    )


@pytest.fixture(scope="module")
def willi_impatient(start_willi: Callable[..., WilliProcess], mariadb: MariaDB) -> WilliProcess:
    """The same slow query, with a lookup timeout shorter than the SLEEP."""
    return start_willi(WILLI_MAPPING_1=mariadb.url(), WILLI_MAPPING_1_QUERY=SLOW_QUERY, WILLI_LOOKUP_TIMEOUT="1s")


# -- SMTP helpers ----------------------------------------------------------------------


def deliver(willi: WilliProcess, rcpt: str) -> str:
    """One message to `rcpt` through Willi with smtplib; returns its marker.
    Raises when Willi refuses the recipient or the message."""
    marker = uuid.uuid4().hex
    message = f"Subject: {marker}\r\nMessage-ID: <{marker}@mysql-it.test>\r\n\r\nbody {marker}\r\n"
    with smtplib.SMTP(willi.host, willi.port, timeout=10) as client:
        client.ehlo("client.test")
        refused = client.sendmail("sender@client.test", [rcpt], message)
    assert refused == {}
    return marker


def holders(upstreams: dict[str, RecordingUpstream], marker: str) -> dict[str, list[list[str]]]:
    """Which upstreams received the message with `marker`, and its recipients there."""
    found: dict[str, list[list[str]]] = {}
    for name, upstream in upstreams.items():
        for message in list(upstream.messages):
            if marker.encode() in message.content:
                found.setdefault(name, []).append(message.rcpt_tos)
    return found


def open_transaction(willi: WilliProcess) -> SmtpRawClient:
    """A raw client after the greeting, EHLO and an accepted MAIL FROM."""
    client = SmtpRawClient(willi.host, willi.port)
    try:
        assert client.read_reply().code == 220
        assert client.command("EHLO client.test").code == 250
        assert client.command("MAIL FROM:<sender@client.test>").code == 250
    except BaseException:
        client.close()
        raise
    return client


def rcpt_reply(willi: WilliProcess, rcpt: str) -> Reply:
    """The reply to RCPT TO:<rcpt> in a fresh session, which then quits."""
    with open_transaction(willi) as client:
        reply = client.command(f"RCPT TO:<{rcpt}>")
        client.command("QUIT")
    return reply


def events(willi: WilliProcess, name: str, **fields: str) -> list[dict[str, str]]:
    """The matching log records, waiting for the first (lines are written off the reactor thread)."""
    return wait_until(lambda: [
        record for record in willi.log_lines()
        if record.get("event") == name and all(record.get(key) == value for key, value in fields.items())
    ], 5.0, 0.02, f"a {name} line with {fields}")


def mapping_name(mariadb: MariaDB, n: int = 1) -> str:
    """How Willi names the MySQL mapping: without user and password."""
    return f"mapping_{n}=mysql://{mariadb.host}:{mariadb.port}/mail"


def assert_no_password(willi: WilliProcess) -> None:
    output = willi.output()
    assert PASSWORD not in output
    assert f"willi:{PASSWORD}" not in output


def readable(client: SmtpRawClient) -> bool:
    """True if the server has sent something the client has not read yet."""
    if client.pending:
        return True
    ready, _, _ = select.select([client.sock], [], [], 0)
    return bool(ready)


# -- key forms -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rcpt", "upstream"),
    [
        pytest.param("Exact+Tag@Keys.mysql-it.test", "a", id="full-address"),
        pytest.param("plus+promo@keys.mysql-it.test", "b", id="address-without-extension"),
        pytest.param("someone@keys.mysql-it.test", "c", id="domain"),
        pytest.param("someone@deep.host.sub.mysql-it.test", "a", id="parent-domain-with-dot"),
    ],
)
def test_each_key_form_in_mysql_delivers_to_the_upstream_its_row_names(
    willi: WilliProcess, upstreams: dict[str, RecordingUpstream], rcpt: str, upstream: str
) -> None:
    marker = deliver(willi, rcpt)
    assert holders(upstreams, marker) == {upstream: [[rcpt]]}
    record = events(willi, "transaction", rcpts=rcpt)[-1]
    assert record["code"] == "250"
    assert record["upstream"] == f"smtp://{upstreams[upstream].address}"


def test_a_recipient_without_a_row_is_refused_and_reaches_no_upstream(
    willi: WilliProcess, upstreams: dict[str, RecordingUpstream]
) -> None:
    before = {name: len(upstream.messages) for name, upstream in upstreams.items()}
    reply = rcpt_reply(willi, "nobody@unknown.mysql-it.test")
    assert reply.code == 554
    assert reply.lines == [b"5.7.1 <nobody@unknown.mysql-it.test>: Relay access denied"]
    assert {name: len(upstream.messages) for name, upstream in upstreams.items()} == before


# -- the cache -------------------------------------------------------------------------


def test_a_second_recipient_within_the_ttl_is_answered_from_the_cache_not_the_database(
    willi: WilliProcess, upstreams: dict[str, RecordingUpstream], query_log: QueryLog
) -> None:
    first = deliver(willi, "count@cache.mysql-it.test")
    second = deliver(willi, "count@cache.mysql-it.test")
    assert holders(upstreams, first) == {"b": [["count@cache.mysql-it.test"]]}
    assert holders(upstreams, second) == {"b": [["count@cache.mysql-it.test"]]}
    queries = query_log.lookups("'count@cache.mysql-it.test'")
    assert len(queries) == 1, queries


def test_a_cached_miss_is_refused_again_without_asking_the_database(
    willi: WilliProcess, query_log: QueryLog
) -> None:
    for _ in range(2):
        reply = rcpt_reply(willi, "ghost@nocache.mysql-it.test")
        assert (reply.code, reply.lines) == (554, [b"5.7.1 <ghost@nocache.mysql-it.test>: Relay access denied"])
    # One query per key (full address, domain), not two; a dot key names
    # subdomains only, so ".nocache..." is no key of this address (SPEC §3).
    for key in ("ghost@nocache.mysql-it.test", "nocache.mysql-it.test"):
        assert len(query_log.lookups(f"'{key}'")) == 1, query_log.lookups("nocache")
    assert query_log.lookups("'.nocache.mysql-it.test'") == []


# -- chains with CSV -------------------------------------------------------------------


def test_csv_first_a_csv_match_wins_and_mysql_is_never_asked(
    willi_csv_first: WilliProcess, upstreams: dict[str, RecordingUpstream], query_log: QueryLog
) -> None:
    marker = deliver(willi_csv_first, "user@both.chain.mysql-it.test")
    assert holders(upstreams, marker) == {"a": [["user@both.chain.mysql-it.test"]]}
    assert query_log.lookups("both.chain.mysql-it.test") == []


def test_csv_first_a_key_only_in_mysql_is_routed_by_mysql(
    willi_csv_first: WilliProcess, upstreams: dict[str, RecordingUpstream], query_log: QueryLog
) -> None:
    marker = deliver(willi_csv_first, "user@dbonly.chain.mysql-it.test")
    assert holders(upstreams, marker) == {"c": [["user@dbonly.chain.mysql-it.test"]]}
    assert "'dbonly.chain.mysql-it.test'" in " ".join(query_log.lookups("dbonly.chain"))


def test_mysql_first_mysql_wins_where_it_has_a_row(
    willi_mysql_first: WilliProcess, upstreams: dict[str, RecordingUpstream]
) -> None:
    marker = deliver(willi_mysql_first, "user@both.chain.mysql-it.test")
    assert holders(upstreams, marker) == {"b": [["user@both.chain.mysql-it.test"]]}


def test_mysql_first_csv_catches_what_mysql_does_not_know(
    willi_mysql_first: WilliProcess, upstreams: dict[str, RecordingUpstream], query_log: QueryLog
) -> None:
    marker = deliver(willi_mysql_first, "user@csvonly.chain.mysql-it.test")
    assert holders(upstreams, marker) == {"a": [["user@csvonly.chain.mysql-it.test"]]}
    # MySQL was asked first, and said no for every key.
    assert "'user@csvonly.chain.mysql-it.test'" in " ".join(query_log.lookups("csvonly.chain"))


def test_mysql_first_a_recipient_in_neither_is_refused(willi_mysql_first: WilliProcess) -> None:
    reply = rcpt_reply(willi_mysql_first, "user@neither.chain.mysql-it.test")
    assert (reply.code, reply.lines) == (554, [b"5.7.1 <user@neither.chain.mysql-it.test>: Relay access denied"])


# -- outage ----------------------------------------------------------------------------


def test_database_down_gives_451_naming_the_mapping_and_lookups_recover_without_restarting_willi(
    willi_short_ttl: WilliProcess,
    upstreams: dict[str, RecordingUpstream],
    mariadb: MariaDB,
    outage: Callable[[], None],
) -> None:
    rcpt = "new@outage.mysql-it.test"  # never looked up before: nothing cached
    pid = willi_short_ttl.pid
    outage()
    reply = rcpt_reply(willi_short_ttl, rcpt)
    assert (reply.code, reply.lines) == (451, [b"4.3.0 Recipient lookup failed, try again later"])
    failed = events(willi_short_ttl, "lookup_failed", rcpt=rcpt)
    assert len(failed) == 1
    assert failed[0]["error"].startswith(mapping_name(mariadb) + ": ")
    assert events(willi_short_ttl, "mapping_failed", key=rcpt)[0]["mapping"] == mapping_name(mariadb)
    assert_no_password(willi_short_ttl)

    mariadb.start()
    wait_until(
        lambda: rcpt_reply(willi_short_ttl, rcpt).code == 250,
        10.0, 0.1, "a fresh RCPT to be routed again after the database restart",
    )
    marker = deliver(willi_short_ttl, rcpt)
    assert holders(upstreams, marker) == {"a": [[rcpt]]}
    assert willi_short_ttl.pid == pid and willi_short_ttl.process is not None
    assert willi_short_ttl.process.poll() is None


def _served_while_down(willi: WilliProcess, rcpt: str) -> Reply:
    """RCPTs to `rcpt` in fresh sessions until one of them had to ask the
    (stopped) database — i.e. the cached answer is past its TTL. Every reply
    before that must be the cached 250. Returns the reply of that RCPT."""
    asked = ("mapping_stale_answer", "mapping_failed", "lookup_failed")

    def one() -> Reply | None:
        seen = len(willi.log_lines())
        reply = rcpt_reply(willi, rcpt)
        if any(record.get("event") in asked for record in willi.log_lines()[seen:]):
            return reply
        assert reply.code == 250, reply.raw  # still fresh in the cache
        return None

    return wait_until(one, 10.0, 0.1, f"a lookup of {rcpt} to go past its 1 s TTL")


def test_a_route_cached_before_the_outage_is_served_stale_while_the_database_is_down(
    willi_short_ttl: WilliProcess,
    upstreams: dict[str, RecordingUpstream],
    mariadb: MariaDB,
    outage: Callable[[], None],
) -> None:
    rcpt = "cached@stale.mysql-it.test"  # a row for the full address
    assert holders(upstreams, deliver(willi_short_ttl, rcpt)) == {"b": [[rcpt]]}
    outage()
    reply = _served_while_down(willi_short_ttl, rcpt)
    assert reply.code == 250, reply.raw
    stale = events(willi_short_ttl, "mapping_stale_answer", key=rcpt)
    assert stale and stale[-1]["mapping"] == mapping_name(mariadb)
    assert stale[-1]["server"] == upstreams["b"].address
    marker = deliver(willi_short_ttl, rcpt)
    assert holders(upstreams, marker) == {"b": [[rcpt]]}
    assert_no_password(willi_short_ttl)


def test_a_recipient_routed_by_its_domain_is_served_stale_while_the_database_is_down(
    willi_short_ttl: WilliProcess,
    upstreams: dict[str, RecordingUpstream],
    mariadb: MariaDB,
    outage: Callable[[], None],
) -> None:
    # The usual table: one row per domain. Before the domain key is asked,
    # the full address is looked up and cached as a miss; that miss must not
    # turn a known domain into a 451 once it has expired during the outage.
    rcpt = "someone@stale-domain.mysql-it.test"
    assert holders(upstreams, deliver(willi_short_ttl, rcpt)) == {"c": [[rcpt]]}
    outage()
    reply = _served_while_down(willi_short_ttl, rcpt)
    assert reply.code == 250, reply.raw
    stale = events(willi_short_ttl, "mapping_stale_answer", key="stale-domain.mysql-it.test")
    assert stale and stale[-1]["mapping"] == mapping_name(mariadb)
    marker = deliver(willi_short_ttl, rcpt)
    assert holders(upstreams, marker) == {"c": [[rcpt]]}


# -- slow queries ----------------------------------------------------------------------


def test_a_slow_query_delays_only_the_session_waiting_for_it(
    willi_slow_db: WilliProcess, upstreams: dict[str, RecordingUpstream], mariadb: MariaDB
) -> None:
    slow_rcpt = "someone@slow.mysql-it.test"  # only in MySQL, whose query sleeps
    with open_transaction(willi_slow_db) as slow:
        slow.send(f"RCPT TO:<{slow_rcpt}>\r\n".encode())
        wait_until(lambda: running_lookups(mariadb, "'slow.mysql-it.test'") == 1, 5.0, 0.02,
                   "the slow query to be running in the database")

        fast = deliver(willi_slow_db, "someone@fast.mysql-it.test")  # routed by CSV

        assert holders(upstreams, fast) == {"a": [["someone@fast.mysql-it.test"]]}
        # The CSV session is done while the query still sleeps and the slow
        # session still waits for its RCPT reply.
        assert running_lookups(mariadb, "'slow.mysql-it.test'") == 1
        assert not readable(slow)

        reply = slow.read_reply(timeout=SLEEP_SECONDS + 5)
        assert reply.code == 250, reply.raw
        assert slow.command("DATA").code == 354
        marker = uuid.uuid4().hex
        slow.send(f"Subject: {marker}\r\n\r\nslow\r\n.\r\n".encode())
        assert slow.read_reply().code == 250
        slow.command("QUIT")
    assert holders(upstreams, marker) == {"b": [[slow_rcpt]]}


def test_a_lookup_slower_than_the_lookup_timeout_gets_451(
    willi_impatient: WilliProcess, upstreams: dict[str, RecordingUpstream], mariadb: MariaDB
) -> None:
    rcpt = "someone@timeout.mysql-it.test"
    with open_transaction(willi_impatient) as client:
        reply = client.command(f"RCPT TO:<{rcpt}>", timeout=SLEEP_SECONDS + 5)
        # The timer answered, not the query: it is still sleeping.
        assert running_lookups(mariadb, "'timeout.mysql-it.test'") == 1
        assert (reply.code, reply.lines) == (451, [b"4.3.0 Recipient lookup failed, try again later"])
        assert client.command("QUIT").code == 221
    failed = events(willi_impatient, "lookup_failed", rcpt=rcpt)
    assert [record["error"] for record in failed] == ["lookup timed out"]
    assert_no_password(willi_impatient)


# -- --check and --lookup --------------------------------------------------------------


def test_check_with_the_right_credentials_exits_0(mariadb: MariaDB, tmp_path: Path) -> None:
    result = WilliProcess.run_cli("--check", env=base_env(mariadb), tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration ok (1 mappings)" in result.stdout


def test_check_with_a_wrong_password_exits_1_naming_the_mapping_but_not_the_password(
    mariadb: MariaDB, tmp_path: Path
) -> None:
    env = {**base_env(mariadb), "WILLI_MAPPING_1": mariadb.url(password=WRONG_PASSWORD)}
    result = WilliProcess.run_cli("--check", env=env, tmp_path=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"willi: check failed: {mapping_name(mariadb)}: (1045) Access denied for user 'willi'@" in output
    assert WRONG_PASSWORD not in output


@pytest.mark.parametrize(
    ("mappings", "address", "upstream", "answer"),
    [
        pytest.param(
            "mysql", "Plus+Promo@keys.mysql-it.test", "b", "tls_verify=false mapping={m1} key=plus@keys.mysql-it.test",
            id="mysql-alone",
        ),
        pytest.param(
            "csv,mysql", "user@dbonly.chain.mysql-it.test", "c",
            "tls_verify=true mapping={m2} key=dbonly.chain.mysql-it.test",
            id="mysql-after-csv",
        ),
    ],
)
def test_lookup_names_the_mysql_mapping_and_the_key_that_answered(
    mariadb: MariaDB,
    rows: None,
    upstreams: dict[str, RecordingUpstream],
    csv_file: Path,
    tmp_path: Path,
    mappings: str,
    address: str,
    upstream: str,
    answer: str,
) -> None:
    env = {**base_env(mariadb), "WILLI_RECIPIENT_DELIMITER": "+"}
    if mappings == "csv,mysql":
        env.update(WILLI_MAPPING_1=f"csv:{csv_file}", WILLI_MAPPING_2=mariadb.url())
    result = WilliProcess.run_cli("--lookup", address, env=env, tmp_path=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    expected = f"server={upstreams[upstream].address} " + answer.format(
        m1=mapping_name(mariadb, 1), m2=mapping_name(mariadb, 2)
    )
    assert expected in result.stdout
    assert PASSWORD not in output
