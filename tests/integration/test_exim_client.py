"""Exim as a real client: it sends BDAT when Willi offers CHUNKING, and its
messages reach an upstream with CHUNKING (streamed as BDAT) and one without
(translated to DATA) byte for byte (issue 8 "Must show")."""

from __future__ import annotations

import pytest

from tests.support.exim import Exim
from tests.support.net import wait_until
from tests.support.upstream import DEFAULT_CAPABILITIES

MESSAGE = (b"From: sender@exim.test\nTo: rcpt@example.org\nSubject: via exim\n\n"
           b"First line.\n.a line that starts with a dot\n..two dots\n\nLast line.\n")


@pytest.fixture(scope="module")
def setup(module_launch, tmp_path_factory):
    chunking = module_launch.upstream(capabilities=[*DEFAULT_CAPABILITIES, "CHUNKING"])
    plain = module_launch.upstream()
    table = tmp_path_factory.mktemp("exim-routes") / "routes.csv"
    table.write_text("pattern;server;tls_verify\n"
                     f"chunking.test;{chunking.address};no\nplain.test;{plain.address};no\n")
    willi = module_launch.willi({"WILLI_MAPPING_1": f"csv:{table}"})
    with Exim(willi.host, willi.port) as exim:
        yield willi, exim, {"chunking": chunking, "plain": plain}


@pytest.mark.parametrize("kind", ["chunking", "plain"])
def test_exim_delivers_through_willi_with_bdat(setup, kind):
    willi, exim, upstreams = setup
    rcpt = f"rcpt@{kind}.test"
    result = exim.send("sender@exim.test", rcpt, MESSAGE)
    assert result.returncode == 0, (result.stderr, exim.mainlog())
    upstream = upstreams[kind]
    message = wait_until(lambda: next((m for m in upstream.messages if m.rcpt_tos == [rcpt.encode()]), None),
                         10, 0.02, f"the message to {rcpt}; exim's log:\n{exim.mainlog()}{result.stderr!r}")
    assert message.via == ("BDAT" if kind == "chunking" else "DATA")
    # Exim adds its Received: and Message-ID: headers; the rest is the message, in CRLF.
    assert message.body.endswith(MESSAGE.split(b"\n\n", 1)[1].replace(b"\n", b"\r\n"))
    record = willi.wait_for_log(lambda r: r.get("event") == "transaction" and r.get("rcpts") == rcpt)
    assert record["code"] == "250" and record.get("chunking") == "true", record  # Exim used BDAT
    assert "=> rcpt@" in exim.mainlog() and "K" in exim.mainlog().split("=> " + rcpt)[1].splitlines()[0]
