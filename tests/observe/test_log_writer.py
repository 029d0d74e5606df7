"""The log writer: lines leave the reactor thread through a bounded buffer.

A reader of stdout that stalls (a stuck journald or log collector) must cost
dropped, counted lines, never a blocked caller; once the reader is back the
writer says how many were lost; at exit what is buffered is written, with a
deadline. Under systemd the lines carry journald's priority prefix.
"""

from __future__ import annotations

import fcntl
import os
import select
import threading
import time
from typing import Iterator

import pytest

from willi.log import LogWriter, Logger, journal_stream

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@pytest.fixture
def pipe() -> Iterator[tuple[int, "os.FileIO"]]:
    """A small pipe (one page): its write end as a text stream, its read end as an fd."""
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(read_fd, F_SETPIPE_SZ, 4096)
    stream = os.fdopen(write_fd, "w")
    try:
        yield read_fd, stream
    finally:
        # The read end first: a writer thread still blocked on this pipe gets
        # EPIPE and ends while its descriptor number is still this pipe's, so
        # it can never write into the pipe of the next test that reuses it.
        os.close(read_fd)
        deadline = time.monotonic() + 5.0
        for thread in threading.enumerate():
            if thread.name == "willi-log":
                thread.join(max(deadline - time.monotonic(), 0.0))
        stream.close()


def drain(fd: int, until: bytes, timeout: float = 5.0) -> bytes:
    """Read `fd` until `until` shows up in what was read, or fail at the deadline."""
    data = b""
    deadline = time.monotonic() + timeout
    while until not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{until!r} never came; read {data[-300:]!r}"
        if select.select([fd], [], [], remaining)[0]:
            data += os.read(fd, 65536)
    return data


def in_thread(work, timeout: float = 5.0) -> None:
    """Run `work` on a thread and fail unless it returns within `timeout` (it must not block)."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the call blocked"


def test_lines_go_through_the_writer_thread_and_close_writes_them_all(pipe) -> None:
    read_fd, stream = pipe
    writer = LogWriter(stream, limit=100)
    log = Logger(None, sink=writer, clock=lambda: 0.0)
    log.info("before_start")  # written directly: no thread yet
    writer.start(lambda n: f"dropped {n}")
    for number in range(20):
        log.info("line", n=number)
    log.info("last")
    writer.close(2.0)
    text = drain(read_fd, b"event=last").decode()
    assert [line.split()[2] for line in text.splitlines()] == (
        ["event=before_start"] + ["event=line"] * 20 + ["event=last"])
    assert writer.dropped == 0


def test_a_stalled_reader_costs_dropped_lines_never_a_blocked_caller(pipe) -> None:
    read_fd, stream = pipe
    writer = LogWriter(stream, limit=10)
    log = Logger(None, sink=writer)
    writer.start(lambda n: log.render("warning", "log_dropped", count=n))
    line = "x" * 200
    # Nobody reads: the pipe (4 KiB) and the buffer (10 lines) fill up, the rest is dropped.
    in_thread(lambda: [log.info("filler", pad=line, n=number) for number in range(200)])
    assert writer.dropped > 0
    dropped = writer.dropped
    text = b""
    deadline = time.monotonic() + 5.0
    while True:  # until every line is accounted for: written, or reported as dropped
        text += drain(read_fd, b"\n", max(deadline - time.monotonic(), 0.01))
        rows = text.decode().splitlines()
        reports = [row for row in rows if "event=log_dropped" in row]
        reported = sum(int(row.rpartition("count=")[2]) for row in reports)
        # Lines logged after the writer took a batch may come after the report.
        if reported == dropped and sum("event=filler" in row for row in rows) + dropped == 200:
            break
    assert all("level=warning" in row for row in reports)  # one line per catch-up, counting since the last
    kept = [row for row in rows if "event=filler" in row]
    assert len(kept) + dropped == 200
    # Once caught up, lines flow again and the drop is not reported twice.
    log.info("after")
    rest = drain(read_fd, b"event=after").decode()
    assert "log_dropped" not in rest
    writer.close(2.0)


def test_close_gives_up_on_a_reader_that_never_comes_back(pipe) -> None:
    _read_fd, stream = pipe
    writer = LogWriter(stream, limit=1000)
    log = Logger(None, sink=writer)
    writer.start(lambda n: f"dropped {n}")
    for number in range(100):
        log.info("filler", pad="y" * 200, n=number)
    started = time.monotonic()
    in_thread(lambda: writer.close(0.3))
    assert time.monotonic() - started < 3.0
    log.info("after_close")  # dropped, not blocking
    assert writer.dropped >= 1


def test_journal_lines_carry_the_priority_and_no_timestamp() -> None:
    lines: list[str] = []

    class Sink:
        dropped = 0

        def put(self, line: str) -> None:
            lines.append(line)

    log = Logger(None, sink=Sink(), journal=True)  # type: ignore[arg-type]
    log.info("listening", port=25)
    log.warning("odd")
    log.error("bad")
    json_log = Logger(None, fmt="json", sink=Sink(), journal=True)  # type: ignore[arg-type]
    json_log.info("x")
    assert lines == ["<6>level=info event=listening port=25", "<4>level=warning event=odd",
                     "<3>level=error event=bad", '<6>{"level":"info","event":"x"}']


def test_journal_stream_must_name_our_own_stdout(pipe, tmp_path) -> None:
    _read_fd, stream = pipe
    status = os.fstat(stream.fileno())
    assert journal_stream(f"{status.st_dev}:{status.st_ino}", stream)
    with open(tmp_path / "other", "w") as other:
        assert not journal_stream(f"{status.st_dev}:{status.st_ino}", other)  # inherited, stdout moved
    assert not journal_stream(None, stream) and not journal_stream("", stream)
    assert not journal_stream("garbage", stream)


def test_a_stream_without_a_descriptor_is_written_directly_even_after_start() -> None:
    import io

    stream = io.StringIO()
    writer = LogWriter(stream)
    writer.start(lambda n: f"dropped {n}")
    Logger(None, sink=writer, clock=lambda: 0.0).info("x")
    assert stream.getvalue() == "ts=1970-01-01T00:00:00.000Z level=info event=x\n"
    writer.close(1.0)


def test_writes_are_whole_lines_of_at_most_pipe_buf_so_workers_never_splice_them(monkeypatch) -> None:
    # WILLI_WORKERS share one stdout: a pipe takes a write of up to PIPE_BUF whole,
    # never interleaved with another process's; a longer write may be cut anywhere.
    import willi.log as log

    writes: list[bytes] = []

    def write(fd: int, data: memoryview) -> int:
        writes.append(bytes(data))
        return len(data)

    monkeypatch.setattr(log.os, "write", write)
    lines = [f"event=line n={n} pad={'x' * (n % 300)}".encode() for n in range(2000)]
    long_line = b"event=long value=" + b"y" * 10_000
    data = b"\n".join([*lines[:1000], long_line, *lines[1000:]]) + b"\n"
    assert log._write_all(1, data)
    assert b"".join(writes) == data
    assert all(piece.endswith(b"\n") for piece in writes)
    assert all(len(piece) <= select.PIPE_BUF for piece in writes if long_line not in piece)
    assert [piece for piece in writes if long_line in piece] == [long_line + b"\n"]  # alone, not cut
