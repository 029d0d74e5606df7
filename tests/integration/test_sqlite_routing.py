"""sqlite:PATH through a running Willi: a recipient routed by a row of an
SQLite file, answered in the worker pool, and a rebuilt file taken on SIGHUP."""

from __future__ import annotations

import os
import signal

from tests.integration.test_routing import rcpt_ok, routed_to
from tests.routing.test_sqlite import make_db
from tests.support.net import wait_until


def test_a_running_willi_routes_by_the_sqlite_file_and_reopens_it_on_sighup(launch) -> None:
    upstreams = {name: launch.upstream(replies={"RCPT": rcpt_ok(name)}) for name in "AB"}
    path = make_db(launch.tmp_path / "routes.db", [("reload.example", upstreams["A"].address, 0)])
    willi = launch.willi({"WILLI_MAPPING_1": f"sqlite:{path}"})
    # The client says RCPT, Willi asks the file (in a worker) and routes to A.
    assert routed_to(willi, "<moved@reload.example>") == "A"
    assert routed_to(willi, "<someone@elsewhere.example>") is None  # no row: 554
    # The operator builds a new file and renames it into place, then sends SIGHUP.
    rebuilt = make_db(launch.tmp_path / "new.db", [("reload.example", upstreams["B"].address, 0)])
    os.replace(rebuilt, path)  # (without the SIGHUP: still A, cached, and the old inode)
    assert routed_to(willi, "<moved@reload.example>") == "A"
    willi.signal(signal.SIGHUP)
    # Willi reopens the file in every worker and forgets its cache.
    wait_until(lambda: routed_to(willi, "<moved@reload.example>") == "B", 5.0, 0.05, "the rebuilt file")
    assert routed_to(willi, "<moved@reload.example>") == "B"
