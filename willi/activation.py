"""systemd socket activation (sd_listen_fds(3)): listening sockets handed over.

With a `willi.socket` unit, systemd opens the listening sockets itself and
passes them to Willi as file descriptors 3, 4, ... (`LISTEN_FDS` of them,
meant for the process whose pid is `LISTEN_PID`). systemd keeps its own
copy across a restart, so while one Willi drains and the next starts, the
kernel queues new connections in the backlog instead of refusing them: a
restart refuses nobody. Without those variables nothing is inherited and
Willi binds WILLI_LISTEN itself.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping

from willi.errors import ConfigError

SD_LISTEN_FDS_START = 3


def listen_sockets(environ: Mapping[str, str], pid: int) -> list[socket.socket]:
    """The sockets systemd passed to process `pid`, non-blocking; [] if none.

    Raises ConfigError when the variables are set for us but do not describe
    listening TCP sockets (a .socket unit with ListenDatagram=, say).
    """
    if environ.get("LISTEN_PID", "") != str(pid):
        return []
    text = environ.get("LISTEN_FDS", "")
    if not text.isascii() or not text.isdigit():
        raise ConfigError("LISTEN_FDS", text, "the number of sockets systemd passed")
    sockets: list[socket.socket] = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(text)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            raise ConfigError("LISTEN_FDS", text, f"open sockets from fd 3 (fd {fd} is not one)") from None
        if (sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6)
                or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
            sock.detach()  # not ours to close
            raise ConfigError("LISTEN_FDS", text, f"listening TCP sockets (fd {fd} is not one)")
        os.set_inheritable(fd, False)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets
