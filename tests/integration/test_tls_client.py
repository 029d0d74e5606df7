"""STARTTLS towards clients (SPEC §2 STARTTLS row, §5 WILLI_TLS_CERT/KEY, §7).

Willi runs as a real process with a certificate from the test PKI and a plain
aiosmtpd upstream behind it; clients are smtplib, raw sockets wrapped with
`ssl` after the `220`, and `openssl s_client`. What is checked: STARTTLS is
offered only while it can be used, the session starts over after the
handshake, pipelined plaintext after STARTTLS is never executed
(CVE-2011-0411), a stalled handshake is timed out without holding up other
sessions, a command riding behind the client's Finished is still answered,
TLS older than 1.2 is refused, the TLS session ends with close_notify, SIGHUP
swaps the certificate for new connections only (a pair that does not load
leaves the old one), and the transaction log line names the client's TLS.
"""

from __future__ import annotations

import ipaddress
import itertools
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
import warnings
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.support import certs
from tests.support.certs import Pki
from tests.support.net import Reply, SmtpRawClient, wait_until
from tests.support.recorder import RecordingUpstream
from tests.support.willi_process import WilliProcess
from willi import replies

HANDSHAKE_TIMEOUT = 2.0  # WILLI_TLS_HANDSHAKE_TIMEOUT of the shared Willi
_serial = itertools.count(1)


# --- helpers --------------------------------------------------------------------
def new_rcpt(tag: str) -> str:
    """A recipient no other test uses, so messages and log lines are told apart."""
    return f"{tag}-{next(_serial)}@example.org"


def verifying_context(pki: Pki) -> ssl.SSLContext:
    """What a careful client uses: chain and host name checked against the test CA."""
    return ssl.create_default_context(cafile=str(pki.ca_cert))


def assert_reply(reply: Reply, code: int, enhanced: bytes) -> None:
    assert (reply.code, reply.lines[0][:5]) == (code, enhanced), reply.raw


def ehlo(client: SmtpRawClient) -> list[bytes]:
    """EHLO; the capability keywords Willi listed (the host name line left out)."""
    reply = client.command(b"EHLO client.test")
    assert reply.code == 250, reply.raw
    assert reply.lines[0] == b"willi.test", reply.raw
    return [line.split(b" ")[0].upper() for line in reply.lines[1:]]


def start_tls(client: SmtpRawClient, context: ssl.SSLContext, hostname: str = "willi.test") -> None:
    """STARTTLS, the 220, then the handshake on the same socket (RFC 3207)."""
    assert_reply(client.command(b"STARTTLS"), 220, b"2.0.0")
    assert client.pending == b"", "Willi sent more than the 220 before the handshake"
    client.sock = context.wrap_socket(client.sock, server_hostname=hostname)


def still_open(sock: socket.socket) -> bool:
    """True when the peer has neither closed nor sent anything (non-blocking peek)."""
    timeout = sock.gettimeout()
    sock.settimeout(0)  # with a timeout, recv() would wait for data instead
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)
    return bool(data)


def partial_client_hello(context: ssl.SSLContext, hostname: str) -> bytes:
    """The first half of a real ClientHello, made in memory (no socket)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    engine = context.wrap_bio(incoming, outgoing, server_hostname=hostname)
    with pytest.raises(ssl.SSLWantReadError):
        engine.do_handshake()
    hello = outgoing.read()
    assert len(hello) > 10
    return hello[: len(hello) // 2]


def tls_failures(willi: WilliProcess) -> list[dict[str, str]]:
    return [r for r in willi.log_lines() if r.get("event") == "tls_failed"]


def wait_for_new_tls_failure(willi: WilliProcess, seen: int) -> dict[str, str]:
    """The tls_failed line after the first `seen` ones (the shared Willi logs others too)."""
    return wait_until(lambda: tls_failures(willi)[seen:], 10, 0.02, "a new tls_failed log line")[0]


def transaction_for(willi: WilliProcess, rcpt: str) -> dict[str, str]:
    return willi.wait_for_log(
        lambda r: r.get("event") == "transaction" and rcpt in r.get("rcpts", "").split(","),
        timeout=10,
    )


def issue_certificate(pki: Pki, directory: Path, stem: str, names: list[certs.Name]) -> tuple[Path, Path]:
    """Another server certificate signed by the test CA (a renewed one, say)."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    issuer = certs._Issuer(ca_cert.subject, ca_key)  # type: ignore[arg-type]
    cert, key = certs._make_leaf(str(names[0]), names, ExtendedKeyUsageOID.SERVER_AUTH, issuer)  # type: ignore[arg-type]
    return certs._write(directory, stem, cert, key)


def der_of(path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


# --- fixtures -------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorder(module_launch) -> RecordingUpstream:
    return module_launch.recorder()


@pytest.fixture(scope="module")
def willi(module_launch, recorder: RecordingUpstream, pki: Pki) -> WilliProcess:
    return module_launch.willi({
        "WILLI_TLS_CERT": str(pki.willi_cert),
        "WILLI_TLS_KEY": str(pki.willi_key),
        "WILLI_TLS_HANDSHAKE_TIMEOUT": f"{HANDSHAKE_TIMEOUT}s",
        "WILLI_MAPPING_1": f"static:{recorder.address}",
    })


@pytest.fixture
def raw(willi: WilliProcess) -> Iterator[SmtpRawClient]:
    with SmtpRawClient(willi.host, willi.port, timeout=10) as client:
        assert_reply(client.read_reply(), 220, b"willi")
        yield client


# --- STARTTLS with real clients ---------------------------------------------------
def test_a_message_sent_after_smtplib_starttls_is_delivered(willi, recorder, pki):
    rcpt = new_rcpt("smtplib")
    with smtplib.SMTP(willi.host, willi.port, local_hostname="client.test", timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        code, text = smtp.starttls(context=verifying_context(pki))
        assert (code, text[:5]) == (220, b"2.0.0")
        assert smtp.sock.version() in ("TLSv1.2", "TLSv1.3")
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        refused = smtp.sendmail("sender@example.net", [rcpt], b"Subject: over TLS\r\n\r\nsecret\r\n")
        assert refused == {}
    message = next(m for m in recorder.wait_for_messages(1) if m.rcpt_tos == [rcpt])
    assert message.content == b"Subject: over TLS\r\n\r\nsecret\r\n"
    assert message.mail_from == "sender@example.net"


def test_starttls_is_advertised_before_tls_and_not_after(raw, pki):
    assert b"STARTTLS" in ehlo(raw)
    start_tls(raw, verifying_context(pki))
    capabilities = ehlo(raw)
    assert b"STARTTLS" not in capabilities
    assert b"PIPELINING" in capabilities  # the rest of the list is still there


def test_mail_right_after_the_handshake_needs_a_new_ehlo(raw, pki):
    ehlo(raw)
    assert_reply(raw.command(b"MAIL FROM:<before@example.net>"), 250, b"2.1.0")
    # Inside a transaction STARTTLS is refused, as Postfix does ...
    assert raw.command(b"STARTTLS").raw == replies.TRANSACTION_IN_PROGRESS
    assert_reply(raw.command(b"RSET"), 250, b"2.0.0")
    start_tls(raw, verifying_context(pki))
    # ... and after the handshake the session starts over (RFC 3207 §4.2):
    # the EHLO of the plaintext part is forgotten.
    assert_reply(raw.command(b"MAIL FROM:<after@example.net>"), 503, b"5.5.1")
    ehlo(raw)
    assert_reply(raw.command(b"MAIL FROM:<after@example.net>"), 250, b"2.1.0")
    assert_reply(raw.command(b"QUIT"), 221, b"2.0.0")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command on this host")
def test_openssl_s_client_completes_a_verified_starttls_handshake(willi, pki):
    command = [
        "openssl", "s_client", "-starttls", "smtp", "-name", "client.test",
        "-connect", f"127.0.0.1:{willi.port}", "-CAfile", str(pki.ca_cert),
        "-servername", "willi.test", "-verify_hostname", "willi.test", "-verify_return_error",
        "-crlf", "-nocommands", "-ign_eof",
    ]
    done = subprocess.run(command, input=b"QUIT\n", capture_output=True, timeout=15)
    out = done.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out, out + done.stderr.decode(errors="replace")
    assert "Verified peername: willi.test" in out
    assert "221 2.0.0" in out  # the QUIT went over TLS and was answered


def test_quit_inside_tls_ends_the_tls_session_with_close_notify(raw, pki):
    # RFC 8446 §6.1: each party MUST send close_notify before closing its
    # write side. Without it OpenSSL 3 clients report "unexpected eof while
    # reading" (openssl s_client exits 1) and cannot tell a clean end from a
    # truncation.
    ehlo(raw)
    assert_reply(raw.command(b"STARTTLS"), 220, b"2.0.0")
    raw.sock = verifying_context(pki).wrap_socket(
        raw.sock, server_hostname="willi.test", suppress_ragged_eofs=False)
    ehlo(raw)
    assert_reply(raw.command(b"QUIT"), 221, b"2.0.0")
    raw.sock.settimeout(5)
    try:
        rest = raw.sock.recv(4096)
    except ssl.SSLEOFError as exc:
        pytest.fail(f"Willi closed the TLS session without close_notify: {exc}")
    assert rest == b""


# --- command injection (CVE-2011-0411) -------------------------------------------
def test_commands_pipelined_after_starttls_are_never_executed(raw, pki):
    ehlo(raw)
    raw.send(b"STARTTLS\r\nRSET\r\n")  # one packet: the RSET rides on the plaintext
    assert_reply(raw.read_reply(), 220, b"2.0.0")
    assert raw.pending == b""
    # Had Willi answered the RSET in plaintext, the handshake would choke on it.
    raw.sock = verifying_context(pki).wrap_socket(raw.sock, server_hostname="willi.test")
    # The first reply inside TLS is the EHLO's, and nothing answers the RSET
    # later either: QUIT's 221 is the last thing before the close.
    first = raw.command(b"EHLO client.test")
    assert first.code == 250 and first.lines[0] == b"willi.test", first.raw
    assert_reply(raw.command(b"QUIT"), 221, b"2.0.0")
    assert raw.expect_closed(timeout=5) == b""


# --- data right behind the handshake ------------------------------------------------
def _pump_until(sock: socket.socket, incoming: ssl.MemoryBIO, step, deadline: float):
    """Feed ciphertext from sock into incoming until step() returns non-None."""
    while True:
        result = step()
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        assert remaining > 0, "timed out waiting for Willi over TLS"
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        assert chunk, "Willi closed the connection"
        incoming.write(chunk)


def test_a_command_sent_together_with_the_clients_finished_message_is_answered(raw, pki):
    # A TLS 1.3 client may send application data right behind its Finished,
    # in the same packet; it then sits decrypted-but-unread in Willi's engine
    # and no socket event will announce it (STYLE: read right after the handshake).
    ehlo(raw)
    assert_reply(raw.command(b"STARTTLS"), 220, b"2.0.0")
    context = verifying_context(pki)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="willi.test")
    deadline = time.monotonic() + 10

    def handshake():
        try:
            tls.do_handshake()
            return True
        except ssl.SSLWantReadError:
            raw.sock.sendall(outgoing.read())
            return None

    _pump_until(raw.sock, incoming, handshake, deadline)
    tls.write(b"EHLO client.test\r\n")
    raw.sock.sendall(outgoing.read())  # the client's Finished and the EHLO, in one write
    received = bytearray()

    def ehlo_reply():
        try:
            received.extend(tls.read(65536))
        except ssl.SSLWantReadError:
            pass
        return bytes(received) if b"\r\n250 " in b"\r\n" + received and received.endswith(b"\r\n") else None

    reply = _pump_until(raw.sock, incoming, ehlo_reply, deadline)
    assert reply.startswith(b"250-willi.test\r\n"), reply
    assert b"STARTTLS" not in reply


# --- refused STARTTLS -----------------------------------------------------------
def test_starttls_with_an_argument_is_a_syntax_error(raw):
    ehlo(raw)
    assert_reply(raw.command(b"STARTTLS now"), 501, b"5.5.4")
    assert_reply(raw.command(b"NOOP"), 250, b"2.0.0")  # still plaintext, still usable


def test_a_second_starttls_inside_tls_is_out_of_sequence(raw, pki):
    ehlo(raw)
    start_tls(raw, verifying_context(pki))
    ehlo(raw)
    assert_reply(raw.command(b"STARTTLS"), 503, b"5.5.1")
    assert_reply(raw.command(b"NOOP"), 250, b"2.0.0")  # the TLS session goes on


def test_a_failed_handshake_closes_only_that_session(willi, raw, pki):
    seen = len(tls_failures(willi))
    ehlo(raw)
    assert_reply(raw.command(b"STARTTLS"), 220, b"2.0.0")
    raw.send(b"EHLO this is not a ClientHello\r\n")
    assert raw.expect_closed(timeout=5) == b""
    with _tls_session(willi, pki) as other:  # Willi still serves TLS to the next client
        assert_reply(other.command(b"NOOP"), 250, b"2.0.0")
    failure = wait_for_new_tls_failure(willi, seen)
    assert failure["error"].startswith("TLS handshake failed"), failure


# --- handshake timeout ------------------------------------------------------------
def test_a_client_stalled_in_the_handshake_is_closed_while_others_are_served(willi, recorder, pki):
    context = verifying_context(pki)
    with SmtpRawClient(willi.host, willi.port, timeout=10) as stalled:
        assert_reply(stalled.read_reply(), 220, b"willi")
        ehlo(stalled)
        assert_reply(stalled.command(b"STARTTLS"), 220, b"2.0.0")
        stalled.send(partial_client_hello(context, "willi.test"))  # ...and nothing more
        stalled_at = time.monotonic()

        rcpt = new_rcpt("meanwhile")
        with smtplib.SMTP(willi.host, willi.port, local_hostname="client.test", timeout=10) as smtp:
            smtp.starttls(context=context)
            assert smtp.sendmail("sender@example.net", [rcpt], b"Subject: meanwhile\r\n\r\nok\r\n") == {}
        assert any(m.rcpt_tos == [rcpt] for m in recorder.wait_for_messages(1))
        assert still_open(stalled.sock), "the stalled session ended before the other one was served"

        assert stalled.expect_closed(timeout=HANDSHAKE_TIMEOUT + 5) == b""
        elapsed = time.monotonic() - stalled_at
    assert HANDSHAKE_TIMEOUT - 0.5 <= elapsed < HANDSHAKE_TIMEOUT + 3, elapsed
    record = willi.wait_for_log(lambda r: r.get("event") == "tls_failed" and "timed out" in r.get("error", ""))
    assert record["client"] == "127.0.0.1"  # the only handshake that times out in this module


# --- protocol versions ------------------------------------------------------------
def _legacy_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A TLS 1.1-only client context and a server context that would allow it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 is deprecated, and that is the point
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        client.minimum_version = ssl.TLSVersion.TLSv1_1
        client.maximum_version = ssl.TLSVersion.TLSv1_1
        client.set_ciphers("DEFAULT:@SECLEVEL=0")
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1_1
        server.set_ciphers("DEFAULT:@SECLEVEL=0")
    return client, server


def _local_openssl_speaks_tls_1_1(pki: Pki) -> bool:
    """Handshake TLS 1.1 in memory against a permissive server: can this OpenSSL at all?"""
    try:
        client, server = _legacy_contexts()
        server.load_cert_chain(str(pki.untrusted_cert), str(pki.untrusted_key))
    except (ssl.SSLError, ValueError, AttributeError):
        return False
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        try:
            if c.version() == "TLSv1.1" and s.version() == "TLSv1.1":
                return True
        except ValueError:
            pass
    return False


def test_a_tls_1_1_client_is_refused(willi, raw, pki):
    if not _local_openssl_speaks_tls_1_1(pki):
        pytest.skip("the local OpenSSL cannot negotiate TLS 1.1 even at SECLEVEL=0")
    client_context, _ = _legacy_contexts()
    seen = len(tls_failures(willi))
    ehlo(raw)
    assert_reply(raw.command(b"STARTTLS"), 220, b"2.0.0")
    with pytest.raises(ssl.SSLError) as refused:
        raw.sock = client_context.wrap_socket(raw.sock, server_hostname="willi.test")
    assert "PROTOCOL_VERSION" in str(refused.value).upper(), refused.value  # the server's alert
    failure = wait_for_new_tls_failure(willi, seen)
    assert "UNSUPPORTED_PROTOCOL" in failure["error"], failure


# --- SIGHUP -----------------------------------------------------------------------
@pytest.fixture
def swappable(launch, recorder, pki, tmp_path) -> tuple[WilliProcess, Path, Path]:
    """A Willi whose certificate files live where the test may replace them."""
    cert, key = tmp_path / "front.crt", tmp_path / "front.key"
    shutil.copyfile(pki.willi_cert, cert)
    shutil.copyfile(pki.willi_key, key)
    willi = launch.willi({
        "WILLI_TLS_CERT": str(cert),
        "WILLI_TLS_KEY": str(key),
        "WILLI_MAPPING_1": f"static:{recorder.address}",
    })
    return willi, cert, key


def _tls_session(willi: WilliProcess, pki: Pki) -> SmtpRawClient:
    client = SmtpRawClient(willi.host, willi.port, timeout=10)
    try:
        assert_reply(client.read_reply(), 220, b"willi")
        ehlo(client)
        start_tls(client, verifying_context(pki))
        ehlo(client)
    except BaseException:
        client.close()
        raise
    return client


def test_sighup_serves_a_new_certificate_to_new_connections_only(swappable, recorder, pki, tmp_path):
    willi, cert_path, key_path = swappable
    renewed_cert, renewed_key = issue_certificate(
        pki, tmp_path, "renewed", ["willi.test", "localhost", ipaddress.IPv4Address("127.0.0.1")])
    assert der_of(renewed_cert) != der_of(pki.willi_cert)

    with _tls_session(willi, pki) as before:
        assert before.sock.getpeercert(binary_form=True) == der_of(pki.willi_cert)

        shutil.copyfile(renewed_cert, cert_path)
        shutil.copyfile(renewed_key, key_path)
        willi.signal(signal.SIGHUP)
        willi.wait_for_log(lambda r: r.get("event") == "reloading")

        with _tls_session(willi, pki) as after:
            assert after.sock.getpeercert(binary_form=True) == der_of(renewed_cert)
            assert_reply(after.command(b"QUIT"), 221, b"2.0.0")

        # The session that was already in TLS goes on with its old keys.
        rcpt = new_rcpt("after-sighup")
        assert_reply(before.command(b"MAIL FROM:<sender@example.net>"), 250, b"2.1.0")
        assert before.command(f"RCPT TO:<{rcpt}>".encode()).code == 250  # aiosmtpd says "250 OK"
        assert before.command(b"DATA").code == 354
        before.send(b"Subject: still here\r\n\r\nold session\r\n.\r\n")
        assert before.read_reply().code == 250
        assert_reply(before.command(b"QUIT"), 221, b"2.0.0")
    message = next(m for m in recorder.wait_for_messages(1) if m.rcpt_tos == [rcpt])
    assert message.content == b"Subject: still here\r\n\r\nold session\r\n"
    assert not any(r.get("event") == "reload_failed" for r in willi.log_lines())


def test_sighup_with_an_unloadable_certificate_keeps_the_old_one_in_force(swappable, pki):
    willi, cert_path, _ = swappable
    cert_path.write_text("not a certificate\n")
    willi.signal(signal.SIGHUP)
    failure = willi.wait_for_log(lambda r: r.get("event") == "reload_failed" and r.get("part") == "tls")
    assert str(cert_path) in failure["error"]
    with _tls_session(willi, pki) as after:
        assert after.sock.getpeercert(binary_form=True) == der_of(pki.willi_cert)


def test_without_a_certificate_starttls_is_neither_offered_nor_accepted(launch, recorder):
    willi = launch.willi({"WILLI_MAPPING_1": f"static:{recorder.address}"})
    with SmtpRawClient(willi.host, willi.port, timeout=10) as client:
        assert_reply(client.read_reply(), 220, b"willi")
        assert b"STARTTLS" not in ehlo(client)
        assert_reply(client.command(b"STARTTLS"), 502, b"5.5.1")
        assert_reply(client.command(b"NOOP"), 250, b"2.0.0")


# --- the log line ---------------------------------------------------------------------
def test_the_transaction_log_line_records_the_client_tls_version_and_cipher(willi, recorder, pki):
    rcpt = new_rcpt("logged-tls")
    with smtplib.SMTP(willi.host, willi.port, local_hostname="client.test", timeout=10) as smtp:
        smtp.starttls(context=verifying_context(pki))
        version, cipher = smtp.sock.version(), smtp.sock.cipher()[0]
        assert smtp.sendmail("sender@example.net", [rcpt], b"Subject: log\r\n\r\nx\r\n") == {}
    record = transaction_for(willi, rcpt)
    assert record["tls"] == f"{version} {cipher}"
    assert record["code"] == "250"

    plain_rcpt = new_rcpt("logged-plain")
    with smtplib.SMTP(willi.host, willi.port, local_hostname="client.test", timeout=10) as smtp:
        assert smtp.sendmail("sender@example.net", [plain_rcpt], b"Subject: log\r\n\r\nx\r\n") == {}
    assert "tls" not in transaction_for(willi, plain_rcpt)
