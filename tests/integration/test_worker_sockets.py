"""WILLI_WORKERS=N processes share the sockets their parent opened (issue 13
item 6): on SIGTERM the port refuses at once even while a worker still
finishes a body in flight, because the parent closes its own copies too."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.support.net import SmtpRawClient, free_port, port_refuses, wait_until
from tests.support.upstream import ScriptableUpstream
from tests.support.willi_process import WilliProcess


def test_with_two_workers_sigterm_closes_the_port_at_once_and_the_body_in_flight_finishes(tmp_path: Path) -> None:
    with ScriptableUpstream() as upstream:
        env = {"WILLI_LISTEN": f"127.0.0.1:{free_port()}", "WILLI_HOSTNAME": "willi.test",
               "WILLI_MAPPING_1": f"static:{upstream.address}", "WILLI_WORKERS": "2",
               "WILLI_SHUTDOWN_TIMEOUT": "20s"}
        with WilliProcess(env, tmp_path) as willi, SmtpRawClient(willi.host, willi.port) as client:
            wait_until(lambda: len(willi.children()) == 2, 5.0, message="two worker processes")
            assert client.read_reply().code == 220
            assert client.command("EHLO client.example").code == 250
            assert client.command("MAIL FROM:<s@origin.test>").code == 250
            assert client.command("RCPT TO:<r@a.test>").code == 250
            assert client.command("DATA").code == 354
            client.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
            wait_until(lambda: upstream.body_bytes_received > 0, 5.0, message="the body under way")

            signalled = time.monotonic()
            willi.signal(signal.SIGTERM)
            wait_until(lambda: port_refuses(willi.host, willi.port), 2.0, 0.01, "the listening port to refuse")
            assert time.monotonic() - signalled < 2.0
            assert willi.process is not None and willi.process.poll() is None, "a worker is still draining"

            client.send(b"second half\r\n.\r\n")
            assert client.read_reply().code == 250
            assert willi.wait(10.0) == 0, willi.output()
        [message] = upstream.messages
        assert message.body.endswith(b"first half\r\nsecond half\r\n")
