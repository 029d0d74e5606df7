"""csv: tables that grow: the header check, shared routes, and a reload that is
read and parsed in a worker while the reactor keeps serving the old table.

The proofs are orders of events on a real Reactor and WorkerPool, never
timings: the table file is swapped for a FIFO, so the worker's read blocks
until the test, running as a reactor callback like any session, writes it.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from tests.routing.test_csvmap import HEADER, ListLogger, write
from tests.test_reactor import run_until
from willi.errors import MappingError
from willi.reactor import Reactor
from willi.routing import MappingSpec, Route
from willi.routing.csvmap import CsvMapping, parse_csv
from willi.workers import WorkerPool


class ThreadLogger(ListLogger):
    """Also remembers which thread logged each line."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def info(self, event: str, **fields: object) -> None:
        self.threads.append(threading.get_ident())
        super().info(event, **fields)

    def warning(self, event: str, **fields: object) -> None:
        self.threads.append(threading.get_ident())
        super().warning(event, **fields)


@pytest.fixture
def loop():
    reactor = Reactor()
    pool = WorkerPool(reactor, threads=1)
    yield reactor, pool
    pool.close(timeout=2.0)
    reactor.close()


def attached(path: Path, logger: ListLogger, loop) -> CsvMapping:
    mapping = CsvMapping(MappingSpec(1, f"csv:{path}"), logger, interval=0.01)
    mapping.attach(*loop)
    return mapping


# -- the header line -------------------------------------------------------------------


def test_a_file_without_its_header_is_rejected_whole_with_the_reason(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    write(table, "example.org;mx1.example.net\nexample.com;mx2.example.net\n", 1)
    with pytest.raises(MappingError, match="header line pattern;server") as info:
        CsvMapping(MappingSpec(1, f"csv:{table}"), ListLogger())
    assert f"{table}:1:" in str(info.value) and "example.org;mx1.example.net" in str(info.value)


@pytest.mark.parametrize("header", ["pattern;server", "Pattern ; Server ; TLS_Verify", "PATTERN;SERVER;tls_verify"])
def test_the_header_names_the_columns_in_any_case(header: str) -> None:
    assert parse_csv(f"# routes\n\n{header}\nexample.org;mx\n", "t.csv") == {"example.org": Route("mx")}


@pytest.mark.parametrize("header", ["pattern", "server;pattern", "pattern;server;tls_verify;x", "domain;server"])
def test_any_other_first_line_is_no_header(header: str) -> None:
    with pytest.raises(MappingError, match="t.csv:1: expected the header line"):
        parse_csv(f"{header}\nexample.org;mx\n", "t.csv")


# -- shared routes -----------------------------------------------------------------------


def test_equal_routes_are_one_object_so_a_row_costs_little_more_than_its_key() -> None:
    rows = "".join(f"d{i}.example;mx{i % 3}.example.net;{('yes', '1', 'true')[i % 2]}\n" for i in range(999))
    rows += "off.example;mx0.example.net;no\n"
    table = parse_csv(HEADER + rows, "t.csv")
    assert len(table) == 1000
    assert len({id(route) for route in table.values()}) == 4  # mx0..mx2 verified, mx0 unverified
    assert table["d0.example"] is table["d3.example"] is table["d6.example"]  # "yes", "1", "yes"
    assert table["d0.example"] is not table["d1.example"]
    assert table["off.example"] == Route("mx0.example.net", False)


# -- a reload off the reactor ---------------------------------------------------------------


def test_a_reload_is_read_in_a_worker_while_the_reactor_serves_the_old_table(tmp_path: Path, loop) -> None:
    reactor, _ = loop
    table, logger = tmp_path / "t.csv", ThreadLogger()
    write(table, HEADER + "a.example;old-a\nb.example;old-b\n", 1)
    mapping = attached(table, logger, loop)
    table.unlink()
    os.mkfifo(table)  # a changed stamp; the worker's read now blocks until we write
    seen: list[tuple[str, Route | None, Route | None]] = []
    writer: list[int] = []

    def look(what: str) -> None:
        seen.append((what, mapping.get("a.example"), mapping.get("b.example")))

    def session_turn(step: int = 0) -> None:
        """What another session does meanwhile: a reactor callback that looks up routes."""
        if not writer:
            try:  # succeeds only once a reader has the FIFO open: the worker, mid-reload
                writer.append(os.open(table, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as exc:
                assert exc.errno == errno.ENXIO
                reactor.call_later(0.001, session_turn)
                return
            look("while the worker reads")
            os.write(writer[0], b"pattern;server\na.example;new-a\n")
            look("half the new file written")
            reactor.call_soon(session_turn, 1)
        elif step == 1:
            os.write(writer[0], b"b.example;new-b\n")
            os.close(writer.pop())
            writer.append(-1)
            look("the whole file written")

    def release_a_stuck_reader() -> None:
        """The deadline: should the read ever block the reactor itself, end it with EOF."""
        try:
            os.close(os.open(table, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    watchdog = threading.Timer(5.0, release_a_stuck_reader)
    watchdog.start()
    reactor.call_soon(session_turn)
    try:
        run_until(reactor, lambda: "mapping_reloaded" in logger.events())
    finally:
        watchdog.cancel()
        if writer and writer[0] >= 0:
            os.close(writer[0])
    look("after the swap")

    old, new = (Route("old-a"), Route("old-b")), (Route("new-a"), Route("new-b"))
    assert [(what, (a, b) == old) for what, a, b in seen[:3]] == [
        ("while the worker reads", True), ("half the new file written", True), ("the whole file written", True)]
    assert seen[3] == ("after the swap", *new)
    assert logger.lines[-1] == ("info", "mapping_reloaded", {"mapping": mapping.name, "entries": 2})
    assert logger.threads == [threading.get_ident()]  # swapped (and logged) on the reactor thread


def test_a_broken_edit_is_reported_when_the_file_is_re_read_not_at_a_lookup(tmp_path: Path, loop) -> None:
    reactor, _ = loop
    table, logger = tmp_path / "t.csv", ThreadLogger()
    write(table, HEADER + "example.org;old\n", 1)
    mapping = attached(table, logger, loop)
    write(table, HEADER + "example.org;new\nno separator here\n", 2)
    run_until(reactor, lambda: bool(logger.lines))  # no lookup in between
    assert logger.events() == ["mapping_reload_failed"]
    assert f"{table}:3:" in str(logger.lines[0][2]["error"])
    assert mapping.get("example.org") == Route("old")
    assert logger.threads == [threading.get_ident()]


def test_an_edit_that_drops_the_header_keeps_the_old_table_and_says_so(tmp_path: Path, loop) -> None:
    reactor, _ = loop
    table, logger = tmp_path / "t.csv", ListLogger()
    write(table, HEADER + "example.org;old\n", 1)
    mapping = attached(table, logger, loop)
    write(table, "example.org;new\n", 2)
    run_until(reactor, lambda: bool(logger.lines))
    assert logger.events() == ["mapping_reload_failed"]
    assert "expected the header line" in str(logger.lines[0][2]["error"])
    assert mapping.get("example.org") == Route("old")
    # Reported once, not every second; the mended file is taken.
    write(table, HEADER + "example.org;mended\n", 3)
    run_until(reactor, lambda: len(logger.lines) > 1)
    assert logger.events() == ["mapping_reload_failed", "mapping_reloaded"]
    assert mapping.get("example.org") == Route("mended")


def test_sighup_re_reads_in_the_worker_even_when_the_stamp_is_unchanged(tmp_path: Path, loop) -> None:
    reactor, _ = loop
    table, logger = tmp_path / "t.csv", ThreadLogger()
    write(table, HEADER + "example.org;aaa\n", 1)
    mapping = attached(table, logger, loop)
    write(table, HEADER + "example.org;bbb\n", 1)  # same size, same mtime: a stat sees nothing
    mapping.reload()
    assert mapping.get("example.org") == Route("aaa")  # reload() returned without reading
    run_until(reactor, lambda: bool(logger.lines))
    assert logger.events() == ["mapping_reloaded"] and logger.threads == [threading.get_ident()]
    assert mapping.get("example.org") == Route("bbb")


def test_a_closed_mapping_stops_watching(tmp_path: Path, loop) -> None:
    reactor, _ = loop
    table, logger = tmp_path / "t.csv", ListLogger()
    write(table, HEADER + "example.org;old\n", 1)
    mapping = attached(table, logger, loop)
    mapping.close()
    write(table, HEADER + "example.org;new\n", 2)
    ticks: list[int] = []

    def tick() -> None:  # one after another: 20 turns of 5 ms, far more than the 0.01 s check interval
        ticks.append(1)
        if len(ticks) < 20:
            reactor.call_later(0.005, tick)

    reactor.call_later(0.005, tick)
    run_until(reactor, lambda: len(ticks) == 20)
    # Neither the watcher nor a lookup re-reads it (an unattached mapping's lookup would).
    assert mapping.get("example.org") == Route("old") and logger.lines == []


def test_a_replaced_table_stays_whole_for_lookups_begun_before_the_swap_then_is_freed(
        tmp_path: Path, loop) -> None:
    reactor, _ = loop
    table, logger = tmp_path / "t.csv", ListLogger()
    write(table, HEADER + "".join(f"d{i}.example;old\n" for i in range(3000)), 1)
    mapping = CsvMapping(MappingSpec(1, f"csv:{table}"), logger, interval=0.01, retire_after=0.2)
    mapping.attach(*loop)
    old = mapping._table  # what a worker's get() that began before the swap holds
    write(table, HEADER + "d0.example;new\n", 2)
    run_until(reactor, lambda: bool(logger.lines))
    assert mapping.get("d0.example") == Route("new") and mapping.get("d1.example") is None
    assert len(old) == 3000 and old.get("d2999.example") == Route("old")  # not freed at the swap
    run_until(reactor, lambda: len(old) == 0)  # a worker frees it after the grace
    assert len(old) == 0 and mapping.get("d0.example") == Route("new")
