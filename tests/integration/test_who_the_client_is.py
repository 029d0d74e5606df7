"""Who the client is, end to end, with real upstreams (issue 10): a private
Postfix believes Willi's XCLIENT and PROXY headers and logs Willi in through
Dovecot's SASL; Dovecot's LMTP believes Willi's XCLIENT.

The client connects from 127.0.0.2 and Willi from 127.0.0.1, so every
assertion can tell the client's address from Willi's. Each test reads the
delivered message itself: its Received header is what the upstream believed.
"""

from __future__ import annotations

import os
import smtplib
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.certs import Pki
from tests.support.dovecot import DovecotServer, dovecot_available
from tests.support.postfix import DOMAIN, PostfixServer, postfix_available
from tests.support.willi_process import WilliProcess

CLIENT_ADDR = "127.0.0.2"
CLIENT_HELO = "client.example"
SENDER = "alice@sender.example"
SASL_USER, SASL_PASSWORD = "willi", "s3cret-Pa55"


def _require(why: str | None) -> None:
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(why)  # CI installs and runs as root: missing is a failure there
    pytest.skip(why)


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotServer]:
    _require(dovecot_available())
    with DovecotServer({SASL_USER: SASL_PASSWORD}) as server:
        yield server


@pytest.fixture(scope="module")
def postfix(dovecot: DovecotServer, pki: Pki) -> Iterator[PostfixServer]:
    _require(postfix_available())
    with PostfixServer(tls=(pki.upstream_cert, pki.upstream_key), sasl_socket=dovecot.auth_socket) as server:
        yield server


def routes(tmp_path: Path, server: str, tls_verify: bool = False) -> str:
    table = tmp_path / f"routes-{abs(hash(server))}.csv"
    table.write_text(f"pattern;server;tls_verify\n{DOMAIN};{server};{str(tls_verify).lower()}\n")
    return f"csv:{table}"


def send(willi, rcpt: str, *, hello: str = "ehlo", source: str = CLIENT_ADDR) -> dict:
    """One message from `source` (127.0.0.2) through Willi; smtplib's refusals raise."""
    message = f"Subject: {rcpt}\r\n\r\nfor {rcpt}\r\n".encode()
    with smtplib.SMTP(willi.host, willi.port, local_hostname=CLIENT_HELO, timeout=15,
                      source_address=(source, 0)) as client:
        getattr(client, hello)()
        return client.sendmail(SENDER, [rcpt], message)


def delivered_to(messages: list, rcpt: str):
    found = [m for m in messages if m["Subject"] == rcpt]
    assert len(found) == 1, [m["Subject"] for m in messages]
    return found[0]


def received(message) -> str:
    """The topmost Received header (the upstream's own), unfolded."""
    return " ".join(str(message.get_all("Received")[0]).split())


# --- Postfix believes XCLIENT ---------------------------------------------------------
def test_postfix_received_header_names_the_clients_helo_and_address(launch, postfix, tmp_path) -> None:
    willi = launch.willi({"WILLI_MAPPING_1": routes(tmp_path, postfix.route("xclient")),
                          "WILLI_XCLIENT": "required"})
    assert send(willi, f"xclient@{DOMAIN}") == {}
    header = received(delivered_to(postfix.wait_for_messages(1), f"xclient@{DOMAIN}"))
    assert header.startswith(f"from {CLIENT_HELO} (") and f"[{CLIENT_ADDR}])" in header, header
    assert "willi.test" not in header and "127.0.0.1" not in header
    assert "with ESMTP" in header


def test_postfix_hears_helo_from_a_client_that_said_helo(launch, postfix, tmp_path) -> None:
    willi = launch.willi({"WILLI_MAPPING_1": routes(tmp_path, postfix.route("xclient"))})
    rcpt = f"helo-client@{DOMAIN}"
    before = len(postfix.messages())
    assert send(willi, rcpt, hello="helo") == {}
    header = received(delivered_to(postfix.wait_for_messages(before + 1), rcpt))
    assert header.startswith(f"from {CLIENT_HELO} (") and f"[{CLIENT_ADDR}])" in header, header
    assert "with SMTP " in header  # PROTO stayed what the client spoke


def test_without_xclient_postfix_sees_willi_which_is_what_xclient_fixes(launch, postfix, tmp_path) -> None:
    willi = launch.willi({"WILLI_MAPPING_1": routes(tmp_path, postfix.route("xclient")), "WILLI_XCLIENT": "off"})
    rcpt = f"no-xclient@{DOMAIN}"
    before = len(postfix.messages())
    assert send(willi, rcpt) == {}
    header = received(delivered_to(postfix.wait_for_messages(before + 1), rcpt))
    assert header.startswith("from willi.test (") and "[127.0.0.1])" in header, header


# --- Postfix believes Willi's PROXY header ------------------------------------------------
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_postfix_with_upstream_proxy_protocol_takes_willis_header(launch, postfix, tmp_path, version) -> None:
    willi = launch.willi({"WILLI_MAPPING_1": routes(tmp_path, postfix.route("proxy")),
                          "WILLI_UPSTREAM_PROXY_PROTOCOL": version})
    rcpt = f"proxy-{version}@{DOMAIN}"
    before = len(postfix.messages())
    assert send(willi, rcpt) == {}
    header = received(delivered_to(postfix.wait_for_messages(before + 1), rcpt))
    assert f"[{CLIENT_ADDR}])" in header and "127.0.0.1" not in header, header


def test_the_proxy_header_goes_before_tls_on_smtps(launch, postfix, tmp_path, pki) -> None:
    willi = launch.willi({"WILLI_MAPPING_1": routes(tmp_path, f"smtps://{postfix.route('smtps-proxy')}", True),
                          "WILLI_UPSTREAM_TLS_CA": str(pki.ca_cert), "WILLI_UPSTREAM_PROXY_PROTOCOL": "v1"})
    rcpt = f"smtps-proxy@{DOMAIN}"
    before = len(postfix.messages())
    assert send(willi, rcpt) == {}
    header = received(delivered_to(postfix.wait_for_messages(before + 1), rcpt))
    assert f"[{CLIENT_ADDR}])" in header and "with ESMTPS" in header, header


@pytest.mark.parametrize("role, env", [("proxy", {"WILLI_UPSTREAM_PROXY_PROTOCOL": "v2"}), ("xclient", {})],
                         ids=["proxy-header", "xclient"])
def test_a_connection_that_named_one_client_never_carries_the_next(launch, postfix, tmp_path, role, env) -> None:
    willi = launch.willi({"WILLI_MAPPING_1": routes(tmp_path, postfix.route(role)),
                          "WILLI_UPSTREAM_POOL_IDLE": "30s", **env})
    first, second = f"first-{role}@{DOMAIN}", f"second-{role}@{DOMAIN}"
    before = len(postfix.messages())
    assert send(willi, first, source="127.0.0.2") == {}
    assert send(willi, second, source="127.0.0.3") == {}
    messages = postfix.wait_for_messages(before + 2)
    assert "[127.0.0.2])" in received(delivered_to(messages, first))
    assert "[127.0.0.3])" in received(delivered_to(messages, second))  # a reused link would say .2


def test_a_postfix_that_expects_a_proxy_header_refuses_willi_without_one(launch, postfix, tmp_path) -> None:
    willi = launch.willi({"WILLI_MAPPING_1": routes(tmp_path, postfix.route("proxy"))})
    with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        send(willi, f"no-header@{DOMAIN}")
    [(code, _)] = caught.value.recipients.values()
    assert 400 <= code < 500


# --- Postfix logs Willi in through Dovecot's SASL ------------------------------------------
def _auth_willi(launch, postfix, tmp_path, pki: Pki, password: str, starttls: str = "required"):
    return launch.willi({
        "WILLI_MAPPING_1": routes(tmp_path, postfix.route("sasl"), tls_verify=True),
        "WILLI_UPSTREAM_TLS_CA": str(pki.ca_cert),
        "WILLI_UPSTREAM_STARTTLS": starttls,
        "WILLI_UPSTREAM_AUTH": "plain",
        "WILLI_UPSTREAM_AUTH_USER": SASL_USER,
        "WILLI_UPSTREAM_AUTH_PASSWORD": password,
    })


def test_auth_plain_over_starttls_lets_postfix_relay_for_willi(launch, postfix, tmp_path, pki) -> None:
    willi = _auth_willi(launch, postfix, tmp_path, pki, SASL_PASSWORD)
    rcpt = f"sasl@{DOMAIN}"
    before = len(postfix.messages())
    assert send(willi, rcpt) == {}
    message = delivered_to(postfix.wait_for_messages(before + 1), rcpt)
    assert "with ESMTPSA" in received(message)  # S: TLS, A: authenticated
    assert SASL_PASSWORD not in willi.output()


def test_wrong_credentials_fail_the_target_with_a_clear_line_and_no_password(launch, postfix, tmp_path, pki) -> None:
    wrong = "not-the-Pa55word"
    willi = _auth_willi(launch, postfix, tmp_path, pki, wrong)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        send(willi, f"wrong-password@{DOMAIN}")
    [(code, _)] = caught.value.recipients.values()
    assert code == 451
    line = willi.wait_for_log(lambda r: r.get("event") == "upstream_failed")
    assert "AUTH PLAIN" in line["error"] and SASL_USER in line["error"] and "535" in line["error"], line
    assert wrong not in willi.output()


def test_auth_plain_is_never_sent_without_tls(launch, postfix, tmp_path, pki) -> None:
    willi = _auth_willi(launch, postfix, tmp_path, pki, SASL_PASSWORD, starttls="off")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        send(willi, f"plaintext@{DOMAIN}")
    [(code, _)] = caught.value.recipients.values()
    assert code == 451
    line = willi.wait_for_log(lambda r: r.get("event") == "upstream_failed")
    assert "needs TLS" in line["error"], line


def test_check_never_prints_the_password(tmp_path: Path) -> None:
    result = WilliProcess.run_cli("--check", env={
        "WILLI_MAPPING_1": "static:127.0.0.1:2525", "WILLI_UPSTREAM_STARTTLS": "required",
        "WILLI_UPSTREAM_AUTH": "plain", "WILLI_UPSTREAM_AUTH_USER": SASL_USER,
        "WILLI_UPSTREAM_AUTH_PASSWORD": SASL_PASSWORD}, tmp_path=tmp_path)
    assert result.returncode == 0, result
    assert SASL_PASSWORD not in result.stdout + result.stderr


# --- Dovecot's LMTP believes XCLIENT ----------------------------------------------------
def test_dovecot_lmtp_delivery_names_the_client_address_from_xclient(launch, dovecot, tmp_path) -> None:
    willi = launch.willi({"WILLI_MAPPING_1": routes(tmp_path, f"lmtp://{dovecot.host}:{dovecot.port}"),
                          "WILLI_XCLIENT": "required"})
    rcpt = f"lmtp-user@{DOMAIN}"
    assert send(willi, rcpt) == {}
    header = received(delivered_to(dovecot.wait_for_messages("lmtp-user", 1), rcpt))
    assert header.startswith(f"from {CLIENT_HELO} ([{CLIENT_ADDR}])") and "with LMTP" in header, header
    assert "127.0.0.1" not in header
