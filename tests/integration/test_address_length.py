"""Issue 9 item 4 through a real Willi: 3 KB MAIL and RCPT lines used to go
upstream as they were; RFC 5321 §4.5.3.1 bounds a path at 256 octets and
SPEC §7 a command line Willi sends at 512. Now Willi answers 501 5.1.3
itself and the upstream never sees such a line."""

from __future__ import annotations

from tests.support.willi_process import open_session

LONG_LOCAL = "x" * 3000
SENDER = "sender@origin.test"


def test_a_3_kb_mail_from_is_answered_501_and_never_reaches_the_upstream(launch):
    upstream = launch.upstream()
    willi = launch.willi({"WILLI_MAPPING_1": f"static:{upstream.address}"})
    with open_session(willi) as client:
        reply = client.command(f"MAIL FROM:<{LONG_LOCAL}@origin.test> SIZE=100")
        assert (reply.code, reply.lines[0][:5]) == (501, b"5.1.3"), reply
        assert client.command(f"MAIL FROM:<{SENDER}>").code == 250  # the session goes on
        assert client.command("RCPT TO:<user@a.test>").code == 250
        assert client.command("QUIT").code == 221
    assert upstream.commands and all(len(c) + 2 <= 512 for c in upstream.commands)
    assert not [c for c in upstream.commands if LONG_LOCAL.encode() in c]


def test_a_3_kb_rcpt_to_is_answered_501_and_never_reaches_the_upstream(launch):
    upstream = launch.upstream()
    willi = launch.willi({"WILLI_MAPPING_1": f"static:{upstream.address}"})
    long_domain = ".".join(["d" * 60] * 50)  # 3 KB of well-formed labels
    with open_session(willi) as client:
        assert client.command(f"MAIL FROM:<{SENDER}>").code == 250
        reply = client.command(f"RCPT TO:<user@{long_domain}>")
        assert (reply.code, reply.lines[0][:5]) == (501, b"5.1.3"), reply
        reply = client.command(f"RCPT TO:<{LONG_LOCAL}@a.test>")
        assert (reply.code, reply.lines[0][:5]) == (501, b"5.1.3"), reply
        assert client.command("QUIT").code == 221
    assert upstream.sessions == []  # no recipient was routed: nothing was dialled


def test_the_longest_allowed_path_goes_upstream_in_a_line_under_512(launch):
    upstream = launch.upstream()
    willi = launch.willi({"WILLI_MAPPING_1": f"static:{upstream.address}"})
    domain = ".".join(["d" * 50] * 3 + ["e" * 35])  # 188 octets: the path is 255
    sender = f"{'s' * 64}@{domain}"  # 64 + 1 + 188 + 2 brackets = 255
    rcpt = f"{'r' * 64}@{domain}"
    with open_session(willi) as client:
        assert client.command(f"MAIL FROM:<{sender}> SIZE=1000 BODY=8BITMIME").code == 250
        assert client.command(f"RCPT TO:<{rcpt}>").code == 250
        assert client.command("QUIT").code == 221
    mail = upstream.wait_for_command("MAIL")
    assert mail.startswith(f"MAIL FROM:<{sender}>".encode()) and len(mail) + 2 <= 512
    rcpt_line = upstream.wait_for_command("RCPT")
    assert rcpt_line == f"RCPT TO:<{rcpt}>".encode()
