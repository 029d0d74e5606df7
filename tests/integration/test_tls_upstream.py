"""TLS towards upstreams (SPEC §4 STARTTLS policy, smtps://, tls_verify,
WILLI_UPSTREAM_TLS_CA/_CERT/_KEY, §6 the transaction line's upstream TLS).

The upstreams are real TLS-capable SMTP servers on loopback: aiosmtpd
(`RecordingUpstream`) with STARTTLS or implicit TLS and certificates from the
test PKI, and, where the upstream has to misbehave around STARTTLS, a
`ScriptableUpstream` taught STARTTLS in this file. One Willi runs per
WILLI_UPSTREAM_STARTTLS value, all sharing one CSV table whose domains pick
the upstream (and the route's tls_verify) for each case.
"""

from __future__ import annotations

import itertools
import re
import smtplib
import ssl
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.support import certs
from tests.support.certs import Pki
from tests.support.recorder import RecordedMessage, RecordingUpstream
from tests.support.upstream import DEFAULT_CAPABILITIES, FaultScript, ScriptableUpstream, Session
from tests.support.willi_process import WilliProcess

INJECTED = b"250 2.0.0 INJECTED-BEFORE-TLS\r\n"
_serial = itertools.count(1)


# --- a scriptable upstream that speaks STARTTLS ---------------------------------
class TlsScriptableUpstream(ScriptableUpstream):
    """ScriptableUpstream plus STARTTLS (RFC 3207), for faults around the switch.

    `inject` is sent right after `220 Ready to start TLS`, in the same write and
    before the handshake: a reply Willi must never believe (response injection).
    """

    def __init__(self, *, tls_context: ssl.SSLContext, inject: bytes = b"",
                 stall_handshake: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.tls_context = tls_context
        self.inject = inject
        self.stall_handshake = stall_handshake  # say 220, then never handshake
        self.tls_sessions: set[int] = set()
        self.tls_errors: list[str] = []

    def _greeted(self, session: Session, line: bytes) -> bytes:
        session.helo = line[5:].strip() or None
        session.reset()
        tls = session.number in self.tls_sessions
        lines = [self.hostname, *self.capabilities, *([] if tls else ["STARTTLS"])]
        return b"".join(
            f"250{' ' if i == len(lines) - 1 else '-'}{text}\r\n".encode() for i, text in enumerate(lines))

    def _cmd_starttls(self, session: Session, line: bytes) -> bytes:
        if session.number in self.tls_sessions:
            return b"503 5.5.1 Error: TLS already active\r\n"
        session.starting_tls = True  # type: ignore[attr-defined]
        return b"220 2.0.0 Ready to start TLS\r\n" + self.inject

    def _respond(self, session: Session, verb: str, line: bytes, override: bytes | None) -> None:
        super()._respond(session, verb, line, override)
        if not getattr(session, "starting_tls", False):
            return
        session.starting_tls = False  # type: ignore[attr-defined]
        session.buffer.clear()  # plaintext pipelined after STARTTLS is never a command
        if self.stall_handshake:
            self._stall(session)  # until release, stop() or stall_timeout
        try:
            # wrap_socket detaches the plain socket; on failure it closes the TLS one.
            session.sock = self.tls_context.wrap_socket(session.sock, server_side=True)
        except OSError as exc:  # ssl.SSLError included: the session ends
            self.tls_errors.append(str(exc))
            raise
        self.tls_sessions.add(session.number)
        session.helo = None
        session.reset()

    def tls_of(self, rcpt: str) -> bool:
        """Whether the message for rcpt arrived in a TLS session."""
        message = next(m for m in self.messages if m.rcpt_tos == [rcpt.encode()])
        return message.session in self.tls_sessions


# --- PKI helpers ----------------------------------------------------------------
def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca))
    return context


def issue_certificate(pki: Pki, directory: Path, stem: str, names: list[certs.Name]) -> tuple[Path, Path]:
    """A server certificate signed by the test CA, for other names."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    issuer = certs._Issuer(ca_cert.subject, ca_key)  # type: ignore[arg-type]
    cert, key = certs._make_leaf(str(names[0]), names, ExtendedKeyUsageOID.SERVER_AUTH, issuer)  # type: ignore[arg-type]
    return certs._write(directory, stem, cert, key)


# --- the upstreams, the table and the Willis --------------------------------------
@dataclass
class Upstreams:
    starttls: RecordingUpstream  # STARTTLS, certificate from the test CA
    plain: RecordingUpstream  # no STARTTLS at all
    smtps: RecordingUpstream  # implicit TLS, certificate from the test CA
    untrusted: RecordingUpstream  # STARTTLS, self-signed certificate
    misnamed: RecordingUpstream  # STARTTLS, CA-signed but for other.test only
    client_cert: RecordingUpstream  # STARTTLS, requires a client certificate from the CA
    dead_tls: TlsScriptableUpstream  # STARTTLS, self-signed: the failing first target
    injecting: TlsScriptableUpstream  # STARTTLS, with a reply injected before the handshake
    refusing: ScriptableUpstream  # offers STARTTLS, answers it with 454
    sni: RecordingUpstream  # STARTTLS, records the server name each ClientHello asked for
    sni_names: list[str | None]


@pytest.fixture(scope="module")
def upstreams(module_launch, pki: Pki, tmp_path_factory) -> Iterator[Upstreams]:
    other_cert, other_key = issue_certificate(pki, tmp_path_factory.mktemp("other"), "other", ["other.test"])
    ca_signed = server_context(pki.upstream_cert, pki.upstream_key)
    self_signed = server_context(pki.untrusted_cert, pki.untrusted_key)
    launch = module_launch
    sni_names: list[str | None] = []
    sni_context = server_context(pki.upstream_cert, pki.upstream_key)
    sni_context.sni_callback = lambda sslobj, name, context: sni_names.append(name)
    with ExitStack() as scriptable:
        yield Upstreams(
            starttls=launch.recorder(tls_context=ca_signed),
            plain=launch.recorder(),
            smtps=launch.recorder(ssl_context=server_context(pki.upstream_cert, pki.upstream_key)),
            untrusted=launch.recorder(tls_context=self_signed),
            misnamed=launch.recorder(tls_context=server_context(other_cert, other_key)),
            client_cert=launch.recorder(
                tls_context=server_context(pki.upstream_cert, pki.upstream_key, client_ca=pki.ca_cert)),
            dead_tls=scriptable.enter_context(TlsScriptableUpstream(tls_context=self_signed)),
            injecting=scriptable.enter_context(TlsScriptableUpstream(tls_context=ca_signed, inject=INJECTED)),
            refusing=scriptable.enter_context(ScriptableUpstream(
                capabilities=[*DEFAULT_CAPABILITIES, "STARTTLS"],
                replies={"STARTTLS": b"454 4.7.0 TLS not available due to local problem\r\n"})),
            sni=launch.recorder(tls_context=sni_context),
            sni_names=sni_names,
        )


@pytest.fixture(scope="module")
def routes(upstreams: Upstreams, tmp_path_factory) -> Path:
    """domain;server;tls_verify — the third field is left out where the default (true) is meant."""
    u = upstreams
    table = tmp_path_factory.mktemp("routes") / "upstreams.csv"
    table.write_text("\n".join([
        "pattern;server;tls_verify",
        f"starttls.test;127.0.0.1:{u.starttls.port};true",
        f"default-verify.test;127.0.0.1:{u.starttls.port}",
        f"plain.test;127.0.0.1:{u.plain.port};true",
        f"smtps.test;smtps://127.0.0.1:{u.smtps.port};true",
        f"untrusted-verified.test;127.0.0.1:{u.untrusted.port};true",
        f"untrusted-unverified.test;127.0.0.1:{u.untrusted.port};false",
        f"misnamed.test;127.0.0.1:{u.misnamed.port};true",
        f"failover.test;127.0.0.1:{u.dead_tls.port},127.0.0.1:{u.starttls.port};true",
        f"client-cert.test;127.0.0.1:{u.client_cert.port};true",
        f"injecting.test;127.0.0.1:{u.injecting.port};true",
        f"refusing.test;127.0.0.1:{u.refusing.port};true",
        f"sni-name.test;localhost:{u.sni.port};true",
        f"sni-ip.test;127.0.0.1:{u.sni.port};true",
        "",
    ]))
    return table


@pytest.fixture(scope="module")
def willi_for(module_launch, routes: Path, pki: Pki) -> Callable[[str | None], WilliProcess]:
    """One Willi per WILLI_UPSTREAM_STARTTLS value (None: the key left unset,
    and no client certificate either), started on first use."""
    started: dict[str | None, WilliProcess] = {}

    def get(policy: str | None) -> WilliProcess:
        if policy not in started:
            env = {
                "WILLI_TLS_CERT": str(pki.willi_cert),
                "WILLI_TLS_KEY": str(pki.willi_key),
                "WILLI_UPSTREAM_TLS_CA": str(pki.ca_cert),
                "WILLI_MAPPING_1": f"csv:{routes}",
            }
            if policy is not None:
                env["WILLI_UPSTREAM_STARTTLS"] = policy
                env["WILLI_UPSTREAM_TLS_CERT"] = str(pki.client_cert)
                env["WILLI_UPSTREAM_TLS_KEY"] = str(pki.client_key)
            started[policy] = module_launch.willi(env)
        return started[policy]

    return get


# --- a client -------------------------------------------------------------------------
class Outcome(NamedTuple):
    stage: str  # "rcpt" (refused there) or "data" (final reply)
    code: int
    text: bytes


def new_rcpt(domain: str) -> str:
    return f"rcpt-{next(_serial)}@{domain}"


def send(willi: WilliProcess, pki: Pki, rcpt: str, *, starttls: bool,
         body: bytes = b"Subject: tls\r\n\r\nhello\r\n") -> Outcome:
    """One transaction through Willi, with or without STARTTLS on the client side."""
    with smtplib.SMTP(willi.host, willi.port, local_hostname="client.test", timeout=30) as smtp:
        if starttls:
            code, _ = smtp.starttls(context=ssl.create_default_context(cafile=str(pki.ca_cert)))
            assert code == 220
        smtp.ehlo()
        code, text = smtp.mail("sender@example.net")
        assert code == 250, text
        code, text = smtp.rcpt(rcpt)
        if code != 250:
            return Outcome("rcpt", code, text)
        code, text = smtp.data(body)
        return Outcome("data", code, text)


def delivered(recorder: RecordingUpstream, rcpt: str) -> RecordedMessage:
    """The message for rcpt as the upstream recorded it (Willi relayed its 250 already)."""
    matches = [m for m in recorder.messages if m.rcpt_tos == [rcpt]]
    assert len(matches) == 1, f"{len(matches)} messages for {rcpt}"
    return matches[0]


def nothing_for(rcpt: str, *recorders: RecordingUpstream) -> bool:
    return not any(rcpt in m.rcpt_tos for r in recorders for m in r.messages)


def transaction_for(willi: WilliProcess, rcpt: str) -> dict[str, str]:
    return willi.wait_for_log(
        lambda r: r.get("event") == "transaction" and rcpt in r.get("rcpts", "").split(","), timeout=10)


def assert_refused_for_now(outcome: Outcome) -> None:
    """A target that cannot be used is a temporary failure at RCPT, never a 5xx."""
    assert (outcome.stage, outcome.code, outcome.text[:5]) == ("rcpt", 451, b"4.4.1"), outcome


VERIFIED = re.compile(r"TLSv1\.[23] verified")
UNVERIFIED = re.compile(r"TLSv1\.[23]")


# --- WILLI_UPSTREAM_STARTTLS=if-client --------------------------------------------------
def test_if_client_a_client_using_starttls_gets_its_message_relayed_over_tls(willi_for, upstreams, pki):
    willi, rcpt = willi_for("if-client"), new_rcpt("starttls.test")
    assert send(willi, pki, rcpt, starttls=True)[:2] == ("data", 250)
    assert delivered(upstreams.starttls, rcpt).tls is True
    record = transaction_for(willi, rcpt)
    assert VERIFIED.fullmatch(record["upstream_tls"]), record
    assert record["upstream"] == f"smtp://127.0.0.1:{upstreams.starttls.port}"


def test_if_client_a_plain_client_gets_its_message_relayed_in_plaintext(willi_for, upstreams, pki):
    willi, rcpt = willi_for("if-client"), new_rcpt("starttls.test")
    assert send(willi, pki, rcpt, starttls=False)[:2] == ("data", 250)
    assert delivered(upstreams.starttls, rcpt).tls is False
    assert "upstream_tls" not in transaction_for(willi, rcpt)


def test_if_client_a_client_switching_to_tls_midway_gets_a_fresh_upstream_over_tls(willi_for, upstreams, pki):
    willi, first, second = willi_for("if-client"), new_rcpt("starttls.test"), new_rcpt("starttls.test")
    body = b"Subject: midway\r\n\r\nx\r\n"
    with smtplib.SMTP(willi.host, willi.port, local_hostname="client.test", timeout=30) as smtp:
        assert smtp.sendmail("sender@example.net", [first], body) == {}
        # The plaintext upstream connection may still be open for reuse; after
        # STARTTLS it must not carry this client's mail.
        smtp.starttls(context=ssl.create_default_context(cafile=str(pki.ca_cert)))
        assert smtp.sendmail("sender@example.net", [second], body) == {}
    assert delivered(upstreams.starttls, first).tls is False
    assert delivered(upstreams.starttls, second).tls is True


@pytest.mark.parametrize("client_tls", [True, False], ids=["tls-client", "plain-client"])
def test_without_the_key_the_policy_is_if_client(willi_for, upstreams, pki, client_tls):
    willi, rcpt = willi_for(None), new_rcpt("starttls.test")
    assert send(willi, pki, rcpt, starttls=client_tls)[:2] == ("data", 250)
    assert delivered(upstreams.starttls, rcpt).tls is client_tls


# --- opportunistic ----------------------------------------------------------------------
def test_opportunistic_uses_tls_even_for_a_plain_client(willi_for, upstreams, pki):
    willi, rcpt = willi_for("opportunistic"), new_rcpt("starttls.test")
    assert send(willi, pki, rcpt, starttls=False)[:2] == ("data", 250)
    assert delivered(upstreams.starttls, rcpt).tls is True
    assert VERIFIED.fullmatch(transaction_for(willi, rcpt)["upstream_tls"])


def test_opportunistic_falls_back_to_plaintext_when_starttls_is_not_offered(willi_for, upstreams, pki):
    willi, rcpt = willi_for("opportunistic"), new_rcpt("plain.test")
    assert send(willi, pki, rcpt, starttls=True)[:2] == ("data", 250)
    assert delivered(upstreams.plain, rcpt).tls is False


def test_opportunistic_goes_on_in_plaintext_when_the_upstream_refuses_starttls(willi_for, upstreams, pki):
    willi, rcpt = willi_for("opportunistic"), new_rcpt("refusing.test")
    assert send(willi, pki, rcpt, starttls=False)[:2] == ("data", 250)
    message = next(m for m in upstreams.refusing.messages if m.rcpt_tos == [rcpt.encode()])
    assert message.body == b"Subject: tls\r\n\r\nhello\r\n"
    assert "upstream_tls" not in transaction_for(willi, rcpt)


# --- required ---------------------------------------------------------------------------
def test_required_relays_over_tls_to_an_upstream_offering_starttls(willi_for, upstreams, pki):
    willi, rcpt = willi_for("required"), new_rcpt("starttls.test")
    assert send(willi, pki, rcpt, starttls=False)[:2] == ("data", 250)
    assert delivered(upstreams.starttls, rcpt).tls is True


def test_required_refuses_an_upstream_without_starttls_with_a_4xx_at_rcpt(willi_for, upstreams, pki):
    willi, rcpt = willi_for("required"), new_rcpt("plain.test")
    assert_refused_for_now(send(willi, pki, rcpt, starttls=True))
    assert nothing_for(rcpt, upstreams.plain)
    failure = willi.wait_for_log(
        lambda r: r.get("event") == "upstream_failed" and str(upstreams.plain.port) in r.get("target", ""))
    assert "STARTTLS required" in failure["error"]


def test_required_is_met_by_implicit_tls(willi_for, upstreams, pki):
    willi, rcpt = willi_for("required"), new_rcpt("smtps.test")
    assert send(willi, pki, rcpt, starttls=False)[:2] == ("data", 250)
    delivered(upstreams.smtps, rcpt)  # a TLS-only listener: nothing plain gets through
    assert VERIFIED.fullmatch(transaction_for(willi, rcpt)["upstream_tls"])


def test_required_refuses_an_upstream_that_answers_starttls_with_454(willi_for, upstreams, pki):
    willi, rcpt = willi_for("required"), new_rcpt("refusing.test")
    assert_refused_for_now(send(willi, pki, rcpt, starttls=True))
    # The target failed at STARTTLS: this recipient never reached it.
    assert not any(rcpt.encode() in line for line in upstreams.refusing.commands)


# --- off -----------------------------------------------------------------------------------
def test_off_relays_in_plaintext_even_when_the_upstream_offers_starttls(willi_for, upstreams, pki):
    willi, rcpt = willi_for("off"), new_rcpt("starttls.test")
    assert send(willi, pki, rcpt, starttls=True)[:2] == ("data", 250)
    assert delivered(upstreams.starttls, rcpt).tls is False
    assert "upstream_tls" not in transaction_for(willi, rcpt)


# --- implicit TLS (smtps://) ----------------------------------------------------------------
def test_an_smtps_route_is_relayed_over_implicit_tls(willi_for, upstreams, pki):
    willi, rcpt = willi_for("if-client"), new_rcpt("smtps.test")
    assert send(willi, pki, rcpt, starttls=False)[:2] == ("data", 250)
    assert delivered(upstreams.smtps, rcpt).content == b"Subject: tls\r\n\r\nhello\r\n"
    record = transaction_for(willi, rcpt)
    assert VERIFIED.fullmatch(record["upstream_tls"]), record
    assert record["upstream"] == f"smtps://127.0.0.1:{upstreams.smtps.port}"


# --- verification ---------------------------------------------------------------------------
@pytest.mark.parametrize("domain", ["starttls.test", "default-verify.test"])
def test_a_verifying_route_delivers_to_a_certificate_from_the_configured_ca(willi_for, upstreams, pki, domain):
    willi, rcpt = willi_for("opportunistic"), new_rcpt(domain)
    assert send(willi, pki, rcpt, starttls=False)[:2] == ("data", 250)
    assert delivered(upstreams.starttls, rcpt).tls is True
    assert VERIFIED.fullmatch(transaction_for(willi, rcpt)["upstream_tls"])


def test_a_verifying_route_refuses_an_untrusted_certificate_with_a_4xx(willi_for, upstreams, pki):
    willi, rcpt = willi_for("opportunistic"), new_rcpt("untrusted-verified.test")
    assert_refused_for_now(send(willi, pki, rcpt, starttls=False))
    assert nothing_for(rcpt, upstreams.untrusted)
    failure = willi.wait_for_log(
        lambda r: r.get("event") == "upstream_failed" and str(upstreams.untrusted.port) in r.get("target", ""))
    assert "certificate verify failed" in failure["error"]


def test_a_verifying_route_refuses_a_certificate_for_another_host_name(willi_for, upstreams, pki):
    willi, rcpt = willi_for("opportunistic"), new_rcpt("misnamed.test")
    assert_refused_for_now(send(willi, pki, rcpt, starttls=False))
    assert nothing_for(rcpt, upstreams.misnamed)


def test_a_non_verifying_route_delivers_to_an_untrusted_certificate_still_encrypted(willi_for, upstreams, pki):
    willi, rcpt = willi_for("opportunistic"), new_rcpt("untrusted-unverified.test")
    assert send(willi, pki, rcpt, starttls=False)[:2] == ("data", 250)
    assert delivered(upstreams.untrusted, rcpt).tls is True
    assert UNVERIFIED.fullmatch(transaction_for(willi, rcpt)["upstream_tls"])  # no "verified"


def test_a_tls_failure_on_the_first_target_moves_on_to_the_next(willi_for, upstreams, pki):
    willi, rcpt = willi_for("opportunistic"), new_rcpt("failover.test")
    assert send(willi, pki, rcpt, starttls=False)[:2] == ("data", 250)
    assert delivered(upstreams.starttls, rcpt).tls is True
    dead = upstreams.dead_tls
    assert "STARTTLS" in dead.verbs and "MAIL" not in dead.verbs and dead.messages == []
    assert transaction_for(willi, rcpt)["upstream"] == f"smtp://127.0.0.1:{upstreams.starttls.port}"


# --- SNI ------------------------------------------------------------------------------------
def test_sni_is_the_target_host_name_and_the_certificate_is_checked_against_it(willi_for, upstreams, pki):
    willi = willi_for("opportunistic")
    by_name, by_ip = new_rcpt("sni-name.test"), new_rcpt("sni-ip.test")
    assert send(willi, pki, by_name, starttls=False)[:2] == ("data", 250)
    assert upstreams.sni_names == ["localhost"]
    # An IP literal is no server name (RFC 6066 §3): no SNI, but the IP SAN is checked.
    assert send(willi, pki, by_ip, starttls=False)[:2] == ("data", 250)
    assert upstreams.sni_names == ["localhost", None]
    assert delivered(upstreams.sni, by_name).tls and delivered(upstreams.sni, by_ip).tls
    assert VERIFIED.fullmatch(transaction_for(willi, by_ip)["upstream_tls"])


# --- an upstream that never finishes its handshake ---------------------------------------------
STALL_TIMEOUTS = {
    "WILLI_UPSTREAM_CONNECT_TIMEOUT": "1s",
    "WILLI_UPSTREAM_COMMAND_TIMEOUT": "1s",
    "WILLI_TLS_HANDSHAKE_TIMEOUT": "1s",
}


@pytest.fixture
def stalling(launch, pki: Pki, tmp_path: Path) -> tuple[WilliProcess, ScriptableUpstream, ScriptableUpstream]:
    """Upstreams that go quiet inside the TLS handshake, one per way of starting TLS."""
    with ExitStack() as stack:
        after_starttls = stack.enter_context(TlsScriptableUpstream(
            tls_context=server_context(pki.upstream_cert, pki.upstream_key), stall_handshake=True,
            stall_timeout=30))
        implicit = stack.enter_context(ScriptableUpstream(
            faults=FaultScript(stall_before_greeting=True), stall_timeout=30))
        table = tmp_path / "stalling.csv"
        table.write_text(
            "pattern;server;tls_verify\n"
            f"stall-starttls.test;127.0.0.1:{after_starttls.port};false\n"
            f"stall-smtps.test;smtps://127.0.0.1:{implicit.port};false\n")
        willi = launch.willi({
            "WILLI_TLS_CERT": str(pki.willi_cert), "WILLI_TLS_KEY": str(pki.willi_key),
            "WILLI_UPSTREAM_STARTTLS": "opportunistic", "WILLI_MAPPING_1": f"csv:{table}",
            **STALL_TIMEOUTS})
        try:
            yield willi, after_starttls, implicit
        finally:
            after_starttls.release.set()
            implicit.release.set()


@pytest.mark.parametrize("domain", ["stall-starttls.test", "stall-smtps.test"])
def test_an_upstream_stalling_in_the_tls_handshake_is_given_up_with_a_4xx(stalling, pki, domain):
    willi, after_starttls, implicit = stalling
    rcpt = new_rcpt(domain)
    started = time.monotonic()
    with smtplib.SMTP(willi.host, willi.port, local_hostname="client.test", timeout=5) as smtp:
        smtp.ehlo()
        assert smtp.mail("sender@example.net")[0] == 250
        try:
            code, text = smtp.rcpt(rcpt)
        except (TimeoutError, smtplib.SMTPServerDisconnected) as exc:
            pytest.fail(f"no reply to RCPT {time.monotonic() - started:.1f}s after a stalled upstream handshake: {exc}")
    # Every upstream timeout is 1s here: the stall must cost about that, not forever.
    assert 400 <= code < 500, (code, text)
    assert time.monotonic() - started < 5
    assert after_starttls.messages == [] and implicit.messages == []


# --- response injection at the upstream's STARTTLS -------------------------------------------
def test_a_reply_injected_before_the_upstream_handshake_is_never_believed_or_relayed(willi_for, upstreams, pki):
    willi, rcpt = willi_for("opportunistic"), new_rcpt("injecting.test")
    outcome = send(willi, pki, rcpt, starttls=False)
    assert b"INJECTED" not in outcome.text
    # The injected line came in the same write as the 220: discarding what was
    # read before the handshake (SPEC §4) leaves a clean dialogue, so the
    # message goes through, over TLS, after a fresh EHLO.
    assert outcome[:2] == ("data", 250), outcome
    injecting = upstreams.injecting
    assert injecting.tls_of(rcpt)
    verbs = injecting.verbs
    assert verbs[verbs.index("STARTTLS") + 1] == "EHLO"
    assert "INJECTED" not in willi.stdout()


# --- client certificate ------------------------------------------------------------------------
def test_an_upstream_requiring_a_client_certificate_accepts_the_configured_one(willi_for, upstreams, pki):
    willi, rcpt = willi_for("if-client"), new_rcpt("client-cert.test")
    assert send(willi, pki, rcpt, starttls=True)[:2] == ("data", 250)
    assert delivered(upstreams.client_cert, rcpt).tls is True


def test_without_a_client_certificate_that_upstream_refuses_and_the_client_gets_a_4xx(willi_for, upstreams, pki):
    willi, rcpt = willi_for(None), new_rcpt("client-cert.test")
    outcome = send(willi, pki, rcpt, starttls=True)
    assert outcome.stage == "rcpt" and 400 <= outcome.code < 500, outcome
    assert nothing_for(rcpt, upstreams.client_cert)


# --- a big body through TLS on both sides ----------------------------------------------------------
def test_an_8_mib_body_through_tls_on_both_sides_arrives_byte_identical(willi_for, upstreams, pki):
    willi, rcpt = willi_for("if-client"), new_rcpt("starttls.test")
    lines = [b"Subject: big\r\n", b"\r\n"]
    size = sum(map(len, lines))
    for number in itertools.count():
        # Varied lines, some starting with a dot to exercise dot-stuffing.
        line = b"%s%08d %s\r\n" % (b"." if number % 97 == 0 else b"", number, bytes([65 + number % 26]) * 60)
        lines.append(line)
        size += len(line)
        if size >= 8 * 1024 * 1024:
            break
    body = b"".join(lines)
    assert send(willi, pki, rcpt, starttls=True, body=body)[:2] == ("data", 250)
    message = delivered(upstreams.starttls, rcpt)
    assert message.tls is True
    assert len(message.content) == len(body)
    assert message.content == body
    record = transaction_for(willi, rcpt)
    assert record["tls"].startswith("TLSv1.") and VERIFIED.fullmatch(record["upstream_tls"])
