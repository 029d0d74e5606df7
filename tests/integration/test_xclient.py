"""XCLIENT towards upstreams (SPEC §4 "XCLIENT", §7), through a real Willi.

An upstream that offers XCLIENT learns the real client: Willi sends exactly
the attributes the upstream lists (NAME, ADDR, PORT, PROTO, HELO), values
xtext-encoded, accepts a 220 (Postfix) or a 250 (smtp-sink) as success, and
says EHLO again before the envelope. An upstream that does not offer it never
sees it (unless WILLI_XCLIENT=required, which then fails that target), one
that refuses it is not used, and WILLI_XCLIENT=off never sends it. Postfix's
own smtp-sink takes part as an independent implementation.

Three module-scoped Willis (auto, required, off) route to ports where each
test starts its own upstream.
"""

from __future__ import annotations

import re
import smtplib
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from tests.support.net import Reply, SmtpRawClient, free_port
from tests.support.sink import SmtpSink
from tests.support.upstream import (
    DEFAULT_CAPABILITIES,
    XCLIENT_CAPABILITY,
    ScriptableUpstream,
    XclientReply,
)
from tests.support.willi_process import WilliProcess

SENDER = "sender@origin.test"
BODY = b"Subject: xclient\r\n\r\nhello upstream\r\n"
# EHLO arguments cannot hold a space; '+' and '=' must be xtext-encoded.
CLIENT_HELO = "mx+1=relay.client.test"
CLIENT_HELO_XTEXT = b"mx+2B1+3Drelay.client.test"
OFFERS_XCLIENT = [*DEFAULT_CAPABILITIES, XCLIENT_CAPABILITY]


# --- fixtures -----------------------------------------------------------------
@pytest.fixture(scope="module")
def ports() -> SimpleNamespace:
    """x.test's upstream; fallback.test's two targets z, y; smtp-sink's port."""
    return SimpleNamespace(x=free_port(), y=free_port(), z=free_port(), sink=free_port())


def _start_willi(tmp: Path, ports: SimpleNamespace, xclient: str) -> WilliProcess:
    table = tmp / "upstreams.csv"
    table.write_text(
        "pattern;server;tls_verify\n"
        f"x.test;127.0.0.1:{ports.x};false\n"
        f"sink.test;127.0.0.1:{ports.sink};false\n"
        f"fallback.test;127.0.0.1:{ports.z},127.0.0.1:{ports.y};false\n"
    )
    env = {
        "WILLI_LISTEN": f"127.0.0.1:{free_port()},[::1]:{free_port('::1')}",
        "WILLI_HOSTNAME": "willi.test",
        "WILLI_MAPPING_1": f"csv:{table}",
        "WILLI_XCLIENT": xclient,
    }
    return WilliProcess(env, tmp).start()


def _willi_fixture(xclient: str):
    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory, ports: SimpleNamespace) -> Iterator[WilliProcess]:
        process = _start_willi(tmp_path_factory.mktemp(f"willi-xclient-{xclient}"), ports, xclient)
        try:
            yield process
        finally:
            process.stop()

    return fixture


willi = _willi_fixture("auto")
required_willi = _willi_fixture("required")
off_willi = _willi_fixture("off")


@pytest.fixture
def start_upstream(ports: SimpleNamespace) -> Iterator:
    started: list[ScriptableUpstream] = []

    def start(port: int | None = None, **kwargs: object) -> ScriptableUpstream:
        upstream = ScriptableUpstream(port=port or ports.x, **kwargs).start()  # type: ignore[arg-type]
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        upstream.stop()


# --- helpers ------------------------------------------------------------------
def send_message(
    willi: WilliProcess,
    rcpt: str = "user@x.test",
    hello: str = "EHLO",
    helo: str = CLIENT_HELO,
    ipv6: bool = False,
) -> tuple[Reply, int]:
    """One transaction through Willi; the RCPT reply (or the final one) and the
    client's source port. Stops at a refused RCPT."""
    host, port = willi.listen[1] if ipv6 else (willi.host, willi.port)
    with SmtpRawClient(host, port) as client:
        port = client.sock.getsockname()[1]
        assert client.read_reply().code == 220
        assert client.command(f"{hello} {helo}").code == 250
        assert client.command(f"MAIL FROM:<{SENDER}>").code == 250
        reply = client.command(f"RCPT TO:<{rcpt}>")
        if reply.code != 250:
            return reply, port
        assert client.command("DATA").code == 354
        client.send(BODY + b".\r\n")
        reply = client.read_reply()
        assert client.command("QUIT").code == 221
    return reply, port


def xclient_attributes(lines: list[bytes]) -> dict[str, bytes]:
    """Every NAME=value of the XCLIENT lines; a name sent twice fails."""
    attributes: dict[str, bytes] = {}
    for line in lines:
        verb, *items = line.split(b" ")
        assert verb == b"XCLIENT", line
        for item in items:
            name, sep, value = item.partition(b"=")
            assert sep and name.decode() not in attributes, line
            attributes[name.decode()] = value
    return attributes


def expected_name(ip: str) -> bytes:
    """What Postfix puts in NAME: the forward-confirmed reverse name."""
    try:
        name = socket.gethostbyaddr(ip)[0]
        confirmed = any(info[4][0] == ip for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP))
    except OSError:
        return b"[UNAVAILABLE]"
    return name.encode() if confirmed else b"[UNAVAILABLE]"


def enhanced(reply: Reply) -> bytes:
    return reply.lines[0].split(b" ", 1)[0]


def first_session_verbs(upstream: ScriptableUpstream) -> list[str]:
    (session, *_) = upstream.wait_for_sessions(1)
    return [c.split(b" ", 1)[0].decode().upper() for c in session.commands]


# --- XCLIENT sent, as offered -------------------------------------------------------
@pytest.mark.parametrize(
    "style", [XclientReply.POSTFIX, XclientReply.SINK], ids=["postfix-220", "smtp-sink-250"]
)
def test_xclient_carries_every_offered_attribute_xtext_encoded_then_ehlo_again(willi, start_upstream, style):
    upstream = start_upstream(capabilities=OFFERS_XCLIENT, xclient_reply=style)
    reply, client_port = send_message(willi)
    assert reply.code == 250, reply
    (message,) = upstream.wait_for_messages(1)
    attributes = xclient_attributes(upstream.xclient_lines)
    assert attributes == {
        "NAME": expected_name("127.0.0.1"),
        "ADDR": b"127.0.0.1",
        "PORT": str(client_port).encode(),
        "PROTO": b"ESMTP",
        "HELO": CLIENT_HELO_XTEXT,
    }
    assert all(len(line) + 2 <= 512 for line in upstream.xclient_lines)
    xclients = len(upstream.xclient_lines)
    assert first_session_verbs(upstream)[: 6 + xclients] == [
        "EHLO", *["XCLIENT"] * xclients, "EHLO", "MAIL", "RCPT", "DATA", ".",
    ]
    assert message.xclient == attributes  # the upstream took it (2xx) before the transaction
    # The greeting after XCLIENT carries the client's own name, as nginx's mail proxy does.
    assert (message.helo, message.mail_from, message.body) == (CLIENT_HELO.encode(), SENDER.encode(), BODY)


def test_a_helo_client_is_passed_on_as_proto_smtp(willi, start_upstream):
    upstream = start_upstream(capabilities=OFFERS_XCLIENT)
    reply, _ = send_message(willi, hello="HELO")
    assert reply.code == 250, reply
    attributes = xclient_attributes(upstream.xclient_lines)
    assert (attributes["PROTO"], attributes["HELO"]) == (b"SMTP", CLIENT_HELO_XTEXT)
    # and the greeting after XCLIENT keeps PROTO true: HELO with the client's name
    verbs = first_session_verbs(upstream)
    assert verbs[verbs.index("XCLIENT") + 1] == "HELO"
    (message,) = upstream.wait_for_messages(1)
    assert message.helo == CLIENT_HELO.encode()


def test_an_ipv6_client_is_passed_on_with_the_ipv6_prefix(willi, start_upstream):
    upstream = start_upstream(capabilities=OFFERS_XCLIENT)
    reply, client_port = send_message(willi, ipv6=True)
    assert reply.code == 250, reply
    attributes = xclient_attributes(upstream.xclient_lines)
    assert (attributes["ADDR"], attributes["PORT"]) == (b"IPV6:::1", str(client_port).encode())
    assert attributes["NAME"] == expected_name("::1")


@pytest.mark.parametrize(
    "helo, encoded",
    [("h\u00e9llo.client.test", b"h+C3+A9llo.client.test"), ("[192.0.2.1]", b"[192.0.2.1]")],
    ids=["utf-8", "address-literal"],
)
def test_helo_values_are_xtext_encoded(willi, start_upstream, helo, encoded):
    upstream = start_upstream(capabilities=OFFERS_XCLIENT)
    reply, _ = send_message(willi, helo=helo)
    assert reply.code == 250, reply
    assert xclient_attributes(upstream.xclient_lines)["HELO"] == encoded


@pytest.mark.parametrize("helo", ["h" * 300, "a+" * 150], ids=["plain", "escaped"])
def test_values_stay_within_255_octets_and_lines_within_512(willi, start_upstream, helo):
    upstream = start_upstream(capabilities=OFFERS_XCLIENT)
    reply, _ = send_message(willi, helo=helo)
    assert reply.code == 250, reply
    assert all(len(line) + 2 <= 512 for line in upstream.xclient_lines), upstream.xclient_lines
    attributes = xclient_attributes(upstream.xclient_lines)
    assert set(attributes) == {"NAME", "ADDR", "PORT", "PROTO", "HELO"}
    value = attributes["HELO"]
    assert 200 < len(value) <= 255, value
    decoded = re.sub(rb"\+([0-9A-F]{2})", lambda m: bytes([int(m[1], 16)]), value)
    assert helo.encode().startswith(decoded) and b"+" not in value.replace(b"+2B", b"")
    assert upstream.xclient_lines[-1].split(b" ")[-1].startswith(b"ADDR=")  # ADDR in the last line


def test_only_the_attributes_the_upstream_lists_are_sent(willi, start_upstream):
    upstream = start_upstream(capabilities=[*DEFAULT_CAPABILITIES, "XCLIENT ADDR"])
    reply, _ = send_message(willi)
    assert reply.code == 250, reply
    upstream.wait_for_messages(1)
    assert upstream.xclient_lines == [b"XCLIENT ADDR=127.0.0.1"]
    assert first_session_verbs(upstream)[:4] == ["EHLO", "XCLIENT", "EHLO", "MAIL"]


def test_no_xclient_to_an_upstream_that_does_not_offer_it(willi, start_upstream):
    upstream = start_upstream()  # default capabilities: no XCLIENT
    reply, _ = send_message(willi)
    assert reply.code == 250, reply
    upstream.wait_for_messages(1)
    assert upstream.xclient_lines == []
    assert first_session_verbs(upstream)[:5] == ["EHLO", "MAIL", "RCPT", "DATA", "."]


def test_mail_through_postfix_smtp_sink_carries_xclient_and_is_delivered(willi, ports, tmp_path):
    with SmtpSink(tmp_path, port=ports.sink, extra_args=("-v",)) as sink:
        with smtplib.SMTP(willi.host, willi.port, local_hostname=CLIENT_HELO, timeout=10) as smtp:
            refused = smtp.sendmail(SENDER, ["user@sink.test"], BODY)
        assert refused == {}
        (message,) = sink.wait_for_messages(1)
        conversation = re.findall(
            rb"smtp-sink: ((?:EHLO|HELO|XCLIENT|MAIL|RCPT|DATA)\b[^\n]*)", sink.output()
        )
    assert message.content_crlf == BODY
    assert (message.mail_args, message.rcpt_args) == (f"<{SENDER}>", ["<user@sink.test>"])
    # smtp-sink offers "XCLIENT NAME HELO": just those two, then EHLO again
    # with the client's own name.
    assert conversation[:4] == [
        b"EHLO willi.test",
        b"XCLIENT HELO=%s NAME=%s" % (CLIENT_HELO_XTEXT, expected_name("127.0.0.1")),
        b"EHLO %s" % CLIENT_HELO.encode(),
        b"MAIL FROM:<%s>" % SENDER.encode(),
    ]


# --- XCLIENT refused, required, off ---------------------------------------------------
@pytest.mark.parametrize(
    "refusal",
    [b"550 5.7.0 Error: insufficient authorization\r\n", b"454 4.7.0 Error: try later\r\n"],
    ids=["550", "454"],
)
def test_an_upstream_that_refuses_xclient_fails_that_target_and_gets_no_mail(willi, start_upstream, refusal):
    upstream = start_upstream(capabilities=OFFERS_XCLIENT, xclient_reply=refusal)
    reply, _ = send_message(willi)
    assert (reply.code, enhanced(reply)) == (451, b"4.4.1"), reply
    upstream.wait_for_sessions_ended(1)
    assert first_session_verbs(upstream) == ["EHLO", "XCLIENT"]
    assert upstream.messages == []
    expected = "XCLIENT refused: " + refusal.decode().strip()
    willi.wait_for_log(
        lambda r: r.get("event") == "upstream_failed" and r.get("error", "").endswith(expected)
    )


def test_a_target_that_refuses_xclient_is_passed_over_for_the_next_one(willi, start_upstream, ports):
    refusing = start_upstream(port=ports.z, capabilities=OFFERS_XCLIENT, xclient_reply=b"550 5.7.0 no\r\n")
    next_one = start_upstream(port=ports.y)
    reply, _ = send_message(willi, rcpt="user@fallback.test")
    assert reply.code == 250, reply
    (message,) = next_one.wait_for_messages(1)
    assert message.rcpt_tos == [b"user@fallback.test"]
    assert "MAIL" not in first_session_verbs(refusing) and refusing.messages == []


def test_xclient_required_and_not_offered_fails_at_rcpt_and_delivers_nothing(required_willi, start_upstream):
    upstream = start_upstream()  # no XCLIENT offered
    reply, _ = send_message(required_willi)
    assert (reply.code, enhanced(reply)) == (451, b"4.4.1"), reply
    upstream.wait_for_sessions_ended(1)
    assert first_session_verbs(upstream) == ["EHLO"]
    assert upstream.messages == []
    required_willi.wait_for_log(
        lambda r: r.get("event") == "upstream_failed" and "XCLIENT required" in r.get("error", "")
    )


def test_xclient_required_fails_an_upstream_whose_xclient_cannot_take_addr(required_willi, start_upstream):
    # What smtp-sink offers: the name and HELO, not the address. Required
    # means the address is forwarded, so this target is not good enough.
    upstream = start_upstream(capabilities=[*DEFAULT_CAPABILITIES, "XCLIENT NAME HELO"])
    reply, _ = send_message(required_willi)
    assert (reply.code, enhanced(reply)) == (451, b"4.4.1"), reply
    upstream.wait_for_sessions_ended(1)
    assert first_session_verbs(upstream) == ["EHLO"]
    required_willi.wait_for_log(
        lambda r: r.get("event") == "upstream_failed" and "does not take ADDR" in r.get("error", "")
    )


def test_xclient_required_and_offered_delivers(required_willi, start_upstream):
    upstream = start_upstream(capabilities=OFFERS_XCLIENT)
    reply, _ = send_message(required_willi)
    assert reply.code == 250, reply
    (message,) = upstream.wait_for_messages(1)
    assert message.xclient["ADDR"] == b"127.0.0.1"


def test_xclient_off_never_sends_it_even_when_offered(off_willi, start_upstream):
    upstream = start_upstream(capabilities=OFFERS_XCLIENT)
    reply, _ = send_message(off_willi)
    assert reply.code == 250, reply
    (message,) = upstream.wait_for_messages(1)
    assert upstream.xclient_lines == [] and message.xclient == {}
    assert first_session_verbs(upstream)[:5] == ["EHLO", "MAIL", "RCPT", "DATA", "."]
