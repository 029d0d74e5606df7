"""Willi's life as a process (SPEC §6, §7): SIGTERM drains, SIGHUP reloads,
several listening addresses, one log line per transaction.

Each test that signals Willi runs a Willi of its own; the clients are raw
sockets so a test can stop in the middle of a body and see exactly which
reply (or which closed connection) comes back.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.net import (
    LOOPBACK_V4,
    LOOPBACK_V6,
    SmtpRawClient,
    free_port,
    port_refuses,
    wait_until,
)
from tests.support.upstream import ScriptableUpstream, Session
from tests.support.willi_process import WilliProcess

HOSTNAME = "willi.test"
HELO = "client.test"
SENDER = "sender@client.test"


def willi_env(mapping: str, listen: str | None = None, **extra: str) -> dict[str, str]:
    return {
        "WILLI_LISTEN": listen or f"{LOOPBACK_V4}:{free_port()}",
        "WILLI_HOSTNAME": HOSTNAME,
        "WILLI_MAPPING_1": mapping,
        "WILLI_CLIENT_TIMEOUT": "30s",
        "WILLI_UPSTREAM_CONNECT_TIMEOUT": "5s",
        "WILLI_UPSTREAM_COMMAND_TIMEOUT": "10s",
        "WILLI_UPSTREAM_DATA_TIMEOUT": "10s",
        "WILLI_XCLIENT": "off",
        **extra,
    }


@pytest.fixture
def upstream() -> Iterator[ScriptableUpstream]:
    with ScriptableUpstream() as server:
        yield server


def start_body(client: SmtpRawClient, rcpt: str = "user@example.org") -> None:
    """Greeting, EHLO, MAIL, RCPT, DATA: the client may now send the body."""
    assert client.read_reply().code == 220
    assert client.command(f"EHLO {HELO}").code == 250
    assert client.command(f"MAIL FROM:<{SENDER}>").code == 250
    reply = client.command(f"RCPT TO:<{rcpt}>")
    assert reply.code == 250, reply
    assert client.command("DATA").code == 354


def send_message(client: SmtpRawClient, rcpt: str, body: bytes) -> bytes:
    """One transaction on an open, greeted session; the final reply's raw bytes."""
    assert client.command(f"MAIL FROM:<{SENDER}>").code == 250
    reply = client.command(f"RCPT TO:<{rcpt}>")
    assert reply.code == 250, reply
    assert client.command("DATA").code == 354
    client.send(body + b".\r\n")
    return client.read_reply().raw


def upstream_of(line: dict[str, str]) -> str:
    """The log's upstream target without its scheme (smtp://host:port)."""
    return line.get("upstream", "").removeprefix("smtp://")


def transactions(willi: WilliProcess) -> list[dict[str, str]]:
    return [r for r in willi.log_lines() if r.get("event") == "transaction"]


# --- SIGTERM ----------------------------------------------------------------------


def test_sigterm_refuses_new_connections_at_once_and_lets_the_body_in_flight_finish(
    upstream: ScriptableUpstream, tmp_path: Path
) -> None:
    env = willi_env(f"static:{upstream.address}", WILLI_SHUTDOWN_TIMEOUT="20s")
    first_half = b"Subject: in flight\r\n\r\nfirst half\r\n"
    second_half = b"second half\r\n"
    with WilliProcess(env, tmp_path) as willi, SmtpRawClient(willi.host, willi.port) as client:
        start_body(client)
        client.send(first_half)
        wait_until(lambda: upstream.body_bytes_received >= len(first_half), 5.0,
                   message="the first half of the body upstream")

        signalled = time.monotonic()
        willi.signal(signal.SIGTERM)
        wait_until(lambda: port_refuses(willi.host, willi.port), 2.0, 0.01, "the listening port to refuse")
        assert time.monotonic() - signalled < 2.0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((willi.host, willi.port), timeout=1.0).close()
        assert willi.process.poll() is None, "Willi must wait for the transaction in flight"

        client.send(second_half + b".\r\n")
        final = client.read_reply()
        assert final.code == 250, final
        assert final.text.startswith(b"2.0.0 Ok: queued as")
        goodbye = client.read_reply()
        assert (goodbye.code, goodbye.text[:5]) == (421, b"4.3.2")
        client.expect_closed(5.0)
        assert willi.wait(5.0) == 0, willi.output()

    [message] = upstream.messages
    assert message.body == first_half + second_half
    assert message.accepted
    # a probe of the port may have been accepted just before the signal: >= 1
    assert int(willi.wait_for_log(lambda r: r.get("event") == "shutting_down")["sessions"]) >= 1
    [line] = transactions(willi)
    assert line["code"] == "250"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_tells_an_idle_client_421_4_3_2_and_exits_0_promptly(
    upstream: ScriptableUpstream, tmp_path: Path, signum: int
) -> None:
    env = willi_env(f"static:{upstream.address}", WILLI_SHUTDOWN_TIMEOUT="20s")
    with WilliProcess(env, tmp_path) as willi, SmtpRawClient(willi.host, willi.port) as client:
        assert client.read_reply().code == 220
        assert client.command(f"EHLO {HELO}").code == 250
        signalled = time.monotonic()
        willi.signal(signum)
        goodbye = client.read_reply(5.0)
        assert goodbye.code == 421
        assert goodbye.text.startswith(b"4.3.2")
        assert client.expect_closed(5.0) == b""
        assert willi.wait(5.0) == 0, willi.output()
        assert time.monotonic() - signalled < 3.0  # not the 20 s shutdown timeout
    assert upstream.sessions == []


def test_sigterm_tells_a_client_idle_between_transactions_421_and_quits_nothing_half_done(
    upstream: ScriptableUpstream, tmp_path: Path
) -> None:
    env = willi_env(f"static:{upstream.address}", WILLI_SHUTDOWN_TIMEOUT="20s")
    with WilliProcess(env, tmp_path) as willi, SmtpRawClient(willi.host, willi.port) as client:
        assert client.read_reply().code == 220
        assert client.command(f"EHLO {HELO}").code == 250
        assert send_message(client, "user@example.org", b"Subject: done\r\n\r\nbody\r\n")[:3] == b"250"
        signalled = time.monotonic()
        willi.signal(signal.SIGTERM)
        goodbye = client.read_reply(5.0)
        assert (goodbye.code, goodbye.text[:5]) == (421, b"4.3.2")
        client.expect_closed(5.0)
        assert willi.wait(5.0) == 0, willi.output()
        assert time.monotonic() - signalled < 3.0
    assert len(upstream.messages) == 1
    assert upstream.aborted_bodies == 0


def test_the_shutdown_timeout_bounds_the_wait_for_a_body_that_never_ends(
    upstream: ScriptableUpstream, tmp_path: Path
) -> None:
    timeout = 2.0
    env = willi_env(f"static:{upstream.address}", WILLI_SHUTDOWN_TIMEOUT=f"{timeout}s")
    part = b"Subject: never finished\r\n\r\n" + b"x" * 1000 + b"\r\n"
    with WilliProcess(env, tmp_path) as willi, SmtpRawClient(willi.host, willi.port) as client:
        start_body(client)
        client.send(part)
        wait_until(lambda: upstream.body_bytes_received >= len(part), 5.0,
                   message="the partial body upstream")
        signalled = time.monotonic()
        willi.signal(signal.SIGTERM)
        assert willi.wait(timeout + 5.0) == 0, willi.output()
        elapsed = time.monotonic() - signalled
        received = client.expect_closed(5.0)

    assert timeout - 0.25 <= elapsed <= timeout + 3.0, elapsed
    assert b"250" not in received
    upstream.wait_for_aborted(1, 5.0)
    assert upstream.messages == []
    assert "." not in upstream.verbs  # the upstream never saw an end of data
    [line] = transactions(willi)
    assert line["aborted"] == "shutdown timeout"
    assert line["rcpts"] == "user@example.org"


# --- SIGHUP -----------------------------------------------------------------------


def csv_text(route: str, width: int = 0) -> str:
    text = f"pattern;server;tls_verify\nexample.org;{route};false\n"
    return text + "#" * max(0, width - len(text) - 1) + "\n" if width else text


def rewrite_in_place_keeping_stamp(path: Path, text: str) -> None:
    """Same inode, size and mtime as before: only SIGHUP can notice the change
    (the once-a-second watcher compares exactly these)."""
    before = os.stat(path)
    data = text.encode()
    assert len(data) == before.st_size
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)


def test_sighup_rereads_the_csv_at_once_and_drops_no_session(tmp_path: Path) -> None:
    with ScriptableUpstream(hostname="old.test") as old, ScriptableUpstream(hostname="new.test") as new:
        width = max(len(csv_text(old.address)), len(csv_text(new.address))) + 8
        csv = tmp_path / "upstreams.csv"
        csv.write_text(csv_text(old.address, width))
        env = willi_env(f"csv:{csv}")
        with WilliProcess(env, tmp_path) as willi, SmtpRawClient(willi.host, willi.port) as client:
            assert client.read_reply().code == 220
            assert client.command(f"EHLO {HELO}").code == 250
            before = send_message(client, "user@example.org", b"Subject: before\r\n\r\n1\r\n")
            assert before.startswith(b"250 ")
            assert len(old.messages) == 1

            rewrite_in_place_keeping_stamp(csv, csv_text(new.address, width))
            willi.signal(signal.SIGHUP)
            reloaded = willi.wait_for_log(lambda r: r.get("event") == "mapping_reloaded", 5.0)
            assert reloaded["entries"] == "1"

            # the session opened before the SIGHUP carries on, on the new route
            assert client.command("NOOP").code == 250
            after = send_message(client, "user@example.org", b"Subject: after\r\n\r\n2\r\n")
            assert after.startswith(b"250 ")
            with SmtpRawClient(willi.host, willi.port) as second:
                assert second.read_reply().code == 220
                assert second.command(f"EHLO {HELO}").code == 250
                fresh = send_message(second, "user@example.org", b"Subject: fresh\r\n\r\n3\r\n")
                assert fresh.startswith(b"250 ")
            assert client.command("QUIT").code == 221
            assert willi.process.poll() is None
        assert willi.returncode == 0

    assert [m.body for m in old.messages] == [b"Subject: before\r\n\r\n1\r\n"]
    assert sorted(m.body for m in new.messages) == [
        b"Subject: after\r\n\r\n2\r\n", b"Subject: fresh\r\n\r\n3\r\n"]
    assert [upstream_of(line) for line in transactions(willi)] == [old.address, new.address, new.address]


def test_sighup_with_a_broken_csv_keeps_the_old_routes_and_logs_why(
    upstream: ScriptableUpstream, tmp_path: Path
) -> None:
    csv = tmp_path / "upstreams.csv"
    csv.write_text(csv_text(upstream.address))
    env = willi_env(f"csv:{csv}")
    with WilliProcess(env, tmp_path) as willi, SmtpRawClient(willi.host, willi.port) as client:
        assert client.read_reply().code == 220
        assert client.command(f"EHLO {HELO}").code == 250
        csv.write_text("pattern;server;tls_verify\nexample.org;127.0.0.1:1;false\nhalf a line\n")
        willi.signal(signal.SIGHUP)
        failed = willi.wait_for_log(lambda r: r.get("event") == "mapping_reload_failed", 5.0)
        assert f"{csv}:3" in failed["error"]
        reply = send_message(client, "user@example.org", b"Subject: still routed\r\n\r\nok\r\n")
        assert reply.startswith(b"250 ")
        assert willi.process.poll() is None
    assert [m.body for m in upstream.messages] == [b"Subject: still routed\r\n\r\nok\r\n"]


# --- listening on several addresses ----------------------------------------------


def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK_V6, 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_willi_listens_on_an_ipv4_and_an_ipv6_address_and_delivers_from_both(
    upstream: ScriptableUpstream, tmp_path: Path
) -> None:
    v4, v6 = free_port(LOOPBACK_V4), free_port(LOOPBACK_V6)
    env = willi_env(f"static:{upstream.address}", listen=f"{LOOPBACK_V4}:{v4},[{LOOPBACK_V6}]:{v6}")
    with WilliProcess(env, tmp_path) as willi:
        for host, port, tag in ((LOOPBACK_V4, v4, b"v4"), (LOOPBACK_V6, v6, b"v6")):
            with smtplib.SMTP(host, port, local_hostname=HELO, timeout=10) as smtp:
                refused_rcpts = smtp.sendmail(SENDER, ["user@example.org"],
                                              b"Subject: over " + tag + b"\r\n\r\nhello\r\n")
                assert refused_rcpts == {}
        upstream.wait_for_messages(2)
        lines = wait_until(lambda: transactions(willi)[1:] and transactions(willi), 5.0, 0.02, "two transactions")
    assert [m.body for m in upstream.messages] == [
        b"Subject: over v4\r\n\r\nhello\r\n", b"Subject: over v6\r\n\r\nhello\r\n"]
    assert [line["client"] for line in lines] == [LOOPBACK_V4, LOOPBACK_V6]
    assert [line["code"] for line in lines] == ["250", "250"]
    # logged as configured: an IPv6 address in brackets, else "::1:PORT" is ambiguous
    listening = [r["address"] for r in willi.log_lines() if r.get("event") == "listening"]
    assert listening == [f"{LOOPBACK_V4}:{v4}", f"[{LOOPBACK_V6}]:{v6}"]


# --- one log line per transaction ----------------------------------------------------


def reject_spam(session: Session, line: bytes) -> bytes | None:
    if line == b"." and b"spam" in session.pending_raw:
        return b"554 5.7.1 Spam refused\r\n"
    return None


def test_each_transaction_gets_exactly_one_logfmt_line_with_its_facts(tmp_path: Path) -> None:
    with ScriptableUpstream(on_command=reject_spam) as upstream:
        csv = tmp_path / "upstreams.csv"
        csv.write_text(csv_text(upstream.address))
        env = willi_env(f"csv:{csv}")
        delivered = b"Subject: one\r\n\r\n" + b"hello\r\n" * 10
        rejected = b"Subject: two\r\n\r\nspam spam spam\r\n"
        with WilliProcess(env, tmp_path) as willi:
            with SmtpRawClient(willi.host, willi.port) as client:
                assert client.read_reply().code == 220
                assert client.command(f"EHLO {HELO}").code == 250
                # 1: two recipients, delivered
                assert client.command(f"MAIL FROM:<{SENDER}>").code == 250
                assert client.command("RCPT TO:<a@example.org>").code == 250
                assert client.command("RCPT TO:<b@example.org>").code == 250
                assert client.command("DATA").code == 354
                client.send(delivered + b".\r\n")
                assert client.read_reply().code == 250
                # 2: refused by the upstream at the end of data
                refusal = send_message(client, "c@example.org", rejected)
                assert refusal.startswith(b"554 5.7.1 Spam refused")
                # 3: no route, refused by Willi itself
                assert client.command(f"MAIL FROM:<{SENDER}>").code == 250
                assert client.command("RCPT TO:<d@unmapped.example>").code == 554
                assert client.command("RSET").code == 250
                assert client.command("QUIT").code == 221
                client.expect_closed(5.0)
            wait_until(lambda: len(transactions(willi)) >= 3, 5.0, message="three transaction lines")
        lines = transactions(willi)

    assert len(lines) == 3, lines
    first, second, third = lines
    for line in lines:
        assert line["level"] == "info"
        assert line["client"] == LOOPBACK_V4
        assert line["helo"] == HELO
        assert line["sender"] == SENDER
        assert float(line["duration"]) >= 0
        assert line["_raw"].startswith("ts=")
    assert first["rcpts"] == "a@example.org,b@example.org"
    assert upstream_of(first) == upstream.address
    assert first["code"] == "250"
    assert first["text"].startswith("2.0.0 Ok: queued as")
    assert len(delivered) <= int(first["size"]) <= len(delivered) + 3
    assert second["rcpts"] == "c@example.org"
    assert upstream_of(second) == upstream.address
    assert (second["code"], second["text"]) == ("554", "5.7.1 Spam refused")
    assert len(rejected) <= int(second["size"]) <= len(rejected) + 3
    assert "rcpts" not in third
    assert third["refused"] == "1"
    assert third["code"] == "554"
    assert "Relay access denied" in third["text"]
    assert "size" not in third
    # Willi refused it itself: no upstream took part, even though the session
    # still holds the connection of the transaction before
    assert "upstream" not in third, third["_raw"]
