"""Run Willi as a real process for integration tests.

`WilliProcess` writes the WILLI_* settings to an env file, starts
`python willi.py --config FILE` with stdout/stderr going to files (never pipes:
a chatty Willi must not block on a full pipe), and is ready only once every
`WILLI_LISTEN` address greets with `220`. It is stopped by PID: SIGTERM, a
deadline, then SIGKILL. WILLI_* variables of the test runner's own environment
are not passed on, because real environment variables override the file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Self

from .net import SmtpRawClient, free_port, greets, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
WILLI_SCRIPT = REPO_ROOT / "willi.py"
_LOGFMT = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_./:,@+\-\[\]%*]*")


def write_env_file(path: Path, env: Mapping[str, str]) -> Path:
    """KEY=value lines for python-dotenv; values quoted when needed."""
    lines = []
    for key, value in env.items():
        value = str(value)
        if not _SAFE_VALUE.fullmatch(value):
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{key}={value}\n")
    path.write_text("".join(lines))
    return path


def routed_env(tmp: Path, upstream_port: int | None = None, **keys: str) -> dict[str, str]:
    """A Willi on a free loopback port, named willi.test, routing a.test to
    127.0.0.1:`upstream_port` (a free port, nobody listening, when None) by a
    CSV table written into `tmp`; `keys` on top."""
    table = tmp / "upstreams.csv"
    port = free_port() if upstream_port is None else upstream_port
    table.write_text(f"pattern;server;tls_verify\na.test;127.0.0.1:{port};false\n")
    return {
        "WILLI_LISTEN": f"127.0.0.1:{free_port()}",
        "WILLI_HOSTNAME": "willi.test",
        "WILLI_MAPPING_1": f"csv:{table}",
        **keys,
    }


def child_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without WILLI_* (they would override the file), plus extra."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WILLI_")}
    environ.update(extra or {})
    return environ


def parse_listen(value: str) -> list[tuple[str, int]]:
    """`127.0.0.1:2525,[::1]:2526` -> [("127.0.0.1", 2525), ("::1", 2526)]."""
    addresses = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        host, _, port = item.rpartition(":")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def _connectable(host: str) -> str:
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def parse_log_line(line: str) -> dict[str, str]:
    """One logfmt (or JSON) line as a dict; `_raw` holds the line itself."""
    line = line.rstrip("\n")
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            record = {}
        if isinstance(record, dict):
            return {**record, "_raw": line}
    record = {"_raw": line}
    for key, value in _LOGFMT.findall(line):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        record[key] = value
    return record


class WilliProcess:
    """A running Willi; `with WilliProcess(env, tmp_path) as willi: ...`."""

    _instances = 0

    def __init__(
        self,
        env: Mapping[str, str],
        tmp_path: Path | str,
        *,
        script: Path | str | None = None,
        args: tuple[str, ...] | list[str] = (),
        environ: Mapping[str, str] | None = None,
        start_timeout: float = 10.0,
        wait_ready: bool = True,
    ) -> None:
        WilliProcess._instances += 1
        self.env = dict(env)
        self.tmp_path = Path(tmp_path)
        self.script = Path(script) if script else WILLI_SCRIPT
        self.args = list(args)
        self.environ = dict(environ or {})
        self.start_timeout = start_timeout
        self.wait_ready = wait_ready
        name = f"willi-{WilliProcess._instances}"
        self.env_file = self.tmp_path / f"{name}.env"
        self.stdout_path = self.tmp_path / f"{name}.stdout"
        self.stderr_path = self.tmp_path / f"{name}.stderr"
        self.listen = parse_listen(self.env.get("WILLI_LISTEN", ""))
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "WilliProcess":
        return self._launch([sys.executable, str(self.script), "--config", str(self.env_file), *self.args])

    def _launch(self, command: list[str], cwd: Path = REPO_ROOT, pass_fds: tuple[int, ...] = ()) -> Self:
        """Write the env file, run `command`, wait for the greeting (unless
        told not to); a subclass that starts Willi another way calls this."""
        write_env_file(self.env_file, self.env)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                command,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=child_environ(self.environ),
                pass_fds=pass_fds,
            )
        if self.wait_ready:
            try:
                self.wait_until_ready(self.start_timeout)
            except BaseException:
                self.stop()
                raise
        return self

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Every WILLI_LISTEN address accepts and greets with 220."""
        deadline = time.monotonic() + timeout
        for host, port in self.listen:
            remaining = max(deadline - time.monotonic(), 0.0)
            wait_until(
                lambda: self._alive_or_raise() and greets(_connectable(host), port),
                remaining,
                0.02,
                f"Willi to greet on {host}:{port}; output:\n{self.output()}",
            )

    def _alive_or_raise(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"Willi exited early with {self.process.returncode}:\n{self.output()}"
            )
        return True

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return self.returncode
        process = self.process
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
        self.returncode = process.wait(timeout)
        self.process = None
        return self.returncode

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for Willi to exit on its own (after a signal you sent)."""
        assert self.process is not None
        self.returncode = self.process.wait(timeout)
        return self.returncode

    def __enter__(self) -> "WilliProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def port(self) -> int:
        return self.listen[0][1]

    @property
    def host(self) -> str:
        return _connectable(self.listen[0][0])

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def children(self) -> list[int]:
        """PIDs of direct children (WILLI_WORKERS > 1)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def rss_kib(self, include_children: bool = False) -> int:
        pids = [self.pid, *(self.children() if include_children else [])]
        return sum(_vmrss_kib(pid) for pid in pids)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return f"--- stdout ---\n{self.stdout()}--- stderr ---\n{self.stderr()}"

    def log_lines(self) -> list[dict[str, str]]:
        """stdout as logfmt (or JSON) records; the last, partial line skipped."""
        text = self.stdout()
        complete = text[: text.rfind("\n") + 1]
        return [parse_log_line(line) for line in complete.splitlines() if line.strip()]

    def wait_for_log(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float = 10.0
    ) -> dict[str, str]:
        """The first log record matching `predicate`, waiting up to `timeout`."""

        def find() -> dict[str, str] | None:
            return next((r for r in self.log_lines() if predicate(r)), None)

        return wait_until(find, timeout, 0.02, f"a log line matching {predicate!r}; output:\n{self.output()}")

    # -- one-shot CLI ----------------------------------------------------
    @staticmethod
    def run_cli(
        *args: str,
        env: Mapping[str, str] | None = None,
        tmp_path: Path | str | None = None,
        script: Path | str | None = None,
        environ: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess:
        """`python willi.py [--config FILE] ARGS` (e.g. --check, --lookup)."""
        with tempfile.TemporaryDirectory() as scratch:
            command = [sys.executable, str(script or WILLI_SCRIPT)]
            if env is not None:
                directory = Path(tmp_path) if tmp_path is not None else Path(scratch)
                env_file = write_env_file(directory / "willi-cli.env", env)
                command += ["--config", str(env_file)]
            return subprocess.run(
                [*command, *args],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=child_environ(environ),
            )


def _vmrss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_session(willi: "WilliProcess") -> SmtpRawClient:
    """A raw client connected to Willi, greeted, EHLO said."""
    client = SmtpRawClient(willi.host, willi.port, timeout=5.0)
    try:
        assert client.read_reply().code == 220
        assert client.command("EHLO client.test").code == 250
    except BaseException:
        client.close()
        raise
    return client
