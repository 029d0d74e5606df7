"""A SIGHUP that changes how upstream links are opened applies to the links
parked in the pool too (SPEC §4, §6): a link opened under the old settings
is never handed out after the reload, so WILLI_XCLIENT=required (say) holds
for the very next message."""

from __future__ import annotations

import signal

from tests.integration.test_relay import deliver, open_session
from tests.support.upstream import DEFAULT_CAPABILITIES
from tests.support.willi_process import write_env_file


def test_links_parked_before_a_reload_are_not_reused_after_it(launch):
    upstream = launch.upstream(capabilities=[*DEFAULT_CAPABILITIES, "XCLIENT NAME ADDR PORT PROTO HELO"])
    willi = launch.willi({"WILLI_MAPPING_1": f"static:{upstream.address}", "WILLI_XCLIENT": "off",
                          "WILLI_UPSTREAM_POOL_IDLE": "60s"})
    for rcpt in ("one@example.org", "two@example.org"):
        with open_session(willi) as client:
            assert deliver(client, rcpt).code == 250
    assert len(upstream.sessions) == 1  # the second message took the parked link
    write_env_file(willi.env_file, {**willi.env, "WILLI_XCLIENT": "required"})
    willi.signal(signal.SIGHUP)
    willi.wait_for_log(lambda r: r.get("event") == "reloaded")
    with open_session(willi) as client:
        assert deliver(client, "three@example.org").code == 250
    assert len(upstream.wait_for_messages(3)) == 3
    assert len(upstream.sessions) == 2  # a new link, opened under the new settings ...
    assert any(line.upper().startswith(b"XCLIENT") for line in upstream.sessions[1].commands)  # ... with XCLIENT
    assert not any(line.upper().startswith(b"XCLIENT") for line in upstream.sessions[0].commands)
