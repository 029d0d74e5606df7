"""The fuzzer's short run, part of `make test` (issue 9): a few hundred
seeded inputs against a live Willi, checked against every invariant of
tests/support/fuzz.py. `make fuzz` runs the long one (tests/fuzz/run_fuzz.py).

A violation names its inputs; replay one with
`.venv/bin/python tests/fuzz/run_fuzz.py --seed SEED --first N --inputs 1 --parallel 1`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.fuzz import Campaign, Report, generate, reply_problems

SEED = 9
INPUTS = 300
TIME_LIMIT = 45.0  # seconds; a loaded machine plays fewer inputs, never fewer than MINIMUM
MINIMUM = 100


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Report]:
    with Campaign(tmp_path_factory.mktemp("fuzz"), SEED, parallel=4) as campaign:
        yield campaign.run(INPUTS, TIME_LIMIT)


def test_a_short_run_breaks_no_invariant(report: Report) -> None:
    assert report.inputs >= MINIMUM, report.summary()
    assert report.unknown() == [], "\n\n".join(map(str, report.unknown()[:5])) + "\n" + report.summary()


def test_a_short_run_meets_no_known_bug_either(report: Report) -> None:
    assert report.known() == [], "\n\n".join(map(str, report.known()[:5]))


# --- the fuzzer itself --------------------------------------------------------------
def test_an_input_is_the_same_for_the_same_seed_and_index() -> None:
    assert generate(SEED, 17) == generate(SEED, 17)
    assert generate(SEED, 17).stream != generate(SEED, 18).stream
    assert generate(SEED, 17).stream != generate(SEED + 1, 17).stream


def test_the_inputs_cover_what_issue_9_asks_for() -> None:
    streams = [generate(SEED, i) for i in range(INPUTS)]
    joined = b"\n".join(f.stream for f in streams)
    for needle in (b"STARTTLS\r\n", b"BDAT", b"\r\n.\r", b"\n.\n", b"\x00", b"h" * 5000):
        assert needle in joined, needle
    assert {f.ending for f in streams} == {"eof", "close", "rst"}
    assert any(len(f.chunks) > 3 for f in streams) and any(not f.wait_greeting for f in streams)


def test_the_reply_checker_refuses_what_it_must() -> None:
    assert reply_problems(b"220 willi.test ESMTP\r\n250-a\r\n250 b\r\n", True) == []
    for bad in (b"220 ok\r\n25 x\r\n", b"220 ok\n", b"250-a\r\n251 b\r\n", b"250-a\r\n", b"220x\r\n",
                b"250 " + b"x" * 600 + b"\r\n", b"250 a\rb\r\n"):
        assert reply_problems(bad, True), bad
    assert reply_problems(b"220 cut off", False) == []  # a reset may cut the last reply
    # After STARTTLS is accepted come TLS records (an alert for a garbage handshake), not replies.
    assert reply_problems(b"220 w ESMTP\r\n250 ok\r\n220 2.0.0 Ready\r\n\x15\x03\x03\x00\x02\x02\x16", True) == []


def test_the_upstream_checks_flag_what_must_never_reach_an_upstream() -> None:
    from tests.support.fuzz import FuzzUpstream
    from tests.support.upstream import Session

    upstream = FuzzUpstream()  # not started: its checks are called directly
    session = Session(1, None, ("127.0.0.1", 1))  # type: ignore[arg-type]
    for line in (b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<a@b>\n", b"RCPT TO:<a\rb>\r\n", b"FROB\r\n",
                 b"RCPT TO:<" + b"a" * 600 + b">\r\n", b"mail from:<a@b>\r\n"):
        upstream._check_command(session, line)
    assert len(upstream.violations) == 5  # all but the first
    upstream.violations.clear()
    upstream._check_body(session, b"hello\r\n", complete=True)
    assert upstream.violations == []
    for raw, complete in ((b"a\n.\nb\r\n", True), (b"a\rb\r\n", True), (b"a\x00\r\n", True),
                          (b"a\nb", False), (b"a\r\n.\r", False), (b"a\r", False)):
        upstream._check_body(session, raw, complete=complete)
    kinds = [(v.kind, v.known is not None) for v in upstream.violations]
    assert kinds == [("smuggled end of data upstream", False), ("bare CR/LF/NUL in a complete body", False),
                     ("bare CR/LF/NUL in a complete body", False),
                     ("bare LF or NUL reached the upstream in a body", False),
                     ("smuggled end of data upstream", True), ("bare CR reached the upstream in a body", True)]
