"""A server field copied from a Postfix transport map works (issue 13 item 7):
the route `smtp:[127.0.0.1]:PORT` in a CSV delivers, and `--lookup` and
`--check` accept it."""

from __future__ import annotations

import smtplib
from pathlib import Path

from tests.integration.conftest import Launcher
from tests.support.willi_process import WilliProcess


def test_a_postfix_transport_form_in_the_csv_routes_the_message(launch: Launcher, tmp_path: Path) -> None:
    upstream = launch.upstream()
    csv = tmp_path / "upstreams.csv"
    csv.write_text(f"pattern;server;tls_verify\nexample.org;smtp:[127.0.0.1]:{upstream.port};false\n")
    willi = launch.willi({"WILLI_MAPPING_1": f"csv:{csv}"})

    checked = WilliProcess.run_cli("--check", env=willi.env, tmp_path=tmp_path)
    assert checked.returncode == 0, checked
    looked_up = WilliProcess.run_cli("--lookup", "user@example.org", env=willi.env, tmp_path=tmp_path)
    assert f"server=smtp:[127.0.0.1]:{upstream.port}" in looked_up.stdout, looked_up

    # client says: a message for example.org; Willi relays to the Postfix-style target
    with smtplib.SMTP(willi.host, willi.port, local_hostname="client.test", timeout=10) as smtp:
        assert smtp.sendmail("a@client.test", ["user@example.org"], b"Subject: t\r\n\r\nhi\r\n") == {}
    [message] = upstream.wait_for_messages(1)
    assert message.rcpt_tos == [b"user@example.org"]
