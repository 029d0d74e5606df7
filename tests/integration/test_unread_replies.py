"""A client that never reads its replies, through a live Willi (SPEC §2, §7).

When such a client times out, its last reply (421) gets the client timeout
to be read, then its socket is reset: a client that never reads cannot keep
a socket (and the file descriptor and connection slot it holds) for ever.
How far Willi answers ahead of a client that does not read is shown on a
Session in tests/test_session_flow.py.
"""

from __future__ import annotations

import os
import socket

from tests.support.net import wait_until

EHLO = b"EHLO client.test\r\n"


def unread_client(willi, rcvbuf: int = 4096) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # fills at once
    sock.connect((willi.host, willi.port))
    return sock


def open_fds(willi) -> int:
    return len(os.listdir(f"/proc/{willi.pid}/fd"))


def test_a_client_that_never_reads_its_last_reply_does_not_keep_its_socket(launch):
    willi = launch.willi({"WILLI_MAPPING_1": "static:127.0.0.1:1", "WILLI_CLIENT_TIMEOUT": "1s",
                          "WILLI_STRESS_CLIENT_TIMEOUT": "1s"})
    baseline = open_fds(willi)
    clients = [unread_client(willi) for _ in range(3)]
    for sock in clients:
        sock.setblocking(False)
        try:
            while True:
                sock.send(EHLO * 1000)  # until its buffers and Willi's are full
        except BlockingIOError:
            pass
    def timed_out() -> int:
        return len([r for r in willi.log_lines()
                    if r.get("event") == "disconnect" and "deadline" in r.get("reason", "")])

    wait_until(lambda: timed_out() == 3, 10, 0.05, "three client timeouts")
    # Their 421 cannot be sent: after the client timeout once more, the sockets are gone,
    # while the clients still hold theirs open.
    wait_until(lambda: open_fds(willi) <= baseline, 10, 0.05, lambda: f"fds back to {baseline}: {open_fds(willi)}")
    for sock in clients:
        sock.close()
