"""csv:PATH: the original format, whole-file validation, and reloading on change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from willi.errors import MappingError
from willi.log import LevelMethods
from willi.routing import MappingSpec, Route
from willi.routing.csvmap import CsvMapping


class ListLogger(LevelMethods):
    """Collects (level, event, fields) so tests can assert what was logged."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, object]]] = []

    def log(self, level: str, event: str, **fields: object) -> None:
        self.lines.append((level, event, fields))

    def events(self) -> list[str]:
        return [event for _, event, _ in self.lines]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str, mtime: int) -> None:
    # Explicit mtimes: two writes within one filesystem tick must still differ.
    path.write_text(text, encoding="utf-8")
    os.utime(path, (mtime, mtime))


def open_csv(path: Path, logger: ListLogger | None = None, clock: FakeClock | None = None) -> CsvMapping:
    return CsvMapping(MappingSpec(1, f"csv:{path}"), logger or ListLogger(), clock or FakeClock())


HEADER = "pattern;server;tls_verify\n"


def test_header_is_skipped_and_lines_become_routes(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    write(table, HEADER + "example.org;mx1.example.net:25;false\nuser@example.com;mx2.example.net;yes\n", 1)
    mapping = open_csv(table)
    assert mapping.get("pattern") is None
    assert mapping.get("example.org") == Route("mx1.example.net:25", False)
    assert mapping.get("user@example.com") == Route("mx2.example.net", True)


def test_third_field_is_optional_and_defaults_to_verify(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    write(table, HEADER + "a.example;mx\nb.example;mx;\n", 1)
    mapping = open_csv(table)
    assert mapping.get("a.example") == Route("mx", True)
    assert mapping.get("b.example") == Route("mx", True)


@pytest.mark.parametrize(
    ("flag", "expected"),
    [("1", True), ("0", False), ("TRUE", True), ("False", False), ("Yes", True), ("no", False)],
)
def test_tls_verify_spellings(tmp_path: Path, flag: str, expected: bool) -> None:
    table = tmp_path / "t.csv"
    write(table, HEADER + f"example.org;mx;{flag}\n", 1)
    assert open_csv(table).get("example.org") == Route("mx", expected)


def test_comments_blank_lines_and_spaces_are_ignored(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    text = "# upstreams\n\n" + HEADER + "# a comment\n\n  Example.ORG ; mx.example.net:2525 ; 0 \r\n"
    write(table, text, 1)
    assert open_csv(table).get("example.org") == Route("mx.example.net:2525", False)


def test_patterns_are_lower_cased_so_lower_cased_keys_find_them(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    write(table, HEADER + "User@Example.ORG;mx\n", 1)
    assert open_csv(table).get("user@example.org") == Route("mx")


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("example.org", "fields"),
        ("example.org;mx;1;extra", "fields"),
        (";mx", "empty pattern"),
        ("example.org;", "empty server"),
        ("example.org;mx;maybe", "tls_verify"),
        ("example.org;mx;25", "port"),
        ("example.org;mx:99999", "bad port"),
    ],
)
def test_one_bad_line_rejects_the_file_naming_path_and_line(
    tmp_path: Path, line: str, complaint: str
) -> None:
    table = tmp_path / "t.csv"
    write(table, HEADER + "good.example;mx\n" + line + "\n", 1)
    with pytest.raises(MappingError, match=complaint) as info:
        open_csv(table)
    assert f"{table}:3:" in str(info.value)


def test_duplicate_pattern_rejects_the_file(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    write(table, HEADER + "example.org;mx1\nEXAMPLE.org;mx2\n", 1)
    with pytest.raises(MappingError, match="duplicate.*line 2"):
        open_csv(table)


def test_missing_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="cannot read"):
        open_csv(tmp_path / "missing.csv")


def test_empty_file_is_refused_as_probably_half_written(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    write(table, "", 1)
    with pytest.raises(MappingError, match="no header"):
        open_csv(table)


def test_header_only_file_is_an_empty_table(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    write(table, HEADER, 1)
    assert open_csv(table).get("example.org") is None


def test_change_is_noticed_only_once_a_second_has_passed(tmp_path: Path) -> None:
    table, clock, logger = tmp_path / "t.csv", FakeClock(), ListLogger()
    write(table, HEADER + "example.org;old\n", 1)
    mapping = open_csv(table, logger, clock)
    write(table, HEADER + "example.org;new\n", 2)
    clock.now += 0.5
    assert mapping.get("example.org") == Route("old")
    clock.now += 0.5
    assert mapping.get("example.org") == Route("new")
    assert logger.lines == [("info", "mapping_reloaded", {"mapping": mapping.name, "entries": 1})]


def test_unchanged_file_is_not_re_read(tmp_path: Path) -> None:
    table, clock, logger = tmp_path / "t.csv", FakeClock(), ListLogger()
    write(table, HEADER + "example.org;mx\n", 1)
    mapping = open_csv(table, logger, clock)
    clock.now += 5
    mapping.get("example.org")
    assert logger.lines == []


def test_broken_change_keeps_the_old_table_and_logs_why_once(tmp_path: Path) -> None:
    table, clock, logger = tmp_path / "t.csv", FakeClock(), ListLogger()
    write(table, HEADER + "example.org;old\n", 1)
    mapping = open_csv(table, logger, clock)
    write(table, HEADER + "example.org;new\nbroken line\n", 2)
    for _ in range(3):
        clock.now += 1
        assert mapping.get("example.org") == Route("old")
    assert logger.events() == ["mapping_reload_failed"]
    level, _, fields = logger.lines[0]
    assert level == "warning" and fields["mapping"] == mapping.name
    assert f"{table}:3:" in str(fields["error"])


def test_fixed_file_is_picked_up_after_a_broken_one(tmp_path: Path) -> None:
    table, clock, logger = tmp_path / "t.csv", FakeClock(), ListLogger()
    write(table, HEADER + "example.org;old\n", 1)
    mapping = open_csv(table, logger, clock)
    write(table, HEADER + "broken\n", 2)
    clock.now += 1
    mapping.get("example.org")
    write(table, HEADER + "example.org;fixed\n", 3)
    clock.now += 1
    assert mapping.get("example.org") == Route("fixed")
    assert logger.events() == ["mapping_reload_failed", "mapping_reloaded"]


def test_deleted_file_keeps_the_old_table(tmp_path: Path) -> None:
    table, clock, logger = tmp_path / "t.csv", FakeClock(), ListLogger()
    write(table, HEADER + "example.org;old\n", 1)
    mapping = open_csv(table, logger, clock)
    table.unlink()
    clock.now += 1
    assert mapping.get("example.org") == Route("old")
    assert logger.events() == ["mapping_reload_failed"]


def test_reload_re_reads_even_when_the_stamp_is_unchanged(tmp_path: Path) -> None:
    table, logger = tmp_path / "t.csv", ListLogger()
    write(table, HEADER + "example.org;aaa\n", 1)
    mapping = open_csv(table, logger)
    write(table, HEADER + "example.org;bbb\n", 1)  # same size, same mtime
    assert mapping.get("example.org") == Route("aaa")
    mapping.reload()
    assert mapping.get("example.org") == Route("bbb")
    assert logger.events() == ["mapping_reloaded"]


def test_reload_of_a_broken_file_keeps_the_old_table(tmp_path: Path) -> None:
    table, logger = tmp_path / "t.csv", ListLogger()
    write(table, HEADER + "example.org;old\n", 1)
    mapping = open_csv(table, logger)
    write(table, HEADER + "example.org;new;perhaps\n", 2)
    mapping.reload()
    assert mapping.get("example.org") == Route("old")
    assert logger.events() == ["mapping_reload_failed"]


def test_check_raises_when_the_file_went_bad(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    write(table, HEADER + "example.org;mx\n", 1)
    mapping = open_csv(table)
    mapping.check()
    write(table, HEADER + "example.org\n", 2)
    with pytest.raises(MappingError, match=":2:"):
        mapping.check()


def test_csv_mapping_never_blocks_and_peek_answers_like_get(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    write(table, HEADER + "example.org;mx\n", 1)
    mapping = open_csv(table)
    assert mapping.blocking is False
    assert mapping.peek("example.org") == Route("mx")
