"""Willi when an upstream or a client fails (SPEC §2 bullets, §7).

Each test runs a real Willi process against ScriptableUpstreams that are told
to misbehave: die in the middle of a body, close an idle connection, answer
421, stall, or never accept the connection at all. Whatever goes wrong, the
client sees a 4xx and never a 250 for a message the upstream did not accept,
and a partial message is never finished upstream with a final dot.

Two Willi processes serve the module: a patient one (default timeouts) for
faults that must not depend on a timer, and an impatient one with short
timeouts for the timeout tests. Upstreams are started per test on ports the
Willis route to, so every test sees a fresh upstream and fresh counters.
"""

from __future__ import annotations

import select
import smtplib
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from tests.support.net import Reply, SmtpRawClient, free_port, wait_until
from tests.support.upstream import Action, FaultScript, ScriptableUpstream
from tests.support.willi_process import WilliProcess

SENDER = "sender@origin.test"
BODY = b"Subject: fault test\r\n\r\nline one\r\nline two\r\n"
LONG_BODY = b"".join(b"line %05d of a long message body\r\n" % i for i in range(3000))  # ~100 KiB


# --- fixtures -----------------------------------------------------------------
def _willi_env(tmp: Path, routes: dict[str, int], **keys: str) -> dict[str, str]:
    table = tmp / "upstreams.csv"
    lines = ["pattern;server;tls_verify"]
    lines += [f"{domain};127.0.0.1:{port};false" for domain, port in routes.items()]
    table.write_text("\n".join(lines) + "\n")
    return {
        "WILLI_LISTEN": f"127.0.0.1:{free_port()}",
        "WILLI_HOSTNAME": "willi.test",
        "WILLI_MAPPING_1": f"csv:{table}",
        **keys,
    }


@pytest.fixture(scope="module")
def ports() -> SimpleNamespace:
    """Upstream ports the Willis route to: a.test, b.test, slow.test."""
    return SimpleNamespace(a=free_port(), b=free_port(), slow=free_port())


@pytest.fixture(scope="module")
def willi(tmp_path_factory: pytest.TempPathFactory, ports: SimpleNamespace) -> Iterator[WilliProcess]:
    tmp = tmp_path_factory.mktemp("willi-faults")
    env = _willi_env(tmp, {"a.test": ports.a, "b.test": ports.b})
    with WilliProcess(env, tmp) as process:
        yield process


class Blackhole:
    """A loopback port where SYNs are dropped, so a connect never completes.

    A socket listening with backlog 0 has room for one established connection
    in its accept queue; it never accepts, and the filler connection takes that
    room. Linux then drops further SYNs (the accept queue is full), so the
    next connect attempt hangs until the connecting side gives up.
    """

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fillers: list[socket.socket] = []

    def fill(self) -> None:
        """Connect until a connect hangs: the accept queue is full."""
        for _ in range(4):
            sock = socket.socket()
            sock.setblocking(False)
            self.fillers.append(sock)
            sock.connect_ex(("127.0.0.1", self.port))
            _, writable, _ = select.select([], [sock], [], 0.5)
            if not writable:
                return  # this SYN was dropped: the queue is full
        raise AssertionError("could not fill the accept queue of a listen(0) socket")

    def close(self) -> None:
        for sock in self.fillers:
            sock.close()
        self.listener.close()


@pytest.fixture(scope="module")
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    try:
        hole.fill()
        yield hole
    finally:
        hole.close()


@pytest.fixture(scope="module")
def impatient_willi(
    tmp_path_factory: pytest.TempPathFactory, ports: SimpleNamespace, blackhole: Blackhole
) -> Iterator[WilliProcess]:
    """Short timeouts; the data timeout differs from the command timeout so a
    test can tell which one fired."""
    tmp = tmp_path_factory.mktemp("willi-impatient")
    env = _willi_env(
        tmp,
        {"slow.test": ports.slow, "blackhole.test": blackhole.port},
        WILLI_CLIENT_TIMEOUT="1s",
        WILLI_UPSTREAM_CONNECT_TIMEOUT="0.5s",
        WILLI_UPSTREAM_COMMAND_TIMEOUT="0.5s",
        WILLI_UPSTREAM_DATA_TIMEOUT="1.5s",
    )
    with WilliProcess(env, tmp) as process:
        yield process


@pytest.fixture
def start_upstream() -> Iterator:
    """start_upstream(port, **ScriptableUpstream options): stopped after the test."""
    started: list[ScriptableUpstream] = []

    def start(port: int, **kwargs: object) -> ScriptableUpstream:
        upstream = ScriptableUpstream(port=port, **kwargs)  # type: ignore[arg-type]
        started.append(upstream)
        return upstream.start()

    yield start
    for upstream in started:
        upstream.stop()


# --- helpers ------------------------------------------------------------------
def begin(client: SmtpRawClient, sender: str = SENDER) -> None:
    """Greeting, EHLO and MAIL FROM: all answered by Willi itself."""
    assert client.read_reply().code == 220
    assert client.command("EHLO client.test").code == 250
    assert client.command(f"MAIL FROM:<{sender}>").code == 250


def start_body(client: SmtpRawClient, rcpt: str, sender: str = SENDER) -> None:
    """Up to the 354: the upstream is now reading the body."""
    begin(client, sender)
    assert client.command(f"RCPT TO:<{rcpt}>").code == 250
    reply = client.command("DATA")
    assert reply.code == 354, reply


def assert_no_reply_yet(client: SmtpRawClient) -> None:
    with pytest.raises(AssertionError, match="timed out"):
        client.read_reply(timeout=0.3)


def enhanced(reply: Reply) -> bytes:
    return reply.lines[0].split(b" ", 1)[0]


def transactions(willi: WilliProcess, sender: str) -> list[dict[str, str]]:
    """The transaction log lines of one sender (rejected recipients are only counted)."""
    return [r for r in willi.log_lines() if r.get("event") == "transaction" and r.get("sender") == sender]


def wait_for_transaction(willi: WilliProcess, sender: str, result: str) -> dict[str, str]:
    return willi.wait_for_log(
        lambda r: r.get("event") == "transaction" and r.get("sender") == sender and r.get("code") == result
    )


def upstream_side_closed(session_sock: socket.socket) -> bool:
    """Willi dropped its connection: the upstream's socket sees EOF or a reset."""
    try:
        return session_sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


# --- the upstream fails -------------------------------------------------------------
def test_an_upstream_dying_mid_body_gives_a_4xx_after_end_of_data_and_delivers_nothing(
    willi, ports, start_upstream
):
    upstream = start_upstream(ports.a, faults=FaultScript(close_after_body_bytes=4096, sessions={1}))
    with SmtpRawClient(willi.host, willi.port) as client:
        start_body(client, "dies@a.test", "upstream-dies@origin.test")
        client.send(LONG_BODY)
        upstream.wait_for_aborted(1)
        assert_no_reply_yet(client)  # nothing before the client's end of data
        # The end of data, and the next transaction pipelined right behind it.
        client.send(b".\r\nMAIL FROM:<%s>\r\nRCPT TO:<again@a.test>\r\nDATA\r\n" % SENDER.encode())
        reply, *next_transaction = client.read_replies(4)
        assert (reply.code, enhanced(reply)) == (451, b"4.4.2"), reply
        assert upstream.messages == []
        # The session goes on: the next transaction dials anew and is delivered.
        assert [r.code for r in next_transaction] == [250, 250, 354], next_transaction
        client.send(BODY + b".\r\n")
        assert client.read_reply().code == 250
    (message,) = upstream.wait_for_messages(1)
    assert message.rcpt_tos == [b"again@a.test"] and message.session == 2
    assert upstream.aborted_bodies == 1
    record = wait_for_transaction(willi, "upstream-dies@origin.test", "451")
    assert record["text"].startswith("4.4.2")


def test_a_client_vanishing_mid_body_never_completes_the_message_upstream(willi, ports, start_upstream):
    upstream = start_upstream(ports.a)
    part = b"Subject: half\r\n\r\nthe first half of a message\r\n"
    with SmtpRawClient(willi.host, willi.port) as client:
        start_body(client, "vanish@a.test", "client-vanishes@origin.test")
        client.send(part)
        wait_until(lambda: upstream.body_bytes_received >= len(part), 10, message="the partial body upstream")
    upstream.wait_for_aborted(1)
    upstream.wait_for_sessions_ended(1)
    assert upstream.messages == []
    assert "." not in upstream.verbs
    record = willi.wait_for_log(
        lambda r: r.get("event") == "transaction" and r.get("sender") == "client-vanishes@origin.test"
    )
    assert record["rcpts"] == "vanish@a.test" and "client lost" in record.get("aborted", ""), record
    assert record.get("code") != "250"


def test_an_upstream_closing_an_idle_connection_does_not_break_the_next_transaction(
    willi, ports, start_upstream
):
    upstream = start_upstream(ports.a)
    with smtplib.SMTP(willi.host, willi.port, timeout=10) as smtp:
        smtp.sendmail(SENDER, ["first@a.test"], BODY)
        (first,) = upstream.wait_for_messages(1)
        # The upstream ends the idle connection between transactions.
        upstream.sessions[0].sock.shutdown(socket.SHUT_RDWR)
        upstream.wait_for_sessions_ended(1)
        smtp.sendmail(SENDER, ["second@a.test"], BODY)
    messages = upstream.wait_for_messages(2)
    assert [m.session for m in messages] == [1, 2]
    assert messages[1].rcpt_tos == [b"second@a.test"] and messages[1].body == BODY
    record = willi.wait_for_log(
        lambda r: r.get("event") == "transaction" and r.get("rcpts") == "second@a.test"
    )
    assert (record["code"], record["upstream"]) == ("250", f"smtp://127.0.0.1:{ports.a}")


def test_an_upstream_closing_a_reused_connection_as_mail_arrives_makes_willi_dial_anew(
    willi, ports, start_upstream
):
    def close_on_second_mail(session, line):
        mails = sum(c.upper().startswith(b"MAIL") for c in session.commands)
        return Action.CLOSE if session.number == 1 and mails == 2 else None

    upstream = start_upstream(ports.a, on_command=close_on_second_mail)
    with smtplib.SMTP(willi.host, willi.port, timeout=10) as smtp:
        smtp.sendmail(SENDER, ["first@a.test"], BODY)
        upstream.wait_for_messages(1)
        smtp.sendmail(SENDER, ["second@a.test"], BODY)  # raises unless delivered
    messages = upstream.wait_for_messages(2)
    assert [(m.session, m.rcpt_tos) for m in messages] == [
        (1, [b"first@a.test"]),
        (2, [b"second@a.test"]),
    ]
    assert upstream.sessions[0].commands[-1].upper().startswith(b"MAIL")  # closed unanswered


def test_an_upstream_421_on_rcpt_reaches_the_client_as_451_and_the_session_goes_on(
    willi, ports, start_upstream
):
    def shut_down_in_first_session(session, line):
        if session.number == 1 and line.upper().startswith(b"RCPT"):
            return b"421 4.3.2 upstream.test shutting down\r\n"
        return None

    upstream = start_upstream(ports.a, on_command=shut_down_in_first_session)
    with SmtpRawClient(willi.host, willi.port) as client:
        begin(client)
        reply = client.command("RCPT TO:<refused@a.test>")
        assert reply.code == 451, reply  # a 4xx, never the 421 that would end the client's session
        assert reply.lines == [b"4.3.2 upstream.test shutting down"]
        assert client.command("NOOP").code == 250  # still connected
        assert client.command("RCPT TO:<accepted@a.test>").code == 250
        assert client.command("DATA").code == 354
        client.send(BODY + b".\r\n")
        assert client.read_reply().code == 250
    (message,) = upstream.wait_for_messages(1)
    assert (message.session, message.rcpt_tos) == (2, [b"accepted@a.test"])


@pytest.mark.parametrize(
    "greeting, faults",
    [(b"421 4.3.2 upstream.test busy\r\n", FaultScript()), (None, FaultScript(close_after_greeting=True))],
    ids=["greets-421", "closes-after-greeting"],
)
def test_an_upstream_unusable_from_the_start_gives_451_4_4_1_at_rcpt(
    willi, ports, start_upstream, greeting, faults
):
    upstream = start_upstream(ports.a, greeting=greeting, faults=faults)
    with SmtpRawClient(willi.host, willi.port) as client:
        begin(client)
        reply = client.command("RCPT TO:<user@a.test>")
        assert (reply.code, enhanced(reply)) == (451, b"4.4.1"), reply
        reply = client.command("DATA")  # no recipient was accepted
        assert (reply.code, enhanced(reply)) == (554, b"5.5.1"), reply
    assert "MAIL" not in upstream.verbs and upstream.messages == []


@pytest.mark.parametrize("close_on", ["DATA", "."])
def test_an_upstream_closing_at_data_or_the_final_dot_gives_451_and_never_250(
    willi, ports, start_upstream, close_on
):
    sender = f"closes-on-{'dot' if close_on == '.' else 'data'}@origin.test"
    upstream = start_upstream(ports.a, faults=FaultScript(close_on=close_on))
    with SmtpRawClient(willi.host, willi.port) as client:
        begin(client, sender)
        assert client.command("RCPT TO:<user@a.test>").code == 250
        reply = client.command("DATA")
        if close_on == ".":
            assert reply.code == 354, reply
            client.send(BODY + b".\r\n")
            reply = client.read_reply()
        assert (reply.code, enhanced(reply)) == (451, b"4.4.2"), reply
        assert client.command("NOOP").code == 250
    assert upstream.messages == []
    wait_for_transaction(willi, sender, "451")


def test_an_upstream_421_after_the_final_dot_reaches_the_client_as_451(willi, ports, start_upstream):
    start_upstream(ports.a, replies={".": b"421 4.3.2 upstream.test going down\r\n"})
    with SmtpRawClient(willi.host, willi.port) as client:
        start_body(client, "user@a.test", "dot-421@origin.test")
        client.send(BODY + b".\r\n")
        reply = client.read_reply()
        assert reply.raw == b"451 4.3.2 upstream.test going down\r\n"
        assert client.command("NOOP").code == 250
    wait_for_transaction(willi, "dot-421@origin.test", "451")


@pytest.mark.parametrize("stall_on", ["RCPT", "."])
def test_a_stalled_upstream_does_not_delay_another_session(willi, ports, start_upstream, stall_on):
    stalled = start_upstream(ports.a, faults=FaultScript(stall_on=stall_on))
    healthy = start_upstream(ports.b)
    with SmtpRawClient(willi.host, willi.port) as first:
        begin(first)
        if stall_on == "RCPT":
            first.send(b"RCPT TO:<stuck@a.test>\r\n")
        else:
            assert first.command("RCPT TO:<stuck@a.test>").code == 250
            assert first.command("DATA").code == 354
            first.send(BODY + b".\r\n")
        stalled.wait_for_stall()
        started = time.monotonic()
        with smtplib.SMTP(willi.host, willi.port, timeout=10) as smtp:
            smtp.sendmail(SENDER, ["flows@b.test"], BODY)
        elapsed = time.monotonic() - started
        (message,) = healthy.wait_for_messages(1)
        assert message.rcpt_tos == [b"flows@b.test"]
        assert elapsed < 5, elapsed
        assert_no_reply_yet(first)  # still stalled while the other session finished
        stalled.release.set()
        assert first.read_reply().code == 250


# --- timeouts -----------------------------------------------------------------
def test_an_idle_client_is_told_421_4_4_2_and_disconnected(impatient_willi):
    with SmtpRawClient(impatient_willi.host, impatient_willi.port) as client:
        assert client.read_reply().code == 220
        assert client.command("EHLO client.test").code == 250
        started = time.monotonic()
        reply = client.read_reply(timeout=5)
        elapsed = time.monotonic() - started
        assert (reply.code, enhanced(reply)) == (421, b"4.4.2"), reply
        assert 0.8 <= elapsed < 4, elapsed
        assert client.expect_closed(timeout=5) == b""


def test_a_client_silent_mid_body_is_told_421_4_4_2_and_the_message_is_never_finished(
    impatient_willi, ports, start_upstream
):
    upstream = start_upstream(ports.slow)
    with SmtpRawClient(impatient_willi.host, impatient_willi.port) as client:
        start_body(client, "user@slow.test", "silent-client@origin.test")
        client.send(b"Subject: half\r\n\r\nand then nothing more")
        reply = client.read_reply(timeout=5)
        assert (reply.code, enhanced(reply)) == (421, b"4.4.2"), reply
        assert client.expect_closed(timeout=5) == b""
    upstream.wait_for_aborted(1)
    assert upstream.messages == [] and "." not in upstream.verbs


def test_an_upstream_silent_after_rcpt_gives_451_4_4_2(impatient_willi, ports, start_upstream):
    upstream = start_upstream(ports.slow, faults=FaultScript(stall_on="RCPT"))
    with SmtpRawClient(impatient_willi.host, impatient_willi.port) as client:
        begin(client, "rcpt-silence@origin.test")
        started = time.monotonic()
        reply = client.command("RCPT TO:<silent@slow.test>")
        elapsed = time.monotonic() - started
        assert (reply.code, enhanced(reply)) == (451, b"4.4.2"), reply
        assert 0.4 <= elapsed < 1.4, elapsed  # the command timeout, not the data timeout
        (session,) = upstream.sessions
        wait_until(lambda: upstream_side_closed(session.sock), 5, message="Willi to drop the upstream")
    assert upstream.messages == []
    wait_for_transaction(impatient_willi, "rcpt-silence@origin.test", "451")


def test_an_upstream_silent_after_the_final_dot_gives_451_4_4_2_and_nothing_counts_as_delivered(
    impatient_willi, ports, start_upstream
):
    upstream = start_upstream(ports.slow, faults=FaultScript(stall_on="."))
    with SmtpRawClient(impatient_willi.host, impatient_willi.port) as client:
        start_body(client, "pending@slow.test", "dot-silence@origin.test")
        started = time.monotonic()
        client.send(BODY + b".\r\n")
        reply = client.read_reply(timeout=10)
        elapsed = time.monotonic() - started
        assert (reply.code, enhanced(reply)) == (451, b"4.4.2"), reply
        assert 1.4 <= elapsed < 5, elapsed  # WILLI_UPSTREAM_DATA_TIMEOUT=1.5s
        (session,) = upstream.sessions
        wait_until(lambda: upstream_side_closed(session.sock), 5, message="Willi to drop the upstream")
        assert client.command("NOOP").code == 250
    record = wait_for_transaction(impatient_willi, "dot-silence@origin.test", "451")
    assert record["text"].startswith("4.4.2")
    results = [r.get("code") for r in transactions(impatient_willi, "dot-silence@origin.test")]
    assert "250" not in results, results
    upstream.stop()  # never released: the upstream never answered the dot
    assert upstream.messages == []


def send_flood(client: SmtpRawClient, total: int, seconds: float) -> int:
    """Send `total` body bytes (1000-octet lines) without waiting for anything,
    bounded in time; the number of bytes sent (fewer when the connection was
    closed)."""
    line = b"y" * 998 + b"\r\n"
    chunk = line * 64
    sock, sent = client.sock, 0
    sock.setblocking(False)
    deadline = time.monotonic() + seconds
    try:
        while sent < total and time.monotonic() < deadline:
            try:
                offset = sent % len(chunk)  # a partial send continues mid-chunk
                sent += sock.send(chunk[offset : offset + total - sent])
            except BlockingIOError:
                select.select([], [sock], [], 0.1)
    except OSError:
        pass  # closed by Willi: the replies tell why
    finally:
        sock.setblocking(True)
    return sent


def test_an_upstream_that_stops_reading_mid_body_gives_451_4_4_2_not_a_client_timeout(
    impatient_willi, ports, start_upstream
):
    """The client keeps sending while Willi, held back by the upstream, does
    not read it: that is the upstream's timeout (451 4.4.2 after the end of
    data), not the client's idle timeout (421 and a dropped client)."""
    upstream = start_upstream(ports.slow, faults=FaultScript(stall_after_body_bytes=64 * 1024), rcvbuf=8192)
    with SmtpRawClient(impatient_willi.host, impatient_willi.port) as client:
        start_body(client, "user@slow.test", "stops-reading@origin.test")
        total = 32_000 * 1000  # whole lines: the body ends in CRLF
        sent = send_flood(client, total, 20.0)
        upstream.wait_for_stall()
        if sent == total:
            client.send(b".\r\n")
        reply = client.read_reply(timeout=10)
        assert (reply.code, enhanced(reply)) == (451, b"4.4.2"), (reply, sent)
        assert sent == total
        assert client.command("NOOP").code == 250
    record = wait_for_transaction(impatient_willi, "stops-reading@origin.test", "451")
    assert record["text"].startswith("4.4.2")
    upstream.stop()
    assert upstream.messages == [] and "." not in upstream.verbs and upstream.aborted_bodies == 1


def test_an_upstream_that_never_accepts_the_connection_gives_451_4_4_1(impatient_willi, blackhole):
    with SmtpRawClient(impatient_willi.host, impatient_willi.port) as client:
        begin(client)
        started = time.monotonic()
        reply = client.command("RCPT TO:<nobody@blackhole.test>")
        elapsed = time.monotonic() - started
        assert (reply.code, enhanced(reply)) == (451, b"4.4.1"), reply
        assert 0.4 <= elapsed < 4, elapsed  # timed out: a refused connect would be instant
    record = impatient_willi.wait_for_log(
        lambda r: r.get("event") == "upstream_failed" and str(blackhole.port) in r.get("target", "")
    )
    assert "timed out" in record["error"], record
