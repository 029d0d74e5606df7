"""WILLI_WORKERS=N: N reactor processes share the port (SO_REUSEPORT); the
parent forwards SIGHUP and SIGTERM to every one of them (SPEC §1, §6)."""

import os
import signal

from tests.integration.test_relay import deliver, open_session
from tests.support.net import wait_until


def test_two_workers_deliver_reload_together_and_stop_together(launch, tmp_path):
    old, new = launch.upstream(), launch.upstream()
    routes = tmp_path / "routes.csv"
    routes.write_text(f"pattern;server\nexample.org;{old.address}\n")
    willi = launch.willi({"WILLI_MAPPING_1": f"csv:{routes}", "WILLI_WORKERS": "2"})
    wait_until(lambda: len(willi.children()) == 2, 5.0, message="two worker processes")
    workers = willi.children()

    for i in range(6):  # several connections: the kernel spreads them over both workers
        with open_session(willi) as client:
            assert deliver(client, f"before{i}@example.org").code == 250
    assert len(old.wait_for_messages(6)) == 6

    # Same size and mtime, so only SIGHUP (forwarded to both workers) can pick it up.
    stat = routes.stat()
    routes.write_text(f"pattern;server\nexample.org;{new.address}\n".ljust(len(routes.read_text())))
    os.utime(routes, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    willi.signal(signal.SIGHUP)
    wait_until(lambda: sum(1 for r in willi.log_lines() if r.get("event") == "reloading") == 2, 5.0,
               message="both workers to reload")
    for i in range(6):
        with open_session(willi) as client:
            assert deliver(client, f"after{i}@example.org").code == 250
    assert len(new.wait_for_messages(6)) == 6 and len(old.messages) == 6

    assert willi.stop() == 0
    assert all(not os.path.exists(f"/proc/{pid}") for pid in workers)
