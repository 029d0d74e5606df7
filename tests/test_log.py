"""Logging: one structured line per call, logfmt or JSON, filtered by level."""

from __future__ import annotations

import calendar
import io
import json

import pytest

from willi.log import Logger, format_logfmt, format_time

NOON = calendar.timegm((2026, 11, 22, 10, 0, 0)) + 0.123


def make(fmt: str = "logfmt", level: str = "info") -> tuple[Logger, io.StringIO]:
    stream = io.StringIO()
    return Logger(stream, fmt=fmt, level=level, clock=lambda: NOON), stream


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


class Unprintable:
    """A field value that fails the test if anyone formats it."""

    def __str__(self) -> str:
        raise AssertionError("formatted a line that was filtered out")


# --- logfmt -----------------------------------------------------------------------


def test_a_logfmt_line_starts_with_time_level_and_event() -> None:
    log, stream = make()
    log.info("listening", address="127.0.0.1", port=2525)
    assert stream.getvalue() == (
        "ts=2026-11-22T10:00:00.123Z level=info event=listening address=127.0.0.1 port=2525\n"
    )


def test_timestamps_are_utc_with_milliseconds() -> None:
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(NOON) == "2026-11-22T10:00:00.123Z"
    assert format_time(59.9999) == "1970-01-01T00:01:00.000Z"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ("a=b", '"a=b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("", '""'),
        ("line\nbreak", '"line\\nbreak"'),
        ("cr\rtab\t", '"cr\\rtab\\t"'),
        ("nul\x00", '"nul\\u0000"'),
        ("sep\u2028", '"sep\\u2028"'),
        ('back\\slash "q"', '"back\\\\slash \\"q\\""'),
        ("back\\slash", "back\\slash"),
        ("grüße", "grüße"),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (1.5, "1.5"),
        (b"250 2.0.0 Ok", '"250 2.0.0 Ok"'),
        (b"\xff", "\\xff"),
    ],
)
def test_logfmt_quotes_and_escapes_only_values_that_need_it(value: object, shown: str) -> None:
    assert format_logfmt({"k": value}) == f"k={shown}"


def test_none_fields_are_left_out() -> None:
    log, stream = make()
    log.info("transaction", sender=None, size=10)
    assert lines(stream)[0].endswith("event=transaction size=10")


def test_every_call_writes_exactly_one_line_whatever_the_values() -> None:
    log, stream = make()
    log.warning("odd", helo="evil\r\nlevel=error event=forged", note="\x85\u2029")
    log.info("next")
    assert len(lines(stream)) == 2
    assert 'helo="evil\\r\\nlevel=error event=forged"' in lines(stream)[0]


def test_each_line_is_flushed_at_once() -> None:
    class Recorder(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.flushed: list[str] = []

        def flush(self) -> None:
            self.flushed.append(self.getvalue())

    stream = Recorder()
    Logger(stream, clock=lambda: NOON).info("one")
    assert stream.flushed == [stream.getvalue()] and stream.getvalue().endswith("\n")


def test_a_broken_log_stream_does_not_raise() -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError

    Logger(Broken()).error("lost")  # must not raise


# --- json -------------------------------------------------------------------------


def test_json_mode_writes_one_object_per_line() -> None:
    log, stream = make(fmt="json")
    log.info("transaction", client="192.0.2.1", tls=True, size=1234, upstream=None)
    log.error("mapping_failed", text="line\nbreak \u2028")
    first, second = (json.loads(line) for line in lines(stream))
    assert first == {
        "ts": "2026-11-22T10:00:00.123Z", "level": "info", "event": "transaction",
        "client": "192.0.2.1", "tls": True, "size": 1234,
    }  # fmt: skip
    assert second["text"] == "line\nbreak \u2028"
    assert stream.getvalue().isascii()


def test_json_mode_turns_bytes_and_other_objects_into_text() -> None:
    log, stream = make(fmt="json")
    log.info("reply", reply=b"550 no\r\n", peer=("192.0.2.1", 25))
    record = json.loads(stream.getvalue())
    assert record["reply"] == "550 no\r\n" and record["peer"] == ["192.0.2.1", 25]


# --- levels -----------------------------------------------------------------------


def test_lines_below_the_level_are_not_written() -> None:
    log, stream = make(level="warning")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.log("info", "i2")
    assert [line.split()[1] for line in lines(stream)] == ["level=warning", "level=error"]


def test_filtered_lines_are_never_formatted() -> None:
    log, stream = make(level="info")
    log.debug("expensive", value=Unprintable())
    assert stream.getvalue() == ""
    assert not log.enabled("debug") and log.enabled("error")


def test_debug_level_writes_everything() -> None:
    log, stream = make(level="debug")
    for level in ("debug", "info", "warning", "error"):
        log.log(level, "e")
    assert len(lines(stream)) == 4


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("logfmt", "verbose")])
def test_unknown_formats_and_levels_are_refused(fmt: str, level: str) -> None:
    with pytest.raises(ValueError):
        Logger(io.StringIO(), fmt=fmt, level=level)


# --- bind -------------------------------------------------------------------------


def test_bind_adds_fields_to_every_line_of_the_child() -> None:
    log, stream = make()
    session = log.bind(session="a1b2")
    session.info("connect", client="192.0.2.1")
    session.bind(tx=1).info("transaction", session="overridden?")
    log.info("parent")
    first, second, third = lines(stream)
    assert first.endswith("event=connect session=a1b2 client=192.0.2.1")
    assert second.endswith("event=transaction session=overridden? tx=1")
    assert third.endswith("event=parent")


def test_a_child_keeps_the_parent_level_and_format() -> None:
    log, stream = make(fmt="json", level="error")
    child = log.bind(session="x")
    child.info("hidden")
    child.error("shown")
    assert json.loads(stream.getvalue())["session"] == "x"
