"""Message bodies through a running Willi arrive byte for byte (SPEC §2, DATA).

One Willi routes by domain to three independent upstreams: aiosmtpd
(RecordingUpstream), Postfix's smtp-sink (SmtpSink) and our ScriptableUpstream,
which keeps the body exactly as it came over the wire, dot-stuffing included.
The client is a raw socket sending the wire form itself (stuffed lines, then
CRLF.CRLF), so nothing between the test and Willi rewrites a byte.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from willi import replies
from tests.support.net import SmtpRawClient, wait_until
from tests.support.willi_process import WilliProcess

UPSTREAMS = ("aiosmtpd", "smtp-sink", "scriptable")


def stuff(content: bytes) -> bytes:
    """RFC 5321 §4.5.2: a line starting with '.' gets one more '.'."""
    lines = content.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


def big_body(size: int, seed: int = 5321) -> bytes:
    """About `size` bytes of CRLF lines of varying length: printable and 8-bit
    bytes, some lines starting with a dot, some empty."""
    rng = random.Random(seed)
    alphabet = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
    lines, total = [], 0
    while total < size:
        line = bytes(rng.choices(alphabet, k=rng.choice((0, 1, 40, 76, 200, 998))))
        if rng.random() < 0.05:
            line = b"." + line[1:]  # same length: aiosmtpd counts the stuffed dot
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


BODIES = {
    "dot-lines": (
        b".starts with a dot\r\n"
        b".\r\n"  # on the wire: a line that is just ".."
        b"..\r\n"
        b"...\r\n"
        b"middle . of a line\r\n"
        b". space after the dot\r\n"
        b".\r\n"
    ),
    "eight-bit": (
        b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + "Grüße aus Köln, 日本語, emoji \U0001f4e8\r\n".encode()
        + bytes(b for b in range(0x80, 0x100))
        + b"\r\n"
        + bytes(b for b in range(0x01, 0x20) if b not in (0x0A, 0x0D))
        + b"\r\n"
    ),
    # 998 octets plus CRLF: RFC 5321's longest line (aiosmtpd refuses longer).
    "longest-rfc-line": b"Subject: long\r\n\r\n" + b"x" * 998 + b"\r\n.y" + b"z" * 996 + b"\r\n",
    "empty": b"",
    "blank-lines-at-the-end": b"Subject: blank\r\n\r\nbody\r\n\r\n\r\n\r\n",
    "8-MiB": big_body(8 * 1024 * 1024),
}


@pytest.fixture(scope="module")
def stack(module_launch):
    recorder = module_launch.recorder()
    sink = module_launch.sink()
    scriptable = module_launch.upstream()
    table = module_launch.tmp_path / "body-routes.csv"
    table.write_text(
        "pattern;server\n"
        f"aiosmtpd.example;{recorder.address}\n"
        f"smtp-sink.example;{sink.address}\n"
        f"scriptable.example;{scriptable.address}\n"
    )
    willi = module_launch.willi({"WILLI_MAPPING_1": f"csv:{table}"})
    return {"willi": willi, "aiosmtpd": recorder, "smtp-sink": sink, "scriptable": scriptable}


def send_message(willi: WilliProcess, rcpt: str, wire: bytes, chunk: int | None = None) -> bytes:
    """One transaction from a raw client; `wire` is the stuffed body without
    the final dot. Returns the final reply."""
    with SmtpRawClient(willi.host, willi.port, timeout=30.0) as client:
        assert client.read_reply().code == 220
        assert client.command("EHLO client.test").code == 250
        assert client.command("MAIL FROM:<sender@origin.test> BODY=8BITMIME").raw == replies.SENDER_OK
        assert client.command(f"RCPT TO:<{rcpt}>").code == 250
        assert client.command("DATA").code == 354
        data = wire + b".\r\n"
        if chunk is None:
            client.send(data)
        else:
            for start in range(0, len(data), chunk):
                client.send(data[start : start + chunk])
        final = client.read_reply()
        assert client.command("QUIT").code == 221
    return final.raw


def received(stack, kind: str, rcpt: str) -> bytes:
    """The content `kind` received for `rcpt`, dot-stuffing removed."""
    upstream = stack[kind]
    if kind == "aiosmtpd":
        found = lambda: [m.content for m in upstream.messages if m.rcpt_tos == [rcpt]]
    elif kind == "smtp-sink":
        found = lambda: [
            m.content_crlf for m in upstream.messages() if m.rcpt_args == [f"<{rcpt}>"]
        ] if upstream.message_count() else []
    else:
        found = lambda: [m.body for m in list(upstream.messages) if m.rcpt_tos == [rcpt.encode()]]
    (content,) = wait_until(found, 10.0, 0.02, f"{kind} to receive the message for {rcpt}")
    return content


def fingerprint(data: bytes) -> tuple[int, str, bytes, bytes]:
    """Length, hash and both ends: an exact comparison that fails readably."""
    return len(data), hashlib.sha256(data).hexdigest(), data[:64], data[-64:]


@pytest.mark.parametrize("kind", UPSTREAMS)
@pytest.mark.parametrize("name", list(BODIES))
def test_a_body_arrives_byte_for_byte(stack, kind, name):
    content = BODIES[name]
    rcpt = f"{name}@{kind}.example"
    final = send_message(stack["willi"], rcpt, stuff(content))
    assert final.startswith(b"250 ")
    assert fingerprint(received(stack, kind, rcpt)) == fingerprint(content)


@pytest.mark.parametrize("name", list(BODIES))
def test_the_wire_form_reaches_the_upstream_unchanged_dot_stuffing_included(stack, name):
    wire = stuff(BODIES[name])
    rcpt = f"wire-{name}@scriptable.example"
    final = send_message(stack["willi"], rcpt, wire)
    assert final.startswith(b"250 2.0.0 Ok: queued as ")
    upstream = stack["scriptable"]
    (message,) = [m for m in upstream.messages if m.rcpt_tos == [rcpt.encode()]]
    assert fingerprint(message.raw) == fingerprint(wire)
    assert message.mail_options == [b"BODY=8BITMIME"]  # the upstream offers 8BITMIME


@pytest.mark.parametrize("kind", ["smtp-sink", "scriptable"])
def test_a_line_far_beyond_the_rfc_limit_passes_unchanged(stack, kind):
    # Willi does not police body line length: that is the upstream's call.
    content = b"Subject: very long line\r\n\r\n" + bytes(range(0x41, 0x5B)) * 40000 + b"\r\nend\r\n"
    rcpt = f"very-long-line@{kind}.example"
    assert send_message(stack["willi"], rcpt, stuff(content)).startswith(b"250 ")
    assert fingerprint(received(stack, kind, rcpt)) == fingerprint(content)


@pytest.mark.parametrize("kind", UPSTREAMS)
def test_a_body_sent_in_tiny_pieces_arrives_unchanged(stack, kind):
    # Pieces of 3 bytes split CRLF, the stuffed dots and CRLF.CRLF everywhere.
    content = BODIES["dot-lines"] + b"\r\n" + BODIES["blank-lines-at-the-end"]
    rcpt = f"tiny-pieces@{kind}.example"
    assert send_message(stack["willi"], rcpt, stuff(content), chunk=3).startswith(b"250 ")
    assert received(stack, kind, rcpt) == content
