"""Every command line Willi sends upstream is at most 512 octets (SPEC §7,
RFC 5321 §4.5.3.1.4; issue 9 item 4).

The lines are built by willi/smtp/upstream.py from what the client-facing
protocol accepted, so the proof goes through both: whatever MAIL or RCPT
line the protocol answers 250 to (after ServerProtocol's own checks), the
line built from it fits. XCLIENT lines are packed from values the client
chose (HELO name: up to a 4096-octet command line) and the reverse name.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.names import domain_of
from willi import replies
from willi.smtp import server as smtp
from willi.smtp.address import MAX_PATH
from willi.smtp.upstream import (
    MAX_COMMAND, ClientInfo, mail_command, rcpt_command, xclient_commands,
)
from willi.smtp.reply import Reply

ALL_CAPS = {"SIZE": "100000000", "8BITMIME": "", "SMTPUTF8": "", "PIPELINING": ""}
LONGEST_PARAMS = " SIZE=" + "9" * 20 + " BODY=8BITMIME SMTPUTF8"


def _accepted_mail(line: bytes) -> smtp.ServerProtocol | None:
    """The protocol after `line`, if it answered 250 to it."""
    proto = smtp.ServerProtocol(smtp.ServerSettings(hostname="willi.test", max_message_size=10**30))
    proto.feed(b"EHLO client.test\r\n" + line + b"\r\n")
    proto.next_event()
    out = proto.take_output()
    return proto if out.endswith(replies.SENDER_OK) else None


def _fits(line: bytes) -> bool:
    return line.endswith(b"\r\n") and b"\r" not in line[:-2] and b"\n" not in line[:-2] and len(line) <= MAX_COMMAND


def test_mail_from_with_the_longest_path_and_every_parameter_fits() -> None:
    sender = f"{'s' * 64}@{domain_of(MAX_PATH - 2 - 65)}"
    proto = _accepted_mail(f"MAIL FROM:<{sender}>{LONGEST_PARAMS}".encode())
    assert proto is not None and proto.mail is not None
    line = mail_command(proto.mail, proto.mail_params, ALL_CAPS)
    assert _fits(line), len(line)
    assert line.startswith(b"MAIL FROM:<" + sender.encode() + b"> SIZE=")


def test_rcpt_to_with_the_longest_utf8_path_fits() -> None:
    proto = _accepted_mail(b"MAIL FROM:<> SMTPUTF8")  # a non-ASCII path needs it (RFC 6531)
    assert proto is not None
    rcpt = f"{'é' * 32}@{domain_of(MAX_PATH - 2 - 65)}"
    proto.feed(f"RCPT TO:<{rcpt}>\r\n".encode())
    event = proto.next_event()
    assert isinstance(event, smtp.Rcpt)
    assert _fits(rcpt_command(event.address))


_HOSTILE = st.lists(
    st.sampled_from(list('ab.-@"\\<>: ,[]=é\u2603') + ["x" * 40, "y" * 300]), max_size=40,
).map("".join)


@settings(database=None, max_examples=500, deadline=None)
@given(path=_HOSTILE, params=st.lists(st.sampled_from(
    ["SIZE=" + "1" * 20, "SIZE=" + "1" * 21, "BODY=8BITMIME", "BODY=7BIT", "SMTPUTF8", "X=" + "v" * 600]),
    max_size=4))
def test_any_mail_from_the_protocol_accepts_becomes_a_line_that_fits(path: str, params: list[str]) -> None:
    line = f"MAIL FROM:{path} {' '.join(params)}".encode("utf-8")
    proto = _accepted_mail(line[:4096])
    if proto is None or proto.mail is None:
        return
    assert _fits(mail_command(proto.mail, proto.mail_params, ALL_CAPS))


@settings(database=None, max_examples=500, deadline=None)
@given(path=_HOSTILE)
def test_any_rcpt_to_the_protocol_routes_becomes_a_line_that_fits(path: str) -> None:
    proto = _accepted_mail(b"MAIL FROM:<s@origin.test>")
    assert proto is not None
    proto.feed(f"RCPT TO:{path}\r\n".encode("utf-8")[:4096] + b"\r\n")
    event = proto.next_event()
    if isinstance(event, smtp.Rcpt):
        assert _fits(rcpt_command(event.address))


@settings(database=None, max_examples=300, deadline=None)
@given(helo=st.text(min_size=1, max_size=4000), name=st.none() | st.text(max_size=600),
       v6=st.booleans())
def test_xclient_lines_fit_whatever_helo_and_reverse_name_the_client_brings(helo: str, name: str | None,
                                                                          v6: bool) -> None:
    client = ClientInfo("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff" if v6 else "203.0.113.255", 65535, helo, True)
    lines = xclient_commands({"NAME", "ADDR", "PORT", "PROTO", "HELO"}, client, name)
    assert lines and all(_fits(line) for line in lines)
    assert all(line.startswith(b"XCLIENT ") for line in lines)


EHLO_WITH_XCLIENT = Reply(250, [b"up.test", b"XCLIENT NAME ADDR PORT PROTO HELO"],
                          b"250-up.test\r\n250 XCLIENT NAME ADDR PORT PROTO HELO\r\n")


def _handshake_lines(hostname: str, client: ClientInfo, name: str) -> list[bytes]:
    """Every line the handshake sends when the upstream greets, offers XCLIENT
    and accepts everything (the generator on main, the machine after the
    upstream package landed)."""
    greeting = Reply(220, [b"up.test ESMTP"], b"220 up.test ESMTP\r\n")
    ok = Reply(250, [b"ok"], b"250 ok\r\n")
    try:
        from willi.smtp import handshake as machine  # type: ignore[attr-defined]
    except ImportError:
        machine = None
    sent: list[bytes] = []
    if machine is None:
        from willi.smtp.upstream import EXPECT, NEED_NAME, HandshakeSettings, handshake  # type: ignore[attr-defined]

        dialogue = handshake(HandshakeSettings(hostname=hostname), client)
        step = next(dialogue)
        answers = iter([greeting, EHLO_WITH_XCLIENT] + [ok] * 10)
        try:
            while True:
                if step is NEED_NAME:
                    step = dialogue.send(name)
                    continue
                if isinstance(step, bytes):
                    sent.append(step)
                step = dialogue.send(next(answers) if step is EXPECT or isinstance(step, bytes) else None)
        except StopIteration:
            return sent
    shake = machine.Handshake(machine.HandshakeSettings(hostname=hostname), client)
    commands = list(shake.start())
    answers = iter([greeting, EHLO_WITH_XCLIENT] + [ok] * 10)
    for _ in range(50):
        if not commands:
            break
        command = commands.pop(0)
        if isinstance(command, machine.Send):
            sent.append(command.data)
            commands += shake.handle(next(answers))
        elif isinstance(command, machine.Expect):
            commands += shake.handle(next(answers))
        elif isinstance(command, machine.NeedName):
            commands += shake.handle(machine.NameResolved(name))
    return sent


def test_the_handshake_lines_fit_with_the_longest_host_name_helo_and_reverse_name() -> None:
    hostname = domain_of(253)  # config.parse_hostname allows at most 253
    client = ClientInfo("2001:db8::1", 65535, "h\u00e9" * 2000, True)
    lines = _handshake_lines(hostname, client, "n" * 1000)
    assert [line.split(b" ")[0] for line in lines][:2] == [b"EHLO", b"XCLIENT"]
    assert all(_fits(line) for line in lines), [len(line) for line in lines]
