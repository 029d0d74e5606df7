"""sqlite:PATH against real SQLite files: the default query and _QUERY, the
cache and its TTLs, read-only opening, a replaced file after SIGHUP, stale
answers while the file is gone, and the Router's lookup events."""

from __future__ import annotations

import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.routing.test_csvmap import FakeClock, ListLogger
from willi.errors import MappingError
from willi.records import ListObserver
from willi.routing import NOT_CACHED, MappingSpec, Route
from willi.routing.router import Router, build_mappings
from willi.routing.sqlite import SqliteMapping
from willi.smtp.address import Address

ROWS = [("example.org", "mx1.example.net:25", 1), ("user@example.com", "mx2.example.net", "no"),
        ("null.example", "mx3.example.net", None)]


def make_db(path: Path, rows: list[tuple[str, str, object]] = ROWS, table: str = "upstreams") -> Path:
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE {table} (pattern TEXT PRIMARY KEY, server TEXT NOT NULL, tls_verify)")
        db.executemany(f"INSERT INTO {table} VALUES (?, ?, ?)", rows)
    db.close()
    return path


def open_db(path: Path, clock: FakeClock | None = None, logger: ListLogger | None = None, **spec: object) -> SqliteMapping:
    return SqliteMapping(MappingSpec(1, f"sqlite:{path}", **spec), logger or ListLogger(), clock or FakeClock())


def test_the_default_query_answers_routes_and_misses(tmp_path: Path) -> None:
    mapping = open_db(make_db(tmp_path / "routes.db"))
    assert mapping.blocking is True
    assert mapping.get("example.org") == Route("mx1.example.net:25", True)
    assert mapping.get("user@example.com") == Route("mx2.example.net", False)
    assert mapping.get("null.example") == Route("mx3.example.net", True)  # NULL: verify
    assert mapping.get("other.example") is None
    mapping.close()


def test_a_query_of_its_own_is_written_with_one_percent_s_as_for_mysql(tmp_path: Path) -> None:
    make_db(tmp_path / "routes.db", [("example.org", "mx.example.net", 0)], table="transport")
    mapping = open_db(tmp_path / "routes.db", query="SELECT server FROM transport WHERE pattern = %s")
    assert mapping.get("example.org") == Route("mx.example.net", True)  # one column: verify
    mapping.close()


def test_answers_and_misses_are_cached_for_their_ttls(tmp_path: Path) -> None:
    clock = FakeClock()
    mapping = open_db(make_db(tmp_path / "routes.db"), clock, cache_ttl=60.0, miss_ttl=10.0)
    queries = mapping.queries
    assert mapping.peek("example.org") is NOT_CACHED
    mapping.get("example.org"), mapping.get("nowhere.example")
    assert mapping.peek("example.org") == Route("mx1.example.net:25") and mapping.peek("nowhere.example") is None
    mapping.get("example.org"), mapping.get("nowhere.example")
    assert mapping.queries == queries + 2
    clock.now += 11  # the miss is old now, the route is not
    assert mapping.peek("nowhere.example") is NOT_CACHED and mapping.peek("example.org") is not NOT_CACHED
    mapping.get("nowhere.example")
    assert mapping.queries == queries + 3
    mapping.close()


def test_the_file_is_opened_read_only(tmp_path: Path) -> None:
    path = make_db(tmp_path / "routes.db")
    with pytest.raises(MappingError, match="readonly"):
        open_db(path, query="DELETE FROM upstreams WHERE pattern = %s")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM upstreams").fetchone() == (3,)
    db.close()


def test_a_missing_file_stops_the_start_and_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="unable to open"):
        open_db(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_a_file_without_the_table_stops_the_start(tmp_path: Path) -> None:
    make_db(tmp_path / "routes.db", table="other")
    with pytest.raises(MappingError, match="no such table: upstreams"):
        open_db(tmp_path / "routes.db")


def test_a_file_replaced_by_a_rename_is_read_after_sighup(tmp_path: Path) -> None:
    path = make_db(tmp_path / "routes.db")
    mapping = open_db(path)
    assert mapping.get("example.org") == Route("mx1.example.net:25")
    os.replace(make_db(tmp_path / "new.db", [("example.org", "mx9.example.net", 1)]), path)
    assert mapping.get("example.org") == Route("mx1.example.net:25")  # cached, and the old file's inode
    mapping.reload()
    assert mapping.get("example.org") == Route("mx9.example.net")
    mapping.close()


def test_each_worker_thread_queries_on_a_connection_of_its_own(tmp_path: Path) -> None:
    mapping = open_db(make_db(tmp_path / "routes.db"))
    barrier = threading.Barrier(3, timeout=5)

    def ask(key: str) -> Route | None:
        barrier.wait()  # all three threads hold their connection at once
        return mapping.get(key)

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(ask, ["example.org", "user@example.com", "null.example"]))
    assert [a.server for a in answers if a] == ["mx1.example.net:25", "mx2.example.net", "mx3.example.net"]
    assert len(mapping._connections) == 3
    mapping.close()
    assert mapping._connections == set()


def gone_after_one_answer(tmp_path: Path) -> tuple[FakeClock, ListLogger, SqliteMapping]:
    """A mapping that answered example.org once, then lost its file."""
    clock, logger = FakeClock(), ListLogger()
    path = make_db(tmp_path / "routes.db")
    mapping = open_db(path, clock, logger, cache_ttl=60.0, stale_ttl=3600.0)
    assert mapping.get("example.org") == Route("mx1.example.net:25")
    mapping.close()
    path.unlink()
    return clock, logger, mapping


def test_while_the_file_is_gone_a_known_route_is_served_stale(tmp_path: Path) -> None:
    clock, logger, mapping = gone_after_one_answer(tmp_path)
    clock.now += 61
    assert mapping.get("example.org") == Route("mx1.example.net:25") and mapping.served_stale()
    assert logger.events() == ["mapping_stale_answer"]
    with pytest.raises(MappingError, match="unable to open"):
        mapping.get("user@example.com")  # never answered: nothing to serve
    clock.now += 3600
    with pytest.raises(MappingError):
        mapping.get("example.org")  # too old even to be served stale


def test_a_sighup_while_the_database_is_gone_keeps_serving_known_routes_stale(tmp_path: Path) -> None:
    # A certificate renewal hook sends SIGHUP during an outage: known recipients must not become 451s.
    _, logger, mapping = gone_after_one_answer(tmp_path)
    mapping.reload()  # every answer is asked for again ...
    assert mapping.peek("example.org") is NOT_CACHED
    # ... and, the database being gone, the one it had is served stale.
    assert mapping.get("example.org") == Route("mx1.example.net:25") and mapping.served_stale()
    assert logger.events() == ["mapping_stale_answer"]


def test_the_router_reports_each_lookup_as_hit_miss_stale_or_error(tmp_path: Path) -> None:
    clock = FakeClock()
    path = make_db(tmp_path / "routes.db")
    observer = ListObserver()
    sqlite_mapping = open_db(path, clock, cache_ttl=60.0)
    (static,) = build_mappings([MappingSpec(2, "static:fallback.example.net")], ListLogger())
    router = Router([sqlite_mapping, static], "+", "willi.example", observer)

    assert router.resolve_fast(Address("u", "example.org")) is NOT_CACHED  # reported by the worker's lookup
    assert router.resolve(Address("u", "example.org")).route == Route("mx1.example.net:25")
    assert router.resolve_fast(Address("u", "example.org")).mapping == sqlite_mapping.name
    assert router.resolve(Address("u", "nowhere.example")).route == Route("fallback.example.net")
    sqlite_mapping.close()
    path.unlink()
    clock.now += 61
    assert router.resolve(Address("u", "example.org")).route == Route("mx1.example.net:25")
    with pytest.raises(MappingError):
        router.resolve(Address("u", "new.example"))

    results = [(name, fields["mapping"], fields["result"]) for name, fields in observer.records]
    assert results == [
        ("lookup", sqlite_mapping.name, "hit"),
        ("lookup", sqlite_mapping.name, "hit"),
        ("lookup", sqlite_mapping.name, "miss"),
        ("lookup", static.name, "hit"),
        ("lookup", sqlite_mapping.name, "stale"),
        ("lookup", sqlite_mapping.name, "error"),
    ]
    assert all(isinstance(fields["seconds"], float) and fields["seconds"] >= 0 for _, fields in observer.records)


def test_the_configuration_takes_sqlite_with_the_database_keys(tmp_path: Path) -> None:
    from willi.config import ConfigError, load_config

    env = tmp_path / "willi.env"
    env.write_text("WILLI_MAPPING_1=sqlite:/var/lib/willi/routes.db\n"
                   "WILLI_MAPPING_1_QUERY=SELECT server FROM transport WHERE k = %s\n"
                   "WILLI_MAPPING_1_CACHE_TTL=5m\nWILLI_MAPPING_1_STALE_TTL=2h\n")
    (spec,) = load_config(str(env), {}).mappings
    assert (spec.uri, spec.query, spec.cache_ttl, spec.stale_ttl) == (
        "sqlite:/var/lib/willi/routes.db", "SELECT server FROM transport WHERE k = %s", 300.0, 7200.0)
    env.write_text("WILLI_MAPPING_1=sqlite:/var/lib/willi/routes.db\nWILLI_MAPPING_1_TLS_VERIFY=no\n")
    with pytest.raises(ConfigError, match="static only"):
        load_config(str(env), {})
