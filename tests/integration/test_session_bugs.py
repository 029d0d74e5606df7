"""Session bugs found when Willi was tried as a new user would (issue 8 item 6).

- A client that half-closes its socket after its last command (`nc -N`, a
  script piping into a socket) still gets every reply before Willi closes.
- After the upstream vanishes inside a transaction and the client has its
  4xx, the transaction is over: the next MAIL needs no RSET and routes afresh.
- A client stalled inside its TLS handshake is closed after the client idle
  timeout when that is shorter than WILLI_TLS_HANDSHAKE_TIMEOUT.
"""

from __future__ import annotations

import socket
import time

from tests.support.net import SmtpRawClient
from tests.support.upstream import FaultScript
from tests.support.willi_process import open_session

BODY = b"Subject: half-close\r\n\r\nhello\r\n"


def read_all(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes (bounded by `deadline`)."""
    sock.settimeout(0.2)
    data = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"still open after the deadline; got {data!r}")


def codes(data: bytes) -> list[bytes]:
    return [line[:3] for line in data.split(b"\r\n") if line[3:4] == b" "]


def test_a_half_closed_client_gets_every_reply_and_the_message_is_delivered_once(launch):
    upstream = launch.upstream()
    willi = launch.willi({"WILLI_MAPPING_1": f"static:{upstream.address}"})
    with socket.create_connection((willi.host, willi.port), timeout=5) as sock:
        sock.sendall(b"EHLO client.test\r\nMAIL FROM:<s@origin.test>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n"
                     + BODY + b".\r\nQUIT\r\n")
        sock.shutdown(socket.SHUT_WR)  # as nc -N does
        got = read_all(sock, time.monotonic() + 10)
    assert codes(got) == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"], got
    (message,) = upstream.wait_for_messages(1)
    assert message.body == BODY
    record = willi.wait_for_log(lambda r: r.get("event") == "transaction")
    assert record["code"] == "250" and "aborted" not in record


def test_a_half_close_without_quit_still_gets_the_final_reply(launch):
    upstream = launch.upstream(on_command=lambda s, line: None)
    willi = launch.willi({"WILLI_MAPPING_1": f"static:{upstream.address}"})
    with socket.create_connection((willi.host, willi.port), timeout=5) as sock:
        sock.sendall(b"EHLO client.test\r\nMAIL FROM:<s@origin.test>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n"
                     + BODY + b".\r\n")
        sock.shutdown(socket.SHUT_WR)
        got = read_all(sock, time.monotonic() + 10)
    assert codes(got) == [b"220", b"250", b"250", b"250", b"354", b"250"], got
    assert len(upstream.wait_for_messages(1)) == 1


def test_after_the_upstream_vanishes_the_next_mail_needs_no_rset_and_routes_afresh(launch):
    upstream = launch.upstream(faults=FaultScript(close_on="DATA", sessions={1}))
    willi = launch.willi({"WILLI_MAPPING_1": f"static:{upstream.address}"})
    with open_session(willi) as client:
        assert client.command("MAIL FROM:<s@origin.test>").code == 250
        assert client.command("RCPT TO:<u@example.org>").code == 250
        lost = client.command("DATA")
        assert lost.code == 451, lost
        # The transaction is over: no 503 nested MAIL, no RSET needed.
        assert client.command("MAIL FROM:<s@origin.test>").code == 250
        assert client.command("RCPT TO:<u@example.org>").code == 250
        assert client.command("DATA").code == 354
        client.send(BODY)
        assert client.command(".").code == 250
        assert client.command("QUIT").code == 221
    assert len(upstream.wait_for_messages(1)) == 1
    assert len(upstream.sessions) == 2  # routed afresh: a new upstream connection


def test_rcpt_and_data_of_a_transaction_whose_upstream_vanished_get_451_not_5xx(launch):
    upstream = launch.upstream(faults=FaultScript(close_on="DATA", sessions={1}))
    willi = launch.willi({"WILLI_MAPPING_1": f"static:{upstream.address}"})
    with open_session(willi) as client:
        assert client.command("MAIL FROM:<s@origin.test>").code == 250
        assert client.command("RCPT TO:<u@example.org>").code == 250
        client.send(b"DATA\r\nRCPT TO:<v@example.org>\r\nDATA\r\n")  # pipelined on, blindly
        replies = client.read_replies(3)
    assert [r.code for r in replies] == [451, 451, 451], replies


def test_a_client_stalled_in_its_tls_handshake_is_closed_after_the_shorter_idle_timeout(launch, pki):
    upstream = launch.upstream()
    willi = launch.willi({
        "WILLI_MAPPING_1": f"static:{upstream.address}",
        "WILLI_TLS_CERT": str(pki.willi_cert),
        "WILLI_TLS_KEY": str(pki.willi_key),
        "WILLI_CLIENT_TIMEOUT": "1s",
        "WILLI_TLS_HANDSHAKE_TIMEOUT": "30s",
    })
    with SmtpRawClient(willi.host, willi.port) as client:
        assert client.read_reply().code == 220
        assert client.command("EHLO client.test").code == 250
        assert client.command("STARTTLS").code == 220
        started = time.monotonic()
        client.expect_closed(timeout=10)  # and send no ClientHello at all
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5, elapsed
    record = willi.wait_for_log(lambda r: r.get("event") == "tls_failed")
    assert "timed out" in record["error"]


def test_a_client_that_half_closes_inside_a_chunk_is_lost_and_nothing_is_delivered(launch):
    upstream = launch.upstream()
    willi = launch.willi({"WILLI_MAPPING_1": f"static:{upstream.address}"})
    with socket.create_connection((willi.host, willi.port), timeout=5) as sock:
        sock.sendall(b"EHLO client.test\r\nMAIL FROM:<s@origin.test>\r\nRCPT TO:<u@example.org>\r\n"
                     b"BDAT 100 LAST\r\nonly part of it\r\n")
        sock.shutdown(socket.SHUT_WR)
        got = read_all(sock, time.monotonic() + 10)  # closed at once, not at the idle timeout
    assert codes(got) == [b"220", b"250", b"250", b"250"], got
    assert upstream.messages == []
