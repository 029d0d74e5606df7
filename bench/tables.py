"""W7: routing tables that grow. How long a csv: table of N rows takes to
load, what a row costs in memory, and how long a session waits while Willi
re-reads the changed file.

Each run writes a table of N rows (customer domains over 50 servers, as a
hosting provider's would be, plus `bench.test` routed to the run's sink),
then:

- load: a child Python (`tables.py load PATH`) times Willi's own `load_csv`
  on the file and reports its VmRSS before and after (bytes per row = the
  difference over N) and VmHWM (the peak while loading);
- stall: Willi is started on the table (`WILLI_LOG_LEVEL=info`, so that
  `mapping_reloaded` is logged); one SMTP session says EHLO and then sends
  NOOP after NOOP, timing each round trip; the table is rewritten with one
  row changed, and the NOOPs go on until Willi logs the second
  `mapping_reloaded` (the first is at start-up) and 3.5 s longer, past the
  moment the replaced table is freed. The
  worst round trip between the rewrite and then is the stall a session sees;
  the worst one over a second before the rewrite is the baseline beside it
  (on a shared machine, mostly the scheduler's noise).

Run with `--workload W7` (W7-10k, W7-100k, W7-1M); BENCH_SCALE scales N.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

SERVERS = 50
# Seconds the NOOPs go on after `mapping_reloaded`: past the moment Willi frees
# the replaced table (3 s after the swap, in a worker), so that counts too.
AFTER_RELOAD = 3.5


def rows_at(rows: int, scale: float) -> int:
    return max(100, round(rows * scale))


def write_table(path: Path, rows: int, sink_port: int, generation: int = 0) -> None:
    """N customer rows over 50 servers, and bench.test to the sink; `generation`
    changes one row, so a rewrite is a real change of content and stamp. Written
    beside and renamed into place, as an operator's tool should: Willi must never
    see half a file (it would refuse it, or worse, take a shorter one)."""
    part = path.with_name(path.name + ".part")
    with open(part, "w", encoding="utf-8") as f:
        f.write("pattern;server;tls_verify\n")
        f.write(f"bench.test;127.0.0.1:{sink_port};no\n")
        f.write(f"changed.example;mx{generation % SERVERS:02d}.hosting.example.net:25;yes\n")
        lines = (f"customer-{i:07d}.example.org;mx{i % SERVERS:02d}.hosting.example.net:25;yes\n"
                 for i in range(rows - 2))
        f.writelines(lines)
    stamp = time.time() + generation * 2  # a new mtime even within one filesystem tick
    os.utime(part, (stamp, stamp))
    os.replace(part, path)


def measure_load(python: str, path: Path, repo: Path) -> dict[str, float]:
    """Willi's load_csv on the file in a child interpreter: seconds, bytes per row, peak."""
    argv = [python, str(Path(__file__).resolve()), "load", str(path)]
    done = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"tables.py load failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _load_here(path: str) -> None:
    """The child: import first (not counted), then time and size one load."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from willi.routing.csvmap import load_csv

    rss0 = _status_kb("VmRSS")
    start = time.perf_counter()
    table, _ = load_csv(path)
    seconds = time.perf_counter() - start
    rss1, hwm = _status_kb("VmRSS"), _status_kb("VmHWM")
    routes = len({id(route) for route in table.values()})
    print(json.dumps({"rows": len(table), "load_s": seconds, "bytes_per_row": (rss1 - rss0) * 1024 / len(table),
                      "peak_mb": (hwm - rss0) / 1024, "routes": routes}))


# --- the stall ---------------------------------------------------------------------
class Session:
    """A blocking SMTP client for NOOP round trips (loopback, with a deadline)."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.reply()
        self.sock.sendall(b"EHLO stall.bench.test\r\n")
        self.reply()

    def reply(self) -> bytes:
        while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", self.buf):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("Willi closed the session")
            self.buf += chunk
        reply, self.buf = self.buf, b""
        return reply

    def noop(self) -> float:
        start = time.perf_counter()
        self.sock.sendall(b"NOOP\r\n")
        if not self.reply().startswith(b"250"):
            raise RuntimeError("NOOP not answered 250")
        return time.perf_counter() - start

    def close(self) -> None:
        try:
            self.sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        self.sock.close()


def reloads_logged(log: Path) -> int:
    try:
        return log.read_text(errors="replace").count("mapping_reloaded")
    except OSError:
        return 0


def measure_stall(port: int, log: Path, table: Path, rows: int, sink_port: int,
                  timeout: float) -> dict[str, float]:
    """Worst NOOP round trip before, and while the rewritten table is re-read."""
    session = Session(port, timeout)
    try:
        before, until = 0.0, time.perf_counter() + 1.0
        while time.perf_counter() < until:  # the machine's own noise, over a second
            before = max(before, session.noop())
        already = reloads_logged(log)
        rewrite_start = time.perf_counter()
        write_table(table, rows, sink_port, generation=1)
        written = time.perf_counter()
        worst, count, seen_at = 0.0, 0, None
        deadline = written + timeout
        while time.perf_counter() < deadline:
            worst = max(worst, session.noop())
            count += 1
            if seen_at is None and count % 20 == 0 and reloads_logged(log) > already:
                seen_at = time.perf_counter()
            if seen_at is not None and time.perf_counter() - seen_at > AFTER_RELOAD:
                break
        if seen_at is None:
            raise RuntimeError(f"no mapping_reloaded logged within {timeout:.0f}s of the rewrite")
        return {"stall_ms": worst * 1000, "baseline_ms": before * 1000, "noops": count,
                "reload_s": seen_at - written, "write_s": written - rewrite_start}
    finally:
        session.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "load":
        _load_here(sys.argv[2])
    else:
        sys.exit("usage: tables.py load PATH")
