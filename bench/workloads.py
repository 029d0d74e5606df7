"""The workloads, and one run of one workload against one configuration.

A run is: a fresh sink, a fresh proxy, the load (bounded in count and time),
the checks, and both stopped again by PID whatever happened. A run passes only
when every load generator exited 0 (smtp-source exits non-zero on any reply
that is not the expected 2xx/354, or a lost connection), the sink counted
exactly the number of messages sent, and the proxy is still running. Anything
else is a FAILED run with its reason, and never enters a median.

W2 needs 10 messages per connection, which smtp-source cannot be told
directly: `-d` keeps a session's connection for all of that process's
messages. So W2 runs 2 lanes side by side, each a sequence of
`smtp-source -d -s 25 -m 250`: 50 sessions in flight, 10 messages per
connection on average (25 connections share 250 messages). Fewer, larger
lanes keep smtp-source's start-up (about 5 ms of CPU per process) small next
to the load: 80 processes for 20,000 messages.
"""

from __future__ import annotations

import math
import os
import select
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import procs
import setups
from procs import Proc, Registry

SOURCE_HELO = "source.bench.test"
SENDER = "sender@source.bench.test"
RECIPIENT = f"rcpt@{setups.RCPT_DOMAIN}"


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    kind: str  # "smtp", "idle" or "skip"
    size: int = 0  # payload bytes per message
    sessions: int = 0  # sessions in parallel
    messages: int = 0  # at BENCH_SCALE=1
    per_conn: int = 1  # messages per connection
    lane_sessions: int = 0  # W2: sessions per smtp-source process
    idle: int = 0  # W4: idle sessions at BENCH_SCALE=1
    reason: str = ""  # why a "skip" workload is skipped
    tls: bool = False  # W5: STARTTLS on both sides (bench/tlsrelay.py at each end)
    mapping: str = "csv"  # W6: "mysql", a mysql:// mapping on the benchmark's MariaDB
    distinct: bool = False  # W6: smtp-source -N, a different recipient for every message
    rows: int = 0  # W7: rows of the csv: table at BENCH_SCALE=1

    @property
    def unit(self) -> str:
        return {"smtp": "MB/s" if self.size >= 1 << 20 else "msg/s", "idle": "kB/session",
                "table": "ms stall"}.get(self.kind, "")

    def count(self, scale: float) -> int:
        """Messages (or idle sessions) at this scale, rounded to what the load can split."""
        if self.kind == "idle":
            return max(20, round(self.idle * scale))
        if self.kind == "table":
            return max(100, round(self.rows * scale))
        chunk = self.sessions * self.per_conn
        return max(chunk, round(self.messages * scale / chunk) * chunk)


WORKLOADS = [
    Workload("W1", "2 KB messages, 1 recipient, 50 parallel sessions, a new connection per message",
             "smtp", size=2000, sessions=50, messages=20000),
    Workload("W2", "2 KB messages, 1 recipient, 50 parallel sessions, 10 messages per connection",
             "smtp", size=2000, sessions=50, messages=20000, per_conn=10, lane_sessions=25),
    Workload("W3", "10 MiB messages, 1 recipient, 4 parallel sessions, a new connection per message",
             "smtp", size=10 * 1024 * 1024, sessions=4, messages=100),
    Workload("W4-2000", "2,000 idle sessions (greeting + EHLO, then idle): proxy memory per session",
             "idle", idle=2000),
    Workload("W4-9000", "9,000 idle sessions (greeting + EHLO, then idle): proxy memory per session",
             "idle", idle=9000),
    Workload("W5-W1", "W1 with STARTTLS on both sides: 2 KB messages, 50 parallel sessions, "
             "a new connection (and TLS handshake) per message", "smtp", size=2000, sessions=50,
             messages=5000, tls=True),
    Workload("W5-W3", "W3 with STARTTLS on both sides: 10 MiB messages, 4 parallel sessions, "
             "a new connection per message", "smtp", size=10 * 1024 * 1024, sessions=4,
             messages=32, tls=True),
    Workload("W6-cached", "W1 with a mysql:// mapping on MariaDB, every recipient the same "
             "(answered from Willi's cache)", "smtp", size=2000, sessions=50, messages=10000,
             mapping="mysql"),
    Workload("W6-distinct", "W1 with a mysql:// mapping on MariaDB, every recipient different "
             "(each a cache miss: a query in the worker pool)", "smtp", size=2000, sessions=50,
             messages=10000, mapping="mysql", distinct=True),
    Workload("W7-10k", "a csv: table of 10,000 rows: load, memory, and the stall while it is re-read",
             "table", rows=10_000),
    Workload("W7-100k", "a csv: table of 100,000 rows: load, memory, and the stall while it is re-read",
             "table", rows=100_000),
    Workload("W7-1M", "a csv: table of 1,000,000 rows: load, memory, and the stall while it is re-read",
             "table", rows=1_000_000),
]


@dataclass
class Result:
    workload: str
    setup: str
    run: int
    unit: str = ""
    ok: bool = False
    error: str = ""
    count: int = 0  # messages sent (or idle sessions asked for)
    bytes: int = 0
    wall: float = 0.0
    rate: float = 0.0  # msg/s, MB/s or kB/session
    proxy_cpu: float = 0.0
    sink_cpu: float = 0.0
    source_cpu: float = 0.0
    tls_cpu: float = 0.0  # W5: the tlsrelay processes at both ends (not the proxy's)
    busy_procs: float = 0.0  # share of all cores: (proxy+sink+source CPU) / wall / cores
    busy_host: float = 0.0  # share of all cores from /proc/stat
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    hwm_kb: int = 0
    sink_count: int = 0
    log_problems: int = 0
    log_excerpt: list[str] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)  # W7: load_s, bytes_per_row, ...

    @property
    def busy_other(self) -> float:
        """Share of the cores busy with everything else on the machine."""
        return max(0.0, self.busy_host - self.busy_procs)

    @property
    def cpu_per_unit(self) -> float:
        """Proxy CPU: ms per message (= s per 1,000), or s per GB for W3."""
        if not self.count or not self.proxy_cpu:
            return 0.0
        if self.unit == "MB/s":
            return self.proxy_cpu / (self.bytes / 1e9)
        return self.proxy_cpu * 1000 / self.count


# --- the load: lanes of smtp-source -----------------------------------------------
def source_argv(port: int, sessions: int, messages: int, size: int, keep: bool,
                distinct: bool = False) -> list[str]:
    argv = [procs.tool("smtp-source"), "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-M", SOURCE_HELO, "-f", SENDER, "-t", RECIPIENT]
    if keep:
        argv.append("-d")
    if distinct:
        argv.append("-N")  # 1rcpt@bench.test, 2rcpt@bench.test, ...
    return argv + [f"127.0.0.1:{port}"]


def plan(wl: Workload, port: int, count: int) -> list[list[list[str]]]:
    """Lanes of smtp-source commands; the lanes run side by side, each in order."""
    if wl.per_conn == 1:
        return [[source_argv(port, wl.sessions, count, wl.size, False, wl.distinct)]]
    lanes = wl.sessions // wl.lane_sessions
    per_call = wl.lane_sessions * wl.per_conn
    calls = math.ceil(count / (lanes * per_call))
    argv = source_argv(port, wl.lane_sessions, per_call, wl.size, True)
    return [[argv] * calls for _ in range(lanes)]


def run_lanes(registry: Registry, lanes: list[list[list[str]]], log: Path,
              deadline: float) -> tuple[str, float]:
    """Run the lanes; returns (error or "", CPU seconds of all smtp-source processes)."""
    todo = [list(lane) for lane in lanes]
    active: dict[int, tuple[int, Proc]] = {}
    cpu, error = 0.0, ""

    def launch(lane: int) -> None:
        proc = registry.start("smtp-source", todo[lane].pop(0), log)
        active[os.pidfd_open(proc.pid)] = (lane, proc)

    try:
        for lane in range(len(todo)):
            launch(lane)
        while active and not error:
            left = deadline - time.monotonic()
            if left <= 0:
                error = "timeout: the load did not finish in time"
                break
            ready, _, _ = select.select(list(active), [], [], left)
            for fd in ready:
                lane, proc = active.pop(fd)
                os.close(fd)
                procs.reap(proc)
                registry.procs.remove(proc)
                cpu += proc.rusage.ru_utime + proc.rusage.ru_stime
                if proc.popen.returncode != 0:
                    error = f"smtp-source exited {proc.popen.returncode}"
                elif todo[lane]:
                    launch(lane)
    finally:
        for fd, (_, proc) in active.items():
            os.close(fd)
            registry.stop(proc, grace=0.5)
    return error, cpu


def wait_sink(sink: Proc, expected: int, seconds: float = 5.0) -> int:
    """The sink's count once it reaches `expected` (or stops moving, or time is up)."""
    deadline = time.monotonic() + seconds
    count = setups.sink_count(sink)
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        count = setups.sink_count(sink)
    return count


def measure_smtp(registry: Registry, wl: Workload, running: setups.Running, sink: Proc,
                 res: Result, scale: float, timeout: float, rundir: Path,
                 port: int | None = None, helpers: list[Proc] | None = None) -> None:
    """The load against `port` (the proxy's, or W5's client-side tlsrelay in front of it)."""
    res.count = wl.count(scale)
    res.bytes = res.count * wl.size
    helpers = helpers or []
    lanes = plan(wl, port or running.port, res.count)
    res.commands["load"] = (f"{len(lanes)} lane(s) side by side, each {len(lanes[0])}x: "
                            if len(lanes) > 1 or len(lanes[0]) > 1 else "") + shlex.join(lanes[0][0])
    cpu0, sink0, host0 = running.cpu(), sink.cpu(), procs.host_cpu()
    tls0 = sum(h.cpu() for h in helpers)
    start = time.monotonic()
    error, res.source_cpu = run_lanes(registry, lanes, rundir / "source.log", start + timeout)
    res.wall = time.monotonic() - start
    res.proxy_cpu, res.sink_cpu = running.cpu() - cpu0, sink.cpu() - sink0
    res.tls_cpu = sum(h.cpu() for h in helpers) - tls0
    host1 = procs.host_cpu()
    res.sink_count = wait_sink(sink, res.count if not error else 0, 5.0 if not error else 0.5)
    cores = os.cpu_count() or 1
    res.busy_procs = (res.proxy_cpu + res.sink_cpu + res.source_cpu + res.tls_cpu) / res.wall / cores
    res.busy_host = (host1[0] - host0[0]) / max(1, host1[1] - host0[1])
    res.hwm_kb = procs.status_kb(running.pids(), "VmHWM")
    if not error and res.sink_count != res.count:
        error = f"the sink counted {res.sink_count} of {res.count} messages"
    if error:
        tail = (rundir / "source.log").read_text(errors="replace").strip().splitlines()[-3:]
        res.error = error + (": " + " | ".join(tail) if tail else "")
        return
    per_second = res.count / res.wall
    res.rate = res.bytes / 1e6 / res.wall if wl.unit == "MB/s" else per_second
    res.ok = True


# --- the load: idle sessions ------------------------------------------------------------
def read_line(proc: Proc, deadline: float) -> str:
    stream = proc.popen.stdout
    assert stream is not None
    left = deadline - time.monotonic()
    if left <= 0 or not select.select([stream], [], [], left)[0]:
        return ""
    return stream.readline().decode(errors="replace").strip()


def measure_idle(registry: Registry, wl: Workload, running: setups.Running, sink: Proc,
                 res: Result, scale: float, timeout: float, rundir: Path, python: str) -> None:
    res.count = n = wl.count(scale)
    time.sleep(0.3)
    pids = running.pids()
    res.rss_before_kb = procs.status_kb(pids)
    argv = [python, str(setups.BENCH / "idle.py"), "127.0.0.1", str(running.port), str(n),
            "--deadline", str(timeout), "--hold", str(timeout)]
    res.commands["load"] = shlex.join(argv)
    start = time.monotonic()
    client = registry.start("idle", argv, rundir / "idle.log", stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        ready = read_line(client, start + timeout + 5)
        res.wall = time.monotonic() - start
        time.sleep(1.0)  # let the proxy finish whatever the last EHLO started
        pids = running.pids()
        res.rss_after_kb = procs.status_kb(pids)
        res.hwm_kb = procs.status_kb(pids, "VmHWM")
        assert client.popen.stdin is not None
        client.popen.stdin.close()
        done = read_line(client, time.monotonic() + 10)
    finally:
        registry.stop(client, grace=5)
    fields = dict(part.split("=", 1) for part in (ready + " " + done).split() if "=" in part)
    if not ready.startswith("READY"):
        res.error = f"the idle client did not report (got {ready!r}): {client.log_tail(3)}"
    elif int(fields.get("ok", 0)) != n:
        res.error = f"{fields.get('ok')} of {n} sessions reached idle ({fields.get('failed')} failed)"
    elif int(fields.get("dropped", 0)):
        res.error = f"the proxy dropped {fields['dropped']} idle sessions"
    elif not running.proc or not running.proc.alive():
        res.error = "the proxy died"
    else:
        res.rate = (res.rss_after_kb - res.rss_before_kb) / n
        res.ok = True


# --- W7: a routing table re-read under a session ------------------------------------------
def measure_table(registry: Registry, wl: Workload, running: setups.Running, sink: Proc,
                  res: Result, scale: float, timeout: float, rundir: Path, python: str,
                  sink_port: int) -> None:
    """Load time and bytes per row (a child interpreter), then the stall a session sees."""
    import tables

    res.count = wl.count(scale)
    table = rundir / "table.csv"
    res.commands["load"] = (f"{res.count:,} rows in {table.name}; `tables.py load` for the load; "
                            f"NOOP round trips on one session while the file is rewritten")
    res.extra.update(tables.measure_load(python, table, setups.REPO))
    assert running.proc is not None and running.proc.log is not None
    res.extra.update(tables.measure_stall(running.port, running.proc.log, table, res.count,
                                          sink_port, timeout))
    pids = running.pids()
    res.rss_after_kb = procs.status_kb(pids)
    res.hwm_kb = procs.status_kb(pids, "VmHWM")
    res.rate = res.extra["stall_ms"]
    res.ok = True
