"""Logs never stall the mail flow (SPEC §6, issue 11 item 2), and under
systemd they carry journald's priority prefix (issue 13 item 3).

Willi's stdout here is a pipe of one page that the test does not read, as a
stuck journald or container log collector would leave it: Willi must keep
relaying, drop and count the lines it cannot write, and say how many once
the pipe is drained. SIGTERM must end it within a bounded time even while
the pipe stays full.
"""

from __future__ import annotations

import fcntl
import http.client
import os
import select
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.net import free_port, wait_until
from tests.support.upstream import ScriptableUpstream
from tests.support.willi_process import REPO_ROOT, WILLI_SCRIPT, child_environ, greets, parse_log_line, write_env_file

SENDER = "sender@origin.test"
BODY = b"Subject: stall\r\n\r\nhello\r\n"
MESSAGES = 30
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class PipedWilli:
    """A Willi whose stdout is a one-page pipe that only `read_until` drains."""

    def __init__(self, tmp_path: Path, upstream_port: int, **keys: str) -> None:
        self.port = free_port()
        self.metrics_port = int(keys.get("WILLI_METRICS_LISTEN", ":0").rpartition(":")[2])
        env = {"WILLI_LISTEN": f"127.0.0.1:{self.port}", "WILLI_HOSTNAME": "willi.test",
               "WILLI_MAPPING_1": f"static:127.0.0.1:{upstream_port}", **keys}
        self.env_file = write_env_file(tmp_path / "willi.env", env)
        self.stderr_path = tmp_path / "willi.stderr"
        self.read_fd, write_fd = os.pipe()
        fcntl.fcntl(self.read_fd, F_SETPIPE_SZ, 4096)
        with open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(WILLI_SCRIPT), "--config", str(self.env_file)], cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL, stdout=write_fd, stderr=err, env=child_environ())
        os.close(write_fd)
        self.text = b""
        wait_until(lambda: self.process.poll() is None and greets("127.0.0.1", self.port), 10.0, 0.02,
                   "Willi to greet")

    def read_until(self, predicate, timeout: float = 10.0) -> list[dict[str, str]]:
        """Drain the pipe until a complete line satisfies `predicate`; all records so far."""
        deadline = time.monotonic() + timeout
        while True:
            complete = self.text[: self.text.rfind(b"\n") + 1].decode(errors="replace")
            records = [parse_log_line(line) for line in complete.splitlines()]
            if any(predicate(record) for record in records):
                return records
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no such line; got {complete[-2000:]}\n{self.stderr_path.read_text()}"
            if select.select([self.read_fd], [], [], remaining)[0]:
                chunk = os.read(self.read_fd, 65536)
                if not chunk and self.process.poll() is not None:
                    raise AssertionError(f"Willi exited; got {complete[-2000:]}")
                self.text += chunk

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        os.close(self.read_fd)


@pytest.fixture
def upstream() -> Iterator[ScriptableUpstream]:
    with ScriptableUpstream() as server:
        yield server


@pytest.fixture
def piped(tmp_path: Path, upstream: ScriptableUpstream) -> Iterator[PipedWilli]:
    willi = PipedWilli(tmp_path, upstream.port, WILLI_LOG_BUFFER="5", WILLI_METRICS_LISTEN=f"127.0.0.1:{free_port()}")
    try:
        yield willi
    finally:
        willi.stop()


def dropped_lines(port: int) -> float:
    """willi_log_lines_dropped_total, read from /metrics."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return next(s.value for family in text_string_to_metric_families(text) for s in family.samples
                if s.name == "willi_log_lines_dropped_total")


def send(port: int, count: int) -> None:
    """One message per session, to user<N>@a.test."""
    for number in range(count):
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            client.sendmail(SENDER, [f"user{number}@a.test"], BODY)


def test_willi_relays_while_nobody_reads_its_stdout_and_reports_the_lost_lines(
        piped: PipedWilli, upstream: ScriptableUpstream) -> None:
    # Client sends 30 messages while the pipe is full: every one is relayed at once.
    send(piped.port, MESSAGES)
    assert len(upstream.wait_for_messages(MESSAGES)) == MESSAGES
    # Still stalled, the metrics endpoint answers and counts the lines lost so far.
    lost = dropped_lines(piped.metrics_port)
    assert lost > 0
    # The collector comes back: Willi says how many lines it could not write.
    records = piped.read_until(lambda r: r.get("event") == "log_dropped")
    reports = [r for r in records if r.get("event") == "log_dropped"]
    assert reports[0]["level"] == "warning" and 0 < int(reports[0]["count"]) <= dropped_lines(piped.metrics_port)
    # And lines flow again: a new message is logged as usual.
    with smtplib.SMTP("127.0.0.1", piped.port, timeout=5) as client:
        client.sendmail(SENDER, ["after@a.test"], BODY)
    piped.read_until(lambda r: "after@a.test" in r["_raw"])


def test_sigterm_ends_willi_in_bounded_time_while_its_stdout_stays_full(
        piped: PipedWilli, upstream: ScriptableUpstream) -> None:
    send(piped.port, MESSAGES)
    upstream.wait_for_messages(MESSAGES)
    started = time.monotonic()
    piped.process.send_signal(signal.SIGTERM)
    assert piped.process.wait(15) == 0
    assert time.monotonic() - started < 10


def test_under_systemd_lines_carry_the_journald_priority_and_no_timestamp(tmp_path: Path) -> None:
    port = free_port()
    env_file = write_env_file(tmp_path / "willi.env", {
        "WILLI_LISTEN": f"127.0.0.1:{port}", "WILLI_HOSTNAME": "willi.test", "WILLI_MAPPING_1": "static:127.0.0.1:9"})
    out_path = tmp_path / "stdout"
    with open(out_path, "wb") as out:
        status = os.fstat(out.fileno())
        process = subprocess.Popen(
            [sys.executable, str(WILLI_SCRIPT), "--config", str(env_file)], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.DEVNULL,
            env=child_environ({"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}))
    try:
        wait_until(lambda: process.poll() is None and greets("127.0.0.1", port), 10.0, 0.02, "Willi to greet")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    lines = out_path.read_text().splitlines()
    assert lines[0].startswith("<6>level=info event=listening address=127.0.0.1:")
    assert lines[-1] == "<6>level=info event=stopped"
    assert not [line for line in lines if "ts=" in line or not line.startswith("<")]
