"""Processes the benchmark starts, and what /proc says about them.

Every process is started in a session of its own (so a Ctrl-C in the terminal
reaches only the driver, whose `finally` then stops them), is remembered by
PID in a `Registry`, and is stopped by PID: SIGTERM, a short wait, then SIGKILL
for it and every descendant seen. No process is ever looked up by name.

CPU time comes from /proc/PID/stat (utime + stime, clock ticks; for a process
that is the sum over its threads), memory from /proc/PID/status (VmRSS,
VmHWM, in the kernel's kB of 1024 bytes). A load generator that has exited is
measured by `os.wait4`'s rusage instead.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Sequence

TICK = os.sysconf("SC_CLK_TCK")


def tool(name: str) -> str:
    """A program's path; Postfix, haproxy and nginx live in /usr/sbin."""
    found = shutil.which(name) or next(
        (str(Path(d, name)) for d in ("/usr/sbin", "/sbin") if Path(d, name).exists()), None
    )
    if found is None:
        raise SystemExit(f"bench: {name} not found (make bench installs it)")
    return found


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- /proc -------------------------------------------------------------------
def children_of(pid: int) -> list[int]:
    """Every descendant of pid, found through /proc/*/stat's ppid."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree(pid: int, skip_comm: Iterable[str] = ()) -> list[int]:
    """pid and its descendants, less those whose comm is in skip_comm."""
    skip = set(skip_comm)
    return [p for p in [pid, *children_of(pid)] if comm(p) not in skip]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of these processes, in seconds (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / TICK


def status_kb(pids: Iterable[int], key: str = "VmRSS") -> int:
    """Sum of one /proc/PID/status field (kB of 1024 bytes)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user
    return total - idle, total


# --- starting and stopping ------------------------------------------------------
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path | None
    skip_comm: tuple[str, ...] = ()
    rusage: resource.struct_rusage | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        return tree(self.pid, self.skip_comm) if self.alive() else []

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def log_tail(self, lines: int = 20) -> str:
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").replace("\r", "\n")
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Registry:
    """Everything started, so that `stop_all` can end it by PID."""

    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log: Path | None,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | IO | None = None,
        skip_comm: tuple[str, ...] = (),
    ) -> Proc:
        out = open(log, "ab") if log is not None else subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                list(argv), stdin=stdin, stdout=stdout if stdout is not None else out,
                stderr=out, env=env, cwd=cwd, start_new_session=True,
            )
        finally:
            if log is not None:
                out.close()
        proc = Proc(name, popen, log, skip_comm)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 5.0) -> None:
        """SIGTERM to the process, then SIGKILL to whatever of its tree is left."""
        family = [proc.pid, *children_of(proc.pid)] if proc.alive() else []
        _signal(family[:1], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while proc.popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        leftover = [p for p in family if _exists(p)]
        _signal(leftover, signal.SIGKILL)
        try:
            proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if proc.popen.stdin:
            proc.popen.stdin.close()
        if proc.popen.stdout:
            proc.popen.stdout.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc, grace=2.0)


def _exists(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# --- reaping a short-lived process ------------------------------------------------
def reap(proc: Proc) -> None:
    """wait4 the exited process, keeping its rusage and exit status."""
    pid, status, usage = os.wait4(proc.pid, 0)
    proc.rusage = usage
    proc.popen.returncode = os.waitstatus_to_exitcode(status)
