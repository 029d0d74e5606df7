"""The private Postfix and Dovecot fixtures themselves: each starts on its
ports, does what the integration tests rely on, and stops leaving no process
and no directory behind. Spoken to with smtplib, no Willi in between."""

from __future__ import annotations

import os
import smtplib
import ssl

import pytest

from .certs import Pki
from .dovecot import DovecotServer, dovecot_available
from .net import port_accepts
from .postfix import DOMAIN, PostfixServer, postfix_available

USER, PASSWORD = "fixture", "fixture-Pa55"


def _require(why: str | None) -> None:
    if why is not None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(why)


@pytest.fixture(scope="module")
def servers(pki: Pki):
    _require(postfix_available() or dovecot_available())
    with DovecotServer({USER: PASSWORD}) as dovecot:
        with PostfixServer(tls=(pki.upstream_cert, pki.upstream_key), sasl_socket=dovecot.auth_socket) as postfix:
            yield postfix, dovecot


def test_postfix_listens_on_every_role_and_the_xclient_one_trusts_only_its_own_host(servers) -> None:
    postfix, _ = servers
    assert set(postfix.ports) == {"xclient", "proxy", "smtps-proxy", "sasl"}
    with smtplib.SMTP(postfix.host, postfix.ports["xclient"], timeout=10) as smtp:
        smtp.ehlo("fixture.test")
        assert smtp.has_extn("xclient")
    with smtplib.SMTP(postfix.host, postfix.ports["sasl"], timeout=10) as smtp:
        smtp.ehlo("fixture.test")
        assert not smtp.has_extn("xclient")


def test_the_sasl_port_relays_only_after_login_and_offers_auth_only_over_tls(servers, pki: Pki) -> None:
    postfix, _ = servers
    with smtplib.SMTP(postfix.host, postfix.ports["sasl"], timeout=10) as smtp:
        smtp.ehlo("fixture.test")
        assert not smtp.has_extn("auth")  # smtpd_tls_auth_only
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail("a@example.org", [f"nobody@{DOMAIN}"], b"Subject: x\r\n\r\nx\r\n")
    with smtplib.SMTP(postfix.host, postfix.ports["sasl"], timeout=10) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=str(pki.ca_cert)))
        smtp.ehlo("fixture.test")
        assert "PLAIN" in smtp.esmtp_features["auth"].upper()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(USER, "wrong")
    with smtplib.SMTP(postfix.host, postfix.ports["sasl"], timeout=10) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=str(pki.ca_cert)))
        smtp.login(USER, PASSWORD)
        assert smtp.sendmail("a@example.org", [f"fixture@{DOMAIN}"], b"Subject: login\r\n\r\nx\r\n") == {}
    [message] = [m for m in postfix.wait_for_messages(1) if m["Subject"] == "login"]
    assert "ESMTPSA" in str(message["Received"])


def test_dovecot_lmtp_offers_xclient_to_its_trusted_network(servers) -> None:
    _, dovecot = servers
    with smtplib.LMTP(dovecot.host, dovecot.port, timeout=10) as lmtp:
        lmtp.ehlo("fixture.test")
        assert "ADDR" in lmtp.esmtp_features["xclient"].upper().split()


def test_both_stop_leaving_no_process_and_no_directory() -> None:
    _require(postfix_available() or dovecot_available())
    with DovecotServer({USER: PASSWORD}) as dovecot, PostfixServer() as postfix:
        roots, ports = [dovecot.root, postfix.root], [dovecot.port, *postfix.ports.values()]
        processes = [dovecot.process, postfix.process]
        assert all(root is not None and root.is_dir() for root in roots)
    assert not any(root.exists() for root in roots if root is not None)
    assert all(p is not None and p.returncode is not None for p in processes)
    assert not any(port_accepts("127.0.0.1", port) for port in ports)
