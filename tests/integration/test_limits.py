"""Willi's limits and its answers to bad input (SPEC §2 table and bullets, §7).

Everything here is answered by Willi itself, through a real Willi process:
over-long command lines, the error budget, recipient, size and connection
limits, the SMTP smuggling family in message bodies, bare LFs in commands,
the commands Willi answers on its own, and a client that floods pipelined
commands without reading a reply. Where a limit is hit in the middle of a
message, the upstream (a ScriptableUpstream) must never see the final dot.

The module shares one strict Willi (small limits) that routes a.test to a
port where each test starts its own upstream; the connection-limit and
BARE_LF=pass tests get Willis of their own.
"""

from __future__ import annotations

import select
import smtplib
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.net import Reply, SmtpRawClient, free_port, wait_until
from tests.support.upstream import ScriptableUpstream
from tests.support.willi_process import WilliProcess, routed_env

SENDER = "sender@origin.test"
BODY = b"Subject: limits\r\n\r\nhello\r\n"
MAX_ERRORS = 4
MAX_RECIPIENTS = 3
MAX_MESSAGE_SIZE = 64 * 1024


# --- fixtures -----------------------------------------------------------------
@pytest.fixture(scope="module")
def upstream_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def willi(tmp_path_factory: pytest.TempPathFactory, upstream_port: int) -> Iterator[WilliProcess]:
    tmp = tmp_path_factory.mktemp("willi-strict")
    env = routed_env(
        tmp,
        upstream_port,
        WILLI_MAX_ERRORS=str(MAX_ERRORS),
        WILLI_MAX_RECIPIENTS=str(MAX_RECIPIENTS),
        WILLI_MAX_MESSAGE_SIZE=f"{MAX_MESSAGE_SIZE // 1024}KiB",
    )
    with WilliProcess(env, tmp) as process:
        yield process


@pytest.fixture(scope="module")
def lenient_willi(tmp_path_factory: pytest.TempPathFactory, upstream_port: int) -> Iterator[WilliProcess]:
    tmp = tmp_path_factory.mktemp("willi-bare-lf-pass")
    with WilliProcess(routed_env(tmp, upstream_port, WILLI_BARE_LF="pass"), tmp) as process:
        yield process


@pytest.fixture
def upstream(upstream_port: int) -> Iterator[ScriptableUpstream]:
    server = ScriptableUpstream(port=upstream_port).start()
    try:
        yield server
    finally:
        server.stop()


# --- helpers ------------------------------------------------------------------
def connect(willi: WilliProcess, source: str | None = None) -> SmtpRawClient:
    """A raw client whose greeting is not read yet; from `source` if given
    (every 127.x address is this machine: another client IP on loopback)."""
    if source is None:
        return SmtpRawClient(willi.host, willi.port)
    # SmtpRawClient always connects itself; this one needs its source address.
    client = SmtpRawClient.__new__(SmtpRawClient)
    client.host, client.port, client.timeout = willi.host, willi.port, 10.0
    client._buffer, client._eof = bytearray(), False
    client.sock = socket.create_connection((willi.host, willi.port), timeout=10.0, source_address=(source, 0))
    return client


def greeted(willi: WilliProcess, helo: str = "client.test") -> SmtpRawClient:
    client = connect(willi)
    assert client.read_reply().code == 220
    assert client.command(f"EHLO {helo}").code == 250
    return client


def code_and_enhanced(reply: Reply) -> tuple[int, bytes]:
    return reply.code, reply.lines[0].split(b" ", 1)[0]


def assert_no_reply_yet(client: SmtpRawClient) -> None:
    with pytest.raises(AssertionError, match="timed out"):
        client.read_reply(timeout=0.3)


def start_body(willi: WilliProcess, rcpt: str = "user@a.test", sender: str = SENDER) -> SmtpRawClient:
    client = greeted(willi)
    assert client.command(f"MAIL FROM:<{sender}>").code == 250
    assert client.command(f"RCPT TO:<{rcpt}>").code == 250
    assert client.command("DATA").code == 354
    return client


# --- command lines ------------------------------------------------------------
def test_a_command_line_over_4096_octets_gets_500_5_5_2_and_the_session_goes_on(willi):
    with greeted(willi) as client:
        longest = b"NOOP " + b"x" * (4096 - len(b"NOOP ") - 2)  # 4096 octets with its CRLF
        assert client.command(longest).code == 250
        reply = client.command(longest + b"x")
        assert code_and_enhanced(reply) == (500, b"5.5.2"), reply
        reply = client.command(b"NOOP " + b"y" * 100_000)  # the rest is skipped, not read as commands
        assert code_and_enhanced(reply) == (500, b"5.5.2"), reply
        assert client.command("NOOP").code == 250
        assert client.pending == b""


def test_after_max_errors_willi_says_421_4_7_0_and_closes(willi):
    with greeted(willi) as client:
        for _ in range(MAX_ERRORS - 1):
            assert code_and_enhanced(client.command("FROB")) == (500, b"5.5.2")
        assert code_and_enhanced(client.command("FROB")) == (500, b"5.5.2")
        reply = client.read_reply()
        assert code_and_enhanced(reply) == (421, b"4.7.0"), reply
        assert client.expect_closed(timeout=5) == b""


def test_a_command_ending_in_a_bare_lf_is_refused_and_nothing_reaches_upstream(willi, upstream):
    with greeted(willi) as client:
        assert client.command("MAIL FROM:<sender@origin.test>").code == 250
        client.send(b"RCPT TO:<user@a.test>\n")
        assert code_and_enhanced(client.read_reply()) == (500, b"5.5.2")
        assert client.command("NOOP").code == 250
        assert upstream.sessions == [] and upstream.commands == []
        # the same command with its CRLF is routed: the upstream sees it once
        assert client.command("RCPT TO:<user@a.test>").code == 250
        assert [c for c in upstream.commands if c.startswith(b"RCPT")] == [b"RCPT TO:<user@a.test>"]


@pytest.mark.parametrize(
    "command, code, enhanced",
    [
        ("EHLO", 501, b"5.5.4"),
        ("HELO", 501, b"5.5.4"),
        ("FROB the knob", 500, b"5.5.2"),
        ("AUTH PLAIN AHVzZXIAcGFzcw==", 502, b"5.5.1"),
        ("VRFY user@a.test", 252, b"2.0.0"),
        ("EXPN staff", 502, b"5.5.1"),
        ("HELP", 214, b"2.0.0"),
        ("NOOP", 250, b"2.0.0"),
        ("RSET", 250, b"2.0.0"),
        ("RCPT TO:<user@a.test>", 503, b"5.5.1"),
        ("DATA", 503, b"5.5.1"),
        ("STARTTLS", 502, b"5.5.1"),
    ],
)
def test_willi_answers_these_commands_itself(willi, upstream, command, code, enhanced):
    with greeted(willi) as client:
        reply = client.command(command)
        assert code_and_enhanced(reply) == (code, enhanced), reply
        assert client.command("NOOP").code == 250
    assert upstream.sessions == []


def test_starttls_is_not_offered_without_a_certificate(willi):
    with connect(willi) as client:
        assert client.read_reply().code == 220
        reply = client.command("EHLO client.test")
        assert reply.code == 250
        assert not [line for line in reply.lines if line.upper().startswith(b"STARTTLS")]
        assert b"PIPELINING" in reply.lines and b"SIZE %d" % MAX_MESSAGE_SIZE in reply.lines
        assert code_and_enhanced(client.command("STARTTLS")) == (502, b"5.5.1")
        assert client.command("MAIL FROM:<sender@origin.test>").code == 250  # still plaintext SMTP


def test_data_without_an_accepted_recipient_gets_554_5_5_1(willi, upstream):
    with greeted(willi) as client:
        assert client.command("MAIL FROM:<sender@origin.test>").code == 250
        assert code_and_enhanced(client.command("DATA")) == (554, b"5.5.1")
        assert code_and_enhanced(client.command("RCPT TO:<user@unrouted.test>")) == (554, b"5.7.1")
        assert code_and_enhanced(client.command("DATA")) == (554, b"5.5.1")
    assert upstream.sessions == []


# --- envelope limits ------------------------------------------------------------
def test_recipients_beyond_max_recipients_get_452_4_5_3_and_stay_off_the_upstream(willi, upstream):
    rcpts = [f"r{i}@a.test" for i in range(MAX_RECIPIENTS + 1)]
    with greeted(willi) as client:
        assert client.command("MAIL FROM:<sender@origin.test>").code == 250
        for rcpt in rcpts[:-1]:
            assert client.command(f"RCPT TO:<{rcpt}>").code == 250
        reply = client.command(f"RCPT TO:<{rcpts[-1]}>")
        assert code_and_enhanced(reply) == (452, b"4.5.3"), reply
        assert client.command("DATA").code == 354
        client.send(BODY + b".\r\n")
        assert client.read_reply().code == 250
    (message,) = upstream.wait_for_messages(1)
    assert message.rcpt_tos == [r.encode() for r in rcpts[:-1]]
    assert not [c for c in upstream.commands if rcpts[-1].encode() in c]


@pytest.mark.parametrize(
    "size, code, enhanced",
    [
        (str(MAX_MESSAGE_SIZE + 1), 552, b"5.3.4"),
        ("abc", 501, b"5.5.4"),
        (str(MAX_MESSAGE_SIZE), 250, b"2.1.0"),
    ],
)
def test_mail_from_size_is_checked_against_the_limit(willi, size, code, enhanced):
    with greeted(willi) as client:
        reply = client.command(f"MAIL FROM:<a@b.test> SIZE={size}")
        assert code_and_enhanced(reply) == (code, enhanced), reply


def test_a_body_over_max_message_size_gets_552_after_end_of_data_and_is_never_finished(willi, upstream):
    line = b"x" * 998 + b"\r\n"
    body = line * (MAX_MESSAGE_SIZE // len(line) + 16)  # 16 KB over the limit
    with start_body(willi, sender="too-big@origin.test") as client:
        client.send(body)
        upstream.wait_for_aborted(1)  # dropped while streaming, no final dot
        assert_no_reply_yet(client)
        client.send(b".\r\n")
        reply = client.read_reply()
        assert code_and_enhanced(reply) == (552, b"5.3.4"), reply
        assert client.command("NOOP").code == 250
    assert upstream.messages == [] and "." not in upstream.verbs
    record = willi.wait_for_log(
        lambda r: r.get("event") == "transaction" and r.get("sender") == "too-big@origin.test"
    )
    assert record["code"] == "552"


# --- message bodies: the SMTP smuggling family ---------------------------------
SMUGGLING_BODIES = {
    "bare LF": b"Subject: x\r\n\r\nline one\nline two\r\n",
    "bare CR": b"Subject: x\r\n\r\nline one\rline two\r\n",
    "CR CR LF": b"Subject: x\r\n\r\nline one\r\r\nline two\r\n",
    "NUL": b"Subject: x\r\n\r\nline\x00one\r\n",
    "LF dot CRLF": (
        b"Subject: x\r\n\r\nhello\n.\r\n"
        b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@a.test>\r\nDATA\r\nsmuggled\r\n"
    ),
}


@pytest.mark.parametrize("body", SMUGGLING_BODIES.values(), ids=SMUGGLING_BODIES.keys())
def test_a_body_with_a_bare_cr_lf_or_nul_gets_550_5_5_2_and_is_never_finished(willi, upstream, body):
    with start_body(willi) as client:
        client.send(body)
        upstream.wait_for_aborted(1)
        assert_no_reply_yet(client)
        client.send(b".\r\n")
        reply = client.read_reply()
        assert code_and_enhanced(reply) == (550, b"5.5.2"), reply
        assert client.command("NOOP").code == 250  # one reply: nothing smuggled was run
    assert upstream.messages == [] and "." not in upstream.verbs
    assert len(upstream.sessions) == 1 and not [c for c in upstream.commands if b"evil" in c]


@pytest.mark.parametrize("body", SMUGGLING_BODIES.values(), ids=SMUGGLING_BODIES.keys())
def test_with_bare_lf_pass_such_a_body_is_forwarded_unchanged(lenient_willi, upstream, body):
    with start_body(lenient_willi) as client:
        client.send(body + b".\r\n")
        assert client.read_reply().code == 250
    (message,) = upstream.wait_for_messages(1)
    assert message.raw == body
    assert upstream.aborted_bodies == 0


# --- connections ----------------------------------------------------------------
@pytest.fixture
def per_ip_willi(tmp_path: Path, upstream_port: int) -> Iterator[WilliProcess]:
    with WilliProcess(routed_env(tmp_path, upstream_port, WILLI_MAX_CONNECTIONS_PER_IP="2"), tmp_path) as process:
        yield process


@pytest.fixture
def global_willi(tmp_path: Path, upstream_port: int) -> Iterator[WilliProcess]:
    with WilliProcess(routed_env(tmp_path, upstream_port, WILLI_MAX_CONNECTIONS="2"), tmp_path) as process:
        yield process


def assert_refused(willi: WilliProcess, source: str) -> None:
    with connect(willi, source) as client:
        reply = client.read_reply()
        assert code_and_enhanced(reply) == (421, b"4.7.0"), reply
        assert client.expect_closed(timeout=5) == b""


def accepted_now(willi: WilliProcess, source: str) -> SmtpRawClient | None:
    """A connection greeted with 220, or None after it was refused."""
    client = connect(willi, source)
    if client.read_reply().code == 220:
        return client
    client.close()
    return None


def test_a_third_connection_from_one_ip_gets_421_4_7_0_and_is_closed(per_ip_willi):
    willi = per_ip_willi
    first, second = connect(willi, "127.0.0.1"), connect(willi, "127.0.0.1")
    try:
        assert first.read_reply().code == 220 and second.read_reply().code == 220
        assert_refused(willi, "127.0.0.1")
        with connect(willi, "127.0.0.2") as other_ip:
            assert other_ip.read_reply().code == 220
        assert first.command("QUIT").code == 221
        first.expect_closed(timeout=5)
        again = wait_until(lambda: accepted_now(willi, "127.0.0.1"), 5, 0.05, "a slot after QUIT")
        again.close()
        assert second.command("NOOP").code == 250
    finally:
        first.close()
        second.close()
    record = willi.wait_for_log(lambda r: r.get("event") == "connection_refused")
    assert record["client"] == "127.0.0.1"


def test_connections_over_max_connections_get_421_4_7_0_whatever_their_ip(global_willi):
    willi = global_willi
    first, second = connect(willi, "127.0.0.2"), connect(willi, "127.0.0.3")
    try:
        assert first.read_reply().code == 220 and second.read_reply().code == 220
        assert_refused(willi, "127.0.0.4")
        first.close()  # a client that just goes away frees its slot too
        again = wait_until(lambda: accepted_now(willi, "127.0.0.4"), 5, 0.05, "a slot after a close")
        again.close()
    finally:
        first.close()
        second.close()


# --- memory under a pipelining flood -------------------------------------------------
FLOOD_BYTES = 50 * 1024 * 1024
FLOOD_SECONDS = 30.0


def test_a_client_flooding_noops_without_reading_does_not_grow_willis_memory(willi):
    baseline = willi.rss_kib()
    chunk = b"NOOP\r\n" * 10922  # ~64 KiB of pipelined commands
    sent, peak = 0, baseline
    with greeted(willi) as flooder:
        sock = flooder.sock
        sock.setblocking(False)
        deadline = time.monotonic() + FLOOD_SECONDS
        last_progress = time.monotonic()
        while sent < FLOOD_BYTES and time.monotonic() < deadline:
            try:
                sent += sock.send(chunk)
                last_progress = time.monotonic()
            except BlockingIOError:
                if time.monotonic() - last_progress > 2.0:
                    break  # Willi stopped reading: flow control holds the flood back
                select.select([], [sock], [], 0.2)
                peak = max(peak, willi.rss_kib())
        peak = max(peak, willi.rss_kib())
        # Willi still serves others while the flooder sits there.
        with smtplib.SMTP(willi.host, willi.port, timeout=10) as smtp:
            assert smtp.noop()[0] == 250
    growth_kib = peak - baseline
    assert growth_kib < 32 * 1024, f"RSS grew by {growth_kib} KiB after {sent} bytes of NOOPs"
    assert sent < FLOOD_BYTES, "Willi read 50 MB of commands from a client that reads no reply"
