"""Idle upstream connections are kept a few seconds for the next session
(Postfix's connection cache): fewer handshakes for a busy MX, never a
connection that carried one client's XCLIENT for another client."""

from tests.integration.test_relay import deliver, open_session, static_willi
from tests.support.net import wait_until
from tests.support.upstream import DEFAULT_CAPABILITIES, XCLIENT_CAPABILITY


def two_sessions_one_message_each(willi) -> None:
    for rcpt in ("one@example.org", "two@example.org"):
        with open_session(willi) as client:
            assert deliver(client, rcpt).code == 250
            assert client.command("QUIT").code == 221


def test_the_next_session_reuses_the_parked_upstream_connection(launch):
    upstream = launch.upstream()
    willi = static_willi(launch, upstream.address)
    two_sessions_one_message_each(willi)
    messages = upstream.wait_for_messages(2)
    assert [m.rcpt_tos for m in messages] == [[b"one@example.org"], [b"two@example.org"]]
    assert len(upstream.sessions) == 1
    assert upstream.sessions[0].commands.count(b"EHLO willi.test") == 1


def test_a_connection_that_carried_xclient_is_never_reused_for_another_client(launch):
    upstream = launch.upstream(capabilities=[*DEFAULT_CAPABILITIES, XCLIENT_CAPABILITY])
    willi = static_willi(launch, upstream.address)
    two_sessions_one_message_each(willi)
    upstream.wait_for_messages(2)
    assert len(upstream.sessions) == 2 and len(upstream.xclient_lines) == 2


def test_pool_idle_zero_quits_the_upstream_with_its_session(launch):
    upstream = launch.upstream()
    willi = static_willi(launch, upstream.address, WILLI_UPSTREAM_POOL_IDLE="0")
    two_sessions_one_message_each(willi)
    upstream.wait_for_messages(2)
    assert len(upstream.sessions) == 2
    wait_until(lambda: all(s.ended.is_set() for s in upstream.sessions), 5.0, message="both upstream sessions QUIT")
    assert all(s.commands[-1] == b"QUIT" for s in upstream.sessions)


def test_a_parked_connection_is_quit_after_the_idle_time(launch):
    upstream = launch.upstream()
    willi = static_willi(launch, upstream.address, WILLI_UPSTREAM_POOL_IDLE="0.3s")
    with open_session(willi) as client:
        assert deliver(client, "one@example.org").code == 250
        assert client.command("QUIT").code == 221
    wait_until(lambda: upstream.sessions and upstream.sessions[0].ended.is_set(), 5.0, message="the parked link to be QUIT")
    assert upstream.sessions[0].commands[-1] == b"QUIT"


def test_a_parked_connection_the_upstream_closed_is_replaced_and_the_mail_delivered(launch):
    upstream = launch.upstream(idle_timeout=0.2)  # the upstream drops idle clients quickly
    willi = static_willi(launch, upstream.address, WILLI_UPSTREAM_POOL_IDLE="30s")
    with open_session(willi) as client:
        assert deliver(client, "one@example.org").code == 250
        assert client.command("QUIT").code == 221
    wait_until(lambda: upstream.sessions and upstream.sessions[0].ended.is_set(), 5.0, message="the upstream to drop it")
    with open_session(willi) as client:
        assert deliver(client, "two@example.org").code == 250
        assert client.command("QUIT").code == 221
    assert [m.rcpt_tos for m in upstream.wait_for_messages(2)] == [[b"one@example.org"], [b"two@example.org"]]
    assert len(upstream.sessions) == 2
