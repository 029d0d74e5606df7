"""Who is listening on a TCP port, from /proc, for the bind error message.

"Address already in use" names neither the address nor the culprit; Linux
says who in two steps: /proc/net/tcp{,6} maps a listening port to a socket
inode, and /proc/<pid>/fd maps the inode to the processes holding it. Only
processes Willi may look into are found (all of them as root, the user's own
otherwise), so the answer is a hint: None when /proc does not tell.
Called once, on a failed start; never on the reactor.
"""

from __future__ import annotations

import os
from pathlib import Path

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
MAX_PIDS_SHOWN = 3


def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[str]:
    """Inodes of sockets listening on `port`, any address, IPv4 or IPv6."""
    inodes: set[str] = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == LISTEN and int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(fields[9])
    return inodes


def holders(inodes: set[str], proc: Path = Path("/proc")) -> list[tuple[int, str]]:
    """(pid, command line) of the processes holding any of `inodes`, by pid."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found: list[tuple[int, str]] = []
    if not wanted:
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:
            continue  # gone, or not ours to look at
        if links & wanted:
            found.append((int(entry.name), _command(entry)))
    return sorted(found)


def _command(entry: Path) -> str:
    try:
        argv = (entry / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return "?"
    text = " ".join(" ".join(part.decode("utf-8", "replace") for part in argv).split())
    return text if len(text) <= 80 else text[:77] + "..."


def describe_owner(port: int, proc: Path = Path("/proc")) -> str | None:
    """`pid 123 (python3 willi.py)`, or None when /proc does not say."""
    found = holders(listening_inodes(port, proc), proc)
    if not found:
        return None
    shown = ", ".join(f"pid {pid} ({command})" for pid, command in found[:MAX_PIDS_SHOWN])
    more = len(found) - MAX_PIDS_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")
