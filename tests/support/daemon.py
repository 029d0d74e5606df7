"""A real mail daemon run in the foreground as a child of the test, in a
directory of its own: what Postfix and Dovecot share (start it with its output
in a file, wait until it is ready or dead, reap it with a bound, read its logs
and the maildir it delivered into)."""

from __future__ import annotations

import email
import email.message
import email.policy
import subprocess
from pathlib import Path
from typing import IO, Callable

from .net import wait_until


def launch(command: list[str], output: Path) -> tuple[subprocess.Popen, IO[bytes]]:
    """Start `command` with stdout and stderr into `output`; the caller closes the file."""
    out = open(output, "wb")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    return process, out


def wait_started(process: subprocess.Popen, ready: Callable[[], bool], timeout: float,
                 name: str, log: Callable[[], str]) -> None:
    """Wait until `ready()` or the process died; a dead one is a RuntimeError with its log."""
    wait_until(lambda: process.poll() is not None or ready(), timeout=timeout, message=f"{name} listening")
    if process.poll() is not None:
        raise RuntimeError(f"{name} did not start: {log()}")


def reap(process: subprocess.Popen) -> None:
    """Wait for a process asked to stop; kill it if it will not."""
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def read_logs(*paths: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in paths if p.exists())


def maildir_messages(new: Path) -> list[email.message.EmailMessage]:
    """The messages in a maildir's new/ directory, oldest first."""
    if not new.is_dir():
        return []
    files = sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in files]
