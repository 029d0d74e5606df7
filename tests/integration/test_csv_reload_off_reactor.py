"""A running Willi re-reads its csv: file in a worker thread: while the read
waits, every other session is served and routes by the old table.

The proof is an order of events, not a timing: the table is replaced by a
FIFO, so Willi's read of it blocks until the test writes the new table. The
test first waits until a reader has the FIFO open (a non-blocking open for
writing succeeds only then), so it knows Willi is mid-read; then it holds a
whole conversation with Willi; only then does it write the file.

And `--check` on a file without its header line says so (issue 13): before,
the first route was silently taken for the header and `configuration ok`.
"""

from __future__ import annotations

import errno
import os

from tests.integration.test_routing import MOVED, rcpt_ok, reload_table, routed_to
from tests.support.net import wait_until
from tests.support.willi_process import open_session


def test_a_re_read_that_waits_on_the_file_stalls_no_session(launch) -> None:
    upstreams = {name: launch.upstream(replies={"RCPT": rcpt_ok(name)}) for name in "AB"}
    table = launch.tmp_path / "live.csv"
    table.write_text(reload_table(upstreams["A"].address))
    willi = launch.willi({"WILLI_MAPPING_1": f"csv:{table}"})
    with open_session(willi) as client:  # opened before the re-read begins
        table.unlink()
        os.mkfifo(table)  # a new inode: the next stat (within a second) sees a change

        def reader_waiting() -> int | None:
            try:
                return os.open(table, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                assert exc.errno == errno.ENXIO  # no reader yet
                return None

        writer = wait_until(reader_waiting, 5.0, 0.01, "Willi to start reading the table")
        try:
            # Willi is inside the read. The client says NOOP, Willi answers:
            assert client.command("NOOP").code == 250
            # the client opens a transaction, Willi routes it by the old table:
            assert client.command("MAIL FROM:<sender@origin.test>").code == 250
            assert client.command(f"RCPT TO:<{MOVED}>").raw == rcpt_ok("A")
            # and a session that starts now is greeted and routed the same way.
            assert routed_to(willi) == "A"
            assert not any(r.get("event") == "mapping_reloaded" for r in willi.log_lines())
            os.write(writer, reload_table(upstreams["B"].address).encode())
        finally:
            os.close(writer)  # end of file: Willi's worker parses, the reactor swaps
        record = willi.wait_for_log(lambda r: r.get("event") == "mapping_reloaded")
        assert record["entries"] == "1"
        assert client.command("RSET").code == 250
        assert client.command("MAIL FROM:<sender@origin.test>").code == 250
        assert client.command(f"RCPT TO:<{MOVED}>").raw == rcpt_ok("B")
        assert client.command("QUIT").code == 221


def test_check_refuses_a_csv_file_without_its_header_line(tmp_path) -> None:
    from tests.integration.test_cli import base_env, lines, run

    csv = tmp_path / "no-header.csv"
    csv.write_text("example.org;127.0.0.1:2602\nexample.com;127.0.0.1:2603\n")
    result = run("--check", env=base_env(csv), tmp_path=tmp_path)
    assert result.returncode == 1, result
    (line,) = lines(result.stdout + result.stderr)
    assert f"{csv}:1: expected the header line pattern;server;tls_verify" in line
    assert "configuration ok" not in line
