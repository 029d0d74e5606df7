"""One client cannot take Willi down (issue 9 item 1).

The reproduction from the issue: EHLO, MAIL, RCPT, then DATA with about
100 kB of body in one write and a TCP reset, while the upstream takes half a
second to answer DATA. When the 354 comes, writing it finds the client gone.
Willi must end that session alone: the upstream is aborted (never given a
dot, never given QUIT as message data), no traceback, and another client
connected all along finishes its message.
"""

from __future__ import annotations

import socket
import struct

from tests.support.net import SmtpRawClient, wait_until
from tests.support.upstream import Delay, ScriptableUpstream
from tests.support.willi_process import open_session

BODY = b"".join(b"line %05d of a long message body\r\n" % i for i in range(3000))  # ~100 kB


def slow_data(session, line: bytes):
    return Delay(0.5) if line.upper() == b"DATA" else None


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_client_reset_while_the_upstream_delays_its_354_ends_that_session_only(launch):
    upstream = launch.upstream(on_command=slow_data)
    willi = launch.willi({"WILLI_MAPPING_1": f"static:{upstream.address}"})
    bystander = open_session(willi)  # connected before, finishes after
    try:
        for attempt in range(3):  # the issue saw it one time in ten with small bodies; 100 kB always
            victim = SmtpRawClient(willi.host, willi.port)
            assert victim.read_reply().code == 220
            assert victim.command("EHLO client.test").code == 250
            assert victim.command("MAIL FROM:<victim@origin.test>").code == 250
            assert victim.command(f"RCPT TO:<v{attempt}@example.org>").code == 250
            victim.send(b"DATA\r\n" + BODY)
            reset(victim.sock)
            wait_until(lambda: len(upstream.sessions) > attempt and upstream.sessions[attempt].ended.is_set(),
                       5.0, 0.02, "the upstream connection of the reset client to end")
        assert bystander.command("MAIL FROM:<bystander@origin.test>").code == 250
        assert bystander.command("RCPT TO:<b@example.org>").code == 250
        assert bystander.command("DATA").code == 354
        bystander.send(b"Subject: still here\r\n\r\nhello\r\n")
        assert bystander.command(".").code == 250
    finally:
        bystander.close()
    delivered = upstream.wait_for_messages(1)
    assert [m.mail_from for m in delivered] == [b"bystander@origin.test"]
    assert upstream.aborted_bodies == 3  # each one dropped inside its body, no final dot
    # Not one byte of "QUIT\r\n" (or anything else) reached a victim's body.
    assert upstream.body_bytes_received == len(b"Subject: still here\r\n\r\nhello\r\n.\r\n")
    assert willi.process is not None and willi.process.poll() is None
    log = willi.output()
    assert "Traceback" not in log and "session_fault" not in log, log
