"""Postfix's `smtp-sink` as an upstream: a fast, independent SMTP server.

smtp-sink is a third implementation (besides our ScriptableUpstream and
aiosmtpd) and the one operators know; it answers XCLIENT with `250`. It runs
as a subprocess on 127.0.0.1:<free port>, dumps each message to its own file
(`-d`) and prints counters (`-c`) that tell when a message is complete.
Dump files are written with LF line endings and dot-stuffing removed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .net import LOOPBACK_V4, free_port, wait_until

SMTP_SINK_PATHS = ("/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink")
_COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")


def find_smtp_sink(install: bool = True) -> str:
    """Path of smtp-sink; installs Debian's postfix package when missing."""
    for path in (shutil.which("smtp-sink"), *SMTP_SINK_PATHS):
        if path and os.access(path, os.X_OK):
            return path
    if not install:
        raise FileNotFoundError("smtp-sink not found")
    subprocess.run(
        "echo 'postfix postfix/main_mailer_type select No configuration' "
        "| debconf-set-selections && DEBIAN_FRONTEND=noninteractive "
        "apt-get install -y postfix",
        shell=True,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return find_smtp_sink(install=False)


@dataclass
class SinkMessage:
    """One dump file: smtp-sink's X- headers, then the message (LF endings)."""

    path: Path
    client_addr: str
    proto: str
    helo: str | None
    mail_args: str
    rcpt_args: list[str]
    content: bytes  # the message as received, LF line endings, un-stuffed

    @property
    def content_crlf(self) -> bytes:
        return self.content.replace(b"\n", b"\r\n")

    @classmethod
    def parse(cls, path: Path) -> "SinkMessage":
        data = path.read_bytes()
        fields: dict[str, list[str]] = {}
        rest = data
        while not rest.startswith(b"Received:"):
            line, _, rest = rest.partition(b"\n")
            name, _, value = line.decode("latin-1").partition(": ")
            fields.setdefault(name, []).append(value)
        for _ in range(3):  # smtp-sink's three-line Received: header
            _, _, rest = rest.partition(b"\n")
        return cls(
            path=path,
            client_addr=fields["X-Client-Addr"][0],
            proto=fields["X-Client-Proto"][0],
            helo=fields.get("X-Helo-Args", [None])[0],
            mail_args=fields["X-Mail-Args"][0],
            rcpt_args=fields.get("X-Rcpt-Args", []),
            content=rest[:-1] if rest.endswith(b"\n") else rest,  # dump adds one empty line
        )


class SmtpSink:
    """`smtp-sink -c -d DIR/msg. 127.0.0.1:PORT 256`, stopped by PID."""

    def __init__(
        self,
        tmp_path: Path | str,
        *,
        host: str = LOOPBACK_V4,
        port: int | None = None,
        hostname: str = "smtp-sink.test",
        dump: bool = True,
        extra_args: tuple[str, ...] | list[str] = (),
        start_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.hostname = hostname
        self.directory = Path(tmp_path) / f"smtp-sink-{self.port}"
        self.dump_dir = self.directory / "dump" if dump else None
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.output_path = self.directory / "smtp-sink.out"

    @property
    def command(self) -> list[str]:
        args = [find_smtp_sink(), "-c", "-h", self.hostname]
        if os.geteuid() == 0:
            args += ["-u", "root"]  # required when run by root
        if self.dump_dir is not None:
            args += ["-d", f"{self.dump_dir}/msg."]
        listen = f"[{self.host}]" if ":" in self.host else self.host
        return [*args, *self.extra_args, f"{listen}:{self.port}", "256"]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "SmtpSink":
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.dump_dir is not None:
            self.dump_dir.mkdir(exist_ok=True)
        with open(self.output_path, "wb") as out:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            wait_until(self._greets, self.start_timeout, 0.02, f"smtp-sink on {self.address}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"smtp-sink did not start: {self.output()!r}") from None
        return self

    def _greets(self) -> bool:
        """The port accepts and says 220 (the probe counts as one session)."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"smtp-sink exited: {self.output()!r}")
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                greeting = sock.recv(512)
                sock.sendall(b"QUIT\r\n")
                sock.recv(512)
        except OSError:
            return False
        return greeting.startswith(b"220")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by PID, wait; SIGKILL if it lingers. Returns the exit code."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
        return process.wait(timeout)

    def __enter__(self) -> "SmtpSink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- results ---------------------------------------------------------
    def output(self) -> bytes:
        return self.output_path.read_bytes() if self.output_path.exists() else b""

    def counters(self) -> dict[str, int]:
        """The last `sess= quit= mesg=` line smtp-sink printed (-c)."""
        found = _COUNTERS.findall(self.output())
        if not found:
            return {"sess": 0, "quit": 0, "mesg": 0}
        sess, quit_, mesg = found[-1]
        return {"sess": int(sess), "quit": int(quit_), "mesg": int(mesg)}

    def message_count(self) -> int:
        return self.counters()["mesg"]

    def messages(self) -> list[SinkMessage]:
        """Dumped messages, oldest first (a transaction in progress included)."""
        if self.dump_dir is None:
            raise AssertionError("SmtpSink started with dump=False")
        paths = sorted(self.dump_dir.glob("msg.*"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [SinkMessage.parse(p) for p in paths]

    def wait_for_messages(self, n: int, timeout: float = 10.0) -> list[SinkMessage]:
        """Wait until smtp-sink counted `n` messages and dumped them."""

        def done() -> bool:
            if self.message_count() < n:
                return False
            return self.dump_dir is None or len(list(self.dump_dir.glob("msg.*"))) >= n

        wait_until(done, timeout, 0.02, f"{n} messages in smtp-sink")
        return self.messages() if self.dump_dir is not None else []
