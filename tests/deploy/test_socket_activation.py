"""systemd socket activation (issue 13 item 3, optional): Willi serves on the
listening socket it inherits as fd 3, and a restart refuses nobody.

The test plays systemd: it opens the listening socket, keeps it, and starts
each Willi the way systemd does (fd 3, LISTEN_FDS=1, LISTEN_PID = the pid of
the process that will run Willi, set by a tiny exec wrapper). Between the
two Willis a client connects: the kernel queues it in the backlog, and the
second Willi greets it.
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.net import LOOPBACK_V4, SmtpRawClient, free_port, port_accepts
from tests.support.upstream import ScriptableUpstream
from tests.support.willi_process import WILLI_SCRIPT, WilliProcess
from willi.activation import listen_sockets

# What systemd does between fork and exec: fd 3, and LISTEN_PID naming this process.
EXEC_AS_SYSTEMD = (
    "import os, sys; fd = int(sys.argv[1]); fd != 3 and (os.dup2(fd, 3), os.close(fd)); "
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


class ActivatedWilli(WilliProcess):
    """A WilliProcess started with `listener` as its fd 3."""

    def __init__(self, listener: socket.socket, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.listener = listener
        self.listen = [listener.getsockname()[:2]]

    def start(self) -> "ActivatedWilli":
        return self._launch([sys.executable, "-c", EXEC_AS_SYSTEMD, str(self.listener.fileno()),
                             str(WILLI_SCRIPT), "--config", str(self.env_file)],
                            pass_fds=(self.listener.fileno(),))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK_V4, 0))
    sock.listen(64)
    try:
        yield sock
    finally:
        sock.close()


def test_no_variables_means_no_inherited_sockets() -> None:
    assert listen_sockets({}, 1234) == []
    assert listen_sockets({"LISTEN_PID": "1", "LISTEN_FDS": "2"}, 1234) == []  # meant for another process


def test_a_restart_under_socket_activation_refuses_no_connection(
    listener: socket.socket, tmp_path: Path
) -> None:
    unused = free_port()
    with ScriptableUpstream() as upstream:
        env = {"WILLI_LISTEN": f"{LOOPBACK_V4}:{unused}", "WILLI_HOSTNAME": "willi.test",
               "WILLI_MAPPING_1": f"static:{upstream.address}", "WILLI_SHUTDOWN_TIMEOUT": "2s"}
        first = ActivatedWilli(listener, env, tmp_path)
        with first:
            [line] = [r for r in first.log_lines() if r.get("event") == "listening"]
            assert line["address"] == "%s:%d" % listener.getsockname()
            assert line["activated"] == "systemd"
            assert not port_accepts(LOOPBACK_V4, unused)  # WILLI_LISTEN was not bound
            first.signal(signal.SIGTERM)
            assert first.wait(10.0) == 0, first.output()

        # nobody serves now, yet the port takes the connection into its backlog
        with SmtpRawClient(*listener.getsockname()) as waiting:
            with ActivatedWilli(listener, env, tmp_path) as second:
                assert waiting.read_reply(10.0).code == 220
                assert waiting.command("EHLO client.test").code == 250
                assert waiting.command("MAIL FROM:<a@client.test>").code == 250
                assert waiting.command("RCPT TO:<user@example.org>").code == 250
                assert waiting.command("DATA").code == 354
                waiting.send(b"Subject: queued in the backlog\r\n\r\nhi\r\n.\r\n")
                assert waiting.read_reply().code == 250
                assert waiting.command("QUIT").code == 221
                assert second.process.poll() is None
        [message] = upstream.wait_for_messages(1)
    assert message.body == b"Subject: queued in the backlog\r\n\r\nhi\r\n"
