"""SIGHUP reloads the configuration (issue 13 item 5): the env file is read
again and new sessions get what it says; WILLI_LISTEN keeps its value with a
log line asking for a restart; a reload that fails keeps everything and says
why. Each case is a live Willi, its env file rewritten between the signals.
"""

from __future__ import annotations

import os
import signal
import smtplib
import ssl
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.certs import Pki
from tests.support.net import LOOPBACK_V4, SmtpRawClient, free_port, port_accepts, wait_until
from tests.support.upstream import ScriptableUpstream
from tests.support.willi_process import WilliProcess, write_env_file

SENDER = "sender@client.test"


@pytest.fixture
def upstreams() -> Iterator[tuple[ScriptableUpstream, ScriptableUpstream]]:
    with ScriptableUpstream(hostname="a.test") as a, ScriptableUpstream(hostname="b.test") as b:
        yield a, b


def start_env(tmp_path: Path, upstream: ScriptableUpstream) -> dict[str, str]:
    csv = tmp_path / "upstreams.csv"
    csv.write_text(f"pattern;server;tls_verify\nexample.org;{upstream.address};false\n")
    return {"WILLI_LISTEN": f"{LOOPBACK_V4}:{free_port()}", "WILLI_HOSTNAME": "willi.test",
            "WILLI_SHUTDOWN_TIMEOUT": "2s", "WILLI_MAX_MESSAGE_SIZE": "1MiB",
            "WILLI_MAPPING_1": f"csv:{csv}"}


def reload(willi: WilliProcess, env: dict[str, str], outcome: str) -> dict[str, str]:
    """Rewrite the env file, send SIGHUP, wait for the `outcome` line of this reload."""
    done = len([r for r in willi.log_lines() if r.get("event") in ("reloaded", "reload_failed")])
    write_env_file(willi.env_file, env)
    willi.signal(signal.SIGHUP)
    outcomes = lambda: [r for r in willi.log_lines() if r.get("event") in ("reloaded", "reload_failed")]
    willi.wait_for_log(lambda r: len(outcomes()) > done, 5.0)
    line = outcomes()[done]
    assert line["event"] == outcome, willi.output()
    return line


def ehlo_size(client: SmtpRawClient) -> int:
    assert client.read_reply().code == 220
    reply = client.command("EHLO client.test")
    assert reply.code == 250
    [size] = [line for line in reply.lines if line.startswith(b"SIZE ")]
    return int(size.split()[1])


def rcpt(client: SmtpRawClient, address: str) -> int:
    assert client.command(f"MAIL FROM:<{SENDER}>").code == 250
    code = client.command(f"RCPT TO:<{address}>").code
    assert client.command("RSET").code == 250
    return code


def deliver(client: SmtpRawClient, address: str, body: bytes) -> bytes:
    assert client.command(f"MAIL FROM:<{SENDER}>").code == 250
    assert client.command(f"RCPT TO:<{address}>").code == 250
    assert client.command("DATA").code == 354
    client.send(body + b".\r\n")
    return client.read_reply().raw


def test_sighup_applies_a_new_size_and_a_new_mapping_to_new_sessions(
    upstreams: tuple[ScriptableUpstream, ScriptableUpstream], tmp_path: Path
) -> None:
    a, b = upstreams
    env = start_env(tmp_path, a)
    with WilliProcess(env, tmp_path) as willi:
        with SmtpRawClient(willi.host, willi.port) as before:
            assert ehlo_size(before) == 1024**2
            assert rcpt(before, "user@other.example") == 554  # no route yet

            line = reload(willi, {**env, "WILLI_MAX_MESSAGE_SIZE": "2MiB",
                                  "WILLI_MAPPING_2": f"static:{b.address}"}, "reloaded")
            assert line["changed"] == "WILLI_MAX_MESSAGE_SIZE,WILLI_MAPPING_2"

            # a new session: the new SIZE in EHLO, and other.example routes to b
            with SmtpRawClient(willi.host, willi.port) as after:
                assert ehlo_size(after) == 2 * 1024**2
                assert deliver(after, "user@other.example", b"Subject: new route\r\n\r\n1\r\n")[:3] == b"250"
                assert deliver(after, "user@example.org", b"Subject: old route\r\n\r\n2\r\n")[:3] == b"250"
            # the session from before the reload was not dropped
            assert deliver(before, "user@example.org", b"Subject: survivor\r\n\r\n3\r\n")[:3] == b"250"
        assert willi.process.poll() is None
    assert [m.body for m in b.messages] == [b"Subject: new route\r\n\r\n1\r\n"]
    assert sorted(m.body for m in a.messages) == [b"Subject: old route\r\n\r\n2\r\n",
                                                 b"Subject: survivor\r\n\r\n3\r\n"]


def test_a_new_listen_address_needs_a_restart_and_the_old_one_stays(
    upstreams: tuple[ScriptableUpstream, ScriptableUpstream], tmp_path: Path
) -> None:
    env = start_env(tmp_path, upstreams[0])
    other = free_port()
    with WilliProcess(env, tmp_path) as willi:
        line = reload(willi, {**env, "WILLI_LISTEN": f"{LOOPBACK_V4}:{other}",
                              "WILLI_MAX_RECIPIENTS": "3"}, "reloaded")
        assert line["changed"] == "WILLI_MAX_RECIPIENTS"
        [restart] = [r for r in willi.log_lines() if r.get("event") == "restart_needed"]
        assert restart["key"] == "WILLI_LISTEN" and restart["level"] == "warning"
        assert not port_accepts(LOOPBACK_V4, other)
        with SmtpRawClient(willi.host, willi.port) as client:
            assert ehlo_size(client) == 1024**2
            assert client.command(f"MAIL FROM:<{SENDER}>").code == 250
            codes = [client.command(f"RCPT TO:<u{n}@example.org>").code for n in range(4)]
            assert codes == [250, 250, 250, 452]


@pytest.mark.parametrize(
    ("change", "part", "named"),
    [
        ({"WILLI_MAX_MESSAGE_SIZE": "lots"}, "config", "WILLI_MAX_MESSAGE_SIZE"),
        ({"WILLI_MAX_MESAGE_SIZE": "2MiB"}, "config", "WILLI_MAX_MESAGE_SIZE"),
        ({"WILLI_MAX_MESSAGE_SIZE": "2MiB", "WILLI_MAPPING_2": "csv:/nonexistent/routes.csv"},
         "mappings", "/nonexistent/routes.csv"),
        ({"WILLI_MAX_MESSAGE_SIZE": "2MiB", "WILLI_TLS_CERT": "{bad}", "WILLI_TLS_KEY": "{bad}"},
         "tls", ""),
    ],
    ids=["bad-value", "unknown-key", "missing-csv", "bad-certificate"],
)
def test_a_reload_that_fails_keeps_everything_and_logs_why(
    upstreams: tuple[ScriptableUpstream, ScriptableUpstream], tmp_path: Path,
    change: dict[str, str], part: str, named: str
) -> None:
    bad = tmp_path / "not-a-certificate.pem"
    bad.write_text("no certificate here\n")
    change = {key: value.replace("{bad}", str(bad)) for key, value in change.items()}
    a, _ = upstreams
    env = start_env(tmp_path, a)
    with WilliProcess(env, tmp_path) as willi:
        line = reload(willi, {**env, **change}, "reload_failed")
        assert line["part"] == part and line["level"] == "error"
        assert named in line["error"]
        # nothing of the new file is in force: the old size, the old routes, no STARTTLS
        with SmtpRawClient(willi.host, willi.port) as client:
            assert ehlo_size(client) == 1024**2
            assert deliver(client, "user@example.org", b"Subject: still\r\n\r\nok\r\n")[:3] == b"250"
        assert willi.process.poll() is None
        # and a good file afterwards is taken
        assert reload(willi, {**env, "WILLI_MAX_MESSAGE_SIZE": "3MiB"}, "reloaded")["changed"] == \
            "WILLI_MAX_MESSAGE_SIZE"
    assert [m.body for m in a.messages] == [b"Subject: still\r\n\r\nok\r\n"]


def test_a_worker_started_after_a_reload_serves_the_reloaded_configuration(
    upstreams: tuple[ScriptableUpstream, ScriptableUpstream], tmp_path: Path
) -> None:
    env = {**start_env(tmp_path, upstreams[0]), "WILLI_WORKERS": "2"}
    with WilliProcess(env, tmp_path) as willi:
        listening = lambda: {r["worker"] for r in willi.log_lines() if r.get("event") == "listening"}
        wait_until(lambda: listening() == {"0", "1"}, 5.0, message="two workers listening")
        write_env_file(willi.env_file, {**env, "WILLI_MAX_MESSAGE_SIZE": "2MiB"})
        willi.signal(signal.SIGHUP)
        wait_until(lambda: len([r for r in willi.log_lines() if r.get("event") == "reloaded"]) == 2, 5.0,
                   message="both workers reloaded")
        victim = willi.children()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in willi.children() and len(willi.children()) == 2, 5.0,
                   message="the worker replaced")
        willi.wait_until_ready(5.0)
        # whichever worker takes the connection, it has the reloaded size
        for _ in range(12):
            with SmtpRawClient(willi.host, willi.port) as client:
                assert ehlo_size(client) == 2 * 1024**2


def test_a_certificate_set_by_a_reload_turns_starttls_on_for_new_sessions(
    upstreams: tuple[ScriptableUpstream, ScriptableUpstream], tmp_path: Path, pki: Pki
) -> None:
    env = start_env(tmp_path, upstreams[0])
    with WilliProcess(env, tmp_path) as willi:
        with smtplib.SMTP(willi.host, willi.port, local_hostname="client.test", timeout=10) as plain:
            plain.ehlo()
            assert not plain.has_extn("starttls")
        reload(willi, {**env, "WILLI_TLS_CERT": str(pki.willi_cert), "WILLI_TLS_KEY": str(pki.willi_key)},
               "reloaded")
        # client says STARTTLS, verifying Willi's certificate against the test CA
        with smtplib.SMTP(willi.host, willi.port, local_hostname="client.test", timeout=10) as smtp:
            smtp.ehlo()
            assert smtp.has_extn("starttls")
            smtp.starttls(context=ssl.create_default_context(cafile=str(pki.ca_cert)))
            assert smtp.sendmail(SENDER, ["user@example.org"], b"Subject: over TLS\r\n\r\nhi\r\n") == {}
    assert [m.body for m in upstreams[0].messages] == [b"Subject: over TLS\r\n\r\nhi\r\n"]
