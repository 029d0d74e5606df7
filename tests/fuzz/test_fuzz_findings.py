"""Inputs the long fuzz runs found, kept as regression tests: each replays
one input of tests/support/fuzz.py against a live Willi and expects no
violation. The same as
`.venv/bin/python tests/fuzz/run_fuzz.py --seed SEED --first INDEX --inputs 1 --parallel 1`.
"""

from __future__ import annotations

import pytest

from tests.support.fuzz import Campaign

FOUND = [
    # h-relay ec68a8f: after a transaction that was reset, the second one's RCPT
    # is answered by upstream B but the pipelined DATA and 130 kB behind it are
    # never carried out; the half-closed client is held past the client timeout.
    # The RSET's owed reply was counted against B (the relay let A go with it):
    # tests/relay/test_relay_reset_then_elsewhere.py plays it without a socket.
    pytest.param(20261201, 8444, id="reset-then-pipelined-second-transaction"),
    # issue 9 item 2 on main: the lone-CR end of data "\r\n.\r" reached the upstream.
    pytest.param(9, 64, id="lone-cr-end-of-data"),
    # issue 9 item 2 on main: a body's "\r\r\n" left "a\r" upstream before it was refused.
    pytest.param(1234, 1608, id="chunk-final-bare-cr"),
]


@pytest.mark.parametrize("seed, index", FOUND)
def test_a_found_input_breaks_no_invariant_any_more(tmp_path, seed: int, index: int) -> None:
    with Campaign(tmp_path, seed, parallel=1) as campaign:
        report = campaign.run(1, 30.0, first=index)
    assert report.inputs == 1
    assert [str(v) for v in report.violations] == []
