"""Routing through a running Willi (SPEC §3): which upstream a RCPT reaches.

Six ScriptableUpstreams stand behind one Willi whose only mapping is a CSV
file. Each upstream answers RCPT with its own name, so the reply the client
gets says where the recipient went, and the upstreams' command logs say what
they saw (and what they did not). The CSV reload tests run their own Willi
and edit their own file; the mapping-order test runs one with two mappings.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.support.net import Reply, wait_until
from tests.support.upstream import ScriptableUpstream
from tests.support.willi_process import WilliProcess, open_session

NAMES = ("A", "B", "C", "D", "E", "F")
WILLI_HOSTNAME = "willi.test"


def rcpt_ok(name: str) -> bytes:
    return f"250 2.1.5 Ok, upstream {name}\r\n".encode()


@pytest.fixture(scope="module")
def upstreams(module_launch) -> dict[str, ScriptableUpstream]:
    return {name: module_launch.upstream(replies={"RCPT": rcpt_ok(name)}) for name in NAMES}


@pytest.fixture(scope="module")
def willi(module_launch, upstreams: dict[str, ScriptableUpstream]) -> WilliProcess:
    u = {name: upstream.address for name, upstream in upstreams.items()}
    table = module_launch.tmp_path / "routes.csv"
    table.write_text(
        "pattern;server;tls_verify\n"
        "# full addresses\n"
        f"vip@example.org;{u['A']};no\n"
        f"user+vip@example.org;{u['A']}\n"
        f"user@example.org;{u['B']};yes\n"
        "\n"
        "# domains, and a parent domain for every subdomain\n"
        f"example.org;{u['C']}\n"
        f".example.net;{u['D']}\n"
        f"postmaster@{WILLI_HOSTNAME};{u['E']}\n"
        f"Shouting.Example.COM;{u['F']}\n"
    )
    return module_launch.willi({
        "WILLI_MAPPING_1": f"csv:{table}",
        "WILLI_RECIPIENT_DELIMITER": "+",
        "WILLI_HOSTNAME": WILLI_HOSTNAME,
    })


# --- a raw client -------------------------------------------------------------


def rcpt_reply(willi: WilliProcess, path: str) -> Reply:
    """The reply to `RCPT TO:<path>` in a fresh session (then QUIT)."""
    with open_session(willi) as client:
        assert client.command("MAIL FROM:<sender@origin.test>").raw == b"250 2.1.0 Ok\r\n"
        reply = client.command(f"RCPT TO:{path}")
        assert client.command("QUIT").code == 221
    return reply


def rcpt_lines(upstream: ScriptableUpstream) -> list[bytes]:
    return [c for c in list(upstream.commands) if c.upper().startswith(b"RCPT")]


def assert_routed(
    willi: WilliProcess,
    upstreams: dict[str, ScriptableUpstream],
    path: str,
    expected: str,
    upstream_sees: bytes,
) -> None:
    """RCPT `path` gets upstream `expected`'s reply, verbatim, and only that
    upstream received the RCPT line `upstream_sees`."""
    before = {name: len(rcpt_lines(up)) for name, up in upstreams.items()}
    assert rcpt_reply(willi, path).raw == rcpt_ok(expected)
    for name, upstream in upstreams.items():
        new = rcpt_lines(upstream)[before[name]:]
        assert new == ([upstream_sees] if name == expected else []), name


# --- each key form --------------------------------------------------------------
def test_a_full_address_key_wins_over_the_domain_key(willi, upstreams):
    assert_routed(willi, upstreams, "<vip@example.org>", "A", b"RCPT TO:<vip@example.org>")


def test_a_domain_key_routes_every_other_local_part_of_the_domain(willi, upstreams):
    assert_routed(willi, upstreams, "<someone@example.org>", "C", b"RCPT TO:<someone@example.org>")


def test_user_plus_extension_falls_back_to_user_at_domain_and_keeps_the_extension_upstream(
    willi, upstreams
):
    assert_routed(
        willi, upstreams, "<user+news@example.org>", "B", b"RCPT TO:<user+news@example.org>"
    )


def test_the_full_address_with_extension_is_tried_before_user_at_domain(willi, upstreams):
    assert_routed(willi, upstreams, "<user+vip@example.org>", "A", b"RCPT TO:<user+vip@example.org>")


# SPEC §3: a dot key matches subdomains only, as in Postfix's transport maps.
@pytest.mark.parametrize("domain", ["mail.example.net", "a.b.c.example.net"])
def test_a_dot_key_matches_every_subdomain(willi, upstreams, domain):
    assert_routed(willi, upstreams, f"<x@{domain}>", "D", f"RCPT TO:<x@{domain}>".encode())


def test_a_dot_key_does_not_match_the_domain_itself(willi, upstreams):
    reply = rcpt_reply(willi, "<x@example.net>")
    assert reply.code == 554 and b"Relay access denied" in reply.raw, reply


@pytest.mark.parametrize(
    "path, expected",
    [
        ("<VIP@Example.ORG>", "A"),  # mixed-case RCPT, lower-case table
        ("<loud@shouting.example.com>", "F"),  # lower-case RCPT, mixed-case table
        ("<LOUD@SHOUTING.EXAMPLE.COM>", "F"),
    ],
)
def test_keys_are_lower_cased_and_the_rcpt_goes_upstream_as_written(
    willi, upstreams, path, expected
):
    assert_routed(willi, upstreams, path, expected, f"RCPT TO:{path}".encode())


def test_a_source_route_is_stripped_before_the_rcpt_goes_upstream(willi, upstreams):
    assert_routed(
        willi, upstreams, "<@a.example,@b.example:user@example.org>", "B",
        b"RCPT TO:<user@example.org>",
    )


def test_a_quoted_local_part_routes_by_its_domain_and_goes_upstream_as_written(willi, upstreams):
    path = '<"Odd Local@Part"@example.org>'
    assert_routed(willi, upstreams, path, "C", f"RCPT TO:{path}".encode())


def test_postmaster_without_a_domain_is_accepted_and_routed_as_postmaster_at_the_hostname(
    willi, upstreams
):
    before = {name: len(rcpt_lines(up)) for name, up in upstreams.items()}
    assert rcpt_reply(willi, "<Postmaster>").raw == rcpt_ok("E")
    new = {name: rcpt_lines(up)[before[name]:] for name, up in upstreams.items()}
    # Routed by postmaster@willi.test; on the wire either form is a valid RCPT.
    assert new.pop("E") in (
        [b"RCPT TO:<Postmaster>"], [f"RCPT TO:<Postmaster@{WILLI_HOSTNAME}>".encode()]
    )
    assert all(lines == [] for lines in new.values())


# --- no route ---------------------------------------------------------------------
def test_an_unmapped_recipient_never_reaches_any_upstream(willi, upstreams):
    sessions = {name: len(up.sessions) for name, up in upstreams.items()}
    with open_session(willi) as client:
        assert client.command("MAIL FROM:<sender@origin.test>").code == 250
        reply = client.command("RCPT TO:<nobody@unmapped.example>")
        assert reply.raw == b"554 5.7.1 <nobody@unmapped.example>: Relay access denied\r\n"
        assert client.command("DATA").raw == b"554 5.5.1 Error: no valid recipients\r\n"
        assert client.command("QUIT").code == 221
    record = willi.wait_for_log(
        lambda r: r.get("event") == "transaction" and "nobody@unmapped.example" in r.get("text", "")
    )
    assert record["code"] == "554"
    assert record["refused"] == "1"
    assert "upstream" not in record and "rcpts" not in record
    assert {name: len(up.sessions) for name, up in upstreams.items()} == sessions


def test_an_unmapped_recipient_next_to_a_mapped_one_is_left_out_of_the_delivery(willi, upstreams):
    upstream = upstreams["C"]
    with open_session(willi) as client:
        assert client.command("MAIL FROM:<sender@origin.test>").code == 250
        assert client.command("RCPT TO:<first@example.org>").raw == rcpt_ok("C")
        denied = client.command("RCPT TO:<stray@unmapped.example>")
        assert denied.raw == b"554 5.7.1 <stray@unmapped.example>: Relay access denied\r\n"
        assert client.command("DATA").code == 354
        final = client.command(b"Subject: mixed\r\n\r\nhello\r\n.")
        assert final.raw.startswith(b"250 2.0.0 Ok: queued as ")
        assert client.command("QUIT").code == 221
    message = next(m for m in upstream.messages if m.rcpt_tos == [b"first@example.org"])
    assert message.body == b"Subject: mixed\r\n\r\nhello\r\n"
    assert not any(b"unmapped" in c for up in upstreams.values() for c in list(up.commands))


def test_a_domainless_address_other_than_postmaster_is_refused_without_asking_upstream(
    willi, upstreams
):
    sessions = {name: len(up.sessions) for name, up in upstreams.items()}
    assert rcpt_reply(willi, "<alice>").raw == b"501 5.1.3 Bad address syntax\r\n"
    assert {name: len(up.sessions) for name, up in upstreams.items()} == sessions


# --- several mappings -----------------------------------------------------------------
def test_a_csv_mapping_before_a_static_one_wins_where_it_matches_and_static_catches_the_rest(
    launch, upstreams
):
    table = launch.tmp_path / "order.csv"
    table.write_text(
        "pattern;server\n"
        f"vip@order.example;{upstreams['A'].address}\n"
        f"order.example;{upstreams['B'].address}\n"
    )
    willi = launch.willi({
        "WILLI_MAPPING_1": f"csv:{table}",
        "WILLI_MAPPING_2": f"static:{upstreams['C'].address}",
    })
    assert_routed(willi, upstreams, "<vip@order.example>", "A", b"RCPT TO:<vip@order.example>")
    # Every key of the CSV mapping is tried before the static one is asked.
    assert_routed(willi, upstreams, "<x@order.example>", "B", b"RCPT TO:<x@order.example>")
    assert_routed(willi, upstreams, "<x@elsewhere.example>", "C", b"RCPT TO:<x@elsewhere.example>")


# --- CSV reload ---------------------------------------------------------------------------
MOVED = "moved@reload.example"


def reload_table(server: str, width: int = 0) -> str:
    """A CSV text routing MOVED to `server`, the field padded to `width`."""
    return f"pattern;server\n{MOVED};{server.ljust(width)}\n"


def routed_to(willi: WilliProcess, path: str = f"<{MOVED}>") -> str | None:
    """The upstream a fresh session's RCPT reached, by the reply's name."""
    raw = rcpt_reply(willi, path).raw
    for name in NAMES:
        if raw == rcpt_ok(name):
            return name
    return None


def bump_mtime(path: Path) -> None:
    """A later mtime for sure, whatever the file system's resolution."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def start_reload_willi(launch, table: Path, server: str) -> WilliProcess:
    table.write_text(reload_table(server))
    return launch.willi({"WILLI_MAPPING_1": f"csv:{table}"})


def test_an_edited_csv_file_is_used_without_a_restart(launch, upstreams):
    table = launch.tmp_path / "reload.csv"
    willi = start_reload_willi(launch, table, upstreams["A"].address)
    assert routed_to(willi) == "A"
    table.write_text(reload_table(upstreams["B"].address))
    bump_mtime(table)
    # mtime is checked at most once a second, on a lookup: fresh sessions ask.
    wait_until(lambda: routed_to(willi) == "B", 5.0, 0.1, "the edited route to be used")
    record = willi.wait_for_log(lambda r: r.get("event") == "mapping_reloaded")
    assert record["entries"] == "1"
    assert willi.process is not None and willi.process.poll() is None  # no restart


def test_sighup_rereads_the_csv_file_without_dropping_a_session(launch, upstreams):
    table = launch.tmp_path / "hup.csv"
    width = max(len(upstreams[name].address) for name in "AB")
    old_text = reload_table(upstreams["A"].address, width)
    new_text = reload_table(upstreams["B"].address, width)
    table.write_bytes(old_text.encode())
    willi = launch.willi({"WILLI_MAPPING_1": f"csv:{table}"})
    with open_session(willi) as open_client:
        assert open_client.command("MAIL FROM:<sender@origin.test>").code == 250
        assert open_client.command(f"RCPT TO:<{MOVED}>").raw == rcpt_ok("A")
        # Same size, same inode, the old mtime put back: a stat() sees no change,
        # so only the SIGHUP can make Willi read the new table.
        before = table.stat()
        table.write_bytes(new_text.encode())
        os.utime(table, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert table.stat().st_size == before.st_size and table.stat().st_ino == before.st_ino
        willi.signal(signal.SIGHUP)
        willi.wait_for_log(lambda r: r.get("event") == "mapping_reloaded")
        assert routed_to(willi) == "B"
        # The session opened before the reload finishes its transaction with A...
        assert open_client.command("DATA").code == 354
        final = open_client.command(b"Subject: across a reload\r\n\r\nhi\r\n.")
        assert final.raw.startswith(b"250 2.0.0 Ok: queued as ")
        # ...and routes its next transaction by the new table.
        assert open_client.command("MAIL FROM:<sender@origin.test>").code == 250
        assert open_client.command(f"RCPT TO:<{MOVED}>").raw == rcpt_ok("B")
        assert open_client.command("QUIT").code == 221
    assert any(
        m.rcpt_tos == [MOVED.encode()] and m.body == b"Subject: across a reload\r\n\r\nhi\r\n"
        for m in upstreams["A"].messages
    )


def test_a_broken_csv_file_keeps_the_old_table_and_logs_mapping_reload_failed(
    launch, upstreams
):
    table = launch.tmp_path / "broken.csv"
    willi = start_reload_willi(launch, table, upstreams["A"].address)
    table.write_text(f"pattern;server\n{MOVED};{upstreams['B'].address}\nno separator here\n")
    bump_mtime(table)

    def reload_failed() -> dict[str, str] | None:
        assert routed_to(willi) == "A"  # every probe: the old table still routes
        return next((r for r in willi.log_lines() if r.get("event") == "mapping_reload_failed"), None)

    record = wait_until(reload_failed, 5.0, 0.1, "mapping_reload_failed in the log")
    assert f"{table}:3" in record["error"]
    assert record["level"] == "warning"
    # Mend the file: the new table is taken.
    table.write_text(reload_table(upstreams["B"].address))
    bump_mtime(table)
    wait_until(lambda: routed_to(willi) == "B", 5.0, 0.1, "the mended table to be used")


def test_sighup_with_a_broken_csv_file_keeps_the_old_table(launch, upstreams):
    table = launch.tmp_path / "hup-broken.csv"
    willi = start_reload_willi(launch, table, upstreams["A"].address)
    table.write_text("pattern;server\nmoved@reload.example;not a server:99999\n")
    willi.signal(signal.SIGHUP)
    record = willi.wait_for_log(lambda r: r.get("event") == "mapping_reload_failed")
    assert f"{table}:2" in record["error"]
    assert routed_to(willi) == "A"


def test_a_removed_csv_file_keeps_the_old_table_until_it_is_back(launch, upstreams):
    table = launch.tmp_path / "removed.csv"
    willi = start_reload_willi(launch, table, upstreams["A"].address)
    table.unlink()

    def reload_failed() -> dict[str, str] | None:
        assert routed_to(willi) == "A"
        return next((r for r in willi.log_lines() if r.get("event") == "mapping_reload_failed"), None)

    record = wait_until(reload_failed, 5.0, 0.1, "mapping_reload_failed in the log")
    assert str(table) in record["error"]
    table.write_text(reload_table(upstreams["B"].address))
    wait_until(lambda: routed_to(willi) == "B", 5.0, 0.1, "the restored file to be used")
