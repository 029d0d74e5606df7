"""Self-tests of the test support: the tools must work before they judge Willi."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest

from .net import SmtpRawClient, free_port, wait_until
from .recorder import RecordingUpstream
from .sink import SmtpSink, find_smtp_sink
from .upstream import (
    XCLIENT_CAPABILITY,
    Action,
    Delay,
    FaultScript,
    ScriptableUpstream,
    XclientReply,
)
from .willi_process import WilliProcess, parse_listen, parse_log_line

BODY = b"Subject: test\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\nend\r\n"
STUFFED = b"Subject: test\r\n\r\nline one\r\n..leading dot\r\n...two dots\r\nend\r\n"


def raw_session(client: SmtpRawClient, body: bytes = STUFFED) -> list[int]:
    """Greeting, EHLO, one transaction pipelined; the reply codes."""
    codes = [client.read_reply().code]
    codes.append(client.command("EHLO client.test").code)
    client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    codes += [r.code for r in client.read_replies(3)]
    client.send(body + b".\r\n")
    codes.append(client.read_reply().code)
    return codes


# -- net ----------------------------------------------------------------
def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_wait_until_returns_value_and_times_out():
    assert wait_until(lambda: 42, timeout=0.1) == 42
    with pytest.raises(AssertionError, match="never"):
        wait_until(lambda: False, timeout=0.05, message="never")


def test_raw_client_parses_multiline_reply():
    with ScriptableUpstream() as upstream, SmtpRawClient(upstream.host, upstream.port) as c:
        code, lines, raw = c.read_reply()
        assert (code, lines) == (220, [b"upstream.test ESMTP"])
        reply = c.command("EHLO me")
        assert reply.code == 250
        assert reply.lines[0] == b"upstream.test" and b"PIPELINING" in reply.lines
        assert reply.raw.startswith(b"250-upstream.test\r\n")
        assert reply.raw.endswith(b"250 ENHANCEDSTATUSCODES\r\n")
        assert c.command("QUIT").code == 221
        c.expect_closed(timeout=2)


def test_raw_client_times_out_on_silence():
    upstream = ScriptableUpstream(faults=FaultScript(stall_before_greeting=True))
    with upstream, SmtpRawClient(upstream.host, upstream.port) as c:
        with pytest.raises(AssertionError, match="timed out"):
            c.read_reply(timeout=0.1)
        upstream.release.set()
        assert c.read_reply().code == 220


# -- ScriptableUpstream -------------------------------------------------
def test_upstream_records_message_byte_exact_via_smtplib():
    with ScriptableUpstream() as upstream:
        with smtplib.SMTP(upstream.host, upstream.port, timeout=10) as smtp:
            smtp.sendmail("a@example.org", ["b@example.net", "c@example.net"], BODY,
                          mail_options=["BODY=8BITMIME"])
        (message,) = upstream.wait_for_messages(1)
    assert message.raw == STUFFED
    assert message.body == BODY
    assert message.mail_from == b"a@example.org"
    assert message.mail_options == [b"size=%d" % len(BODY), b"BODY=8BITMIME"]
    assert message.rcpt_tos == [b"b@example.net", b"c@example.net"]
    assert message.reply == b"250 2.0.0 Ok: queued as 1\r\n" and message.accepted
    assert upstream.verbs[:6] == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "."]


def test_upstream_pipelined_raw_session_and_empty_body():
    with ScriptableUpstream() as upstream, SmtpRawClient(upstream.host, upstream.port) as c:
        assert raw_session(c, body=b"") == [220, 250, 250, 250, 354, 250]
        (message,) = upstream.wait_for_messages(1)
        assert message.raw == b""


def test_upstream_scripted_rcpt_reject():
    reject = b"550 5.1.1 <nobody@example.net>: No such user\r\n"
    with ScriptableUpstream(replies={"RCPT": reject}) as upstream:
        with smtplib.SMTP(upstream.host, upstream.port, timeout=10) as smtp:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
                smtp.sendmail("a@example.org", ["nobody@example.net"], BODY)
    assert info.value.recipients["nobody@example.net"][0] == 550
    assert upstream.messages == []


def test_upstream_on_command_hook_and_multiline_reply():
    def hook(session, line):
        if line.startswith(b"RCPT") and b"slow" in line:
            return Delay(0.05, b"451-4.3.0 first\r\n451 4.3.0 second\r\n")
        return None

    with ScriptableUpstream(on_command=hook) as upstream, SmtpRawClient(upstream.host, upstream.port) as c:
        c.read_reply()
        c.command("HELO me")
        c.command("MAIL FROM:<a@x>")
        reply = c.command("RCPT TO:<slow@y>")
        assert (reply.code, reply.lines) == (451, [b"4.3.0 first", b"4.3.0 second"])
        assert c.command("RCPT TO:<fast@y>").code == 250


def test_upstream_closes_mid_body_and_counts_abort():
    upstream = ScriptableUpstream(faults=FaultScript(close_after_body_bytes=100))
    with upstream, SmtpRawClient(upstream.host, upstream.port) as c:
        c.read_reply()
        c.command("EHLO me"), c.command("MAIL FROM:<a@x>"), c.command("RCPT TO:<b@y>")
        assert c.command("DATA").code == 354
        c.send(b"x" * 1000 + b"\r\n")
        c.expect_closed(timeout=5)
        upstream.wait_for_aborted(1)
        assert upstream.messages == []


def test_upstream_counts_client_vanishing_mid_body():
    with ScriptableUpstream() as upstream:
        with SmtpRawClient(upstream.host, upstream.port) as c:
            c.read_reply()
            c.command("EHLO me"), c.command("MAIL FROM:<a@x>"), c.command("RCPT TO:<b@y>")
            assert c.command("DATA").code == 354
            c.send(b"partial body\r\n")
        upstream.wait_for_aborted(1)
        upstream.wait_for_sessions_ended(1)


def test_upstream_close_on_command_and_greeting_override():
    with ScriptableUpstream(faults=FaultScript(close_on="MAIL")) as upstream:
        with SmtpRawClient(upstream.host, upstream.port) as c:
            c.read_reply(), c.command("EHLO me")
            c.send(b"MAIL FROM:<a@x>\r\n")
            assert c.expect_closed(timeout=5) == b""
    with ScriptableUpstream(greeting=b"421 4.3.2 busy\r\n") as upstream:
        with SmtpRawClient(upstream.host, upstream.port) as c:
            assert c.expect_closed(timeout=5) == b"421 4.3.2 busy\r\n"


def test_upstream_stalls_after_final_dot_and_releases():
    with ScriptableUpstream(faults=FaultScript(stall_on=".")) as upstream:
        with SmtpRawClient(upstream.host, upstream.port) as c:
            c.read_reply(), c.command("EHLO me"), c.command("MAIL FROM:<a@x>")
            c.command("RCPT TO:<b@y>"), c.command("DATA")
            c.send(b"hello\r\n.\r\n")
            upstream.wait_for_stall()
            with pytest.raises(AssertionError, match="timed out"):
                c.read_reply(timeout=0.1)
            upstream.release.set()
            assert c.read_reply().code == 250
        assert upstream.wait_for_messages(1)[0].raw == b"hello\r\n"


def test_upstream_stall_ends_at_stop():
    upstream = ScriptableUpstream(faults=FaultScript(stall_after_body_bytes=1))
    with upstream, SmtpRawClient(upstream.host, upstream.port) as c:
        c.read_reply(), c.command("EHLO me"), c.command("MAIL FROM:<a@x>")
        c.command("RCPT TO:<b@y>"), c.command("DATA")
        c.send(b"some body bytes\r\n")
        upstream.wait_for_stall()
    assert upstream.aborted_bodies == 1


def test_upstream_slow_reader_bounds_rate():
    faults = FaultScript(body_rate=256 * 1024, body_chunk=4096)
    with ScriptableUpstream(faults=faults, rcvbuf=8192) as upstream:
        with smtplib.SMTP(upstream.host, upstream.port, timeout=10) as smtp:
            smtp.sendmail("a@x", ["b@y"], b"x" * 64 * 1024 + b"\r\n")
        assert len(upstream.wait_for_messages(1)[0].raw) == 64 * 1024 + 2


@pytest.mark.parametrize(
    "mode, code", [(XclientReply.POSTFIX, 220), (XclientReply.SINK, 250), (b"550 5.7.0 no\r\n", 550)]
)
def test_upstream_xclient_modes(mode, code):
    caps = ["PIPELINING", XCLIENT_CAPABILITY]
    with ScriptableUpstream(capabilities=caps, xclient_reply=mode) as upstream:
        with SmtpRawClient(upstream.host, upstream.port) as c:
            c.read_reply()
            assert b"XCLIENT NAME ADDR PORT PROTO HELO" in c.command("EHLO proxy").lines
            assert c.command("XCLIENT ADDR=192.0.2.1 PORT=4711 HELO=mx.example").code == code
            assert c.command("EHLO proxy").code == 250
            c.command("MAIL FROM:<a@x>"), c.command("RCPT TO:<b@y>"), c.command("DATA")
            c.send(b"hi\r\n.\r\n")
            assert c.read_reply().code == 250
        (message,) = upstream.wait_for_messages(1)
    assert upstream.xclient_lines == [b"XCLIENT ADDR=192.0.2.1 PORT=4711 HELO=mx.example"]
    expected = {"ADDR": b"192.0.2.1", "PORT": b"4711", "HELO": b"mx.example"} if code < 300 else {}
    assert message.xclient == expected


def test_upstream_bdat_with_chunking():
    caps = ["PIPELINING", "CHUNKING"]
    with ScriptableUpstream(capabilities=caps) as upstream, SmtpRawClient(upstream.host, upstream.port) as c:
        c.read_reply(), c.command("EHLO me"), c.command("MAIL FROM:<a@x>"), c.command("RCPT TO:<b@y>")
        c.send(b"BDAT 5\r\n.abc\nBDAT 3 LAST\r\nxyz")
        assert [r.code for r in c.read_replies(2)] == [250, 250]
        (message,) = upstream.wait_for_messages(1)
        assert (message.via, message.raw, message.body) == ("BDAT", b".abc\nxyz", b".abc\nxyz")


def test_upstream_lmtp_answers_per_recipient():
    with ScriptableUpstream(lmtp=True, replies={}) as upstream, SmtpRawClient(upstream.host, upstream.port) as c:
        c.read_reply(), c.command("LHLO me"), c.command("MAIL FROM:<a@x>")
        c.command("RCPT TO:<b@y>"), c.command("RCPT TO:<c@y>"), c.command("DATA")
        c.send(b"hi\r\n.\r\n")
        assert [r.code for r in c.read_replies(2)] == [250, 250]


def test_upstream_many_concurrent_sessions():
    with ScriptableUpstream() as upstream:
        errors: list[BaseException] = []

        def send(i: int) -> None:
            try:
                with smtplib.SMTP(upstream.host, upstream.port, timeout=10) as smtp:
                    smtp.sendmail("a@x", [f"r{i}@y"], b"body %d\r\n" % i)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert errors == []
        upstream.wait_for_messages(20)
        assert len(upstream.wait_for_sessions(20)) == 20


def test_upstream_first_session_only_faults():
    faults = FaultScript(close_after_greeting=True, sessions={1})
    with ScriptableUpstream(faults=faults) as upstream:
        with SmtpRawClient(upstream.host, upstream.port) as c:
            assert c.expect_closed(timeout=5).startswith(b"220")
        with smtplib.SMTP(upstream.host, upstream.port, timeout=10) as smtp:
            smtp.sendmail("a@x", ["b@y"], b"ok\r\n")
        upstream.wait_for_messages(1)


def test_upstream_action_close_from_hook():
    hook = lambda session, line: Action.CLOSE if line.startswith(b"DATA") else None
    with ScriptableUpstream(on_command=hook) as upstream, SmtpRawClient(upstream.host, upstream.port) as c:
        c.read_reply(), c.command("EHLO me"), c.command("MAIL FROM:<a@x>"), c.command("RCPT TO:<b@y>")
        c.send(b"DATA\r\n")
        c.expect_closed(timeout=5)


# -- RecordingUpstream --------------------------------------------------
def test_recording_upstream_receives_via_smtplib():
    with RecordingUpstream() as recorder:
        with smtplib.SMTP(recorder.host, recorder.port, timeout=10) as smtp:
            smtp.sendmail("a@example.org", ["b@example.net"], BODY, mail_options=["BODY=8BITMIME"])
        (message,) = recorder.wait_for_messages(1)
    assert message.mail_from == "a@example.org"
    assert message.rcpt_tos == ["b@example.net"]
    assert message.content == BODY
    assert "BODY=8BITMIME" in message.mail_options
    assert message.tls is False


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_recording_upstream_starttls(tls_files):
    cert, key = tls_files
    client_context = ssl.create_default_context(cafile=str(cert))
    with RecordingUpstream(tls_context=_server_context(cert, key)) as recorder:
        with smtplib.SMTP(recorder.host, recorder.port, timeout=10) as smtp:
            smtp.starttls(context=client_context)
            smtp.sendmail("a@x", ["b@y"], b"secret\r\n")
        (message,) = recorder.wait_for_messages(1)
    assert message.tls and message.content == b"secret\r\n"


def test_recording_upstream_implicit_tls(tls_files):
    cert, key = tls_files
    client_context = ssl.create_default_context(cafile=str(cert))
    with RecordingUpstream(ssl_context=_server_context(cert, key)) as recorder:
        with smtplib.SMTP_SSL(recorder.host, recorder.port, timeout=10, context=client_context) as smtp:
            smtp.sendmail("a@x", ["b@y"], b"tls\r\n")
        (message,) = recorder.wait_for_messages(1)
    assert message.content == b"tls\r\n"


# -- SmtpSink -----------------------------------------------------------
def test_smtp_sink_receives_and_dumps(tmp_path: Path):
    find_smtp_sink()
    with SmtpSink(tmp_path) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
            code, caps = smtp.ehlo("client.test")
            assert b"XCLIENT" in caps
            smtp.sendmail("a@example.org", ["b@example.net", "c@example.net"], BODY)
        (message,) = sink.wait_for_messages(1)
        pid = sink.pid
    assert message.mail_args == "<a@example.org>"
    assert message.rcpt_args == ["<b@example.net>", "<c@example.net>"]
    assert message.helo == "client.test"
    assert message.content_crlf == BODY
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- WilliProcess -------------------------------------------------------
STAND_IN = textwrap.dedent(
    '''
    import signal, socket, sys, threading
    from dotenv import dotenv_values
    if "--version" in sys.argv:
        print("willi stand-in 0.0"); sys.exit(0)
    config = dotenv_values(sys.argv[sys.argv.index("--config") + 1])
    if "--check" in sys.argv:
        print("bad" if config.get("WILLI_BAD") else "ok"); sys.exit(1 if config.get("WILLI_BAD") else 0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    listeners = []
    for item in config["WILLI_LISTEN"].split(","):
        host, _, port = item.rpartition(":")
        host = host.strip("[]")
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port))); s.listen(); s.settimeout(0.05)
        listeners.append(s)
    print('level=info msg="listening" text="a \\\\"quoted\\\\" word" n=%d' % len(listeners), flush=True)
    while not stop.is_set():
        for s in listeners:
            try:
                conn, peer = s.accept()
            except socket.timeout:
                continue
            with conn:
                conn.sendall(b"220 standin ESMTP\\r\\n")
                conn.settimeout(2)
                if conn.recv(100).upper().startswith(b"QUIT"):
                    conn.sendall(b"221 2.0.0 Bye\\r\\n")
            print("level=info msg=session client=%s" % peer[0], flush=True)
    print("level=info msg=stopped", flush=True)
    '''
)


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    script = tmp_path / "standin.py"
    script.write_text(STAND_IN)
    return script


def test_willi_process_with_stand_in(tmp_path: Path, stand_in: Path):
    listen = f"127.0.0.1:{free_port()},[::1]:{free_port('::1')}"
    env = {"WILLI_LISTEN": listen, "WILLI_MAPPING_1": "static:127.0.0.1:25"}
    with WilliProcess(env, tmp_path, script=stand_in) as willi:
        assert willi.port == parse_listen(listen)[0][1]
        assert willi.rss_kib() > 0
        record = willi.wait_for_log(lambda r: r.get("msg") == "listening")
        assert record["text"] == 'a "quoted" word' and record["n"] == "2"
        willi.wait_for_log(lambda r: r.get("msg") == "session")
        with SmtpRawClient(willi.host, willi.port) as c:
            assert c.read_reply().code == 220
        willi.signal(signal.SIGTERM)
        assert willi.wait(10) == 0
        assert willi.stop() == 0
    assert willi.log_lines()[-1]["msg"] == "stopped"


def test_willi_process_reports_early_exit(tmp_path: Path):
    script = tmp_path / "crash.py"
    script.write_text("import sys; print('WILLI_LISTEN: bad value', file=sys.stderr); sys.exit(2)\n")
    with pytest.raises(RuntimeError, match="bad value"):
        WilliProcess({"WILLI_LISTEN": f"127.0.0.1:{free_port()}"}, tmp_path, script=script).start()


def test_willi_run_cli(stand_in: Path):
    result = WilliProcess.run_cli("--version", script=stand_in)
    assert isinstance(result, subprocess.CompletedProcess)
    assert result.stdout.strip() == "willi stand-in 0.0"
    result = WilliProcess.run_cli("--check", env={"WILLI_BAD": "x y"}, script=stand_in)
    assert (result.returncode, result.stdout.strip()) == (1, "bad")


def test_parse_log_line_logfmt_and_json():
    assert parse_log_line('a=1 b="x \\"y\\"" c=') == {"_raw": 'a=1 b="x \\"y\\"" c=', "a": "1", "b": 'x "y"', "c": ""}
    assert parse_log_line('{"a": 1}')["a"] == 1
